#!/bin/bash
# The tiered block cache in the proxy, over bindfs, sshfs and s3fs (against
# a local s3rver; its files are written and changed through a plain s3fs
# mount of the bucket), with a small
# MEM tier and an SSD tier (both directories in $T), 1 MiB blocks:
#  - warmup fills the cache, a second warmup reads nothing (resumable);
#  - with the engine frozen (SIGSTOP) and then killed (kill -9), open files
#    are read completely from the cache, fast, with the page cache dropped;
#  - a corrupted block file on the SSD tier is caught by its checksum, the
#    data comes from the engine, the checksum_failures counter goes up;
#  - writes, truncates and renames through the mount are read back right;
#  - a file changed behind the proxy's back is read anew after reopen;
#  - a restarted proxy finds its cache warm (hits, no misses);
#  - with the engine down for good (bindfs: its source is gone), files
#    wholly in the cache still open and read, uncached ones fail;
#  - a 16 MiB tmpfs tier fills and evicts without errors while 64 MiB of
#    files are read;
#  - evict drops blocks, the Prometheus textfile is written.
. "$(dirname "$0")/lib.sh"

CHECK="$PY $SRC_DIR/tests/integration/cache_check.py"
MIB=1048576

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# cstat MNT KEY: one field of `lazarusctl stats --json`
cstat() { BUILD_DIR=$BUILD_DIR $CHECK stat "$1" "$LZ_STATE" "$2"; }

ctl_ready() { lz_ctl stats "$1" >/dev/null 2>&1; }

# settle MNT: wait until the cache's mover stops moving blocks
settle() {
	local a b
	a=$(lz_ctl stats "$1" | grep -E 'blocks|demotions|promotions|used_bytes')
	for _ in $(seq 50); do
		sleep 0.2
		b=$(lz_ctl stats "$1" | grep -E 'blocks|demotions|promotions|used_bytes')
		[ "$a" = "$b" ] && return 0
		a=$b
	done
	fail "cache did not settle"
}

# same_tree SRC MNT FILE...: every file reads the same through the mount
same_tree() {
	local src=$1 mnt=$2 f
	shift 2
	for f in "$@"; do
		cmp "$src/$f" "$mnt/$f" || fail "$mnt/$f differs from the source"
	done
}

FILES="a.bin b.bin d/c.bin d/e.bin"

start_sshd
maybe_s3rver
for kind in bindfs sshfs $S3FS_KIND; do
	src=$(engine_src_dir $kind src-$kind) mnt=$T/mnt-$kind mem=$T/mem-$kind ssd=$T/ssd-$kind
	mkdir -p "$src/d" "$mem" "$ssd"
	head -c $((3 * MIB + 17)) /dev/urandom >"$src/a.bin"
	head -c $((5 * MIB)) /dev/urandom >"$src/b.bin"
	head -c $((2 * MIB + 4095)) /dev/urandom >"$src/d/c.bin"
	head -c $((6 * MIB)) /dev/urandom >"$src/d/e.bin"
	eo=$(engine_opts $kind)
	# sshfs caches attributes for 20 s and would hide a change behind our
	# back (with or without our cache): off
	[ $kind = sshfs ] && eo="$eo\\,cache=no"
	# s3fs's stat cache (15 min) would too
	[ $kind = s3fs ] && eo="$eo -o max_stat_cache_size=0"
	opts="$eo,hang_timeout=10,block_size=1M,tier0=MEM:$mem:6M,tier1=SSD:$ssd:64M"

	echo "== $kind: bad tier directory fails the mount"
	mkdir -p "$T/mnt-bad"
	if "$LAZARUSFS" -o "state_dir=$T/state,$eo,tier0=SSD:$T/nonexistent:64M" \
		"$(engine_source $kind "$src")" "$T/mnt-bad" 2>"$T/bad.err"; then
		LZ_MOUNTS+=("$T/mnt-bad")
		fail "mounted with a missing tier directory"
	fi
	grep -q "nonexistent" "$T/bad.err" || fail "no clear error: $(cat "$T/bad.err")"
	grep -q " $T/mnt-bad " /proc/mounts && fail "something is mounted at $T/mnt-bad"

	echo "== $kind: warmup"
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$opts"
	wait_for 10 ctl_ready "$mnt" || fail "no control socket"
	out=$(lz_ctl warmup "$mnt" .) || fail "warmup failed: $out"
	echo "$out"
	echo "$out" | grep -q "^warmup: 4 files" || fail "warmup did not find the 4 files"
	out=$(lz_ctl warmup "$mnt" a.bin "$mnt/d") || fail "second warmup failed: $out"
	echo "$out"
	echo "$out" | grep -q ": 0 B read" || fail "second warmup read blocks again"
	# 16 MiB + 4112 bytes in 18 blocks, all read from the engine (by the
	# readers or by the prefetcher), and hardly any twice
	eb=$(cstat "$mnt" engine.bytes)
	[ "$eb" -ge $((16 * MIB + 4096)) ] && [ "$eb" -lt $((18 * MIB)) ] ||
		fail "warmup read $eb bytes from the engine"
	[ "$(cstat "$mnt" tier0.blocks)" -gt 0 ] || fail "no block cached"
	settle "$mnt"
	[ "$(cstat "$mnt" tier1.blocks)" -gt 0 ] || fail "nothing was demoted to the SSD tier"
	[ "$(cstat "$mnt" tier0.used_bytes)" -le $((6 * MIB)) ] || fail "MEM tier over quota"

	echo "== $kind: reads with a stopped, then killed engine"
	BUILD_DIR=$BUILD_DIR $CHECK frozen "$mnt" "$src" "$LZ_STATE" 5 $FILES ||
		fail "$kind: cached reads with a stopped/killed engine"

	echo "== $kind: corrupted block on the SSD tier"
	settle "$mnt"
	before=$(cstat "$mnt" tier1.checksum_failures)
	$CHECK corrupt "$ssd" || fail "could not corrupt a block"
	drop_caches
	same_tree "$src" "$mnt" $FILES
	after=$(cstat "$mnt" tier1.checksum_failures)
	[ "$after" -gt "$before" ] || fail "checksum failure not counted ($before -> $after)"
	lz_ctl stats "$mnt" | grep -q "^checksum_failures: [1-9]" ||
		fail "lazarusctl stats does not show the checksum failure"

	echo "== $kind: writes, truncate and rename through the mount"
	printf 'HELLO, CACHE' | dd of="$mnt/b.bin" bs=1 seek=$((MIB - 5)) conv=notrunc status=none
	drop_caches
	cmp "$src/b.bin" "$mnt/b.bin" || fail "a write is not read back"
	printf 'HELLO, CACHE' | cmp -n 12 -i 0:$((MIB - 5)) - "$mnt/b.bin" || fail "write lost"
	truncate -s $((3 * MIB / 2)) "$mnt/b.bin"
	drop_caches
	cmp "$src/b.bin" "$mnt/b.bin" || fail "a truncate is not read back"
	[ "$(wc -c <"$mnt/b.bin")" -eq $((3 * MIB / 2)) ] || fail "truncated size wrong"
	mv "$mnt/d/c.bin" "$mnt/d/c2.bin"
	head -c $((2 * MIB + 4095)) /dev/urandom >"$mnt/d/c.bin"
	drop_caches
	same_tree "$src" "$mnt" d/c.bin d/c2.bin

	echo "== $kind: file changed behind the proxy's back"
	cat "$mnt/a.bin" >/dev/null
	inv=$(cstat "$mnt" invalidations)
	head -c $((4 * MIB + 99)) /dev/urandom >"$src/a.bin"
	sleep 1.2       # entry and attribute timeouts of the kernel
	cmp "$src/a.bin" "$mnt/a.bin" || fail "changed file: old data read"
	[ "$(cstat "$mnt" invalidations)" -gt "$inv" ] || fail "no invalidation counted"

	echo "== $kind: evict"
	lz_ctl warmup "$mnt" . >/dev/null || fail "warmup before evict"
	out=$(lz_ctl evict "$mnt" d) || fail "evict failed"
	echo "$out"
	echo "$out" | grep -q "^evicted [1-9][0-9]* blocks" || fail "evict dropped nothing"
	out=$(lz_ctl warmup "$mnt" d) || fail "warmup after evict"
	echo "$out" | grep -q ": 0 B read" && fail "evicted blocks still cached"
	ls "$LZ_STATE"/lazarusfs_*.prom >/dev/null 2>&1 || fail "no prometheus textfile"
	grep -q "^lazarusfs_cache_hits_total{mountpoint=\"$mnt\"} [0-9]" "$LZ_STATE"/lazarusfs_*.prom ||
		fail "prometheus textfile lacks hits_total: $(head -5 "$LZ_STATE"/lazarusfs_*.prom)"

	echo "== $kind: proxy restart keeps the cache warm"
	lz_ctl warmup "$mnt" . >/dev/null || fail "warmup before restart"
	settle "$mnt"
	fusermount3 -u "$mnt" || fail "unmount"
	wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
	ls "$LZ_STATE"/lazarusfs_*.prom >/dev/null 2>&1 && fail "textfile left after unmount"
	lz_mount "$(engine_source $kind "$src")" "$mnt" "$opts"
	wait_for 10 ctl_ready "$mnt" || fail "no control socket after remount"
	same_tree "$src" "$mnt" a.bin b.bin d/c.bin d/c2.bin d/e.bin
	hits=$(cstat "$mnt" hits) misses=$(cstat "$mnt" misses)
	echo "after restart: hits $hits, misses $misses"
	[ "$hits" -gt 0 ] && [ "$misses" -eq 0 ] || fail "cache cold after restart"
	fusermount3 -u "$mnt" || fail "unmount"
	wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

	if [ $kind = bindfs ]; then
		# the source directory disappears, so every restart of bindfs
		# fails: the engine stays offline, backing off
		echo "== $kind: engine offline for good: cached files still open and read"
		lz_mount "$(engine_source $kind "$src")" "$mnt" "$opts,recovery_timeout=3"
		wait_for 10 ctl_ready "$mnt" || fail "no control socket"
		lz_ctl warmup "$mnt" a.bin d >/dev/null || fail "warmup before the outage"
		lz_ctl evict "$mnt" b.bin >/dev/null || fail "evict b.bin"
		stat "$mnt/b.bin" >/dev/null || fail "stat b.bin"
		mv "$src" "$src.away"
		lz_kill_engine "$mnt"
		wait_for 5 sh -c "[ \"\$($LAZARUSCTL --state-dir $LZ_STATE status $mnt | sed -n 's/^state: //p')\" = recovering ]" ||
			fail "engine not offline: $(lz_status "$mnt" state)"
		sleep 1.2       # the kernel's entry and attribute caches expire
		t0=$(date +%s%N)
		same_tree "$src.away" "$mnt" a.bin d/c.bin d/c2.bin d/e.bin
		ms=$((($(date +%s%N) - t0) / 1000000))
		echo "cached files opened and read with the engine offline in $ms ms"
		# warmup listed d: its listing is the last seen
		[ "$(ls "$mnt/d" | tr '\n' ' ')" = "$(ls "$src.away/d" | tr '\n' ' ')" ] ||
			fail "listing with the engine offline: $(ls "$mnt/d" 2>&1)"
		[ $ms -lt 2500 ] || fail "cached reads waited for the engine ($ms ms)"
		[ "$(lz_status "$mnt" state)" = recovering ] || fail "the engine came back too early"
		if out=$(cat "$mnt/b.bin" 2>&1 >/dev/null); then
			fail "an uncached file was read with the engine offline"
		fi
		echo "uncached file: $out"
		mv "$src.away" "$src"
		wait_for 40 lz_engine_running "$mnt" || fail "engine not back"
		same_tree "$src" "$mnt" a.bin b.bin d/e.bin
		fusermount3 -u "$mnt" || fail "unmount"
		wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
	fi

	echo "== $kind: 16 MiB tmpfs tier, 64 MiB of files"
	tiny=$T/tiny-$kind mnt2=$T/mnt2-$kind
	mkdir -p "$tiny" "$src/big"
	mount -t tmpfs -o size=16m tmpfs "$tiny" || fail "tmpfs mount"
	LZ_CLEANUP+=("umount -l $tiny")
	for i in 1 2 3 4 5 6 7 8; do
		head -c $((8 * MIB)) /dev/urandom >"$src/big/f$i"
	done
	lz_mount "$(engine_source $kind "$src")" "$mnt2" "$eo,tier0=MEM:$tiny:16M"
	wait_for 10 ctl_ready "$mnt2" || fail "no control socket"
	same_tree "$src" "$mnt2" big/f1 big/f2 big/f3 big/f4 big/f5 big/f6 big/f7 big/f8
	settle "$mnt2"
	used=$(cstat "$mnt2" tier0.used_bytes)
	echo "tiny tier: used $used, evictions $(cstat "$mnt2" tier0.evictions)," \
		"write errors $(cstat "$mnt2" tier0.write_errors)"
	[ "$used" -gt 0 ] && [ "$used" -le $((16 * MIB)) ] || fail "tiny tier used $used"
	[ "$(cstat "$mnt2" tier0.evictions)" -gt 0 ] || fail "tiny tier never evicted"
	[ "$(cstat "$mnt2" tier0.write_errors)" -eq 0 ] || fail "tiny tier had write errors"
	[ "$(cstat "$mnt2" tier0.io_errors)" -eq 0 ] || fail "tiny tier had read errors"
	fusermount3 -u "$mnt2" || fail "unmount"
	wait_for 10 no_procs "$T/state" || fail "processes left after unmount"
	umount "$tiny" || fail "tmpfs unmount"
done
echo "all cache scenarios passed"
