#!/bin/bash
# Crash transparency: an application's open fds keep working while the
# engine is killed with kill -9 (its whole process group, so sshfs loses its
# ssh transport too) or frozen with SIGSTOP.  Engines: bindfs, sshfs against
# a local sshd, s3fs against a local s3rver (which also buffers written files
# until flush, in a local temporary file, and uploads them on close), and
# bufengine, which buffers acknowledged writes until flush as JuiceFS does,
# so that only the proxy's write journal can save them.  Over s3fs the files
# are smaller (32 MiB, 300 entries: s3rver takes about 60 ms per create),
# and the written file is checked byte for byte in s3rver's own storage.
. "$(dirname "$0")/lib.sh"

start_sshd
maybe_s3rver
for kind in bindfs sshfs $S3FS_KIND bufengine; do
	src=$(engine_src_dir $kind src-$kind) mnt=$T/mnt-$kind
	sizes=
	[ $kind = s3fs ] && sizes="CRASH_MIB=32 CRASH_FILES=300"
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$(engine_opts $kind),hang_timeout=3"
	scenarios="read write readdir unlink"
	[ $kind != bufengine ] && scenarios="$scenarios hang"
	for s in $scenarios; do
		echo "== $kind: $s"
		replays=$(cat "$LZ_STATE"/*/lazarusfs.log | grep -c "replayed .* journaled changes")
		env $sizes HANG_TIMEOUT=3 $PY "$SRC_DIR/tests/integration/crash.py" "$s" "$mnt" "$src" "$LZ_STATE" ||
			fail "$kind: scenario $s"
		# the kills came from a process without the file open, so the
		# journal still held writes, and they were replayed (bindfs
		# journals nothing: it loses nothing it acknowledged)
		if [ $s = write ] && [ $kind != bindfs ]; then
			now=$(cat "$LZ_STATE"/*/lazarusfs.log | grep -c "replayed .* journaled changes")
			[ "$now" -gt "$replays" ] || fail "$kind: no journaled writes were replayed"
			echo "$kind: $((now - replays)) replays of journaled writes"
		fi
		if [ $kind = s3fs ] && [ $s = write ]; then
			# crash.py read it back through the plain s3fs view; these
			# are the bytes s3rver stored
			cmp "$src/written.bin" "$(s3rver_object "${src#"$S3_VIEW"/}/written.bin")" ||
				fail "s3fs: written.bin in s3rver's storage differs"
		fi
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
		env $sizes HANG_TIMEOUT=3 STALL_MAX=7 $PY "$SRC_DIR/tests/integration/crash.py" "$s" "$mnt" "$src" "$LZ_STATE" ||
			fail "$kind with cache: scenario $s"
	done
	out=$(lz_ctl stats "$mnt") || fail "$kind: stats"
	echo "$out" | grep -E '^prefetch_(issued|completed|used):'
	echo "$out" | grep -q '^prefetch_used: [1-9]' || fail "$kind: the prefetcher was never used"
	fusermount3 -u "$mnt" || fail "$kind: unmount with cache"
	wait_for 10 no_procs "$T/state" || fail "$kind: processes left after unmount"
done
echo "all crash scenarios passed"
