/*
 * fs/passthrough.h - FUSE passthrough of files wholly in a cache tier
 * (fs/passthrough.c), private to fs/.  The design is at the top of the .c.
 *
 * Every call is a no-op returning FS_PT_NONE (or 0) unless passthrough was
 * negotiated at INIT (fs->passthrough).  Every open of a regular file is
 * counted in the kernel's terms (passthrough or not), and its handle keeps
 * what it was counted as in h->pt until release.
 */
#ifndef LAZARUSFS_PASSTHROUGH_H
#define LAZARUSFS_PASSTHROUGH_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

struct fs;
struct fs_pt;

/* What an open was counted as (struct fs_handle.pt). */
enum fs_pt_mode {
	FS_PT_NONE = 0,         /* not counted (passthrough off, directories) */
	FS_PT_OTHER,            /* opened normally */
	FS_PT_PASS,             /* passed through to a backing file */
};

int fs_pt_new(struct fs_pt **out);
void fs_pt_free(struct fs_pt *p);

/* Before the session is read (fs/mount.c, after fuse_session_mount): give
 * it our read and writev, which negotiate passthrough in INIT when the
 * options, the cache and CAP_SYS_ADMIN allow it.  0 or -errno. */
int fs_pt_install(struct fs *fs);

/*
 * An open for writing (or with O_TRUNC) of `ino`: counted as FS_PT_OTHER.
 * While the file is open for passthrough, waits up to a second for
 * releases the kernel has sent (a close returns before its release is
 * served), then fails with -ETXTBSY.  Returns the mode or -ETXTBSY.
 */
int fs_pt_writer(struct fs *fs, uint64_t ino);
/*
 * A read-only open of `ino` at `rel` with attributes `st` (what the open
 * validated; NULL when unknown): FS_PT_PASS with *backing_id when it must
 * (the file is open for passthrough already: the kernel wants the same
 * backing file) or can pass through (no other open, may_pass, and the
 * cache hands out a copy of the whole file), else FS_PT_OTHER.
 */
int fs_pt_reader(struct fs *fs, uint64_t ino, const char *rel, const struct stat *st,
		 bool may_pass, int *backing_id);
/* The handle counted as `mode` is released (or its open failed). */
void fs_pt_end(struct fs *fs, uint64_t ino, int mode);
/* Before `ino` changes without an open of ours (a truncate, a create that
 * opens an existing file): 0, or -ETXTBSY as fs_pt_writer().  ino 0: 0. */
int fs_pt_changing(struct fs *fs, uint64_t ino);

/* Reply to OPEN with fh, FOPEN_PASSTHROUGH and backing_id (what
 * fuse_reply_open() cannot carry).  Returns as fuse_reply_open(). */
int fs_pt_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int backing_id);

/* Append "passthrough..." lines (json: a "passthrough" member of the
 * object) to a `lazarusctl stats` reply (malloc'd, replaced).  0 or
 * -errno. */
int fs_pt_add_stats(struct fs *fs, bool json, char **reply);

#endif
