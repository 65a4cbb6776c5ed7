#!/bin/bash
# test_bufengine.sh: proves the test engine tests/bufengine really buffers
# acknowledged writes in memory until close/fsync, like JuiceFS:
#   run 1: a writer keeps its files open; data written to "a" is readable
#          through the mount (read-your-writes, also after a reader closed)
#          but absent from the source dir; "b" was fsync'ed and is present.
#          After kill -9 of the engine "a" is empty in the source dir and
#          "b" is intact.
#   run 2: a writer that closes its file makes the data durable; appends and
#          truncate through the mount reach the source.
# Env: BUILD_DIR (binary is $BUILD_DIR/tests/bufengine), SRC_DIR (unused).
# Exit: 0 pass, 77 skip (no /dev/fuse), other fail.
set -u

[ -c /dev/fuse ] || { echo "SKIP: /dev/fuse missing"; exit 77; }

BIN=${BUILD_DIR:-.}/tests/bufengine
PY=/usr/bin/python3
T=$(mktemp -d /tmp/test_bufengine.XXXXXX)
src=$T/src
mnt=$T/mnt
engine_pid=
writer_pid=

# kills background jobs without bash's "Killed" job notices
reap() {
	{
		kill -9 "$@"
		wait "$@"
	} 2>/dev/null
}

cleanup() {
	exec 2>/dev/null # bash may still print job notices while exiting
	[ -n "$writer_pid" ] && reap "$writer_pid"
	[ -n "$engine_pid" ] && reap "$engine_pid"
	if grep -qs " $mnt " /proc/mounts; then
		fusermount3 -uz "$mnt" || umount -l "$mnt"
	fi
	rm -rf "$T"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	[ -s "$T/engine.log" ] && sed 's/^/  engine: /' "$T/engine.log" >&2
	exit 1
}

# waits up to 10 s for a condition given as a command
wait_for() {
	local i
	for ((i = 0; i < 100; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

is_mounted() { grep -qs " $mnt fuse.bufengine " /proc/mounts; }

start_engine() {
	"$BIN" -f "$src" "$mnt" >>"$T/engine.log" 2>&1 &
	engine_pid=$!
	wait_for is_mounted || fail "bufengine did not mount"
}

size_of() { stat -c %s "$1"; }

[ -x "$BIN" ] || fail "missing $BIN (build it with: make tests/bufengine)"
mkdir -p "$src" "$mnt"
# 300 KiB: several FUSE write requests, so buffered writes get merged
$PY -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 1200)' >"$T/expect"

# ---- run 1: open-but-unflushed data dies with the engine ------------------
start_engine
$PY - "$mnt" "$T/expect" "$T/ready" <<'EOF' &
import os, sys, time
mnt, expect, ready = sys.argv[1:]
data = open(expect, "rb").read()
a = os.open(mnt + "/a", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
b = os.open(mnt + "/b", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for fd in (a, b):
    for i in range(0, len(data), 4096):   # small writes, like an app would
        assert os.write(fd, data[i:i + 4096]) == len(data[i:i + 4096])
os.fsync(b)
open(ready, "w").close()
time.sleep(120)  # holds both files open; the test kills us
EOF
writer_pid=$!
wait_for test -e "$T/ready" || fail "writer did not finish writing"

cmp -s "$T/expect" "$mnt/a" || fail "read-your-writes: mount does not show buffered data"
[ "$(size_of "$mnt/a")" = "$(size_of "$T/expect")" ] ||
	fail "stat through mount: size $(size_of "$mnt/a"), want $(size_of "$T/expect")"
# the cmp above opened and closed a reader: that must not flush the writer
[ "$(size_of "$src/a")" = 0 ] || fail "unflushed data already in source dir ($(size_of "$src/a") bytes)"
cmp -s "$T/expect" "$src/b" || fail "fsync'ed data not in source dir"

reap "$engine_pid"
engine_pid=
reap "$writer_pid" # its close now fails on the dead mount, without hanging
writer_pid=
fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" || fail "cannot detach dead mount"
is_mounted && fail "mount still present after detach"

[ -e "$src/a" ] || fail "file created through the engine is missing"
[ "$(size_of "$src/a")" = 0 ] || fail "kill -9 did not lose buffered data ($(size_of "$src/a") bytes)"
cmp -s "$T/expect" "$src/b" || fail "fsync'ed data lost by kill -9"

# ---- run 2: closed data is durable -----------------------------------------
start_engine
$PY - "$mnt/c" "$T/expect" <<'EOF' || fail "writer failed"
import sys
open(sys.argv[1], "wb").write(open(sys.argv[2], "rb").read())
EOF
cmp -s "$T/expect" "$src/c" || fail "closed file not in source dir"
printf 'tail\n' >>"$mnt/c" || fail "append through mount failed"
[ "$(tail -c 5 "$src/c")" = tail ] && [ "$(size_of "$src/c")" = $(($(size_of "$T/expect") + 5)) ] ||
	fail "append did not land at end of file"
truncate -s 1000 "$mnt/c" || fail "truncate through mount failed"
cmp -s -n 1000 "$T/expect" "$src/c" && [ "$(size_of "$src/c")" = 1000 ] ||
	fail "truncate did not reach source dir"

fusermount3 -u "$mnt" || fail "clean unmount failed"
wait "$engine_pid" || fail "bufengine exited with an error after unmount"
engine_pid=
echo "PASS: bufengine buffers writes until close/fsync and loses them on kill -9"
