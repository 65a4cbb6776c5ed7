#!/bin/bash
# Takeover (issue 15): lazarusfs survives its own crash.  `kill -9` of the
# proxy (the worker that serves the FUSE connection; `proxy_pid:` in
# `lazarusctl status`) makes the holder (the process mount leaves running,
# which holds /dev/fuse and the state log) start a new worker on the same
# kernel mount: open files, directories, unlinked-open files, locks and the
# engine (adopted, not restarted) carry on, and no application call fails.
# `lazarusctl upgrade` replaces the worker the same way, at a request
# boundary.
#
# The application side is tests/integration/takeover.py, one process that
# holds every test descriptor and never forks.  This shell never opens a
# test file: it reads proxy_pid with lazarusctl and sends the kills (or
# runs the upgrades) on takeover.py's requests through two fifos.  A
# process that inherited the descriptors and closed them would make the
# kernel send FLUSH and hide what a takeover must carry (the write journal).
#
# Cases, each on a fresh mount (3 kills each unless said):
#   1 read      256 MiB read through one fd (bindfs), sha256 vs the source
#   2 write     256 MiB written through one fd over sshfs and over
#               tests/bufengine, compared on the engine's storage after close
#   3 readdir   3000 entries through one directory fd, in getdents64 pieces
#   4 unlink    an unlinked-open file read and written
#   5 lock      a POSIX lock (fcntl) held, seen by another process each time
#   6 engine    the engine keeps its pid and mount; proxy_restarts +3
#   7 meta      4 threads: create(O_EXCL)/mkdir/rename/link/symlink/unlink/
#               rmdir, 2 kills: every call succeeds, tree = local reference;
#               then 2 x 7 such calls that the engine carries out but
#               answers 1 s late (strace), in flight at 2 kills
#   8 upgrade   20 upgrades (the last with --binary) under a verifying reader
# Each case prints PASS or FAIL with the reason; the test fails if any does.
# TKO_CASES="1 7" runs only those cases, TKO_WRITE_ENGINES="bufengine" case
# 2 over only those engines.
. "$(dirname "$0")/lib.sh"

TKO=$SRC_DIR/tests/integration/takeover.py
T0=$T
TKO_LIMIT=${TKO_LIMIT:-90}      # seconds one takeover.py run may take
start_sshd

# ---- talking to the case's mount ($MNT, $LZ_STATE)

# tko_status: `lazarusctl status` of the mount; fails when it does not answer
tko_status() {
	timeout 5 "$LAZARUSCTL" --state-dir "$LZ_STATE" status "$MNT" 2>&1
}

# field STATUS KEY: one value of a status text
field() {
	sed -n "s/^$2: *//p" <<<"$1" | head -n 1
}

# oneline TEXT [CHARS]: TEXT on one line, cut at CHARS (600)
oneline() {
	tr '\n' ' ' <<<"$1" | cut -c "1-${2:-600}"
}

# alive PID: a live process, not a zombie
alive() {
	[ -n "$1" ] && [ "$1" != 0 ] && case $(ps -o stat= -p "$1" 2>/dev/null) in "" | Z*) false ;; esac
}

# waiting: ", N requests waiting": the kernel's count of the mount's
# requests not answered yet (queued, or read by the proxy and in its
# hands); nothing when fusectl is not mounted
waiting() {
	local dev n
	dev=$(awk -v m="$MNT" '$5 == m {print $3}' /proc/self/mountinfo | head -n 1)
	n=$(cat "/sys/fs/fuse/connections/${dev#*:}/waiting" 2>/dev/null) && echo ", $n requests waiting"
}

# diag: what the mount looks like when a takeover did not happen
diag() {
	local s holder
	s=$(tko_status) && echo "status: $(oneline "$s")" || echo "lazarusctl status fails: $(oneline "$s")"
	holder=$(field "$s" holder_pid)
	[ -n "$holder" ] && echo "holder $holder $(alive "$holder" && echo alive || echo DEAD)," \
		"children: $(pgrep -P "$holder" | tr '\n' ' ')"
	echo "kernel connection$(waiting)"
	echo "stat of the mount root: $(timeout 3 stat -c 'inode %i' "$MNT" 2>&1 || echo 'no answer in 3 s')"
}

# wait_new_proxy OLD: print the new proxy_pid once status shows a live one
# other than OLD (20 s at most)
wait_new_proxy() {
	local s new
	for _ in $(seq 200); do
		if s=$(tko_status); then
			new=$(field "$s" proxy_pid)
			if [ -n "$new" ] && [ "$new" != "$1" ] && alive "$new"; then
				echo "$new"
				return 0
			fi
		fi
		sleep 0.1
	done
	return 1
}

ms_since() {
	echo $((($(date +%s%N) - $1) / 1000000))
}

# ---- the requests of takeover.py (replies on fd 4; TKO_ERR set on failure)

reply_err() {
	TKO_ERR=$*
	echo "ERR $*" >&4
}

# serve_kill [SIGNAL]: signal the proxy (KILL), wait for its successor
serve_kill() {
	local sig=${1:-KILL} s old holder engine new t0 w
	s=$(tko_status) || { reply_err "status before the kill: $(oneline "$s")"; return; }
	old=$(field "$s" proxy_pid) holder=$(field "$s" holder_pid) engine=$(field "$s" pid)
	alive "$old" || { reply_err "no live proxy_pid in lazarusctl status: $(oneline "$s")"; return; }
	w=$(waiting)
	kill -"$sig" "$old" || { reply_err "kill -$sig $old failed"; return; }
	t0=$(date +%s%N)
	echo "SENT $old$w" >&4
	if ! new=$(wait_new_proxy "$old"); then
		reply_err "no new proxy within 20 s of kill -$sig of proxy $old" \
			"(old one $(alive "$old" && echo 'still alive' || echo dead)); $(oneline "$(diag)")"
		return
	fi
	s=$(tko_status)
	KILLS=$((KILLS + 1))
	[ "$(field "$s" pid)" = "$engine" ] || NOT_ADOPTED=$((NOT_ADOPTED + 1))
	echo "OK old=$old new=$new ms=$(ms_since "$t0") holder=$holder,$(field "$s" holder_pid)" \
		"engine=$engine,$(field "$s" pid) proxy_restarts=$(field "$s" proxy_restarts)" >&4
}

serve_status() {
	local s
	s=$(tko_status) || { reply_err "status: $(oneline "$s")"; return; }
	echo "OK $(sed -n 's/^\([a-z_0-9]*\): *\(.*\)$/\1=\2/p' <<<"$s" | tr ' ' _ | tr '\n' ' ')" >&4
}

serve_probe() {
	local out
	out=$("$PY" "$TKO" probe "$1" 2>&1) || { reply_err "lock probe: $(oneline "$out")"; return; }
	echo "OK $out" >&4
}

# serve_upgrade N: N upgrades in a row, the last to a copy of the binary
serve_upgrade() {
	local n=$1 k s old new out t0 pids="" times="" next=$T/lazarusfs-next bin
	cp "$LAZARUSFS" "$next" || { reply_err "cannot copy $LAZARUSFS"; return; }
	for ((k = 1; k <= n; k++)); do
		s=$(tko_status) || { reply_err "status before upgrade $k: $(oneline "$s")"; return; }
		old=$(field "$s" proxy_pid)
		alive "$old" || { reply_err "no live proxy_pid before upgrade $k: $(oneline "$s")"; return; }
		bin=()
		[ $k = "$n" ] && bin=(--binary "$next")
		t0=$(date +%s%N)
		out=$(timeout 30 "$LAZARUSCTL" --state-dir "$LZ_STATE" upgrade "$MNT" "${bin[@]}" 2>&1) ||
			{ reply_err "upgrade $k (proxy $old): lazarusctl upgrade failed: $(oneline "$out" 200)"; return; }
		new=$(wait_new_proxy "$old") ||
			{ reply_err "upgrade $k: proxy_pid still $old 20 s after '$(oneline "$out" 200)'; $(oneline "$(diag)")"; return; }
		if [ ${#bin[@]} -gt 0 ] && [ "$(readlink "/proc/$new/exe")" != "$next" ]; then
			reply_err "upgrade $k --binary $next: the new proxy $new runs $(readlink "/proc/$new/exe")"
			return
		fi
		pids=$pids${pids:+,}$old-$new times=$times${times:+,}$(ms_since "$t0")
		sleep 0.3       # the reader reads through the new proxy before the next
	done
	echo "OK pids=$pids ms=$times" >&4
}

# stop_py WHY: kill takeover.py (when alive) and fail with WHY
stop_py() {
	if alive "$py"; then
		echo "takeover.py was stuck in: $(head -n 3 /proc/"$py"/stack 2>/dev/null | tr '\n' ' ')"
		kill -9 "$py"
	fi
	wait "$py" 2>/dev/null
	exec 3>&- 4>&-
	fail "$1"
}

# tko_run SCENARIO: run takeover.py SCENARIO on $MNT and $SRC, serving its
# requests, and fail if it fails or hangs
tko_run() {
	local scen=$1 py cmd arg rc deadline
	rm -f "$T/req" "$T/rep"
	mkfifo "$T/req" "$T/rep" || fail "mkfifo"
	# read-write opens do not wait for the other end
	exec 3<>"$T/req" 4<>"$T/rep"
	mkdir -p "$T/ref"
	TKO_REQ="$T/req" TKO_REP="$T/rep" TKO_REF="$T/ref" \
		"$PY" "$TKO" "$scen" "$MNT" "$SRC" 3<&- 4<&- &
	py=$!
	TKO_ERR="" KILLS=0 NOT_ADOPTED=0
	deadline=$((SECONDS + TKO_LIMIT))
	partial=""
	while alive "$py"; do
		# a timeout can fire in the middle of a line (bash reads a fifo a
		# byte at a time): keep what it read for the next try
		if read -r -t 0.5 -u 3 line; then
			line="$partial$line" partial=""
			read -r cmd arg <<<"$line"
			case $cmd in
			kill-proxy) serve_kill "${arg:-KILL}" ;;
			status) serve_status ;;
			probe) serve_probe "$arg" ;;
			upgrade) serve_upgrade "$arg" ;;
			*) reply_err "unknown request: $cmd" ;;
			esac
		else
			partial="$partial$line"
		fi
		if [ -n "$TKO_ERR" ]; then
			# it may be stuck in I/O on the mount and never read the reply
			wait_for 5 eval '! alive $py' # (expanded by eval)
			stop_py "$scen: $TKO_ERR"
		fi
		[ $SECONDS -lt $deadline ] ||
			stop_py "$scen: no end after $TKO_LIMIT s ($KILLS takeovers done); $(oneline "$(diag)")"
	done
	wait "$py"
	rc=$?
	exec 3>&- 4>&-
	# case 6 fails on it; elsewhere engine recovery hides it: say so
	[ "$NOT_ADOPTED" = 0 ] ||
		echo "note: the engine pid changed across $NOT_ADOPTED of $KILLS proxy kills (not adopted)"
	[ $rc = 0 ] || fail "$scen: takeover.py failed as above ($KILLS takeovers done)"
}

# tko_mount KIND: a fresh lazarusfs over a fresh engine of KIND; sets SRC
# (the engine's storage) and MNT; the engine is started by a first access.
# KIND bindfs-late: bindfs whose answers to the non-idempotent calls on
# the paths of `takeover.py late-paths` (relative: bindfs works in its
# source) come 1 s late: strace delays the syscalls' return, so they are
# done on the storage and answered late
tko_mount() {
	local s opts p
	SRC=$(engine_src_dir "$1" "src-$1") MNT=$T/mnt-$1
	if [ "$1" = bindfs-late ]; then
		command -v strace >/dev/null || fail "strace is not installed (./install-deps.sh)"
		s='mkdir\,mkdirat\,rename\,renameat\,renameat2\,unlink\,unlinkat\,rmdir'
		s="$s\\,link\\,linkat\\,symlink\\,symlinkat\\,open\\,openat\\,creat"
		opts="engine_cmd=strace -f -qq -o /dev/null -e trace=$s -e inject=$s:delay_exit=1000000"
		for p in $("$PY" "$TKO" late-paths); do
			opts="$opts -P $p"
		done
		opts="$opts bindfs -f --multithreaded {source} {mnt}"
	else
		opts=$(engine_opts "$1")
	fi
	lz_mount "$(engine_source "$1" "$SRC")" "$MNT" "$opts"
	stat "$MNT/." >/dev/null || fail "$1: first access to $MNT"
	s=$(tko_status) || fail "$1: lazarusctl status: $(oneline "$s")"
	alive "$(field "$s" proxy_pid)" || fail "$1: lazarusctl status shows no live proxy_pid: $(oneline "$s")"
	alive "$(field "$s" holder_pid)" || fail "$1: lazarusctl status shows no live holder_pid: $(oneline "$s")"
	[ "$(field "$s" takeover)" = on ] || fail "$1: lazarusctl status says takeover: $(field "$s" takeover)"
}

# starts: how many proxies the holder started after the first one
starts() {
	cat "$LZ_STATE"/*/lazarusfs.log | grep -c -E 'a new proxy takes over|upgrading to'
}

# tko_umount: unmount; the holder, the proxy and the engine all go, and
# the holder starts no proxy after the unmount
tko_umount() {
	local n
	n=$(starts)
	fusermount3 -u "$MNT" || fail "unmount of $MNT"
	wait_for 10 no_procs "$LZ_STATE" ||
		fail "processes left 10 s after the unmount: $(pgrep -af -- "$LZ_STATE" | cut -c 1-200 | tr '\n' ';')"
	[ "$(starts)" = "$n" ] ||
		fail "the holder started $(($(starts) - n)) proxies after the unmount: $(grep -h -A1 'unmounting' "$LZ_STATE"/*/lazarusfs.log | tail -n 2 | cut -c 1-200 | tr '\n' ';')"
}

# ---- the cases: case_NAME, or else takeover.py NAME on a bindfs mount

on_bindfs() {
	tko_mount bindfs
	tko_run "$1"
	tko_umount
}

case_write() {
	local kind
	for kind in ${TKO_WRITE_ENGINES:-sshfs bufengine}; do
		echo "-- over $kind"
		tko_mount "$kind"
		tko_run write
		tko_umount
	done
}

case_meta() {
	on_bindfs meta
	echo "-- calls the engine carried out and answered after the proxy died"
	rm -rf "$T/ref"
	tko_mount bindfs-late
	tko_run late
	tko_umount
}

CASES=(read write readdir unlink lock engine meta upgrade)
RESULTS=()
failed=0
for n in ${TKO_CASES:-$(seq ${#CASES[@]})}; do
	name=${CASES[$((n - 1))]}
	echo "=== case $n: $name"
	start=$SECONDS
	(
		# a case of its own: its mounts, state and processes under
		# $T0/case-N, undone when it ends, pass or fail
		T=$T0/case-$n
		# shellcheck disable=SC2034 # lib.sh's, for lz_cleanup
		LZ_MOUNTS=() LZ_CLEANUP=() LZ_STATE=""
		mkdir -p "$T"
		trap lz_cleanup EXIT
		if declare -F "case_$name" >/dev/null; then
			"case_$name"
		else
			on_bindfs "$name"
		fi
	) 2>&1 | tee "$T0/case-$n.out"
	rc=${PIPESTATUS[0]}
	took=$((SECONDS - start))
	if [ "$rc" = 0 ]; then
		RESULTS+=("PASS case $n $name (${took}s)")
	else
		failed=$((failed + 1))
		RESULTS+=("FAIL case $n $name (${took}s): $(grep '^FAIL: ' "$T0/case-$n.out" | head -n 1 | cut -c 7-400)")
	fi
done
echo "=== takeover results"
printf '%s\n' "${RESULTS[@]}"
[ $failed = 0 ] || fail "$failed of ${#RESULTS[@]} takeover cases failed"
echo "all takeover cases passed"
