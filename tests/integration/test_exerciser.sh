#!/bin/bash
# Differential exerciser: exerciser.py runs one seeded random sequence of
# file operations (some as uid 1000) on a lazarusfs mount (A) and on a plain
# local directory (B) and compares every result and the trees.  Engines:
#
#   bindfs        the engine=bindfs profile as is.  bindfs caches attributes
#                 per name for 1 s, so its hard links are not coherent (a
#                 change through one name shows through the other only
#                 later): the probe turns hard links off.
#   bindfs-exact  bindfs with attr_timeout=0,entry_timeout=0, which keeps
#                 hard links coherent in the engine, and lazarusfs with its
#                 default timeouts, since every name of a hard-linked file
#                 is one node: with the full op set, any difference is the
#                 proxy's.
#   sshfs         sshfs against a local sshd.  sftp lacks xattrs, link
#                 counts, renameat2 flags, nanosecond mtimes, lchown and
#                 ENOTEMPTY on rename, sshd applies its umask at creation,
#                 sshfs refuses symlink targets with "..", and its 20 s
#                 attribute cache makes hard links incoherent: a reduced op
#                 set.
#   s3fs          s3fs against a local s3rver, a bucket:/path source.  S3
#                 has no hard links, xattrs (s3fs without use_xattr),
#                 directory link counts, renameat2 flags, or sub-second
#                 mtimes in what it stores, and s3fs shows chown, chmod and
#                 utime of a file written through an open fd only after its
#                 last close (so no operations as another user either, whose
#                 new files the proxy chowns): a reduced op set, probed on a
#                 plain s3fs mount without its stat and attribute caches
#                 (which would show the nanoseconds until they expire).
#
# What each engine lacks is not guessed: `exerciser.py --probe` tries the
# operations on a plain mount of the engine (same engine options, no
# lazarusfs) and prints the options that leave them out; see exerciser.py.
#
# Also checked here, outside the random run: the first access to a fresh
# mount by an unprivileged user, while the mount point directory has a
# different mode than the engine's source root.
#
# EX_SEED=N reproduces a run (the seed is printed), EX_SEED=random picks a
# new one; EX_OPS_BINDFS, EX_OPS_SSHFS and EX_OPS_S3FS set the number of
# operations.
. "$(dirname "$0")/lib.sh"

EX=$SRC_DIR/tests/integration/exerciser.py
# A fixed seed by default, so that CI is repeatable; EX_SEED=random explores.
SEED=${EX_SEED:-82982649}
[ "$SEED" = random ] && SEED=$((RANDOM * 32768 + RANDOM))
OPS_BINDFS=${EX_OPS_BINDFS:-3000}
OPS_SSHFS=${EX_OPS_SSHFS:-1500}
OPS_S3FS=${EX_OPS_S3FS:-600}
USER_ID=1000
FAILED=()

# uid 1000 must reach the trees (mktemp -d makes $T 0700)
chmod 0755 "$T"
echo "exerciser seed $SEED (reproduce with EX_SEED=$SEED)"

# wait_gone MNT: the proxy (which stops its engine first) has exited after
# an unmount
no_proxy() {
	! pgrep -f -- "$1" >/dev/null
}
wait_gone() {
	wait_for 10 no_proxy "$1"
}

# plain_mount KIND EOPTS SRC MNT: the engine alone, as lazarusfs runs it
plain_mount() {
	local kind=$1 eopts=$2 src=$3 mnt=$4
	mkdir -p "$src" "$mnt"
	case $kind in
	bindfs)
		# shellcheck disable=SC2086 # EOPTS are words
		bindfs --multithreaded $eopts "$src" "$mnt" ;;
	sshfs)
		sshfs "root@127.0.0.1:$src" "$mnt" -o "$SSHFS_O" ;;
	s3fs)
		# the profile's own options (fs/profile.c), minus s3fs's stat
		# cache and the kernel's attribute cache: the probe must see
		# what the store keeps
		# shellcheck disable=SC2086 # S3FS_O and EOPTS are words
		s3rver_env_run s3fs "$(engine_source s3fs "$src")" "$mnt" $S3FS_O \
			-o allow_other,retries=1000000,nomixupload \
			-o max_stat_cache_size=0,attr_timeout=0 $eopts ;;
	esac
}

# run NAME KIND OPS [ENGINE_OPTS]: probe the engine, then run the exerciser
# over lazarusfs with that engine
run() {
	local name=$1 kind=$2 ops=$3 eopts=${4:-} src psrc ref mnt feat opts rc
	src=$(engine_src_dir "$kind" "src-$name") ref=$T/ref-$name mnt=$T/mnt-$name

	echo "== $name: probing a plain $kind mount"
	psrc=$(engine_src_dir "$kind" "probe-src-$name")
	plain_mount "$kind" "$eopts" "$psrc" "$T/probe-$name" || fail "$name: plain $kind mount"
	feat=$($PY "$EX" --probe "$T/probe-$name")
	rc=$?
	fusermount3 -u "$T/probe-$name" || fail "$name: unmount the plain $kind mount"
	[ $rc = 0 ] || fail "$name: probe failed"
	echo "$name: engine limits: ${feat:-none}"
	feat="$feat ${6:-}"
	[ "$kind" = s3fs ] && feat="$feat --src-via-engine"

	# A and B start identical: empty, mode 0777, owned by root.  The mount
	# point gets the source root's mode, since lazarusfs shows the mount
	# point's own attributes until the engine runs (checked on its own by
	# first_access below).
	mkdir -m 0777 "$ref" "$mnt"
	chmod 0777 "$src"
	opts=$(engine_opts "$kind")
	[ -n "$eopts" ] && opts="$opts,engine_opts=${eopts//,/\\,}"
	[ -n "${5:-}" ] && opts="$opts,$5"
	lz_mount "$(engine_source "$kind" "$src")" "$mnt" "$opts"
	echo "== $name: $ops operations"
	# shellcheck disable=SC2086 # feat holds options
	if ! $PY "$EX" --src "$src" --state-dir "$LZ_STATE" --uid $USER_ID \
		--gid $USER_ID $feat "$mnt" "$ref" "$ops" "$SEED"; then
		FAILED+=("$name")
	fi
	fusermount3 -u "$mnt" || fail "$name: unmount"
	wait_gone "$mnt" || fail "$name: processes left after unmount"
}

# as_user CMD...: run CMD as uid/gid 1000
as_user() {
	$PY -c 'import os, sys
os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1]))
os.execvp(sys.argv[2], sys.argv[2:])' $USER_ID "$@"
}

# The first access of a fresh mount is an unprivileged create at the top
# level: the source root is 0777, the mount point directory 0755.  A local
# directory (B) lets the user create there; so must the proxy.
first_access() {
	local src=$T/src-first ref=$T/ref-first mnt=$T/mnt-first out_a out_b
	echo "== first access by uid $USER_ID to a fresh mount"
	mkdir -m 0777 "$src" "$ref"
	mkdir -m 0755 "$mnt"
	lz_mount "$src" "$mnt" "engine=bindfs"
	out_b=$(as_user touch "$ref/f" 2>&1 && stat -c '%u:%g %a' "$ref/f")
	out_a=$(as_user touch "$mnt/f" 2>&1 && stat -c '%u:%g %a' "$src/f")
	if [ "$out_a" != "$out_b" ]; then
		echo "MISMATCH: touch f as uid $USER_ID, first access to the mount:"
		echo "  A: $out_a"
		echo "  B: $out_b"
		FAILED+=("first-access")
	fi
	fusermount3 -u "$mnt" || fail "first access: unmount"
	wait_gone "$mnt" || fail "first access: processes left after unmount"
}

start=$SECONDS
first_access
run bindfs bindfs "$OPS_BINDFS"
# lazarusfs keeps its default attribute and entry timeouts: every name of a
# hard-linked file is one node, so the kernel's cache of it stays coherent
run bindfs-exact bindfs "$OPS_BINDFS" "-o attr_timeout=0,entry_timeout=0"
start_sshd
run sshfs sshfs "$OPS_SSHFS"
maybe_s3rver
if [ -n "$S3FS_KIND" ]; then
	run s3fs s3fs "$OPS_S3FS"
fi
echo "took $((SECONDS - start)) s"

if [ ${#FAILED[@]} != 0 ]; then
	# (lib.sh's fail would add the logs, which say nothing about these)
	echo "FAIL: differences in: ${FAILED[*]} (seed $SEED)"
	exit 1
fi
echo "no differences (seed $SEED)"
