/*
 * fs/ops.c - the FUSE low-level operations: design, INIT, the ops table,
 * and the helpers the request handlers share.  The handlers themselves
 * live in the file named after what they work on (see fs/ops_int.h).
 *
 * Every operation that touches the backend runs inside the retry loop of
 * fs/engine.h:
 *
 *	struct fs_call c = FS_CALL_INIT(fs->engine);
 *	do {
 *		if ((ret = fs_call_enter(&c)))
 *			break;
 *		ret = <backend work relative to c.b->rootfd>;
 *	} while (fs_call_again(&c, ret));
 *
 * fs_call_enter() waits until the engine runs (starting it lazily) and pins
 * the current backend generation; fs_call_again() leaves it and reports
 * whether the error meant "engine lost", in which case the supervisor is
 * already restarting the engine and the operation simply runs again.  The
 * application sees a pause, not an error.  Work on an open file goes
 * through fs_handle_call() (fs/handle.h), the same loop around the
 * handle's backend fd.
 *
 * Operations that are not idempotent look at c.attempt: a retried mkdir
 * that finds EEXIST, or a retried unlink that finds ENOENT, most likely
 * finished before the crash and counts as done (NFS has the same rule).
 *
 * Handles: an open file keeps one backend fd, valid for one generation.
 * fs_handle_enter() takes the handle's lock for reading; when the fd
 * belongs to an older generation it reopens the file by its current path
 * with the original flags minus O_CREAT/O_EXCL/O_TRUNC and replays the
 * handle's write journal first, so replay always happens before any new
 * operation on it.  After a restart the supervisor does the same for every
 * handle before it lets requests through (fs_recover_handles).
 *
 * Files unlinked while open are silly-renamed (FS_SILLY_PREFIX) instead,
 * as NFS clients do, so they can be reopened by path after a restart; the
 * last release removes them.  Directory handles serve a snapshot taken at
 * the first readdir, so a listing keeps its position across restarts.
 *
 * Locks are left to the kernel (no getlk/setlk/flock ops): they stay
 * node-local and survive engine restarts, which locks held inside a
 * crashed engine would not.
 *
 * Block cache (fs->cache, only when tiers are configured; fs/cache_link.c):
 * every regular file handle gets a struct cache_file keyed by the file's
 * path, opened with the size and mtime fstat() reports right after
 * openat(), so the cache drops the file's blocks when they changed behind
 * our back (close-to-open) and tells us whether the kernel may keep its
 * page cache.  op_read serves through cache_read(); a hit never enters the
 * engine, so cached data keeps flowing while the engine is stopped, hung or
 * being restarted.  A miss fetches whole blocks with fs_handle_pread(), the
 * same crash-transparent read the uncached path uses.  Writes, truncates,
 * fallocate, unlink, rmdir and rename update or drop the blocks they touch
 * after the engine accepted them.  Block keys are paths, so a handle whose
 * path changes (rename, silly rename) is detached from the cache and reads
 * the engine directly from then on; its writes drop the blocks of its
 * current path instead.  With the cache on we do not ask the kernel for
 * FUSE_CAP_AUTO_INVAL_DATA: it would send a GETATTR (to the engine) on
 * reads every attr_timeout, and the cache already gives close-to-open
 * consistency.
 *
 * Offline service: with the cache on, each inode keeps the last attributes
 * seen.  While the engine is lost or cannot be restarted, lookups and
 * getattrs of known inodes are answered from them, and a read-only open of
 * a file wholly in the cache gets a handle of generation 0 with no backend
 * fd: its reads are cache hits, and fs_handle_enter() reopens it by path
 * once the engine is back, exactly as after a restart.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/ops_int.h"
#include "fs/passthrough.h"

struct fs *fs_req(fuse_req_t req)
{
	struct fs *fs = fuse_req_userdata(req);

	/* the kernel applies its readahead when it handles our INIT reply, so
	 * raise it on the first request after that */
	if (!atomic_load_explicit(&fs->readahead_tuned, memory_order_relaxed) &&
	    !atomic_exchange(&fs->readahead_tuned, true))
		fs_tune_readahead(fs->o->mountpoint);
	return fs;
}

void fs_fill_attr(struct fs *fs, uint64_t ino, struct stat *st)
{
	/* st_ino stays the backend's: it is informational for the kernel,
	 * which identifies inodes by our node id */
	st->st_blksize = st->st_blksize ? st->st_blksize : 4096;
	/* a silly-renamed file is unlinked as far as the application knows */
	if (st->st_nlink && fs_inode_is_silly(fs->inodes, ino))
		st->st_nlink--;
}

int fs_own(struct fs *fs, const struct fs_call *c, fuse_req_t req,
	   const char *rel, const char *parent_rel, struct stat *st)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	mode_t mode = st->st_mode & 07777;
	gid_t gid = ctx->gid;
	struct stat pst;
	int ret;

	/*
	 * sshfs follows a symlink on chown (SFTP SETSTAT), which would hand the
	 * target to the caller: its symlinks stay root's.  A symlink's owner
	 * only matters in sticky directories.
	 */
	if (S_ISLNK(st->st_mode) && fs->o->profile == FS_PROFILE_SSHFS)
		return 0;
	if (st->st_uid == ctx->uid && st->st_gid == ctx->gid)
		return 0;       /* the common case for root: no extra round trip */
	if (!fs_stat_rel(c, parent_rel, &pst) && (pst.st_mode & S_ISGID))
		gid = pst.st_gid;       /* setgid directory: inherit its group */
	if (st->st_uid != ctx->uid || st->st_gid != gid) {
		if (fchownat(c->b->rootfd, rel, ctx->uid, gid, AT_SYMLINK_NOFOLLOW))
			return -errno;
		/* chown clears setuid/setgid; the creator asked for them */
		if ((mode & (S_ISUID | S_ISGID)) && fchmodat(c->b->rootfd, rel, mode, 0))
			return -errno;
		if ((ret = fs_stat_rel(c, rel, st)))
			return ret;
	}
	return 0;
}

int fs_make_entry(struct fs *fs, uint64_t parent, const char *name,
		  struct stat *st, uint64_t gen, struct fuse_entry_param *e)
{
	int err;

	memset(e, 0, sizeof(*e));
	e->ino = fs_inode_lookup_st(fs->inodes, parent, name, st, gen, 1, &err);
	if (!e->ino)
		return err;
	if (fs->cache)
		fs_inode_attr_set(fs->inodes, e->ino, st);
	fs_fill_attr(fs, e->ino, st);
	e->attr = *st;
	e->attr_timeout = fs->o->attr_timeout;
	e->entry_timeout = fs->o->entry_timeout;
	return 0;
}

void fs_reply_entry(fuse_req_t req, struct fs *fs, uint64_t parent,
		    const char *name, struct stat *st, uint64_t gen)
{
	struct fuse_entry_param e;
	int ret = fs_make_entry(fs, parent, name, st, gen, &e);

	if (ret)
		fuse_reply_err(req, -ret);
	else if (fuse_reply_entry(req, &e) == -ENOENT)
		fs_inode_forget(fs->inodes, e.ino, 1);  /* interrupted */
}

int fs_meta_lookup(struct fs *fs, const char *rel, struct stat *st)
{
	int ret;

	if (!fs->meta)
		return -EAGAIN;
	ret = fs_meta_attr(fs->meta, rel, st, false);
	if (ret == -EAGAIN && fs_engine_offline(fs->engine))
		ret = fs_meta_attr(fs->meta, rel, st, true);
	return ret;
}

static void meta_drop_cb(const char *rel, void *arg)
{
	fs_meta_drop(arg, rel);
}

void fs_meta_drop_ino(struct fs *fs, uint64_t ino)
{
	/* every name: the metadata cache keys a hard-linked file's names apart */
	if (fs->meta)
		fs_inode_each_path(fs->inodes, ino, meta_drop_cb, fs->meta);
}

bool fs_offline_attr(struct fs *fs, uint64_t ino, struct stat *st)
{
	return fs->cache && ino && fs_engine_offline(fs->engine) &&
	       !fs_inode_attr_get(fs->inodes, ino, st);
}

int fs_add_handle(struct fs *fs, struct fs_handle *h, struct fuse_file_info *fi)
{
	int64_t idx;
	int ret = fs_inode_open(fs->inodes, h->ino);

	if (ret) {
		fs_handle_put(fs->handles, h);
		return ret;
	}
	idx = fs_handle_add(fs->handles, h);
	if (idx < 0) {
		fs_inode_close(fs->inodes, h->ino);
		fs_handle_put(fs->handles, h);
		return (int)idx;
	}
	fs_engine_count_handle(fs->engine, 1);
	fi->fh = (uint64_t)idx;
	return 0;
}

void fs_drop_handle(struct fs *fs, struct fs_handle *h, struct fuse_file_info *fi)
{
	uint64_t ino = h->ino;
	int pt = h->pt;

	if (!h->dir)
		fs_cache_detach(h, NULL);
	fs_inode_close(fs->inodes, ino);
	fs_handle_remove(fs->handles, fi->fh);     /* may free h */
	fs_engine_count_handle(fs->engine, -1);
	fs_pt_end(fs, ino, pt);
}

static pthread_key_t rbuf_key;
static pthread_once_t rbuf_once = PTHREAD_ONCE_INIT;

static void rbuf_init(void)
{
	pthread_key_create(&rbuf_key, free);
}

char *fs_rbuf(void)
{
	char *b;

	pthread_once(&rbuf_once, rbuf_init);
	b = pthread_getspecific(rbuf_key);
	if (!b && (b = malloc(FS_RW_MAX)))
		pthread_setspecific(rbuf_key, b);
	return b;
}

/* --------------------------------------------------------------- init */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	conn->max_write = FS_RW_MAX;
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS |
			FUSE_CAP_WRITEBACK_CACHE);
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	/* no atomic O_TRUNC: the kernel then truncates by a setattr before
	 * the open, and that truncate is journaled like any other (an open
	 * cannot be journaled before it has a handle) */
	conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
	/* see the design comment: reads must not need the engine */
	if (((struct fs *)userdata)->cache)
		conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = fs_op_lookup,
	.forget = fs_op_forget,
	.forget_multi = fs_op_forget_multi,
	.getattr = fs_op_getattr,
	.setattr = fs_op_setattr,
	.readlink = fs_op_readlink,
	.mknod = fs_op_mknod,
	.mkdir = fs_op_mkdir,
	.unlink = fs_op_unlink,
	.rmdir = fs_op_rmdir,
	.symlink = fs_op_symlink,
	.rename = fs_op_rename,
	.link = fs_op_link,
	.open = fs_op_open,
	.create = fs_op_create,
	.read = fs_op_read,
	.write = fs_op_write,
	.flush = fs_op_flush,
	.release = fs_op_release,
	.fsync = fs_op_fsync,
	.opendir = fs_op_opendir,
	.readdir = fs_op_readdir,
	.readdirplus = fs_op_readdirplus,
	.releasedir = fs_op_releasedir,
	.fsyncdir = fs_op_fsyncdir,
	.statfs = fs_op_statfs,
	.setxattr = fs_op_setxattr,
	.getxattr = fs_op_getxattr,
	.listxattr = fs_op_listxattr,
	.removexattr = fs_op_removexattr,
	.fallocate = fs_op_fallocate,
	.lseek = fs_op_lseek,
	.copy_file_range = fs_op_copy_file_range,
};

const struct fuse_lowlevel_ops *fs_ops(void)
{
	return &ops;
}
