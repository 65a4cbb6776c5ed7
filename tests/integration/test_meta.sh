#!/bin/bash
# The metadata cache (fs/meta.c) over bindfs:
#  - a ro mount (an immutable dataset) answers a second walk of the tree
#    from the cache: the counters move, the engine is not asked again;
#  - a new proxy on the same mount point answers the walk, stats, listings
#    and reads of cached files without starting the engine at all (the
#    saved metadata cache and the block cache), and a proxy over another
#    source does not inherit the metadata;
#  - a writable mount with meta_ttl=2: changes through lazarusfs show at
#    once, a change made behind its back shows once the ttl (and the
#    kernel's attr_timeout) passed;
#  - the exerciser's random operations on a mount with immutable=1 (every
#    change through lazarusfs, so the cache must follow each) match a
#    local directory.
. "$(dirname "$0")/lib.sh"

src=$T/src mnt=$T/mnt cache=$T/cache
mkdir -p "$src" "$cache"
for d in $(seq 5); do
	mkdir -p "$src/d$d"
	for f in $(seq 20); do
		head -c $((f * 100)) /dev/urandom > "$src/d$d/f$f"
	done
done
expect_sizes=$(cd "$src" && find . -type f -printf '%p %s\n' | sort)

walk() {        # the paths and sizes under a mount, sorted
	(cd "$1" && find . -type f -printf '%p %s\n' | sort)
}
stat_of() {
	lz_ctl stats "$1" | sed -n "s/^$2: //p"
}

echo "== ro mount: the second walk comes from the metadata cache"
lz_mount "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$cache:1G"
[ "$(walk "$mnt")" = "$expect_sizes" ] || fail "first walk differs"
cat "$mnt"/d*/f* > "$T/all1"
misses=$(stat_of "$mnt" meta_misses)
hits=$(stat_of "$mnt" meta_hits)
[ "$(walk "$mnt")" = "$expect_sizes" ] || fail "second walk differs"
# the kernel has most of it cached (entry_timeout 7200 on ro); drop its
# caches so that the walk reaches the proxy again
sync; echo 2 > /proc/sys/vm/drop_caches
[ "$(walk "$mnt")" = "$expect_sizes" ] || fail "third walk differs"
[ "$(stat_of "$mnt" meta_misses)" = "$misses" ] || fail "the walk asked the engine again ($(stat_of "$mnt" meta_misses) misses, $misses before)"
[ "$(stat_of "$mnt" meta_hits)" -gt "$hits" ] || fail "no metadata cache hits"
echo "metadata cache: $(stat_of "$mnt" meta_entries) entries, $(stat_of "$mnt" meta_hits) hits"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

echo "== a new proxy answers from what the last one knew, the engine never starts"
lz_mount "$src" "$mnt" "engine=bindfs,ro,tier0=SSD:$cache:1G"
[ "$(walk "$mnt")" = "$expect_sizes" ] || fail "walk after a remount differs"
[ "$(stat -c %s "$mnt/d3/f7")" = 700 ] || fail "stat after a remount"
ls "$mnt/d2" | sort > "$T/ls"
(cd "$src/d2" && ls | sort) | cmp -s - "$T/ls" || fail "listing after a remount"
cat "$mnt"/d*/f* > "$T/all2"
cmp -s "$T/all1" "$T/all2" || fail "reads after a remount differ"
[ "$(lz_status "$mnt" state)" = stopped ] ||
	fail "the engine was started: $(lz_status "$mnt" state), starts $(lz_status "$mnt" starts)"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

echo "== another source on the same mount point inherits nothing"
mkdir -p "$T/src2/d1"
echo other > "$T/src2/d1/only"
lz_mount "$T/src2" "$mnt" "engine=bindfs,ro"
[ "$(walk "$mnt")" = "./d1/only 6" ] || fail "stale metadata of another source: $(walk "$mnt")"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

echo "== writable, meta_ttl=2: our changes at once, others' after the ttl"
lz_mount "$src" "$mnt" "engine=bindfs,meta_ttl=2"
stat "$mnt/d1/f1" >/dev/null
printf 'abc' >> "$mnt/d1/f1"
[ "$(stat -c %s "$mnt/d1/f1")" = 103 ] || fail "a write through lazarusfs not seen: $(stat -c %s "$mnt/d1/f1")"
touch "$mnt/d1/new"
[ -e "$mnt/d1/new" ] || fail "a create through lazarusfs not seen"
rm "$mnt/d1/new"
[ -e "$mnt/d1/new" ] && fail "an unlink through lazarusfs not seen"
stat "$mnt/d1/f2" >/dev/null
printf 'behind' >> "$src/d1/f2"
sleep 3.5       # meta_ttl 2 + attr_timeout 1
[ "$(stat -c %s "$mnt/d1/f2")" = 206 ] || fail "a change behind our back still hidden after the ttl"
fusermount3 -u "$mnt" || fail "unmount"
wait_for 10 no_procs "$T/state" || fail "processes left after unmount"

echo "== exerciser with immutable=1 (every change goes through lazarusfs)"
chmod 0755 "$T"
mkdir -m 0777 "$T/esrc" "$T/eref" "$T/emnt"
lz_mount "$T/esrc" "$T/emnt" "engine=bindfs,immutable=1,engine_opts=-o attr_timeout=0\\,entry_timeout=0"
$PY "$SRC_DIR/tests/integration/exerciser.py" --src "$T/esrc" --state-dir "$LZ_STATE" \
	--uid 1000 --gid 1000 --no-noreplace --no-exchange --create-mask=07000 \
	"$T/emnt" "$T/eref" 3000 "${EX_SEED:-82982649}" || fail "exerciser with the metadata cache"
[ "$(stat_of "$T/emnt" meta_hits)" -gt 0 ] || fail "the exerciser never hit the metadata cache"
echo "all metadata cache checks passed"
