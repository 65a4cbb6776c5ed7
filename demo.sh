#!/bin/bash
# demo.sh: install what is missing, build, and show lazarusfs at work on a
# local bindfs engine: the mount starts no engine, the first access does, and
# a file kept open survives kill -9 of the engine.  Needs root.  Leaves
# nothing mounted or running; exits non-zero if any claim does not hold.
set -eu
cd "$(dirname "$0")"
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it mounts FUSE file systems)"; exit 1; }

./install-deps.sh
[ -f configure ] || ./autogen.sh >/dev/null
mkdir -p build && cd build
[ -f Makefile ] || ../configure -q
make -j"$(nproc)" >/dev/null
cd ..

D=$(mktemp -d /tmp/lazarusfs-demo.XXXXXX)
SRC=$D/data MNT=$D/runtime-mnt/juicefs/default/demo/juicefs-fuse STATE=$D/state
cleanup() {
	exec 9<&- 2>/dev/null || true
	fusermount3 -uz "$MNT" 2>/dev/null || true
	sleep 0.5
	pkill -f -- "$D/[s]tate" 2>/dev/null || true
	rm -rf "$D"
}
trap cleanup EXIT
ok() { printf '  \033[32mok\033[0m  %s\n' "$*"; }
no() { printf '  \033[31mFAILED\033[0m  %s\n' "$*"; exit 1; }
status() { build/lazarusctl --state-dir "$STATE" status "$MNT" | sed -n "s/^$1: //p"; }

mkdir -p "$SRC" "$MNT"
seq 1 2000000 > "$SRC/numbers.txt"
echo "engine source: $SRC (served by bindfs), mount point: $MNT"

t0=$(date +%s%N)
build/lazarusfs -o "engine=bindfs,state_dir=$STATE" "$SRC" "$MNT"
ok "mounted in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
stat "$MNT" >/dev/null && df -h "$MNT" >/dev/null
[ "$(status state)" = stopped ] && ok "stat and df answered, engine still stopped (lazy start)" || no "engine started early"

exec 9<"$MNT/numbers.txt"
[ "$(status state)" = running ] && ok "first open started the engine: pid $(status pid)" || no "engine did not start"
read -r first <&9
pid=$(status pid)
kill -9 "$pid"
ok "kill -9 of engine pid $pid while numbers.txt is open"
cat <&9 > "$D/rest"            # the same open file description, after the kill
count=$(( $(wc -l < "$D/rest") + 1 ))
last=$(tail -n 1 "$D/rest")
[ "$count" = 2000000 ] && [ "$first" = 1 ] && [ "$last" = 2000000 ] &&
	ok "the open fd kept reading: $count lines, no error" || no "read $count lines"
exec 9<&-
[ "$(status recoveries)" -ge 1 ] && ok "recovered: $(status last_recovery)" || no "no recovery recorded"
echo
build/lazarusctl --state-dir "$STATE" status "$MNT" | sed 's/^/    /'
fusermount3 -u "$MNT"
sleep 1
pgrep -f -- "$D/[s]tate" >/dev/null && no "processes left after unmount"
ok "unmounted; engine stopped, nothing left behind"
