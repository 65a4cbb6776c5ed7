#!/bin/bash
# Restart storm: the engine runs once, then every restart fails.  Requests
# fail with EIO after recovery_timeout (not before, not never), restarts
# back off (0, 1, 2, 4 s ...) instead of spinning, and unmount still works.
. "$(dirname "$0")/lib.sh"

src=$T/src mnt=$T/mnt
mkdir -p "$src"
echo data > "$src/f"
# first start: bindfs; every later start: exits at once
cat > "$T/engine.sh" <<EOS
#!/bin/sh
if [ -e "$T/started" ]; then echo "storage unreachable" >&2; exit 1; fi
touch "$T/started"
exec bindfs -f "\$1" "\$2"
EOS
chmod +x "$T/engine.sh"
lz_mount "$src" "$mnt" "engine_cmd=$T/engine.sh {source} {mnt},recovery_timeout=3"
exec 7<"$mnt/f"
lz_kill_engine "$mnt" 9
t0=$(date +%s%N)
cat "$mnt/f" >/dev/null 2>"$T/err" && fail "read worked with no engine"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q "Input/output error" "$T/err" || fail "want EIO, got: $(cat "$T/err")"
echo "request failed after $ms ms (recovery_timeout 3 s)"
[ "$ms" -ge 2800 ] && [ "$ms" -le 8000 ] || fail "EIO after $ms ms, want about 3000"
[ "$(lz_status "$mnt" state)" = recovering ] || fail "state $(lz_status "$mnt" state)"
lz_status "$mnt" last_error | grep -q "storage unreachable" || fail "last_error: $(lz_status "$mnt" last_error)"
# backoff: over the next 8 s at most a handful of attempts (0,1,2,4 s gaps)
s0=$(lz_status "$mnt" starts)
sleep 8
s1=$(lz_status "$mnt" starts)
echo "restarts in 8 s: $((s1 - s0))"
[ $((s1 - s0)) -le 4 ] || fail "$((s1 - s0)) restarts in 8 s: no backoff"
[ $((s1 - s0)) -ge 1 ] || fail "no restart attempts at all"
grep -q "retrying in 4 s" "$LZ_STATE"/*/lazarusfs.log || fail "backoff not logged"
exec 7<&-
fusermount3 -u "$mnt" || fail "unmount during a restart storm"
wait_for 15 no_procs "$T/state" || fail "processes left after unmount"
grep -q " $T/" /proc/mounts && fail "mounts left behind"
echo "restart storm passed"
