# shellcheck shell=bash
# shellcheck disable=SC2034  # PY, BENCHLIB, SSHD_LIB are used by the scripts that source this
# bench/lib/common.sh: shared shell helpers for bench/run and bench/chaos.
# Sourceable only. Every mount and process a script starts is registered
# here (bench_track_mount, bench_track_pid) so that bench_cleanup, run from
# a trap, can undo exactly those and nothing else.

BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
SRC_DIR=${SRC_DIR:-$(dirname "$BENCH_DIR")}
PY=/usr/bin/python3
BENCHLIB=$BENCH_DIR/lib/benchlib.py

BENCH_MOUNTS=()   # mountpoints we created, unmounted in reverse order
BENCH_PIDS=()     # daemons we started
BENCH_LOG=${BENCH_LOG:-/dev/null}

log() {
	local line
	line=$(printf '[%s] %s' "$(date +%T)" "$*")
	printf '%s\n' "$line" >&2
	printf '%s\n' "$line" >>"$BENCH_LOG"
}

die() {
	log "error: $*"
	exit 2
}

now_us() {
	local t=$EPOCHREALTIME
	echo "${t/./}"
}

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

# prefault MIB: touch and free MIB of memory. This project's machines are
# VMs that hand free guest memory back to their host (free page reporting),
# so the first job after a pause pays a host fault for every page it fills
# (1-3 s per GiB here), and the system that fills the most page cache (a
# proxy with a disk cache: source file plus tier files) loses the most: a
# cold 1 GiB read through lazarusfs+cache went from 225 to 928 MB/s when
# 6 GiB were touched first.
prefault() {
	[ "${1:-0}" -gt 0 ] || return 0
	/usr/bin/python3 -c 'import sys
b = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(b), 4096): b[i] = 1' "$1" 2>/dev/null
	return 0
}

# pid_alive PID: running and not a zombie
pid_alive() {
	local st _x
	[ -r "/proc/$1/stat" ] || return 1
	read -r _x _x st _x 2>/dev/null <"/proc/$1/stat" || return 1
	[ "$st" != Z ]
}

# is_mounted DIR (exact mountpoint; paths without spaces)
is_mounted() {
	local _a _b _c _d mp _rest
	while read -r _a _b _c _d mp _rest; do
		[ "$mp" = "$1" ] && return 0
	done </proc/self/mountinfo
	return 1
}

# wait_mount DIR PID TIMEOUT_S: until DIR is a mountpoint; fails early if PID
# dies. Busy-polls /proc/self/mountinfo with shell builtins only, so the
# measured time is not inflated by fork/exec.
wait_mount() {
	local dir=$1 pid=$2 deadline
	deadline=$(( $(now_us) + $3 * 1000000 ))
	while ! is_mounted "$dir"; do
		if [ -n "$pid" ] && ! pid_alive "$pid"; then
			return 1
		fi
		[ "$(now_us)" -lt "$deadline" ] || return 1
		nap
	done
	return 0
}

# nap: sleep ~0.5 ms without forking (a read timeout on a private fifo), so
# polling loops neither fork nor spin a core the measured daemon needs.
USLEEP_FD=
nap_init() {
	rm -f "$1/.napfifo"
	mkfifo "$1/.napfifo" && exec {USLEEP_FD}<>"$1/.napfifo"
	rm -f "$1/.napfifo"
}
nap() {
	if [ -n "$USLEEP_FD" ]; then
		read -r -t 0.0005 -u "$USLEEP_FD" _ || :
	fi
}

# rss_kib PID FIELD (VmRSS|VmHWM)
rss_kib() {
	local k v _u
	while read -r k v _u; do
		if [ "$k" = "$2:" ]; then
			echo "$v"
			return 0
		fi
	done <"/proc/$1/status" 2>/dev/null
	echo NA
}

# proc_ticks PID: "SELF TREE", CPU time in clock ticks (getconf CLK_TCK).
# SELF = utime+stime of PID (all its threads); TREE = SELF plus, for PID and
# every live descendant, the descendant's utime+stime and the cutime+cstime
# of children already reaped. "0 0" when PID is gone. Scans /proc (this
# kernel has no /proc/PID/task/TID/children); shell builtins only.
proc_ticks() {
	local root=$1 f s pid q self=0 tree=0
	local -a a
	local -A kids own reaped
	for f in /proc/[0-9]*/stat; do
		read -r s 2>/dev/null <"$f" || continue
		pid=${s%% *}
		# after "pid (comm) ": state ppid ... utime(11) stime cutime cstime
		read -r -a a <<<"${s##*) }"
		kids[${a[1]}]+=" $pid"
		own[$pid]=$((a[11] + a[12]))
		reaped[$pid]=$((a[13] + a[14]))
	done
	[ -n "${own[$root]:-}" ] || { echo "0 0"; return 0; }
	self=${own[$root]}
	q=$root
	while [ -n "$q" ]; do
		# shellcheck disable=SC2086  # a list of pids
		set -- $q
		pid=$1
		shift
		q="$* ${kids[$pid]:-}"
		q=${q# }
		tree=$((tree + ${own[$pid]:-0} + ${reaped[$pid]:-0}))
	done
	echo "$self $tree"
}

bench_track_mount() { BENCH_MOUNTS+=("$1"); }
bench_track_pid() { BENCH_PIDS+=("$1"); }

bench_untrack_pid() {
	local i
	for i in "${!BENCH_PIDS[@]}"; do
		[ "${BENCH_PIDS[$i]}" = "$1" ] && unset 'BENCH_PIDS[i]'
	done
}

bench_untrack_mount() {
	local i
	for i in "${!BENCH_MOUNTS[@]}"; do
		[ "${BENCH_MOUNTS[$i]}" = "$1" ] && unset 'BENCH_MOUNTS[i]'
	done
}

# stop_pid PID [WAIT_S]: wait for it to exit, then TERM, then KILL.
stop_pid() {
	local pid=$1 n=$(( ${2:-10} * 10 ))
	[ -n "$pid" ] || return 0
	while pid_alive "$pid" && [ "$n" -gt 0 ]; do
		sleep 0.1
		n=$((n - 1))
	done
	if pid_alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null
		n=30
		while pid_alive "$pid" && [ "$n" -gt 0 ]; do
			sleep 0.1
			n=$((n - 1))
		done
		pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	bench_untrack_pid "$pid"
	return 0
}

# unmount DIR [PID]: unmount a FUSE mount we made and wait for its daemon.
unmount() {
	local dir=$1 pid=${2:-} i
	for i in 1 2 3 4 5 6 7 8 9 10; do
		is_mounted "$dir" || break
		fusermount3 -u "$dir" 2>/dev/null || umount "$dir" 2>/dev/null
		is_mounted "$dir" || break
		sleep 0.3
	done
	if is_mounted "$dir"; then
		log "unmount $dir: busy, detaching lazily"
		umount -l "$dir" 2>/dev/null || fusermount3 -uz "$dir" 2>/dev/null
	fi
	bench_untrack_mount "$dir"
	[ -n "$pid" ] && stop_pid "$pid" 15
	return 0
}

# mounts_under DIR: every mountpoint below DIR, deepest first
mounts_under() {
	local _a _b _c _d mp _rest
	while read -r _a _b _c _d mp _rest; do
		case $mp in "$1"/*) echo "$mp" ;; esac
	done </proc/self/mountinfo | sort -r
}

# bench_cleanup WORKDIR: unmount and stop everything we started, then anything
# still mounted below WORKDIR (engines a crashed proxy left behind).
bench_cleanup() {
	local w=${1:-} i m
	for ((i = ${#BENCH_MOUNTS[@]} - 1; i >= 0; i--)); do
		m=${BENCH_MOUNTS[$i]:-}
		[ -n "$m" ] || continue
		fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
			fusermount3 -uz "$m" 2>/dev/null
	done
	if [ -n "$w" ] && [ -d "$w" ]; then
		for m in $(mounts_under "$w"); do
			umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
		done
	fi
	for i in "${BENCH_PIDS[@]}"; do
		pid_alive "$i" && kill -TERM "$i" 2>/dev/null
	done
	sleep 0.3
	for i in "${BENCH_PIDS[@]}"; do
		pid_alive "$i" && kill -KILL "$i" 2>/dev/null
		wait "$i" 2>/dev/null
	done
	BENCH_PIDS=()
	BENCH_MOUNTS=()
}

# find_prog NAME EXPLICIT: the first of EXPLICIT, $BUILD dirs, PATH
find_prog() {
	local name=$1 explicit=${2:-} d
	if [ -n "$explicit" ]; then
		[ -x "$explicit" ] && { echo "$explicit"; return 0; }
		return 1
	fi
	for d in /tmp/build-bench "$SRC_DIR"; do
		[ -x "$d/$name" ] && [ -f "$d/$name" ] && { echo "$d/$name"; return 0; }
	done
	command -v "$name" 2>/dev/null
}

# lazctl_status CTL STATEDIR MNT KEY: one value from `lazarusctl status`
lazctl_status() {
	"$1" --state-dir "$2" status "$3" 2>/dev/null | sed -n "s/^$4: *//p" | head -n1
}

# use the shared sshd helper once it exists, else ours (same interface)
load_sshd_lib() {
	if [ -z "${BENCH_OWN_SSHD:-}" ] && [ -f "$SRC_DIR/tests/integration/sshd.sh" ]; then
		# shellcheck source=/dev/null
		. "$SRC_DIR/tests/integration/sshd.sh"
		SSHD_LIB=$SRC_DIR/tests/integration/sshd.sh
	else
		# shellcheck source=sshd.sh
		. "$BENCH_DIR/lib/sshd.sh"
		SSHD_LIB=$BENCH_DIR/lib/sshd.sh
	fi
}

# s3_setup DIR: a throwaway s3rver (tests/integration/s3rver.sh) with the
# bucket lzbench, for the s3fs engine; sets S3FS_O (s3fs's words for it) and
# an rclone S3 remote "lzbs3:" configured through the environment only.
# s3fs gets the credentials from S3_ENV (engine_env for lazarusfs, the
# environment for s3fs alone).  AWS_CA_BUNDLE, which some machines set,
# makes rclone's S3 backend refuse a plain http endpoint: unset for rclone.
s3_setup() {
	command -v s3fs >/dev/null || die "missing program: s3fs (install-deps.sh)"
	# shellcheck source=/dev/null
	. "$SRC_DIR/tests/integration/s3rver.sh"
	s3rver_available || die "s3rver 3.x is not installed (install-deps.sh)"
	s3rver_start "$1" lzbench || die "s3rver did not start"
	S3FS_O=$(s3rver_s3fs_opts)
	# shellcheck source=/dev/null
	. "$S3_ENV"
	export RCLONE_CONFIG_LZBS3_TYPE=s3 RCLONE_CONFIG_LZBS3_PROVIDER=Other \
		RCLONE_CONFIG_LZBS3_ENDPOINT=$S3RVER_URL RCLONE_CONFIG_LZBS3_REGION=us-east-1 \
		RCLONE_CONFIG_LZBS3_FORCE_PATH_STYLE=true \
		RCLONE_CONFIG_LZBS3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
		RCLONE_CONFIG_LZBS3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
	unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
}

# s3fs_alone: the s3fs command line lazarusfs's s3fs profile runs (fs/profile.c)
s3fs_alone() { # BUCKET MNT
	echo "s3fs $1 $2 -f -o allow_other,retries=1000000,logfile=/dev/stderr,nomixupload $S3FS_O"
}

s3_rclone() { env -u AWS_CA_BUNDLE rclone --config /dev/null "$@"; }
