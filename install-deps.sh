#!/bin/sh
# Install what lazarusfs needs to build, test and benchmark on Debian 12,
# skipping what is already there: Debian packages, and s3rver (a local S3
# server for the s3fs tests) from npm.  Needs root (or sudo).  Quiet when
# nothing is missing.
set -e
PKGS="gcc make autoconf automake libtool pkg-config
fuse3 libfuse3-dev liburing-dev libxxhash-dev libcmocka-dev libcurl4-openssl-dev
libgrpc-dev libprotobuf-c-dev protobuf-c-compiler python3 python3-grpcio python3-protobuf
bindfs sshfs s3fs mergerfs strace openssh-server openssh-client fio rclone gnuplot-nox
attr psmisc procps jq openssl util-linux ca-certificates
git debhelper dpkg-dev lintian prometheus"
# npm may come with a nodejs package from elsewhere (it does on this
# project's machines); Debian's own needs both packages
command -v npm >/dev/null 2>&1 || PKGS="$PKGS nodejs npm"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# s3rver 3.x, global, so that tests and bench find it on PATH
case $(s3rver --version 2>/dev/null) in
3.*) ;;
*)
	echo "installing: s3rver@3 (npm)"
	$SUDO npm install -g --silent --no-audit --no-fund s3rver@3 >/dev/null
	;;
esac
