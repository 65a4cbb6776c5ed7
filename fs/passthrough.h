/*
 * fs/passthrough.h - FUSE passthrough of files wholly in a cache tier
 * (fs/passthrough.c), private to fs/.  The design is at the top of the .c.
 *
 * Only on read-only mounts with a block cache.  Every call is a no-op
 * returning FS_PT_NONE (or 0) unless passthrough was negotiated at INIT
 * (fs->passthrough).  Then every open is counted in the kernel's terms
 * (passthrough or not), and its handle keeps what it was counted as in
 * h->pt until release.  Thread-safe.
 */
#ifndef LAZARUSFS_PASSTHROUGH_H
#define LAZARUSFS_PASSTHROUGH_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>

struct fs;
struct fs_pt;

/* What an open was counted as (struct fs_handle.pt). */
enum fs_pt_mode {
	FS_PT_NONE = 0,         /* not counted (passthrough not negotiated) */
	FS_PT_OTHER,            /* opened normally */
	FS_PT_PASS,             /* passed through to a backing file */
};

int fs_pt_new(struct fs_pt **out);
void fs_pt_free(struct fs_pt *p);

/*
 * Before the session is read: may passthrough be negotiated (passthrough=
 * auto, a ro mount, a cache configured, CAP_SYS_ADMIN)?  When not, says why
 * in the stats.  When it may, the session io (fs/session_io.c) calls the
 * two hooks below on INIT.
 */
bool fs_pt_wanted(struct fs *fs);
/*
 * The two INIT hooks, kept apart from the session io that calls them so
 * that another user of fuse_session_custom_io() can call them from its
 * own: init_seen with the first request read from /dev/fuse (an INIT, len
 * bytes with its header), init_reply with libfuse's reply to it (iov[0]
 * the fuse_out_header), which it may point at a patched copy (kept in
 * fs->pt) before it is written.  Both run in the one worker serving INIT.
 */
void fs_pt_init_seen(struct fs *fs, const void *init_in, size_t len);
void fs_pt_init_reply(struct fs *fs, struct iovec *iov, int count);

/*
 * An open of `ino` at `rel` with open flags `flags` and attributes `st`
 * (what the open validated, the cache's copy is checked against them):
 * FS_PT_PASS with *backing_id when it must (the file is open for
 * passthrough already: the kernel wants the same backing file) or can pass
 * through (a read-only open, no other open, the cache hands out a copy of
 * the whole file), else FS_PT_OTHER; FS_PT_NONE when not negotiated;
 * -EROFS for an open for writing of a file open for passthrough (none
 * reaches a ro mount), -ENOMEM.  Pair with fs_pt_end().
 */
int fs_pt_open(struct fs *fs, uint64_t ino, const char *rel, const struct stat *st,
	       int flags, int *backing_id);
/* The handle counted as `mode` is released (or its open failed). */
void fs_pt_end(struct fs *fs, uint64_t ino, int mode);
/* A successor (fs/takeover.h): count again an open a dead proxy counted as
 * `mode`, with its backing id, which the connection still holds.  0 or
 * -ENOMEM. */
int fs_pt_restore(struct fs *fs, uint64_t ino, int mode, int backing_id);

/* Reply to OPEN with fh, FOPEN_PASSTHROUGH and backing_id (what
 * fuse_reply_open() cannot carry).  Returns as fuse_reply_open(). */
int fs_pt_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int backing_id);

struct fs_pt_stats {
	const char *state;      /* "on", "off" or "refused" (static) */
	const char *why;        /* why not on (static), or NULL */
	uint64_t opens;         /* opens passed through */
	uint64_t shared;        /* of them, onto a backing file set up before */
	uint64_t fallbacks;     /* opens of a wholly cached file served normally */
};
void fs_pt_get_stats(struct fs *fs, struct fs_pt_stats *st);

#endif
