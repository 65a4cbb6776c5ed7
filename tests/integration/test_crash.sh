#!/bin/bash
# Crash transparency: an application's open fds keep working while the
# engine is killed with kill -9 (its whole process group, so sshfs loses its
# ssh transport too) or frozen with SIGSTOP.  Engines: bindfs, sshfs against
# a local sshd, and bufengine, which buffers acknowledged writes until flush
# as JuiceFS does, so that only the proxy's write journal can save them.
. "$(dirname "$0")/lib.sh"

start_sshd
for kind in bindfs sshfs bufengine; do
	src=$T/src-$kind mnt=$T/mnt-$kind
	mkdir -p "$src"
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$(engine_opts $kind),hang_timeout=3"
	scenarios="read write readdir unlink"
	[ $kind != bufengine ] && scenarios="$scenarios hang"
	for s in $scenarios; do
		echo "== $kind: $s"
		HANG_TIMEOUT=3 $PY "$SRC_DIR/tests/integration/crash.py" "$s" "$mnt" "$src" "$LZ_STATE" ||
			fail "$kind: scenario $s"
	done
	fusermount3 -u "$mnt" || fail "$kind: unmount"
	wait_for 10 no_procs "$T/state" || fail "$kind: processes left after unmount"
	[ $kind = bufengine ] && continue

	# The same with the block cache and its prefetcher: a reader waiting
	# for a block that the prefetcher is fetching from the frozen engine
	# is under the hang watch too, so the stall stays near hang_timeout
	# (without that it would last prefetch_timeout + 5 s grace + a demand
	# read's own hang_timeout).
	mkdir -p "$T/cache-$kind"
	lz_mount "$(engine_source $kind "$src")" "$mnt" \
		"$(engine_opts $kind),hang_timeout=3,block_size=1M,prefetch=8,prefetch_depth=4,tier0=SSD:$T/cache-$kind:1G"
	for s in read hang; do
		echo "== $kind with cache and prefetch: $s"
		HANG_TIMEOUT=3 STALL_MAX=7 $PY "$SRC_DIR/tests/integration/crash.py" "$s" "$mnt" "$src" "$LZ_STATE" ||
			fail "$kind with cache: scenario $s"
	done
	out=$(lz_ctl stats "$mnt") || fail "$kind: stats"
	echo "$out" | grep -E '^prefetch_(issued|completed|used):'
	echo "$out" | grep -q '^prefetch_used: [1-9]' || fail "$kind: the prefetcher was never used"
	fusermount3 -u "$mnt" || fail "$kind: unmount with cache"
	wait_for 10 no_procs "$T/state" || fail "$kind: processes left after unmount"
done
echo "all crash scenarios passed"
