#!/bin/sh
# lazarusfs-csi node labels: NodeStageVolume/NodeUnstageVolume patch the node
# through a local HTTPS "API server" with a throwaway CA; csi_label.py checks
# method, path, auth header and patch body, TLS verification, API errors,
# Fluid's long-name rule and the in-cluster environment variables.
set -eu
BUILD_DIR=${BUILD_DIR:-.}
SRC_DIR=${SRC_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3

[ -e /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
[ -x "$BUILD_DIR/lazarusfs-csi" ] || { echo "skip: lazarusfs-csi not built"; exit 77; }
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)

T=$(mktemp -d /tmp/csi-label.XXXXXX)

cleanup() {
	rc=$?
	for d in /proc/[0-9]*; do	# the plugin and bindfs we started
		p=${d#/proc/}
		[ "$p" != $$ ] || continue
		if { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q "$T/"; then
			kill -9 "$p" 2>/dev/null || true
		fi
	done
	grep " $T/" /proc/self/mountinfo | awk '{print $5}' | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
	rm -rf "$T"
	exit $rc
}
trap cleanup EXIT INT TERM

# A throwaway CA, a server certificate for 127.0.0.1, and a CA that did not sign it.
cd "$T"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 \
	-subj /CN=test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
	-subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
	-out server.crt -days 1 -extfile san.ext 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other-ca.crt -days 1 \
	-subj /CN=other-ca 2>/dev/null
printf 'test-token-%s\n' "$$" >token
cd - >/dev/null

mkdir -p "$T/runtime-mnt" "$T/kubelet" "$T/etc" "$T/state" "$T/data"
LONG=a-dataset-name-that-is-long-enough-to-break-the-limit
for name in demo "$LONG" nouid-"$LONG"; do
	d=$T/runtime-mnt/juicefs/default/$name/juicefs-fuse
	mkdir -p "$d"
	bindfs "$T/data" "$d"
done
# The long-named dataset carries its UID in its config (its mount exists, so
# the source is not used).
printf 'source=unused\nengine=bindfs\ndataset_uid=5e1c2a9e-0d3b-4c47-9a56-1f0e4d2b7a11\n' \
	>"$T/etc/default-$LONG.conf"

export T BUILD_DIR SRC_DIR LONG
"$PY" "$SRC_DIR/tests/integration/csi_label.py"
