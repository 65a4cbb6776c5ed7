#!/bin/bash
# The proxy's life: lazy start (seen in the process table and in lazarusctl),
# one shared start for concurrent first accesses, start failures with a
# one-line reason and a retry, idle stop, clean unmount with a dead or a hung
# engine, SIGTERM, and `mount -t fuse.lazarusfs`.  Over bindfs, sshfs and
# s3fs (against a local s3rver), where the S3 secret, which the engine gets
# from engine_env, must show nowhere: not in any argv, log or mount table.
. "$(dirname "$0")/lib.sh"

start_sshd
maybe_s3rver
for kind in bindfs sshfs $S3FS_KIND; do
	src=$(engine_src_dir $kind src-$kind) mnt=$T/mnt-$kind
	mkdir -p "$src/dir"
	for i in $(seq 8); do echo "file $i" > "$src/dir/f$i"; done

	# --- lazy start: mounting is fast and starts nothing
	t0=$(date +%s%N)
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$(engine_opts $kind)"
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	echo "$kind: mount took $ms ms"
	[ "$ms" -lt 2000 ] || fail "$kind: mount took $ms ms"
	stat "$mnt" >/dev/null || fail "$kind: stat of the mount point"
	df "$mnt" >/dev/null || fail "$kind: df of the mount point"
	ls -d "$mnt" >/dev/null || fail "$kind: ls -d of the mount point"
	[ "$(lz_status "$mnt" state)" = stopped ] || fail "$kind: engine started by stat/df/ls -d"
	no_procs "$T/state/$(basename "$(dirname "$(lz_status "$mnt" backend)")")/backend" ||
		fail "$kind: an engine process runs before first access"

	# --- concurrent first accesses share one start
	for i in $(seq 8); do cat "$mnt/dir/f$i" > "$T/out$i" & done
	wait
	for i in $(seq 8); do grep -qx "file $i" "$T/out$i" || fail "$kind: first read $i"; done
	[ "$(lz_status "$mnt" state)" = running ] || fail "$kind: not running after access"
	[ "$(lz_status "$mnt" starts)" = 1 ] || fail "$kind: $(lz_status "$mnt" starts) starts for one first access"
	pid=$(lz_status "$mnt" pid)
	[ -n "$(ps -o comm= -p "$pid")" ] || fail "$kind: engine pid $pid not in the process table"
	if [ $kind = s3fs ]; then
		# the credentials reached s3fs through its environment only
		tr '\0' '\n' </proc/"$pid"/environ | grep -qx "AWS_SECRET_ACCESS_KEY=$S3_SECRET" ||
			fail "s3fs: the engine's environment lacks the secret from engine_env"
		proxy=$(ps -o ppid= -p "$pid" | tr -d ' ')
		for f in /proc/"$pid"/cmdline /proc/"$proxy"/cmdline /proc/mounts /proc/self/mountinfo "$LZ_STATE"/*/lazarusfs.log "$LZ_STATE"/*/engine.log; do
			grep -qa -- "$S3_SECRET" "$f" && fail "s3fs: the S3 secret shows in $f"
		done
		ps -eo args >"$T/ps.txt"        # (a pipe into grep would list grep's own argv)
		grep -q -- "$S3_SECRET" "$T/ps.txt" && fail "s3fs: the S3 secret shows in ps"
		lz_ctl status "$mnt" | grep -q -- "$S3_SECRET" && fail "s3fs: the S3 secret shows in lazarusctl status"
	fi

	# --- a dead engine, then unmount: no stale mount, no orphan
	lz_kill_engine "$mnt" 9
	fusermount3 -u "$mnt" || fail "$kind: unmount with a dead engine"
	wait_for 10 no_procs "$T/state" || fail "$kind: processes left after unmount"
	grep -q " $T/state" /proc/mounts && fail "$kind: backend mount left behind"

	# --- a hung engine (SIGSTOP), then unmount
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$(engine_opts $kind)"
	cat "$mnt/dir/f1" >/dev/null
	lz_kill_engine "$mnt" STOP
	fusermount3 -u "$mnt" || fail "$kind: unmount with a hung engine"
	wait_for 20 no_procs "$T/state" || fail "$kind: processes left after unmount of a hung engine"
	grep -q " $T/state" /proc/mounts && fail "$kind: backend mount left behind (hung)"

	# --- SIGTERM to the proxy unmounts and stops the engine
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$(engine_opts $kind)"
	cat "$mnt/dir/f1" >/dev/null
	pkill -TERM -f -- "lazarusfs .*$mnt\$"
	wait_for 15 no_procs "$T/state" || fail "$kind: processes left after SIGTERM"
	grep -q " $mnt " /proc/mounts && fail "$kind: still mounted after SIGTERM"
	echo "$kind: lifecycle ok"
done

# --- s3fs with credentials the server refuses: EIO, a failed state, the
# reason in the engine's log, and still no secret anywhere
if [ -n "$S3FS_KIND" ]; then
	mnt=$T/mnt-s3bad
	printf 'AWS_ACCESS_KEY_ID=NOBODY\nAWS_SECRET_ACCESS_KEY=%s\n' "$S3_SECRET" >"$T/bad.env"
	lz_mount "$(engine_source s3fs "$S3_VIEW/src-s3fs")" "$mnt" "engine=s3fs,engine_env=$T/bad.env,engine_opts=$S3FS_O"
	ls "$mnt" 2>"$T/err" && fail "s3fs: ls worked with refused credentials"
	grep -q "Input/output error" "$T/err" || fail "s3fs, refused credentials: want EIO, got: $(cat "$T/err")"
	[ "$(lz_status "$mnt" state)" = failed ] || fail "s3fs, refused credentials: state $(lz_status "$mnt" state)"
	grep -q "invalid credentials" "$LZ_STATE"/*/engine.log || fail "s3fs, refused credentials: no reason in engine.log"
	grep -qa -- "$S3_SECRET" "$LZ_STATE"/*/*.log /proc/mounts && fail "s3fs, refused credentials: the secret leaked"
	fusermount3 -u "$mnt" || fail "s3fs, refused credentials: unmount"
fi

src=$T/src-bindfs mnt=$T/mnt-bindfs

# --- idle stop and restart
lz_mount "$src" "$mnt" "engine=bindfs,idle_timeout=1"
cat "$mnt/dir/f1" >/dev/null
wait_for 10 bash -c "[ \"\$('$LAZARUSCTL' --state-dir '$LZ_STATE' status '$mnt' | sed -n 's/^state: //p')\" = stopped ]" ||
	fail "idle engine not stopped"
no_procs "$T/state/[^ ]*/backend" || fail "idle engine process still there"
exec 7<"$mnt/dir/f2"            # an open file keeps it running
wait_for 5 lz_engine_running "$mnt" || fail "engine not restarted by access after idle stop"
sleep 2.5
lz_engine_running "$mnt" || fail "engine stopped while a file was open"
exec 7<&-
fusermount3 -u "$mnt"
wait_for 10 no_procs "$T/state" || fail "processes left (idle)"

# --- start failures: missing binary, early exit, never mounts; then retry
mnt=$T/mnt-fail
lz_mount "$src" "$mnt" "engine_cmd=/nonexistent/juicefs mount {source} {mnt}"
cat "$mnt/dir/f1" 2>"$T/err" && fail "read worked without an engine"
grep -q "Input/output error" "$T/err" || fail "want EIO, got: $(cat "$T/err")"
[ "$(lz_status "$mnt" state)" = failed ] || fail "state not failed"
lz_status "$mnt" last_error | grep -q "engine binary not found: /nonexistent/juicefs" ||
	fail "last_error: $(lz_status "$mnt" last_error)"
grep -q "engine start failed: engine binary not found" "$LZ_STATE"/*/lazarusfs.log || fail "log line"
fusermount3 -u "$mnt"

lz_mount "$src" "$mnt" "engine_cmd=sh -c 'echo bad credentials >&2; exit 3'"
ls "$mnt" 2>/dev/null && fail "ls worked with an engine that exits"
lz_status "$mnt" last_error | grep -q "exited with status 3 before mounting: bad credentials" ||
	fail "last_error: $(lz_status "$mnt" last_error)"
sleep 1.2                       # backoff after the first failure is 1 s
ls "$mnt" 2>/dev/null
[ "$(lz_status "$mnt" starts)" = 2 ] || fail "no retry after the backoff: starts $(lz_status "$mnt" starts)"
fusermount3 -u "$mnt"

lz_mount "$src" "$mnt" "engine_cmd=sleep 60,start_timeout=1"
t0=$SECONDS
ls "$mnt" 2>/dev/null && fail "ls worked with an engine that never mounts"
[ $((SECONDS - t0)) -le 5 ] || fail "start_timeout=1 took $((SECONDS - t0)) s"
lz_status "$mnt" last_error | grep -q "did not mount within 1 s" || fail "last_error: $(lz_status "$mnt" last_error)"
fusermount3 -u "$mnt"
wait_for 10 no_procs "$T/state" || fail "processes left after start failures"
pgrep -x sleep -P 1 >/dev/null && pgrep -af "sleep 60" | grep -v pgrep && fail "engine that never mounted left running"

# --- the mount.fuse3 helper, which `mount -t fuse.lazarusfs` and fstab run
# (mount(8) gives helpers a fixed PATH, so the test calls it directly with
# the build directory on PATH; fstab-only options like nofail are its job)
mnt=$T/mnt-helper
mkdir -p "$mnt"
PATH=$BUILD_DIR:$PATH /sbin/mount.fuse3 "$src" "$mnt" -t lazarusfs \
	-o "engine=bindfs,state_dir=$T/state,nofail,_netdev" || fail "mount.fuse3 -t lazarusfs"
LZ_MOUNTS+=("$mnt")
grep -q " $mnt fuse.lazarusfs " /proc/mounts || fail "not in /proc/mounts as fuse.lazarusfs"
grep -qx "file 3" "$mnt/dir/f3" || fail "read through mount.fuse3"
umount "$mnt" || fail "umount"
wait_for 10 no_procs "$T/state" || fail "processes left after umount"
echo "lifecycle tests passed"
