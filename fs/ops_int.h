/*
 * fs/ops_int.h - shared by the FUSE request handlers (fs/ops*.c) and the
 * block cache coupling (fs/cache_link.c).  The design of the request path
 * is described at the top of fs/ops.c.
 *
 *   fs/ops.c         the design essay, INIT, the ops table, helpers below
 *   fs/ops_attr.c    lookup, forget, getattr, setattr, readlink, statfs
 *   fs/ops_names.c   mknod, mkdir, symlink, unlink, rmdir, rename, link
 *   fs/ops_file.c    open, create, read, write, flush, fsync, release,
 *                    fallocate, lseek, copy_file_range
 *   fs/ops_dir.c     opendir, readdir(plus), releasedir, fsyncdir, xattrs
 */
#ifndef LAZARUSFS_OPS_INT_H
#define LAZARUSFS_OPS_INT_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>

#include "fs/fs_int.h"

/* Largest read or write we serve in one request (and the kernel's
 * max_write). */
#define FS_RW_MAX (1u << 20)

/* The mount of a request; raises the kernel readahead on first use. */
struct fs *fs_req(fuse_req_t req);

/* fstatat relative to the entered generation's root, not following a
 * final symlink. */
static inline int fs_stat_rel(const struct fs_call *c, const char *rel,
			      struct stat *st)
{
	return fstatat(c->b->rootfd, rel, st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
}

/* "/proc/self/fd/N/rel" for the calls that have no *at() variant. */
static inline int fs_proc_path(const struct fs_call *c, const char *rel,
			       char *buf, size_t len)
{
	int n = snprintf(buf, len, "/proc/self/fd/%d/%s", c->b->rootfd, rel);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static inline int64_t fs_mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* Adjust backend attributes for the kernel (block size, silly names). */
void fs_fill_attr(struct fs *fs, uint64_t ino, struct stat *st);
/* Look up (or create) the inode for (parent, name) with one lookup count
 * and fill a FUSE entry with attributes `st` (seen in generation `gen`) and
 * our timeouts. */
int fs_make_entry(struct fs *fs, uint64_t parent, const char *name,
		  struct stat *st, uint64_t gen, struct fuse_entry_param *e);
/* fs_make_entry() and reply; an interrupted reply drops the lookup. */
void fs_reply_entry(fuse_req_t req, struct fs *fs, uint64_t parent,
		    const char *name, struct stat *st, uint64_t gen);
/*
 * Offline service (block cache only): while the engine is lost or failing
 * to start, known inodes are answered with the last attributes seen.
 * True with *st filled when that applies to `ino`.
 */
bool fs_offline_attr(struct fs *fs, uint64_t ino, struct stat *st);
/*
 * The metadata cache's answer for `rel` (fs/meta.h): 0 with *st, -ENOENT,
 * or -EAGAIN to ask the engine.  While the engine is offline, expired
 * entries answer too.
 */
int fs_meta_lookup(struct fs *fs, const char *rel, struct stat *st);
/* The attributes of `ino` changed: forget what the metadata cache has for
 * every name of it. */
void fs_meta_drop_ino(struct fs *fs, uint64_t ino);
/* Make the fresh backend object `rel` (in directory `parent_rel`) belong to
 * the calling user; *st is refreshed when that changed it. */
int fs_own(struct fs *fs, const struct fs_call *c, fuse_req_t req,
	   const char *rel, const char *parent_rel, struct stat *st);
/* Register a new handle under fi->fh; on failure the handle is put. */
int fs_add_handle(struct fs *fs, struct fs_handle *h, struct fuse_file_info *fi);
/* Undo fs_add_handle() after the kernel refused the open reply. */
void fs_drop_handle(struct fs *fs, struct fs_handle *h, struct fuse_file_info *fi);
/* A per-thread buffer of FS_RW_MAX bytes (freed at thread exit), or NULL. */
char *fs_rbuf(void);

/* ---------------------------------------------- the request handlers */

/* fs/ops_attr.c */
void fs_op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void fs_op_forget_multi(fuse_req_t req, size_t count,
			struct fuse_forget_data *forgets);
void fs_op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		   int valid, struct fuse_file_info *fi);
void fs_op_readlink(fuse_req_t req, fuse_ino_t ino);
void fs_op_statfs(fuse_req_t req, fuse_ino_t ino);
/* fs/ops_names.c */
void fs_op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		 mode_t mode, dev_t rdev);
void fs_op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		 mode_t mode);
void fs_op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		   const char *name);
void fs_op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		  fuse_ino_t newparent, const char *newname, unsigned int flags);
void fs_op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		const char *newname);
/* fs/ops_file.c */
void fs_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		  mode_t mode, struct fuse_file_info *fi);
void fs_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi);
void fs_op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		 off_t off, struct fuse_file_info *fi);
void fs_op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		 struct fuse_file_info *fi);
void fs_op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
		     off_t len, struct fuse_file_info *fi);
void fs_op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		 struct fuse_file_info *fi);
void fs_op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			   struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			   off_t off_out, struct fuse_file_info *fi_out,
			   size_t len, int flags);
/* fs/ops_dir.c */
void fs_op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		   struct fuse_file_info *fi);
void fs_op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi);
void fs_op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
		    struct fuse_file_info *fi);
void fs_op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		    const char *value, size_t size, int flags);
void fs_op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		    size_t size);
void fs_op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void fs_op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);

/* ----------------------------------------------- block cache coupling */

/*
 * Every regular file handle of a mount with a cache gets a struct
 * cache_file keyed by the file's path (fs/cache_link.c).  All of these are
 * no-ops without a cache.
 */
/* Open the cache file of a fresh handle for the file at `rel` with
 * attributes `st` from its fd, and set fi->keep_cache. */
void fs_cache_attach(struct fs *fs, struct fs_handle *h, const char *rel,
		     const struct stat *st, struct fuse_file_info *fi);
/* Close h's cache file; with `st` (attributes after our writes), record
 * them first so that the next open keeps the blocks. */
void fs_cache_detach(struct fs_handle *h, const struct stat *st);
/* Detach every handle whose path is no longer its cache key. */
void fs_cache_detach_moved(struct fs *fs);
/* Drop the blocks under the current path of `ino`. */
void fs_cache_evict_ino(struct fs *fs, uint64_t ino);
/* The engine accepted a write through h: update the cached blocks. */
void fs_cache_after_write(struct fs *fs, struct fs_handle *h,
			  const char *buf, size_t size, off_t off);
/* The engine truncated `ino` (at `rel`) to `size`. */
void fs_cache_truncate_all(struct fs *fs, uint64_t ino, const char *rel,
			   off_t size);
/* `rel` was listed with attributes `st`: read it ahead if it is small
 * (cache_warm_add). */
void fs_cache_warm(struct fs *fs, const char *rel, const struct stat *st);
/* Serve a read of h through its cache file (misses fetch from the engine).
 * Returns false when h has no cache file, else true with *n set. */
bool fs_cache_read(struct fs *fs, struct fs_handle *h, char *buf, size_t size,
		   off_t off, ssize_t *n);

#endif
