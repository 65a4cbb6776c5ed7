#!/bin/sh
# Install what lazarusfs needs to build, test and benchmark on Debian 12,
# skipping packages that are already there.  Needs root (or sudo).
set -e
PKGS="gcc make autoconf automake libtool pkg-config
fuse3 libfuse3-dev liburing-dev libxxhash-dev libcmocka-dev libcurl4-openssl-dev
libgrpc-dev libprotobuf-c-dev protobuf-c-compiler python3 python3-grpcio python3-protobuf
bindfs sshfs mergerfs strace openssh-server openssh-client fio rclone gnuplot-nox
attr psmisc procps jq openssl util-linux ca-certificates
git debhelper dpkg-dev lintian"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
