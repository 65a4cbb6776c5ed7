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
done
echo "all crash scenarios passed"
