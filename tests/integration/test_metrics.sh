#!/bin/bash
# Operating a node: every mount's Prometheus textfile (checked with
# promtool after a crash, a recovery and a hang kill, the counters moved,
# removed at unmount), lazarusctl finding a mount without --state-dir (the
# registry) right after the mount command returned (ready means the
# control socket answers and the textfile exists), lazarusctl list and
# wait.
. "$(dirname "$0")/lib.sh"

command -v promtool >/dev/null || fail "promtool missing (Debian package prometheus; install-deps.sh installs it)"
src=$T/src mnt=$T/mnt
mkdir -p "$src" "$T/cache"
seq 100000 > "$src/f"
prom() { echo "$LZ_STATE"/lazarusfs_*.prom; }
metric() {      # metric NAME: its value for this mount
	sed -n "s|^$1{mountpoint=\"$mnt\"} ||p" $(prom)
}
ctl() { "$LAZARUSCTL" "$@"; }  # no --state-dir: the registry must find it

echo "== ready as soon as mount returns"
lz_mount "$src" "$mnt" "engine=bindfs,hang_timeout=2,tier0=SSD:$T/cache:256M"
ctl status "$mnt" >"$T/status" || fail "no answer right after mounting (without --state-dir)"
grep -q "^proxy_pid: [1-9]" "$T/status" || fail "status lacks proxy_pid: $(cat "$T/status")"
grep -q "^state_dir: $LZ_STATE\$" "$T/status" || fail "status lacks state_dir"
[ -f "$(prom)" ] || fail "no textfile right after mounting"
ctl wait "$mnt" --timeout 1 || fail "lazarusctl wait"
promtool check metrics <"$(prom)" || fail "promtool: textfile of a fresh mount"
[ "$(metric lazarusfs_up)" = 1 ] || fail "lazarusfs_up"
[ "$(metric lazarusfs_engine_up)" = 0 ] || fail "engine up before any access"

echo "== list"
ctl list | grep -q "^$mnt .* stopped .* bindfs" || fail "list: $(ctl list)"
ctl list --json | $PY -c 'import json, sys
m = [x for x in json.load(sys.stdin) if x["mountpoint"] == sys.argv[1]]
assert m and m[0]["engine"] == "bindfs", m' "$mnt" || fail "list --json"

echo "== a crash and a hang move the counters"
exec 3<"$mnt/f"                 # an open file through both
pid=$(lz_status "$mnt" pid)
lz_kill_engine "$mnt"
wait_for 10 sh -c "[ \"\$($LAZARUSCTL status $mnt | sed -n 's/^recoveries: //p')\" = 1 ]" ||
	fail "no recovery"
lz_kill_engine "$mnt" STOP
head -c 100 "$mnt/f" >/dev/null  # stuck until the watchdog kills it
wait_for 15 sh -c "[ \"\$($LAZARUSCTL status $mnt | sed -n 's/^recoveries: //p')\" = 2 ]" ||
	fail "no recovery from the hang"
exec 3<&-
# the next textfile (every 5 s)
wait_for 10 sh -c "grep -q '^lazarusfs_engine_recoveries_total{mountpoint=\"$mnt\"} 2' $(prom)" ||
	fail "textfile not refreshed: $(grep recoveries_total "$(prom)")"
promtool check metrics <"$(prom)" || fail "promtool: after a crash and a hang"
[ "$(metric lazarusfs_engine_restarts_total)" = 2 ] || fail "restarts_total $(metric lazarusfs_engine_restarts_total)"
[ "$(metric lazarusfs_engine_hang_kills_total)" = 1 ] || fail "hang_kills_total"
[ "$(metric lazarusfs_engine_recovery_duration_seconds_count)" = 2 ] || fail "histogram count"
[ "$(metric lazarusfs_engine_up)" = 1 ] || fail "engine_up after recovery"
grep -q "^lazarusfs_engine_state{mountpoint=\"$mnt\",state=\"running\"} 1" "$(prom)" || fail "state gauge"
grep -q "^lazarusfs_cache_hits_total{mountpoint=\"$mnt\"}" "$(prom)" || fail "cache families missing"
[ "$(lz_status "$mnt" pid)" != "$pid" ] || fail "the engine was not replaced"

echo "== unmount removes the textfile and the registry entry"
id=$(basename "$(dirname "$(ls "$LZ_STATE"/*/ctl.sock)")")
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
[ -e "$(prom)" ] && fail "textfile left after unmount"
reg=${LAZARUSFS_REGISTRY:-/run/lazarusfs/mounts}
[ -e "$reg/$id" ] && fail "registry entry left after unmount"
ctl wait "$mnt" --timeout 0.2 2>"$T/err" && fail "wait succeeded for a gone mount"
grep -q "not a lazarusfs mount" "$T/err" || fail "wait gives no reason: $(cat "$T/err")"
echo "metrics, registry, list and wait work"
