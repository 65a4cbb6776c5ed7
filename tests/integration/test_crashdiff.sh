#!/bin/bash
# Crash-differential test of the per-file journal (issue 12): crashdiff.py
# runs fixed cases, then a seeded random mix of writes, truncates (by
# descriptor and by path), fallocate, copy_file_range, fsyncs, reopens and
# renames through several descriptors of a few files, against a local model
# directory, killing the engine (kill -9 of its process group) at random
# points from a process that holds none of the files, and compares every
# file with the model after each recovery and on the engine's storage at
# the end.  Engines:
#
#   bufengine       loses every write not yet flushed when killed (as
#                   JuiceFS does): only the journal can save them
#   sshfs           against a local sshd; its writes are asynchronous
#   mergerfs        as an engine_cmd; it supports fallocate, as JuiceFS does
#   bindfs-journal  bindfs with journal=on, so that the journal and its
#                   replay run over bindfs too
#   bindfs          the default profile (journal off): bindfs itself keeps
#                   every acknowledged write
#   bufengine-slow-rename
#                   bufengine under strace, which delays the return of each
#                   of its renames by 1 s (done on the storage, answered
#                   late), for the fixed cases of a rename in flight at the
#                   kill only
#
# Each journaled engine's lazarusfs.log must show at least one "replayed N
# journaled changes"; bindfs with the journal off must show none.
#
# CD_SEED=N reproduces a run (the seed is printed; CD_SEED=random picks a
# new one), CD_OPS and CD_KILLS set the size of the random part,
# CD_ENGINES="sshfs mergerfs" runs only some engines, and CD_ARGS passes
# crashdiff.py options (--verbose, --skip KINDS) to narrow a failure down.
. "$(dirname "$0")/lib.sh"

CD=$SRC_DIR/tests/integration/crashdiff.py
SEED=${CD_SEED:-20261}
[ "$SEED" = random ] && SEED=$((RANDOM * 32768 + RANDOM))
OPS=${CD_OPS:-3000}
KILLS=${CD_KILLS:-40}
ENGINES=${CD_ENGINES:-bufengine sshfs mergerfs bindfs-journal bindfs bufengine-slow-rename}
echo "crashdiff seed $SEED, $OPS operations and $KILLS kills per engine (reproduce with CD_SEED=$SEED)"

case " $ENGINES " in *" sshfs "*) start_sshd ;; esac
case " $ENGINES " in *" mergerfs "*)
	command -v mergerfs >/dev/null || fail "mergerfs is not installed (./install-deps.sh)" ;;
esac
case " $ENGINES " in *" bufengine-slow-rename "*)
	command -v strace >/dev/null || fail "strace is not installed (./install-deps.sh)" ;;
esac

# run NAME: mount lazarusfs over engine NAME, run crashdiff.py, check the log
run() {
	local name=$1 kind=$1 journaled=1 args="" opts src ref mnt log replays t0=$SECONDS
	case $name in
	bufengine | sshfs) opts=$(engine_opts "$name") ;;
	mergerfs) opts="engine_cmd=mergerfs -f -o cache.files=partial {source} {mnt}" ;;
	bindfs-journal) kind=bindfs opts="engine=bindfs,journal=on" ;;
	bindfs) opts="engine=bindfs" journaled=0 ;;
	bufengine-slow-rename)
		# strace delays the return of every rename the engine makes by
		# 1 s: done on the storage, answered late (LeakSanitizer cannot
		# work under ptrace)
		opts="engine_cmd=strace -f -qq -o /dev/null -E ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
		opts="$opts -e trace=rename\\,renameat\\,renameat2"
		opts="$opts -e inject=rename\\,renameat\\,renameat2:delay_exit=1000000"
		opts="$opts $BUILD_DIR/tests/bufengine -f {source} {mnt}"
		args="--slow-rename 1" ;;
	*) fail "unknown engine $name" ;;
	esac
	src=$T/src-$name ref=$T/ref-$name mnt=$T/mnt-$name
	mkdir -p "$src" "$ref"
	lz_mount "$(engine_source "$kind" "$src")" "$mnt" "$opts"
	log=$(dirname "$(lz_status "$mnt" engine_log)")/lazarusfs.log
	echo "== $name"
	# shellcheck disable=SC2086 # CD_ARGS are words
	if ! $PY "$CD" --mnt "$mnt" --src "$src" --ref "$ref" --state "$LZ_STATE" \
		--engine "$name" --seed "$SEED" --ops "$OPS" --kills "$KILLS" $args ${CD_ARGS:-}; then
		echo "--- $name: lazarusfs.log (tail)"
		tail -n 15 "$log"
		FAILED+=("$name")
	else
		replays=$(grep -c 'replayed [0-9]* journaled changes' "$log")
		echo "$name: $replays replays in lazarusfs.log, $((SECONDS - t0)) s"
		if [ $journaled = 1 ] && [ "$replays" = 0 ]; then
			echo "FAIL: $name: no journaled change was ever replayed"
			FAILED+=("$name")
		elif [ $journaled = 0 ] && [ "$replays" != 0 ]; then
			echo "FAIL: $name: the journal is off, yet $replays replays"
			FAILED+=("$name")
		fi
	fi
	fusermount3 -u "$mnt" || fail "$name: unmount"
	wait_for 10 no_procs "$mnt" || fail "$name: processes left after unmount"
}

FAILED=()
start=$SECONDS
for name in $ENGINES; do
	run "$name"
done
echo "took $((SECONDS - start)) s"
if [ ${#FAILED[@]} != 0 ]; then
	echo "FAIL: differences in: ${FAILED[*]} (seed $SEED)"
	exit 1
fi
echo "no differences (seed $SEED)"
