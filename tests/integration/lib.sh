# lib.sh: shared helpers for lazarusfs integration tests.  Source it from bash:
#
#   . "$(dirname "$0")/lib.sh"        # sets T (temp dir), BUILD_DIR, cleanup trap
#   lz_mount SRC MNT "engine=bindfs"  # mounts with state_dir=$T/state
#   lz_status MNT state               # one field of `lazarusctl status`
#   lz_kill_engine MNT                # kill -9 the engine's process group
#   start_sshd / start_s3rver         # servers for the sshfs / s3fs engines
#
# Exit codes: 0 pass, 77 skip (no FUSE), anything else fail.  Everything a
# test mounts or starts through these helpers is undone by the EXIT trap.
set -u

SRC_DIR=${SRC_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILD_DIR=${BUILD_DIR:-$SRC_DIR}
LAZARUSFS=$BUILD_DIR/lazarusfs
LAZARUSCTL=$BUILD_DIR/lazarusctl
PY=/usr/bin/python3

[ -c /dev/fuse ] || { echo "SKIP: /dev/fuse is absent"; exit 77; }
[ -x "$LAZARUSFS" ] || { echo "FAIL: $LAZARUSFS not built"; exit 1; }

T=$(mktemp -d /tmp/lztest.XXXXXX)
LZ_MOUNTS=()
LZ_CLEANUP=()

lz_cleanup() {
	local m
	for ((i = ${#LZ_CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${LZ_CLEANUP[$i]}" >/dev/null 2>&1 || true
	done
	for m in "${LZ_MOUNTS[@]}"; do
		# thaw a stopped engine first so its unmount can finish
		pkill -CONT -f -- "$T/state" 2>/dev/null
		fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	# the proxies stop their engines on unmount; wait, then make sure
	for _ in $(seq 50); do
		pgrep -f -- "$T/" >/dev/null || break
		sleep 0.1
	done
	pkill -9 -f -- "$T/" 2>/dev/null
	grep -o " $T[^ ]*" /proc/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null
	done
	rm -rf "$T"
}
trap lz_cleanup EXIT

fail() {
	echo "FAIL: $*"
	if [ -n "${LZ_STATE:-}" ]; then
		echo "--- lazarusfs.log (tail)"
		tail -n 30 "$LZ_STATE"/*/lazarusfs.log 2>/dev/null
		echo "--- engine.log (tail)"
		tail -n 10 "$LZ_STATE"/*/engine.log 2>/dev/null
		# again, so that the last lines of the log (all tests/run shows) say it
		echo "FAIL: $*"
	fi
	exit 1
}

# lz_mount SRC MNT [OPTS]: mount a proxy (daemonized) with a private state dir
lz_mount() {
	local src=$1 mnt=$2 opts=${3:-}
	LZ_STATE=$T/state
	mkdir -p "$mnt" "$LZ_STATE"
	"$LAZARUSFS" -o "state_dir=$LZ_STATE${opts:+,$opts}" "$src" "$mnt" ||
		fail "lazarusfs did not mount $mnt"
	LZ_MOUNTS+=("$mnt")
}

lz_ctl() {
	"$LAZARUSCTL" --state-dir "$LZ_STATE" "$@"
}

# lz_status MNT FIELD: print one field of the status
lz_status() {
	lz_ctl status "$1" | sed -n "s/^$2: //p"
}

# wait_for SECONDS CMD...: poll until CMD succeeds
wait_for() {
	local t=$1
	shift
	for _ in $(seq $((t * 20))); do
		"$@" && return 0
		sleep 0.05
	done
	return 1
}

# no_procs PATTERN: true when no process matches (the [x] trick keeps
# pgrep from matching the shell that runs it)
no_procs() {
	! pgrep -f -- "$(echo "$1" | sed 's|/\([^/]\)\([^/]*\)$|/[\1]\2|')" >/dev/null
}

lz_engine_running() {
	[ "$(lz_status "$1" state)" = running ]
}

# lz_kill_engine MNT [SIGNAL]: signal the engine and all of its process
# group (sshfs and its ssh transport)
lz_kill_engine() {
	local pid
	pid=$(lz_status "$1" pid)
	[ -n "$pid" ] && [ "$pid" != 0 ] || fail "no engine pid to kill"
	kill -"${2:-9}" -- "-$pid" 2>/dev/null || kill -"${2:-9}" "$pid"
}

# start_sshd: a throwaway sshd on 127.0.0.1; sets SSHFS_O for sshfs -o
start_sshd() {
	. "$SRC_DIR/tests/integration/sshd.sh"
	sshd_start "$T/sshd" || fail "sshd did not start"
	LZ_CLEANUP+=("sshd_stop")
	SSHFS_O=$(sshfs_o_list)
}

# start_s3rver: a throwaway s3rver on 127.0.0.1 (tests/integration/s3rver.sh)
# with the bucket "lztest", and a plain s3fs mount of that bucket at
# $S3_VIEW, without lazarusfs and without any cache, through which tests
# write the engine's source files and check what reached the object store
# (an s3fs engine's "source directory" is a directory of that view, see
# engine_src_dir).  Sets S3FS_O, s3fs's words for this server.  Skips the
# test (77) when s3rver or s3fs is not installed (install-deps.sh); tests
# over several engines call maybe_s3rver instead, which sets S3FS_KIND to
# s3fs, or leaves it empty and says why their s3fs part is skipped.
s3_missing() {
	. "$SRC_DIR/tests/integration/s3rver.sh"
	if ! s3rver_available; then
		echo "s3rver 3.x is not installed (npm install -g s3rver@3; see install-deps.sh)"
	elif ! command -v s3fs >/dev/null; then
		echo "s3fs is not installed (Debian package s3fs; see install-deps.sh)"
	fi
}
maybe_s3rver() {
	local why
	why=$(s3_missing)
	S3FS_KIND=
	if [ -n "$why" ]; then
		echo "SKIP of the s3fs part: $why"
		return 0
	fi
	start_s3rver
	S3FS_KIND=s3fs
}
start_s3rver() {
	local why
	why=$(s3_missing)
	[ -z "$why" ] || { echo "SKIP: $why"; exit 77; }
	. "$SRC_DIR/tests/integration/s3rver.sh"
	s3rver_start "$T/s3rver" lztest || fail "s3rver did not start"
	LZ_CLEANUP+=("s3rver_stop")
	S3FS_O=$(s3rver_s3fs_opts)
	S3_VIEW=$T/s3view
	mkdir -p "$S3_VIEW"
	# shellcheck disable=SC2086 # S3FS_O holds words
	s3rver_env_run s3fs "$S3_BUCKET" "$S3_VIEW" $S3FS_O -o max_stat_cache_size=0 \
		-o attr_timeout=0,entry_timeout=0,negative_timeout=0 ||
		fail "s3fs did not mount the view of the bucket"
	LZ_CLEANUP+=("fusermount3 -uz $S3_VIEW")
	wait_for 10 mountpoint -q "$S3_VIEW" || fail "no s3fs view of the bucket"
}

# engine_src_dir KIND NAME: the directory that holds the engine's source for
# KIND: $T/NAME, or for s3fs the directory NAME of the bucket, seen through
# the view.  Created, empty.
engine_src_dir() {
	local d=$T/$2
	[ "$1" = s3fs ] && d=$S3_VIEW/$2
	mkdir -p "$d" && echo "$d"
}

# engine_opts KIND SRC: lazarusfs -o options for an engine over SRC
# (KIND: bindfs, sshfs, s3fs, bufengine)
engine_opts() {
	case $1 in
	bindfs) echo "engine=bindfs" ;;
	sshfs) echo "engine=sshfs,engine_opts=-o ${SSHFS_O//,/\\,}" ;;
	s3fs) echo "engine=s3fs,engine_env=$S3_ENV,engine_opts=${S3FS_O//,/\\,}" ;;
	bufengine) echo "engine_cmd=$BUILD_DIR/tests/bufengine -f {source} {mnt}" ;;
	esac
}

# engine_source KIND DIR: the SOURCE argument for that engine (for s3fs,
# DIR is a directory of $S3_VIEW and SOURCE is bucket:/path)
engine_source() {
	case $1 in
	sshfs) echo "root@127.0.0.1:$2" ;;
	s3fs) echo "$S3_BUCKET:/${2#"$S3_VIEW"/}" ;;
	*) echo "$2" ;;
	esac
}
