#!/bin/sh
# lazarusfs-csi end to end: starts the plugin on a temporary socket and drives
# it with a real gRPC client (Debian's python3-grpcio): identity, bad input,
# the whole stage/publish/unpublish/unstage lifecycle on a volume somebody
# else mounted (bindfs, like Fluid's FUSE pod) and on one the plugin mounts
# with lazarusfs, stale mounts, stacked binds and concurrent calls.
# The checks are in csi_lifecycle.py; this script sets up and cleans up.
set -eu
BUILD_DIR=${BUILD_DIR:-.}
SRC_DIR=${SRC_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3

[ -e /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
[ -x "$BUILD_DIR/lazarusfs-csi" ] || { echo "skip: lazarusfs-csi not built"; exit 77; }
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)

T=$(mktemp -d /tmp/csi-test.XXXXXX)
SHIM_PID=
BINDFS_PID=

# Processes whose command line names our directory: the ones we started and
# the lazarusfs proxies and engines the plugin started for us.
our_pids() {
	for d in /proc/[0-9]*; do
		p=${d#/proc/}
		[ "$p" != $$ ] || continue
		{ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q "$T/" && echo "$p"
	done
	return 0
}

cleanup() {
	rc=$?
	[ -z "$SHIM_PID" ] || kill "$SHIM_PID" 2>/dev/null || true
	i=0
	while grep -q " $T/" /proc/self/mountinfo && [ $i -lt 20 ]; do
		grep " $T/" /proc/self/mountinfo | awk '{print $5}' | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null || true; done
		i=$((i + 1))
	done
	for p in $(our_pids); do kill -9 "$p" 2>/dev/null || true; done
	[ -z "$SHIM_PID" ] || wait "$SHIM_PID" 2>/dev/null || true
	rm -rf "$T"
	exit $rc
}
trap cleanup EXIT INT TERM

MNT=$T/runtime-mnt
mkdir -p "$MNT" "$T/kubelet" "$T/etc" "$T/state" "$T/outside" \
	"$T/data/sub/deeper" "$T/data2"
echo hello >"$T/data/hello.txt"
echo inner >"$T/data/sub/inner.txt"
ln -s "$T/outside" "$T/data/escape"	# a symlink out of the volume
ln -s ../.. "$T/data/sub/up"		# .. through a symlink
ln -s sub "$T/data/alias"		# a symlink that stays inside
ln -s "$T/outside" "$T/kubelet/evil"	# a symlink out of the kubelet root
echo lazy >"$T/data2/lazy.txt"

# Volume "demo": mounted by somebody else, as Fluid's FUSE pod would.
DEMO=$MNT/juicefs/default/demo/juicefs-fuse
mkdir -p "$DEMO"
bindfs -f -o allow_other "$T/data" "$DEMO" &
BINDFS_PID=$!
i=0
until grep -q " $DEMO " /proc/self/mountinfo; do
	i=$((i + 1)); [ $i -lt 100 ] || { echo "bindfs did not mount"; exit 1; }
	sleep 0.05
done

# Volume "cond": looks like a lazarusfs mount (fstype fuse.lazarusfs) so the
# test can play its control socket and drive the volume condition.
COND=$MNT/juicefs/default/cond/juicefs-fuse
mkdir -p "$COND"
bindfs -o subtype=lazarusfs "$T/data" "$COND"

# Volume "lazy": the plugin mounts it with lazarusfs from this config.
cat >"$T/etc/default-lazy.conf" <<EOC
# test dataset
source = $T/data2
engine = bindfs
EOC

"$BUILD_DIR/lazarusfs-csi" --endpoint "unix://$T/csi.sock" --nodeid node-1 \
	--mount-root "$MNT" --kubelet-root "$T/kubelet" --config-dir "$T/etc" \
	--state-dir "$T/state" --lazarusfs "$BUILD_DIR/lazarusfs" \
	--clean-policy OnDemand --mount-timeout 3 2>"$T/shim.log" &
SHIM_PID=$!
i=0
until [ -S "$T/csi.sock" ]; do
	i=$((i + 1)); [ $i -lt 100 ] || { cat "$T/shim.log"; echo "no socket"; exit 1; }
	sleep 0.05
done

export T BUILD_DIR SRC_DIR BINDFS_PID SHIM_PID
if ! "$PY" "$SRC_DIR/tests/integration/csi_lifecycle.py"; then
	echo "--- lazarusfs-csi log"
	cat "$T/shim.log"
	exit 1
fi

# SIGTERM: a clean exit that removes the socket.
kill "$SHIM_PID"
rc=0
wait "$SHIM_PID" || rc=$?
SHIM_PID=
[ $rc -eq 0 ] || { cat "$T/shim.log"; echo "not ok - exit status $rc after SIGTERM"; exit 1; }
[ ! -e "$T/csi.sock" ] || { echo "not ok - socket left after SIGTERM"; exit 1; }
echo "ok - SIGTERM: clean exit, socket removed"
