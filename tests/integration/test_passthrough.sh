#!/bin/bash
# FUSE passthrough of files wholly in a cache tier (fs/passthrough.c,
# cache/whole.c) over bindfs, 4 MiB blocks:
#  - ro mount: files read once are cached; opened again they pass through
#    (passthrough_opens, one plain copy each) and read right;
#  - proof: with the proxy itself stopped (SIGSTOP) and the page cache
#    dropped, a passthrough file opened before reads whole and right, while
#    a file too big to pass through (two blocks) cannot be read at all;
#  - a second open of a file open for passthrough shares its backing file;
#  - kill -9 of the engine while a passthrough file is open and half read:
#    the rest reads right, nothing is reopened;
#  - passthrough=0: never negotiated, reads right;
#  - refused (a user namespace: CAP_SYS_ADMIN there is not the kernel's):
#    the first open falls back, passthrough stops, reads stay right;
#  - writable mount: a file changed behind the proxy's back is not passed
#    through and reads fresh; opening for writing (or truncating) a file
#    open for passthrough fails with ETXTBSY, and works once it is closed.
. "$(dirname "$0")/lib.sh"

MIB=1048576
src=$T/src mnt=$T/mnt ssd=$T/ssd
mkdir -p "$src/d" "$ssd"
for i in $(seq 12); do
	head -c $((i * 37000 + 1)) /dev/urandom >"$src/d/f$i"
done
head -c $((4 * MIB)) /dev/urandom >"$src/full"        # exactly one block
head -c $((6 * MIB)) /dev/urandom >"$src/big"         # two blocks: never
: >"$src/empty"
SMALL="d/f1 d/f2 d/f3 d/f4 d/f5 d/f6 d/f7 d/f8 d/f9 d/f10 d/f11 d/f12 full"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
ctl_ready() { lz_ctl stats "$1" >/dev/null 2>&1; }
# mount_pt SRC MNT OPTS: lz_mount, then wait for the control socket
mount_pt() {
	lz_mount "$@"
	wait_for 10 ctl_ready "$2" || fail "no control socket for $2"
}
stat_of() { lz_ctl stats "$1" | sed -n "s/^$2: //p"; }
proxy_pid() { pgrep -f -- "lazarusfs -o state_dir=$LZ_STATE" | head -n 1; }
# read_all MNT FILE...: each file reads the same through the mount
read_all() {
	local m=$1 f
	shift
	for f in "$@"; do
		cmp "$src/$f" "$m/$f" || fail "$m/$f differs from the source"
	done
}
# warm MNT FILE...: read the files into the cache (whole blocks, at once)
warm() {
	local m=$1
	shift
	lz_ctl warmup "$m" "$@" >/dev/null || fail "warmup of $*"
}

echo "== ro mount: cached files pass through"
mount_pt "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$ssd:1G"
# shellcheck disable=SC2086
warm "$mnt" $SMALL big empty
[ "$(stat_of "$mnt" passthrough)" = on ] || fail "passthrough not negotiated: $(stat_of "$mnt" passthrough)"
opens=$(stat_of "$mnt" passthrough_opens)
read_all "$mnt" $SMALL big empty
n=$(($(stat_of "$mnt" passthrough_opens) - opens))
[ "$n" = 13 ] || fail "$n passthrough opens for 13 cached files"
[ "$(stat_of "$mnt" copies_written)" = 13 ] || fail "copies written: $(stat_of "$mnt" copies_written)"
read_all "$mnt" $SMALL
[ "$(stat_of "$mnt" copies_written)" = 13 ] || fail "copies were written again"
n=$(find "$ssd" -name '*.whole' | wc -l)
[ "$n" = 13 ] || fail "$n plain copies in the tier, want 13"

echo "== with the proxy stopped, an open passthrough file reads, a cached one does not"
# Every close of a normal FUSE file sends a FLUSH, a child's too, which a
# stopped proxy never answers: only passthrough descriptors (FOPEN_NOFLUSH)
# are open while a child runs with the proxy stopped.
pid=$(proxy_pid)
[ -n "$pid" ] || fail "no proxy pid"
LZ_CLEANUP+=("kill -CONT $pid")
exec 3<"$mnt/d/f12"
drop_caches
kill -STOP "$pid"
timeout 10 cmp - "$src/d/f12" <&3 || { kill -CONT "$pid"; fail "passthrough read with the proxy stopped"; }
kill -CONT "$pid"
exec 3<&-
# the two-block file, opened (and its first page read) before the stop
exec 4<"$mnt/big"
head -c 4096 <&4 >/dev/null
drop_caches
kill -STOP "$pid"
(timeout 2 cat <&4 >/dev/null; echo $? >"$T/rc") &
sleep 3
kill -CONT "$pid"
wait
exec 4<&-
[ "$(cat "$T/rc")" = 124 ] || fail "the two-block file read with the proxy stopped: the test proves nothing"

echo "== a second open shares the backing file"
shared=$(stat_of "$mnt" passthrough_shared)
exec 3<"$mnt/d/f5"
cmp "$src/d/f5" "$mnt/d/f5" || fail "second open of d/f5 differs"
exec 3<&-
[ "$(stat_of "$mnt" passthrough_shared)" = $((shared + 1)) ] || fail "the second open did not share"

echo "== kill -9 of the engine while a passthrough file is open and half read"
epid=$(lz_status "$mnt" pid)        # before the descriptor is open
exec 3<"$mnt/full"
head -c $((2 * MIB)) <&3 >"$T/head"
kill -9 -- "-$epid" 2>/dev/null || kill -9 "$epid"
cat <&3 >"$T/tail"
exec 3<&-
cat "$T/head" "$T/tail" | cmp - "$src/full" || fail "passthrough file across an engine kill"
wait_for 20 lz_engine_running "$mnt" || fail "engine not restarted"
read_all "$mnt" $SMALL big
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

echo "== passthrough=0"
mount_pt "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$ssd:1G,passthrough=0"
read_all "$mnt" $SMALL
[ "$(stat_of "$mnt" passthrough)" = off ] || fail "passthrough=0: $(stat_of "$mnt" passthrough)"
[ "$(stat_of "$mnt" passthrough_opens)" = 0 ] || fail "passthrough=0 passed through"
[ "$(find "$ssd" -name '*.whole' | wc -l)" = 0 ] || fail "plain copies survived a restart"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

echo "== refused: a user namespace has no CAP_SYS_ADMIN of the kernel's"
if unshare --user --map-root-user --mount true 2>/dev/null; then
	# the helpers, for a shell in the namespace (lib.sh's trap stays here)
	{
		declare -p T LAZARUSFS LAZARUSCTL src mnt ssd SMALL
		declare -f fail lz_mount mount_pt ctl_ready lz_ctl stat_of read_all warm wait_for no_procs
	} >"$T/ns.sh"
	# shellcheck disable=SC2016
	unshare --user --map-root-user --mount --propagation private bash -c '
		set -u
		. "$1"
		LZ_MOUNTS=()
		mount_pt "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$ssd:1G"
		warm "$mnt" $SMALL
		read_all "$mnt" $SMALL
		[ "$(stat_of "$mnt" passthrough)" = refused ] || fail "not refused: $(stat_of "$mnt" passthrough)"
		[ "$(stat_of "$mnt" passthrough_opens)" = 0 ] || fail "passed through when refused"
		[ "$(stat_of "$mnt" passthrough_fallbacks)" = 1 ] ||
			fail "fallbacks: $(stat_of "$mnt" passthrough_fallbacks)"
		fusermount3 -u "$mnt" || fail "unmount"
		wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
	' ns "$T/ns.sh" || fail "the refused case (above)"
else
	echo "(no user namespaces here: the refused case is not run)"
fi

echo "== writable: changes behind our back, writers of a passthrough file"
mount_pt "$src" "$mnt" "engine=bindfs,tier0=SSD:$ssd:1G"
warm "$mnt" d/f3 d/f4
opens=$(stat_of "$mnt" passthrough_opens)
read_all "$mnt" d/f3
[ "$(stat_of "$mnt" passthrough_opens)" = $((opens + 1)) ] || fail "d/f3 not passed through"
# same size, other bytes, another mtime: the open's fstat sees it
head -c "$(stat -c %s "$src/d/f3")" /dev/urandom >"$T/new"
cp "$T/new" "$src/d/f3"
touch -d '2001-01-01' "$src/d/f3"
cmp "$src/d/f3" "$mnt/d/f3" || fail "a file changed behind our back reads stale"
[ "$(stat_of "$mnt" passthrough_opens)" = $((opens + 1)) ] || fail "a changed file was passed through"
exec 3<"$mnt/d/f4"
[ "$(stat_of "$mnt" passthrough_opens)" = $((opens + 2)) ] || fail "d/f4 not passed through"
if (echo more >>"$mnt/d/f4") 2>"$T/err"; then
	fail "a write open of a passthrough file succeeded"
fi
grep -q 'Text file busy' "$T/err" || fail "write open: $(cat "$T/err")"
truncate -s 10 "$mnt/d/f4" 2>"$T/err" && fail "a truncate of a passthrough file succeeded"
grep -q 'Text file busy' "$T/err" || fail "truncate: $(cat "$T/err")"
cmp - "$src/d/f4" <&3 || fail "the passthrough reader saw a change"
exec 3<&-
echo more >>"$mnt/d/f4" || fail "a write open once the reader closed"
cat "$mnt/d/f4" | tail -c 5 | grep -q more || fail "the write is not read back"
cmp "$src/d/f4" "$mnt/d/f4" || fail "d/f4 after the write"
[ "$(stat_of "$mnt" passthrough_conflicts)" = 2 ] || fail "conflicts: $(stat_of "$mnt" passthrough_conflicts)"
# close then write at once: the release is still in flight, the writer waits for it
for i in $(seq 10); do
	cat "$mnt/d/f4" >/dev/null
	echo "$i" >>"$mnt/d/f4" || fail "a write right after a passthrough close"
done
cmp "$src/d/f4" "$mnt/d/f4" || fail "d/f4 after the writes"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
echo "all passthrough checks passed"
