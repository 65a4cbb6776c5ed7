# shellcheck shell=bash
# bench/lib/epoch.sh: the training-epoch phase of bench/run. Sourced by
# bench/run after its mount_system/umount_system, rec and note; reads its
# EPOCH_N, EPOCH_FILES_S3FS, ENGINES, ENGINE_LIST, SRC, W and PREFAULT_MIB.
#
# The tree is written once, on local disk, in $SRC/epoch: directories of 40
# files of 128 KiB (bench/epoch.py make), EPOCH_N rounded up to a multiple
# of 40. bindfs and sshfs serve $SRC, so they read that very tree; for s3fs
# its first directories, at most EPOCH_FILES_S3FS files (s3fs makes a few
# requests to s3rver per file), are uploaded into the bucket with rclone, as
# the read set is. local disk reads the whole tree.
#
# epoch_system mounts the system afresh (so epoch 1 is the first access to
# the tree through it, and lazarusfs+cache starts with an empty block cache),
# lazarusfs+cache read-only (`ro`: the dataset mode users mount for training,
# with the metadata cache that never expires), then runs two epochs on that
# mount: `epoch.py run --threads 4` after dropping the page, dentry and inode
# caches and touching PREFAULT_MIB of memory (as before cold fio jobs), then
# again the same way. Metrics epoch1_files_s and epoch2_files_s (the whole
# epoch, walk included); an epoch with errors or a wrong file count is a note.

EPOCH_PER_DIR=40
EPOCH_INFO=
declare -A EPOCH_COUNT # engine (or local) -> files in the tree it serves

# epoch_prepare: write the tree, upload the s3fs part. Call after the read
# set was uploaded (s3_setup).
epoch_prepare() {
	local dirs n e filt
	[ "$EPOCH_N" -gt 0 ] || return 0
	dirs=$(((EPOCH_N + EPOCH_PER_DIR - 1) / EPOCH_PER_DIR))
	log "writing the epoch tree: $dirs directories x $EPOCH_PER_DIR files of 128 KiB"
	rm -rf "$SRC/epoch"
	"$PY" "$BENCH_DIR/epoch.py" make "$SRC/epoch" --dirs "$dirs" --files "$EPOCH_PER_DIR" ||
		die "cannot write the epoch tree"
	sync
	EPOCH_COUNT[local]=$((dirs * EPOCH_PER_DIR))
	EPOCH_INFO="$((dirs * EPOCH_PER_DIR)) files of 128 KiB in $dirs directories"
	for e in "${ENGINE_LIST[@]}"; do
		[ "$e" = s3fs ] || EPOCH_COUNT[$e]=${EPOCH_COUNT[local]}
	done
	[[ ,$ENGINES, == *,s3fs,* ]] || return 0
	n=$EPOCH_N
	[ "$n" -gt "$EPOCH_FILES_S3FS" ] && n=$EPOCH_FILES_S3FS
	n=$(((n + EPOCH_PER_DIR - 1) / EPOCH_PER_DIR))
	EPOCH_COUNT[s3fs]=$((n * EPOCH_PER_DIR))
	[ "$n" -lt "$dirs" ] &&
		EPOCH_INFO="$EPOCH_INFO; over s3fs the first $n directories, ${EPOCH_COUNT[s3fs]} files (EPOCH_FILES_S3FS=$EPOCH_FILES_S3FS: s3fs makes several requests to s3rver per file)"
	filt=$W/logs/epoch-s3.filter
	(cd "$SRC/epoch" && printf '%s\n' d*) | head -n "$n" | sed 's|^|+ /|; s|$|/**|' >"$filt"
	echo '- **' >>"$filt"
	log "uploading ${EPOCH_COUNT[s3fs]} files of the epoch tree into the bucket"
	s3_rclone copy "$SRC/epoch" lzbs3:lzbench/epoch --filter-from "$filt" \
		>>"$W/logs/s3-upload.log" 2>&1 && s3_dir_marker epoch/ ||
		die "cannot upload the epoch tree to s3rver (see $W/logs/s3-upload.log)"
}

# s3_dir_marker KEY/: an empty object KEY/ in the bucket. s3rver's delimited
# listing leaves out a prefix that holds only deeper keys (epoch/ holds only
# epoch/dNNN/...), so rclone would not see the directory at all; s3fs finds
# it anyway by asking for the prefix itself. A directory marker makes the
# root listing name it. Signed by curl; the secret goes in on stdin, not argv.
s3_dir_marker() {
	printf 'user = "%s:%s"\n' "$RCLONE_CONFIG_LZBS3_ACCESS_KEY_ID" "$RCLONE_CONFIG_LZBS3_SECRET_ACCESS_KEY" |
		curl -sS -f -K - --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
			-H 'Content-Type: application/x-directory' \
			-X PUT --data-binary '' "$S3RVER_URL/lzbench/$1" >>"$W/logs/s3-upload.log" 2>&1
}

# epoch_system ENG SYS REP: mount afresh, two epochs, unmount.
epoch_system() {
	local eng=$1 sys=$2 rep=$3 ep out rc files errs fps want
	[ "$EPOCH_N" -gt 0 ] || return 0
	want=${EPOCH_COUNT[$eng]}
	log "rep $rep: $eng/$sys epoch ($want files)"
	if ! mount_system "$eng" "$sys" "$rep-epoch" "$([ "$sys" = lzcache ] && echo ro)"; then
		umount_system "$eng" "$sys"
		return 1
	fi
	for ep in 1 2; do
		out=$W/fio/$eng-$sys-$rep-epoch$ep.json
		drop_caches
		prefault "$PREFAULT_MIB"
		timeout -k 10 900 "$PY" "$BENCH_DIR/epoch.py" run "$DIR/epoch" --threads 4 --json \
			>"$out" 2>>"$W/logs/epoch.err"
		rc=$?
		read -r files errs fps < <(jq -r '"\(.files) \(.errors) \(.files_per_s)"' "$out" 2>/dev/null)
		if [ -z "${fps:-}" ]; then
			note "$eng/$sys epoch $ep: no result (exit $rc, see logs/epoch.err)"
		elif [ "$errs" != 0 ] || [ "$files" != "$want" ]; then
			note "$eng/$sys epoch $ep: $errs errors, $files of $want files (exit $rc)"
		else
			fps=$(printf '%.1f' "$fps")
			rec "$rep" "$eng" "$sys" "epoch${ep}_files_s" "$fps"
			log "  $eng/$sys epoch $ep: $fps files/s"
		fi
	done
	[ -n "$DPID" ] && ! pid_alive "$DPID" && note "$eng/$sys: the daemon died during the epoch"
	umount_system "$eng" "$sys"
	return 0
}
