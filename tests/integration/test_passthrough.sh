#!/bin/bash
# FUSE passthrough of files wholly in a cache tier (fs/passthrough.c,
# cache/whole.c) over bindfs, 4 MiB blocks:
#  - ro mount: files warmed into the cache pass through when opened
#    (passthrough_opens, one plain copy each, several blocks too) and read
#    right, with read(2) and mmap; a second open shares the backing file;
#  - a file not wholly cached when opened takes the normal path;
#  - proof: with the proxy itself stopped (SIGSTOP), a passthrough file
#    opened before reads whole and right, a normally opened one does not;
#  - kill -9 of the engine (from a process that never held the file open)
#    while a passthrough file is open and half read: the rest reads right;
#  - passthrough=off: never negotiated, reads right;
#  - refused (a user namespace: CAP_SYS_ADMIN there is not the kernel's):
#    the first open falls back, passthrough stops, reads stay right;
#  - a writable mount never negotiates passthrough, and writes work.
. "$(dirname "$0")/lib.sh"

MIB=1048576
src=$T/src mnt=$T/mnt ssd=$T/ssd
mkdir -p "$src/d" "$ssd"
for i in $(seq 8); do
	head -c $((i * 37000 + 1)) /dev/urandom >"$src/d/f$i"
done
head -c $((4 * MIB)) /dev/urandom >"$src/full"        # exactly one block
head -c $((10 * MIB + 5)) /dev/urandom >"$src/big"    # three blocks
head -c $((10 * MIB)) /dev/urandom >"$src/cold"       # never warmed
: >"$src/empty"
WARM="d/f1 d/f2 d/f3 d/f4 d/f5 d/f6 d/f7 d/f8 full big"
NWARM=10

ctl_ready() { lz_ctl stats "$1" >/dev/null 2>&1; }
# mount_pt SRC MNT OPTS: lz_mount, then wait for the control socket
mount_pt() {
	lz_mount "$@"
	wait_for 10 ctl_ready "$2" || fail "no control socket for $2"
}
stat_of() { lz_ctl stats "$1" | sed -n "s/^$2: //p"; }
# the process serving requests (the holder beside it only keeps the mount)
proxy_pid() { lz_status "$mnt" proxy_pid; }
# read_all MNT FILE...: each file reads the same through the mount
read_all() {
	local m=$1 f
	shift
	for f in "$@"; do
		cmp "$src/$f" "$m/$f" || fail "$m/$f differs from the source"
	done
}
# warm MNT FILE...: read the files into the cache (returns once stored)
warm() {
	local m=$1
	shift
	lz_ctl warmup "$m" "$@" >/dev/null || fail "warmup of $*"
}
unmount_pt() {
	fusermount3 -u "$1" || fail "unmount $1"
	wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
}

# The killer: forked before any test file is open, so it holds none of
# them; it kills the engine of the mount it reads, and answers its pid.
LZ_STATE=$T/state
mkfifo "$T/kq" "$T/ka"
(
	while read -r m; do
		pid=$(lz_status "$m" pid)
		kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid"
		echo "$pid"
	done <"$T/kq" >"$T/ka"
) &
LZ_CLEANUP+=("kill $!")
exec 8>"$T/kq" 9<"$T/ka"

echo "== ro mount: cached files pass through"
mount_pt "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$ssd:1G"
[ "$(stat_of "$mnt" passthrough)" = on ] ||
	fail "passthrough not negotiated: $(stat_of "$mnt" passthrough_why)"
# shellcheck disable=SC2086
warm "$mnt" $WARM empty
opens=$(stat_of "$mnt" passthrough_opens)
# shellcheck disable=SC2086
read_all "$mnt" $WARM empty
n=$(($(stat_of "$mnt" passthrough_opens) - opens))
[ "$n" = $NWARM ] || fail "$n passthrough opens for $NWARM cached files"
[ "$(stat_of "$mnt" copies_written)" = $NWARM ] ||
	fail "copies written: $(stat_of "$mnt" copies_written)"
# shellcheck disable=SC2086
read_all "$mnt" $WARM
[ "$(stat_of "$mnt" copies_written)" = $NWARM ] || fail "copies were written again"
n=$(find "$ssd" -name '*.whole' | wc -l)
[ "$n" = $NWARM ] || fail "$n plain copies in the tier, want $NWARM"
[ "$(stat_of "$mnt" passthrough_fallbacks)" = 0 ] ||
	fail "fallbacks: $(stat_of "$mnt" passthrough_fallbacks)"
# mmap goes to the backing file too
$PY - "$mnt/big" "$src/big" <<'EOF' || fail "mmap of a passthrough file"
import mmap, sys
with open(sys.argv[1], "rb") as f, open(sys.argv[2], "rb") as g:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert m[:] == g.read(), "mmap differs"
EOF

echo "== a second open shares the backing file"
shared=$(stat_of "$mnt" passthrough_shared)
exec 3<"$mnt/d/f5"
cmp "$src/d/f5" "$mnt/d/f5" || fail "second open of d/f5 differs"
cmp "$src/d/f5" - <&3 || fail "first open of d/f5 differs"
exec 3<&-
[ "$(stat_of "$mnt" passthrough_shared)" = $((shared + 1)) ] || fail "the second open did not share"

echo "== a file not wholly cached takes the normal path"
opens=$(stat_of "$mnt" passthrough_opens)
read_all "$mnt" cold
[ "$(stat_of "$mnt" passthrough_opens)" = "$opens" ] || fail "a cold file was passed through"

echo "== with the proxy stopped, an open passthrough file reads, a normal one does not"
# Every close of a normal FUSE file sends a FLUSH, a child's too, which a
# stopped proxy never answers: while it is stopped, this shell holds only
# passthrough descriptors (FOPEN_NOFLUSH: no FLUSH), and the normal file is
# held by a reader of its own, synchronised through fifos (no children).
pid=$(proxy_pid)
[ -n "$pid" ] || fail "no proxy pid"
LZ_CLEANUP+=("kill -CONT $pid")
exec 3<"$mnt/big"
kill -STOP "$pid"
timeout --foreground 10 cmp - "$src/big" <&3 || { kill -CONT "$pid"; fail "passthrough read with the proxy stopped"; }
kill -CONT "$pid"
exec 3<&-
# the cold file (evicted: opened normally), first page read before the stop
lz_ctl evict "$mnt" cold >/dev/null || fail "evict cold"
mkfifo "$T/ready" "$T/go"
(
	exec 4<"$mnt/cold"
	head -c 4096 <&4 >/dev/null
	echo >"$T/ready"
	read -r _ <"$T/go"
	# --foreground: else timeout signals its whole process group
	timeout --foreground 2 cat <&4 >/dev/null
	echo $? >"$T/rc"
) &
reader=$!
read -r _ <"$T/ready"
kill -STOP "$pid"
echo >"$T/go"
sleep 3
kill -CONT "$pid"
wait $reader
[ "$(cat "$T/rc")" = 124 ] || fail "the cold file read with the proxy stopped: the test proves nothing"

echo "== kill -9 of the engine while a passthrough file is open and half read"
opens=$(stat_of "$mnt" passthrough_opens)
exec 3<"$mnt/big"
[ "$(stat_of "$mnt" passthrough_opens)" = $((opens + 1)) ] || fail "big not passed through"
head -c $((5 * MIB)) <&3 >"$T/head"
echo "$mnt" >&8
read -r killed <&9
[ -n "$killed" ] || fail "the killer did not answer"
# the engine is dead now; the rest of the file comes from the copy
cat <&3 >"$T/tail" || fail "read after the engine kill"
exec 3<&-
cat "$T/head" "$T/tail" | cmp - "$src/big" || fail "passthrough file across an engine kill"
wait_for 20 lz_engine_running "$mnt" || fail "engine not restarted"
[ "$(lz_status "$mnt" pid)" != "$killed" ] || fail "the engine was not killed"
# shellcheck disable=SC2086
read_all "$mnt" $WARM cold
unmount_pt "$mnt"

echo "== passthrough=off"
mount_pt "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$ssd:1G,passthrough=off"
# shellcheck disable=SC2086
read_all "$mnt" $WARM
[ "$(stat_of "$mnt" passthrough)" = off ] || fail "passthrough=off: $(stat_of "$mnt" passthrough)"
[ "$(stat_of "$mnt" passthrough_why)" = passthrough=off ] ||
	fail "passthrough=off: why: $(stat_of "$mnt" passthrough_why)"
[ "$(stat_of "$mnt" passthrough_opens)" = 0 ] || fail "passthrough=off passed through"
[ "$(find "$ssd" -name '*.whole' | wc -l)" = 0 ] || fail "plain copies survived a restart"
unmount_pt "$mnt"

echo "== refused: a user namespace has no CAP_SYS_ADMIN of the kernel's"
if unshare --user --map-root-user --mount true 2>/dev/null; then
	# the helpers, for a shell in the namespace (lib.sh's trap stays here)
	{
		declare -p T LAZARUSFS LAZARUSCTL src mnt ssd WARM
		declare -f fail lz_mount mount_pt ctl_ready lz_ctl stat_of read_all warm wait_for \
			no_procs unmount_pt
	} >"$T/ns.sh"
	# shellcheck disable=SC2016
	unshare --user --map-root-user --mount --propagation private bash -c '
		set -u
		. "$1"
		LZ_MOUNTS=()
		mount_pt "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$ssd:1G"
		# one worker: its first open of a cached file is the one refusal
		lz_ctl warmup -j 1 "$mnt" $WARM >/dev/null || fail "warmup"
		read_all "$mnt" $WARM
		[ "$(stat_of "$mnt" passthrough)" = refused ] ||
			fail "not refused: $(stat_of "$mnt" passthrough) $(stat_of "$mnt" passthrough_why)"
		[ "$(stat_of "$mnt" passthrough_opens)" = 0 ] || fail "passed through when refused"
		[ "$(stat_of "$mnt" passthrough_fallbacks)" = 1 ] ||
			fail "fallbacks: $(stat_of "$mnt" passthrough_fallbacks)"
		unmount_pt "$mnt"
	' ns "$T/ns.sh" || fail "the refused case (above)"
else
	echo "(no user namespaces here: the refused case is not run)"
fi

echo "== a writable mount never negotiates passthrough"
mount_pt "$src" "$mnt" "engine=bindfs,tier0=SSD:$ssd:1G"
[ "$(stat_of "$mnt" passthrough)" = off ] || fail "writable: $(stat_of "$mnt" passthrough)"
[ "$(stat_of "$mnt" passthrough_why)" = "the mount is writable" ] ||
	fail "writable: why: $(stat_of "$mnt" passthrough_why)"
warm "$mnt" d/f3 d/f4
read_all "$mnt" d/f3 d/f4
[ "$(stat_of "$mnt" passthrough_opens)" = 0 ] || fail "a writable mount passed through"
[ "$(find "$ssd" -name '*.whole' | wc -l)" = 0 ] || fail "a writable mount made plain copies"
exec 3<"$mnt/d/f4"
echo more >>"$mnt/d/f4" || fail "a write while a reader has the file open"
exec 3<&-
cmp "$src/d/f4" "$mnt/d/f4" || fail "d/f4 after the write"
tail -c 5 "$mnt/d/f4" | grep -q more || fail "the write is not read back"
unmount_pt "$mnt"
grep -q "passthrough off: the mount is writable" "$LZ_STATE"/*/lazarusfs.log ||
	fail "no log line says why passthrough is off"
exec 8>&- 9<&-
echo "all passthrough checks passed"
