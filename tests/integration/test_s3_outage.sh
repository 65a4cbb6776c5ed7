#!/bin/bash
# An outage that is not a crash: the S3 server (s3rver) stops while a
# training-style reader (outage.py: 4 threads, shuffled epochs over 24 files
# of 128 KiB, all in the block cache, plus one fd held open throughout)
# reads through lazarusfs over s3fs.  What the application must see (README,
# "When the object store goes away"):
#   - the outage is noticed within hang_timeout: s3fs keeps retrying (the
#     profile sets retries), so it is a hung engine, killed and restarted;
#   - meanwhile and after, reads of cached files go on, the held fd too;
#   - an uncached read waits up to recovery_timeout, then fails with EIO,
#     and once recovery_timeout has passed uncached reads fail at once;
#   - when the server is back, the restarts succeed and everything
#     resumes: no remount, the same proxy, uncached files read again.
. "$(dirname "$0")/lib.sh"

O="$PY $SRC_DIR/tests/integration/outage.py"
HANG=4 REC=6
now() { date +%s.%N; }
# secs A B: B - A, in seconds with one decimal
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# le X Y: X <= Y (decimals)
le() { awk -v x="$1" -v y="$2" 'BEGIN { exit !(x <= y) }'; }
state_is() { [ "$(lz_status "$mnt" state)" = "$1" ]; }

start_s3rver
src=$(engine_src_dir s3fs data) mnt=$T/mnt
$O make "$src" 24 4 || fail "cannot write the dataset"
mkdir -p "$T/cache"
lz_mount "$(engine_source s3fs "$src")" "$mnt" \
	"$(engine_opts s3fs),hang_timeout=$HANG,recovery_timeout=$REC,start_timeout=5,tier0=SSD:$T/cache:256M"
proxy=$(pgrep -f -- "lazarusfs .*$mnt\$")
out=$(lz_ctl warmup "$mnt" cached) || fail "warmup: $out"
echo "$out"
wait_for 10 sh -c "$LAZARUSCTL --state-dir $LZ_STATE warmup $mnt cached | grep -q ': 0 B read'" ||
	fail "the cached files are not wholly in the cache after warmup"

$O read "$mnt" "$T/reads.jsonl" &
READER=$!
LZ_CLEANUP+=("touch $T/reads.jsonl.stop")
sleep 2

echo "== the server stops"
t_stop=$(now)
s3rver_stop
$O probe "$mnt" uncached/u0.bin >"$T/u0" &
U0=$!
wait_for $((HANG + 5)) state_is recovering || fail "the outage was not noticed: state $(lz_status "$mnt" state)"
t_noticed=$(now)
echo "noticed after $(secs "$t_stop" "$t_noticed") s (hang_timeout $HANG s)"
le "$(secs "$t_stop" "$t_noticed")" $((HANG + 2)) || fail "noticed only after $(secs "$t_stop" "$t_noticed") s"
wait $U0
read -r u0 u0s <"$T/u0"
echo "uncached read at the start of the outage: $u0 after $u0s s (recovery_timeout $REC s)"
[ "$u0" = EIO ] || fail "uncached read during the outage: want EIO, got $u0"
# (it starts up to a second or two into the outage)
le $((REC - 3)) "$u0s" || fail "uncached read failed after $u0s s, long before recovery_timeout"
le "$u0s" $((HANG + REC + 2)) || fail "uncached read failed only after $u0s s"
# recovery_timeout counts from when the engine stopped answering (the
# stuck call's start), not from when the hang was noticed
le "$u0s" "$REC.5" || fail "an uncached read waited $u0s s, more than recovery_timeout ($REC s)"
sleep "$(awk -v n="$(now)" -v t="$t_noticed" -v r=$REC 'BEGIN { d = t + r + 0.5 - n; print (d > 0 ? d : 0) }')"
read -r u1 u1s < <($O probe "$mnt" uncached/u1.bin)
echo "uncached read after recovery_timeout: $u1 after $u1s s"
[ "$u1" = EIO ] && le "$u1s" 1 || fail "uncached read after recovery_timeout: $u1 after $u1s s, want EIO at once"
sleep 2

echo "== the server comes back"
t_back=$(now)
s3rver_start "$T/s3rver" lztest || fail "s3rver did not start again"
wait_for 45 lz_engine_running "$mnt" || fail "no recovery after the server came back: $(lz_status "$mnt" last_error)"
t_rec=$(now)
echo "recovered $(secs "$t_back" "$t_rec") s after the server came back"
read -r u2 u2s < <($O probe "$mnt" uncached/u2.bin)
[ "$u2" = ok ] || fail "uncached read after the recovery: $u2"
sleep 2
touch "$T/reads.jsonl.stop"
wait $READER || fail "the reader failed"

$O report "$T/reads.jsonl" "$t_stop" "$t_noticed" "$t_back" "$t_rec" >"$T/report.json"
cat "$T/report.json"
r() { $PY -c 'import json, sys; r = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): r = r[k]
print(len(r) if isinstance(r, list) else r)' "$T/report.json" "$1"; }
[ "$(r before.ok)" -gt 0 ] || fail "no reads before the outage"
[ "$(r offline.ok)" -gt 0 ] || fail "no reads while the engine was offline"
[ "$(r after.ok)" -gt 0 ] || fail "no reads after the recovery"
for ph in offline back after; do
	[ "$(r $ph.errors)" = 0 ] || fail "cached reads failed ($ph): $(r $ph.errors)"
	le "$(r $ph.max_s)" 1 || fail "a cached read took $(r $ph.max_s) s ($ph)"
done
for ph in before unnoticed offline back after; do
	[ "$(r $ph.fd_errors)" = 0 ] || fail "the held fd failed ($ph)"
done
# requests that were waiting for the engine when it was found hung are
# answered from the cache too
[ "$(r before.errors)" = 0 ] && [ "$(r unnoticed.errors)" = 0 ] ||
	fail "cached reads in flight when the server stopped failed: $(r before.errors) + $(r unnoticed.errors)"

# no remount: the same proxy on the same mount, which recovered
[ "$(pgrep -f -- "lazarusfs .*$mnt\$")" = "$proxy" ] || fail "the proxy changed"
[ "$(grep -c " $mnt fuse.lazarusfs " /proc/mounts)" = 1 ] || fail "not mounted once at $mnt"
[ "$(lz_status "$mnt" recoveries)" -ge 1 ] || fail "no recovery counted"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
echo "s3 outage passed"
