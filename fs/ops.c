/*
 * fs/ops.c - the FUSE low-level operations.
 *
 * Every operation that touches the backend runs inside the retry loop
 *
 *	struct call c = CALL_INIT(fs);
 *	do {
 *		if ((ret = call_enter(&c)))
 *			break;
 *		ret = <backend work relative to c.b->rootfd>;
 *	} while (call_again(&c, ret));
 *
 * call_enter() waits until the engine runs (starting it lazily) and pins
 * the current backend generation; call_again() leaves it and reports
 * whether the error meant "engine lost", in which case the supervisor is
 * already restarting the engine and the operation simply runs again.  The
 * application sees a pause, not an error.
 *
 * Operations that are not idempotent look at c.attempt: a retried mkdir
 * that finds EEXIST, or a retried unlink that finds ENOENT, most likely
 * finished before the crash and counts as done (NFS has the same rule).
 *
 * Handles: an open file keeps one backend fd, valid for one generation.
 * handle_enter() takes the handle's lock for reading; when the fd belongs to
 * an older generation it reopens the file by its current path with the
 * original flags minus O_CREAT/O_EXCL/O_TRUNC and replays the handle's write
 * journal first, so replay always happens before any new operation on it.
 * After a restart the supervisor does the same for every handle before it
 * lets requests through (fs_recover_handles).
 *
 * Files unlinked while open are silly-renamed (FS_SILLY_PREFIX) instead,
 * as NFS clients do, so they can be reopened by path after a restart; the
 * last release removes them.  Directory handles serve a snapshot taken at
 * opendir, so a listing keeps its position across restarts.
 *
 * Locks are left to the kernel (no getlk/setlk/flock ops): they stay
 * node-local and survive engine restarts, which locks held inside a
 * crashed engine would not.
 *
 * Block cache (fs->cache, only when tiers are configured): every regular
 * file handle gets a struct cache_file keyed by the file's path, opened
 * with the size and mtime fstat() reports right after openat(), so the
 * cache drops the file's blocks when they changed behind our back
 * (close-to-open) and tells us whether the kernel may keep its page cache.
 * op_read serves through cache_read(); a hit never enters the engine, so
 * cached data keeps flowing while the engine is stopped, hung or being
 * restarted.  A miss fetches whole blocks with handle_pread(), the same
 * crash-transparent read the uncached path uses.  Writes, truncates,
 * fallocate, unlink, rmdir and rename update or drop the blocks they
 * touch after the engine accepted them.  Block keys are paths, so a handle
 * whose path changes (rename, silly rename) is detached from the cache and
 * reads the engine directly from then on; its writes drop the blocks of
 * its current path instead.  With the cache on we do not ask the kernel
 * for FUSE_CAP_AUTO_INVAL_DATA: it would send a GETATTR (to the engine) on
 * reads every attr_timeout, and the cache already gives close-to-open
 * consistency.
 *
 * Offline service: with the cache on, each inode keeps the last attributes
 * seen.  While the engine is lost or cannot be restarted, lookups and
 * getattrs of known inodes are answered from them, and a read-only open of
 * a file wholly in the cache gets a handle of generation 0 with no backend
 * fd: its reads are cache hits, and handle_enter() reopens it by path once
 * the engine is back, exactly as after a restart.
 */
#include "config.h"

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs/fs_int.h"

#define RW_MAX (1u << 20)

struct call {
	struct fs *fs;
	struct fs_backend *b;
	int attempt;
};

#define CALL_INIT(f) { .fs = (f), .b = NULL, .attempt = 0 }

static int call_enter(struct call *c)
{
	return fs_engine_enter(c->fs->engine, &c->b);
}

/* Leave the backend; true when `ret` was an engine loss and we retry. */
static bool call_again(struct call *c, int ret)
{
	bool lost;

	if (!c->b)
		return false;
	lost = ret < 0 && fs_engine_lost(c->fs->engine, c->b, -ret);
	fs_engine_leave(c->fs->engine, c->b);
	c->b = NULL;
	if (lost)
		c->attempt++;
	return lost;
}

static struct fs *req_fs(fuse_req_t req)
{
	struct fs *fs = fuse_req_userdata(req);

	/* the kernel applies its readahead when it handles our INIT reply, so
	 * raise it on the first request after that */
	if (!atomic_load_explicit(&fs->readahead_tuned, memory_order_relaxed) &&
	    !atomic_exchange(&fs->readahead_tuned, true))
		fs_tune_readahead(fs->o->mountpoint);
	return fs;
}

/* "/proc/self/fd/N/path" for the calls that have no *at() variant. */
static int proc_path(const struct call *c, const char *rel, char *buf,
		     size_t len)
{
	int n = snprintf(buf, len, "/proc/self/fd/%d/%s", c->b->rootfd, rel);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int stat_rel(const struct call *c, const char *rel, struct stat *st)
{
	return fstatat(c->b->rootfd, rel, st, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
}

/*
 * The engine root's attributes stand in for it while the engine is stopped
 * (permission checks on the root need them), and are kept in
 * <dir>/root.attr so that the next mount starts with them too.
 */
static void remember_root(struct fs *fs, const struct stat *st)
{
	bool changed;

	pthread_mutex_lock(&fs->root_lock);
	changed = fs->root_stat.st_mode != st->st_mode ||
		  fs->root_stat.st_uid != st->st_uid ||
		  fs->root_stat.st_gid != st->st_gid;
	fs->root_stat = *st;
	pthread_mutex_unlock(&fs->root_lock);
	if (changed)
		fs_root_attr_save(fs, st);
}

static void fill_attr(struct fs *fs, uint64_t ino, struct stat *st)
{
	/* st_ino stays the backend's: it is informational for the kernel,
	 * which identifies inodes by our node id */
	st->st_blksize = st->st_blksize ? st->st_blksize : 4096;
	/* a silly-renamed file is unlinked as far as the application knows */
	if (st->st_nlink && fs_inode_is_silly(fs->inodes, ino))
		st->st_nlink--;
}

/* Make a fresh backend object belong to the calling user. */
static int own(const struct call *c, fuse_req_t req, const char *rel,
	       const char *parent_rel, struct stat *st)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	gid_t gid = ctx->gid;
	struct stat pst;
	int ret;

	mode_t mode = st->st_mode & 07777;

	/*
	 * sshfs follows a symlink on chown (SFTP SETSTAT), which would hand the
	 * target to the caller: its symlinks stay root's.  A symlink's owner
	 * only matters in sticky directories.
	 */
	if (S_ISLNK(st->st_mode) && c->fs->o->profile == FS_PROFILE_SSHFS)
		return 0;
	if (st->st_uid == ctx->uid && st->st_gid == ctx->gid)
		return 0;       /* the common case for root: no extra round trip */
	if (!stat_rel(c, parent_rel, &pst) && (pst.st_mode & S_ISGID))
		gid = pst.st_gid;       /* setgid directory: inherit its group */
	if (st->st_uid != ctx->uid || st->st_gid != gid) {
		if (fchownat(c->b->rootfd, rel, ctx->uid, gid, AT_SYMLINK_NOFOLLOW))
			return -errno;
		/* chown clears setuid/setgid; the creator asked for them */
		if ((mode & (S_ISUID | S_ISGID)) && fchmodat(c->b->rootfd, rel, mode, 0))
			return -errno;
		if ((ret = stat_rel(c, rel, st)))
			return ret;
	}
	return 0;
}

/* ------------------------------------------------------------ entries */

static int make_entry(struct fs *fs, uint64_t parent, const char *name,
		      struct stat *st, struct fuse_entry_param *e)
{
	int err;

	memset(e, 0, sizeof(*e));
	e->ino = fs_inode_lookup(fs->inodes, parent, name, st->st_mode, 1, &err);
	if (!e->ino)
		return err;
	if (fs->cache)
		fs_inode_attr_set(fs->inodes, e->ino, st);
	fill_attr(fs, e->ino, st);
	e->attr = *st;
	e->attr_timeout = fs->o->attr_timeout;
	e->entry_timeout = fs->o->entry_timeout;
	return 0;
}

static void reply_entry(fuse_req_t req, struct fs *fs, uint64_t parent,
			const char *name, struct stat *st)
{
	struct fuse_entry_param e;
	int ret = make_entry(fs, parent, name, st, &e);

	if (ret)
		fuse_reply_err(req, -ret);
	else if (fuse_reply_entry(req, &e) == -ENOENT)
		fs_inode_forget(fs->inodes, e.ino, 1);  /* interrupted */
}

/*
 * Offline service (block cache only): while the engine is lost or failing
 * to start, lookups and getattrs of known inodes are answered with the last
 * attributes seen, and files wholly in the cache open without the engine
 * (offline_handle), so reads of cached data go on through an outage instead
 * of waiting for it.  True with *st filled when that applies to `ino`.
 */
static bool offline_attr(struct fs *fs, uint64_t ino, struct stat *st)
{
	return fs->cache && ino && fs_engine_offline(fs->engine) &&
	       !fs_inode_attr_get(fs->inodes, ino, st);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX];
	struct stat st;
	int ret;

	if (fs_is_silly_name(name)) {
		ret = -ENOENT;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))))
		goto out;
	if (offline_attr(fs, fs_inode_find(fs->inodes, parent, name), &st))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		ret = stat_rel(&c, rel, &st);
	} while (call_again(&c, ret));
out:
	if (ret == -ENOENT && fs->o->negative_timeout > 0) {
		struct fuse_entry_param e = { .entry_timeout = fs->o->negative_timeout };

		fuse_reply_entry(req, &e);
	} else if (ret) {
		fuse_reply_err(req, -ret);
	} else {
		reply_entry(req, fs, parent, name, &st);
	}
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_inode_forget(req_fs(req)->inodes, ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *forgets)
{
	struct fs *fs = req_fs(req);

	for (size_t i = 0; i < count; i++)
		fs_inode_forget(fs->inodes, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX];
	struct stat st;
	int ret;

	/*
	 * kubelet and CSI probes (root) stat the mount point: no engine start.
	 * Another user gets the engine's real root, because the kernel checks
	 * that user's permissions against these attributes; root passes them
	 * anyway.
	 */
	if (ino == FS_ROOT_INO && fuse_req_ctx(req)->uid == 0 &&
	    !fs_engine_running(fs->engine)) {
		pthread_mutex_lock(&fs->root_lock);
		st = fs->root_stat;
		pthread_mutex_unlock(&fs->root_lock);
		/* not cached: the real attributes replace these once it runs */
		fuse_reply_attr(req, &st, 0);
		return;
	}
	if (offline_attr(fs, ino, &st))
		goto reply;
	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		ret = stat_rel(&c, rel, &st);
	} while (call_again(&c, ret));
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (ino == FS_ROOT_INO)
		remember_root(fs, &st);
	if (fs->cache)
		fs_inode_attr_set(fs->inodes, ino, &st);
reply:
	fill_attr(fs, ino, &st);
	fuse_reply_attr(req, &st, fs->o->attr_timeout);
}

/* --------------------------------------------------------- handles */

/*
 * Reopen `h` against generation `b` and replay its journal.  Caller holds
 * h->lock for writing.  Returns 0, an engine-loss -errno for the caller to
 * report, or marks the handle broken (-EIO) when the file is gone.
 */
static int handle_reopen(struct fs *fs, struct fs_handle *h,
			 struct fs_backend *b)
{
	int flags = (h->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_APPEND)) | O_CLOEXEC;
	char rel[PATH_MAX];
	int fd, ret;

	if (h->gen >= b->gen || h->broken)
		return h->broken;
	ret = fs_inode_path(fs->inodes, h->ino, NULL, rel, sizeof(rel));
	if (ret) {
		fs_log(FS_LOG_ERR, "%s: cannot reopen handle of inode %llu: no path",
		       strerror(-ret), (unsigned long long)h->ino);
		h->broken = -EIO;
		return h->broken;
	}
	fd = openat(b->rootfd, rel, flags);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ENOTCONN || ret == -ECONNABORTED || ret == -EIO)
			return ret;
		fs_log(FS_LOG_ERR, "%s: cannot reopen %s after engine restart, its handle now fails with EIO",
		       strerror(-ret), rel);
		h->broken = -EIO;
		return h->broken;
	}
	pthread_mutex_lock(&h->jlock);
	ret = fs_journal_replay(h->journal, fd);
	if (!ret && fs_journal_entries(h->journal))
		fs_log(FS_LOG_INFO, "replayed %zu journaled writes (%zu bytes) to %s",
		       fs_journal_entries(h->journal), fs_journal_bytes(h->journal), rel);
	pthread_mutex_unlock(&h->jlock);
	if (ret) {
		close(fd);
		return ret;
	}
	if (h->fd >= 0)
		close(h->fd);
	h->fd = fd;
	h->gen = b->gen;
	return 0;
}

/*
 * Enter the backend and lock `h` for reading with an fd of the current
 * generation.  On 0 the caller must unlock h->lock, then call_again().
 */
static int handle_enter(struct call *c, struct fs_handle *h)
{
	int ret;

	if ((ret = call_enter(c)))
		return ret;
	for (;;) {
		pthread_rwlock_rdlock(&h->lock);
		if (h->broken) {
			ret = h->broken;
			pthread_rwlock_unlock(&h->lock);
			return ret;
		}
		if (h->gen == c->b->gen)
			return 0;
		pthread_rwlock_unlock(&h->lock);
		if (h->gen > c->b->gen)
			return -ENOTCONN;       /* we hold an old generation: retry */
		pthread_rwlock_wrlock(&h->lock);
		ret = handle_reopen(c->fs, h, c->b);
		pthread_rwlock_unlock(&h->lock);
		if (ret)
			return ret;
	}
}

int fs_recover_handles(void *arg, struct fs_backend *b)
{
	struct fs *fs = arg;
	struct fs_handle **v;
	size_t n = fs_handle_all(fs->handles, 0, &v);
	int ret = 0, reopened = 0;

	for (size_t i = 0; i < n && !ret; i++) {
		struct fs_handle *h = v[i];

		if (h->dir)
			continue;       /* directory handles live on snapshots */
		pthread_rwlock_wrlock(&h->lock);
		if (h->gen < b->gen && !h->broken) {
			fs_engine_watch_begin(fs->engine);
			ret = handle_reopen(fs, h, b);
			fs_engine_watch_end(fs->engine);
			if (ret == -EIO && h->broken)
				ret = 0;        /* that one handle is lost, not the engine */
			else if (!ret)
				reopened++;
		}
		pthread_rwlock_unlock(&h->lock);
	}
	fs_handle_put_all(fs->handles, v, n);
	return ret ? ret : reopened;
}

static struct fs_handle *get_handle(struct fs *fs, struct fuse_file_info *fi)
{
	return fs_handle_get(fs->handles, fi->fh);
}

/* Register a new handle; on failure the handle is freed. */
static int add_handle(struct fs *fs, struct fs_handle *h,
		      struct fuse_file_info *fi)
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

/* ------------------------------------------------------------- cache */

static void cache_detach(struct fs_handle *h, const struct stat *st);

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/*
 * Open the cache file of a fresh handle (registered, but not yet known to
 * the kernel) for the file at `rel` with attributes `st` from its fd, and
 * tell the kernel whether it may keep its page cache.  Without success the
 * handle simply reads the engine.
 */
static void cache_attach(struct fs *fs, struct fs_handle *h, const char *rel,
			 const struct stat *st, struct fuse_file_info *fi)
{
	char bpath[PATH_MAX + 64], cur[PATH_MAX];
	struct cache_file *cf;
	int keep = 0, ret;
	char *key;

	if (!fs->cache || !S_ISREG(st->st_mode))
		return;
	/* the prefetcher reads by path; engine.c mounts at backend.<our pid> */
	if (snprintf(bpath, sizeof(bpath), "%s/backend.%d/%s", fs->dir,
		     (int)getpid(), rel) >= (int)sizeof(bpath)) {
		fs_log(FS_LOG_DEBUG, "%s: not cached, path too long", rel);
		return;
	}
	key = strdup(rel);
	ret = key ? cache_file_open(fs->cache, rel, st->st_size, mtime_ns(st),
				    bpath, &cf, &keep) : -ENOMEM;
	if (ret) {
		fs_log(FS_LOG_DEBUG, "%s: cache open failed, reading %s uncached",
		       strerror(-ret), rel);
		free(key);
		return;
	}
	pthread_rwlock_wrlock(&h->cflock);
	h->cf = cf;
	h->ckey = key;
	pthread_rwlock_unlock(&h->cflock);
	/* a rename that ran meanwhile may have missed us: blocks are keyed
	 * by path, so a handle whose path moved must not cache */
	if (fs_inode_path(fs->inodes, h->ino, NULL, cur, sizeof(cur)) ||
	    strcmp(cur, rel)) {
		cache_detach(h, NULL);
		return;
	}
	fi->keep_cache = keep;
}

/*
 * Close h's cache file.  With `st` (attributes after our writes), record
 * them first so that the next open keeps the blocks.
 */
static void cache_detach(struct fs_handle *h, const struct stat *st)
{
	struct cache_file *cf;
	char *key;

	pthread_rwlock_wrlock(&h->cflock);
	cf = h->cf;
	key = h->ckey;
	h->cf = NULL;
	h->ckey = NULL;
	pthread_rwlock_unlock(&h->cflock);
	if (cf && st)
		cache_file_set_attr(cf, st->st_size, mtime_ns(st));
	cache_file_close(cf);
	free(key);
}

/* Detach every handle whose path is no longer its cache key. */
static void cache_detach_moved(struct fs *fs)
{
	struct fs_handle **v;
	size_t n = fs_handle_all(fs->handles, 0, &v);
	char cur[PATH_MAX];

	for (size_t i = 0; i < n; i++) {
		struct fs_handle *h = v[i];
		bool moved;

		if (h->dir)
			continue;
		pthread_rwlock_rdlock(&h->cflock);
		moved = h->ckey &&
			(fs_inode_path(fs->inodes, h->ino, NULL, cur, sizeof(cur)) ||
			 strcmp(cur, h->ckey));
		pthread_rwlock_unlock(&h->cflock);
		if (moved)
			cache_detach(h, NULL);
	}
	fs_handle_put_all(fs->handles, v, n);
}

void fs_cache_detach_all(struct fs *fs)
{
	struct fs_handle **v;
	size_t n;

	if (!fs->cache || !fs->handles)
		return;
	n = fs_handle_all(fs->handles, 0, &v);
	for (size_t i = 0; i < n; i++)
		if (!v[i]->dir)
			cache_detach(v[i], NULL);
	fs_handle_put_all(fs->handles, v, n);
}

/* Drop the blocks under the current path of `ino`. */
static void cache_evict_ino(struct fs *fs, uint64_t ino)
{
	char rel[PATH_MAX];

	if (!fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel)))
		cache_evict(fs->cache, rel);
}

/* The engine accepted a write through h: update the cached blocks. */
static void cache_after_write(struct fs *fs, struct fs_handle *h,
			      const char *buf, size_t size, off_t off)
{
	bool done = false;

	if (!fs->cache)
		return;
	pthread_rwlock_rdlock(&h->cflock);
	if (h->cf) {
		cache_write(h->cf, buf, size, off);
		atomic_store(&h->wrote, true);
		done = true;
	}
	pthread_rwlock_unlock(&h->cflock);
	/* a detached handle: other handles may cache this file by its path */
	if (!done)
		cache_evict_ino(fs, h->ino);
}

/* The engine truncated `ino` (at `rel`) to `size`. */
static void cache_truncate_all(struct fs *fs, uint64_t ino, const char *rel,
			       off_t size)
{
	struct fs_handle **v;
	size_t n;
	bool done = false;

	if (!fs->cache)
		return;
	n = fs_handle_all(fs->handles, ino, &v);
	for (size_t i = 0; i < n; i++) {
		if (v[i]->dir)
			continue;
		pthread_rwlock_rdlock(&v[i]->cflock);
		if (v[i]->cf) {
			cache_truncate(v[i]->cf, size);
			done = true;
		}
		pthread_rwlock_unlock(&v[i]->cflock);
	}
	fs_handle_put_all(fs->handles, v, n);
	if (!done)
		cache_evict(fs->cache, rel);
}

/* ----------------------------------------------------------- setattr */

/* Record a truncate in the journals of every handle open on `ino`. */
static void journal_truncate_all(struct fs *fs, uint64_t ino, off_t size)
{
	struct fs_handle **v;
	size_t n = fs_handle_all(fs->handles, ino, &v);

	for (size_t i = 0; i < n; i++) {
		if (v[i]->dir)
			continue;
		pthread_mutex_lock(&v[i]->jlock);
		if (fs_journal_entries(v[i]->journal))
			fs_journal_truncate(v[i]->journal, size);
		pthread_mutex_unlock(&v[i]->jlock);
	}
	fs_handle_put_all(fs->handles, v, n);
}

static int do_setattr(struct call *c, const char *rel, struct stat *attr,
		      int valid, struct fs_handle *h)
{
	char pp[PATH_MAX + 32];
	int ret = 0;

	if (valid & FUSE_SET_ATTR_MODE &&
	    fchmodat(c->b->rootfd, rel, attr->st_mode & 07777, 0))
		return -errno;
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) &&
	    fchownat(c->b->rootfd, rel,
		     valid & FUSE_SET_ATTR_UID ? attr->st_uid : (uid_t)-1,
		     valid & FUSE_SET_ATTR_GID ? attr->st_gid : (gid_t)-1,
		     AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (valid & FUSE_SET_ATTR_SIZE) {
		if (h)
			ret = ftruncate(h->fd, attr->st_size) ? -errno : 0;
		else if (!(ret = proc_path(c, rel, pp, sizeof(pp))))
			ret = truncate(pp, attr->st_size) ? -errno : 0;
		if (ret)
			return ret;
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT },
					  { .tv_nsec = UTIME_OMIT } };

		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		if (utimensat(c->b->rootfd, rel, ts, AT_SYMLINK_NOFOLLOW))
			return -errno;
	}
	return 0;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int valid, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	struct fs_handle *h = NULL;
	char rel[PATH_MAX];
	struct stat st;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	if (fi && (valid & FUSE_SET_ATTR_SIZE))
		h = get_handle(fs, fi);
	do {
		if (h) {
			if ((ret = handle_enter(&c, h)))
				continue;
		} else if ((ret = call_enter(&c))) {
			break;
		}
		ret = do_setattr(&c, rel, attr, valid, h);
		if (!ret)
			ret = stat_rel(&c, rel, &st);
		if (h)
			pthread_rwlock_unlock(&h->lock);
	} while (call_again(&c, ret));
	if (!ret && (valid & FUSE_SET_ATTR_SIZE)) {
		journal_truncate_all(fs, ino, attr->st_size);
		cache_truncate_all(fs, ino, rel, attr->st_size);
	}
	if (h)
		fs_handle_put(fs->handles, h);
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fill_attr(fs, ino, &st);
	fuse_reply_attr(req, &st, fs->o->attr_timeout);
}

/* ------------------------------------------------------------- names */

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX], target[PATH_MAX + 1];
	ssize_t n = 0;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		n = readlinkat(c.b->rootfd, rel, target, sizeof(target) - 1);
		ret = n < 0 ? -errno : 0;
	} while (call_again(&c, ret));
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	target[n] = 0;
	fuse_reply_readlink(req, target);
}

enum mkkind { MK_NOD, MK_DIR, MK_SYMLINK };

static void make_node(fuse_req_t req, fuse_ino_t parent, const char *name,
		      enum mkkind kind, mode_t mode, dev_t rdev,
		      const char *link)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX], prel[PATH_MAX];
	struct stat st;
	int ret;

	if (fs_is_silly_name(name)) {
		ret = -EPERM;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, parent, NULL, prel, sizeof(prel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		if (kind == MK_DIR)
			ret = mkdirat(c.b->rootfd, rel, mode);
		else if (kind == MK_SYMLINK)
			ret = symlinkat(link, c.b->rootfd, rel);
		else
			ret = mknodat(c.b->rootfd, rel, mode, rdev);
		ret = ret ? -errno : 0;
		/* a retry finding its own result: the first try made it */
		if (ret == -EEXIST && c.attempt)
			ret = 0;
		if (!ret)
			ret = stat_rel(&c, rel, &st);
		if (!ret)
			ret = own(&c, req, rel, prel, &st);
	} while (call_again(&c, ret));
out:
	if (ret)
		fuse_reply_err(req, -ret);
	else
		reply_entry(req, fs, parent, name, &st);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	make_node(req, parent, name, MK_NOD, mode, rdev, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	make_node(req, parent, name, MK_DIR, mode, 0, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	make_node(req, parent, name, MK_SYMLINK, 0, 0, link);
}

/*
 * Rename (parent, name) out of the way to a hidden name in the same
 * directory, because handles are still open on it.
 */
static int silly_rename(struct call *c, uint64_t parent, const char *name,
			uint64_t ino)
{
	struct fs *fs = c->fs;
	char rel[PATH_MAX], silly[NAME_MAX + 1], srel[PATH_MAX];
	int ret;

	/* at the engine root, so the old directory can still be removed */
	snprintf(silly, sizeof(silly), FS_SILLY_PREFIX "%llx-%llx",
		 (unsigned long long)ino,
		 (unsigned long long)atomic_fetch_add(&fs->silly_seq, 1));
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, FS_ROOT_INO, silly, srel, sizeof(srel))))
		return ret;
	if (renameat(c->b->rootfd, rel, c->b->rootfd, srel))
		return -errno;
	fs_log(FS_LOG_DEBUG, "silly-renamed open file %s", rel);
	if (fs_inode_make_silly(fs->inodes, parent, name, FS_ROOT_INO, silly) == 0) {
		/* the last release came in between: nobody else removes it */
		if (unlinkat(c->b->rootfd, srel, 0))
			return -errno;
		fs_inode_unlink(fs->inodes, FS_ROOT_INO, silly);
	}
	return 0;
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX];
	bool silly = false;
	uint64_t ino;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		ino = fs_inode_find(fs->inodes, parent, name);
		if (ino && fs_inode_nopen(fs->inodes, ino) > 0) {
			ret = silly_rename(&c, parent, name, ino);
			silly = !ret;
		} else {
			ret = unlinkat(c.b->rootfd, rel, 0) ? -errno : 0;
			if (ret == -ENOENT && c.attempt)
				ret = 0;
			if (!ret)
				fs_inode_unlink(fs->inodes, parent, name);
		}
	} while (call_again(&c, ret));
	if (!ret && fs->cache) {
		if (silly)
			cache_detach_moved(fs);
		cache_evict(fs->cache, rel);
	}
out:
	fuse_reply_err(req, -ret);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX];
	int ret;

	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		ret = unlinkat(c.b->rootfd, rel, AT_REMOVEDIR) ? -errno : 0;
		if (ret == -ENOENT && c.attempt)
			ret = 0;
	} while (call_again(&c, ret));
	if (!ret)
		fs_inode_unlink(fs->inodes, parent, name);
	if (!ret && fs->cache)
		cache_evict(fs->cache, rel);
out:
	fuse_reply_err(req, -ret);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX], nrel[PATH_MAX];
	struct stat st;
	int ret;

	if (fs_is_silly_name(name) || fs_is_silly_name(newname)) {
		ret = -EPERM;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, newparent, newname, nrel, sizeof(nrel))))
		goto out;
	do {
		uint64_t victim;

		if ((ret = call_enter(&c)))
			break;
		/* an open file about to be replaced must stay reachable */
		victim = fs_inode_find(fs->inodes, newparent, newname);
		if (!(flags & RENAME_EXCHANGE) && victim &&
		    fs_inode_nopen(fs->inodes, victim) > 0 &&
		    !(flags & RENAME_NOREPLACE) && !stat_rel(&c, rel, &st) &&
		    !S_ISDIR(st.st_mode) &&
		    (ret = silly_rename(&c, newparent, newname, victim)))
			continue;
		ret = renameat2(c.b->rootfd, rel, c.b->rootfd, nrel, flags) ? -errno : 0;
		if (ret == -ENOENT && c.attempt && !stat_rel(&c, nrel, &st))
			ret = 0;        /* the first try moved it */
	} while (call_again(&c, ret));
	if (!ret) {
		if (flags & RENAME_EXCHANGE)
			fs_inode_exchange(fs->inodes, parent, name, newparent, newname);
		else
			fs_inode_rename(fs->inodes, parent, name, newparent, newname);
		/* detach first, so no handle refills the old keys afterwards */
		if (fs->cache) {
			cache_detach_moved(fs);
			cache_file_rename(fs->cache, rel, nrel);
		}
	}
out:
	fuse_reply_err(req, -ret);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX], nrel[PATH_MAX];
	struct stat st;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, newparent, newname, nrel, sizeof(nrel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		ret = linkat(c.b->rootfd, rel, c.b->rootfd, nrel, 0) ? -errno : 0;
		if (ret == -EEXIST && c.attempt)
			ret = 0;
		if (!ret)
			ret = stat_rel(&c, nrel, &st);
	} while (call_again(&c, ret));
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	/*
	 * The new name gets its own node id (identity is a path here), so the
	 * kernel would keep the old name's link count: drop its attributes.
	 */
	fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	reply_entry(req, fs, newparent, newname, &st);
}

/* -------------------------------------------------------------- files */

/*
 * A read-only open of a file wholly in the block cache while the engine is
 * offline: a handle without a backend fd, of generation 0, so that cache
 * hits serve every read and anything that needs the engine reopens the file
 * by path once it is back, as for any handle after a restart.  *st gets the
 * attributes the cache was checked against.  NULL: take the normal path.
 */
static struct fs_handle *offline_handle(struct fs *fs, uint64_t ino, const char *rel,
					struct fuse_file_info *fi, struct stat *st)
{
	struct fs_handle *h;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC) ||
	    !offline_attr(fs, ino, st) || !S_ISREG(st->st_mode) ||
	    !cache_holds_file(fs->cache, rel, st->st_size, mtime_ns(st)))
		return NULL;
	h = fs_handle_alloc(ino, fi->flags, false, fs->journal_dir, fs->o->journal_mem);
	if (!h)
		return NULL;
	pthread_rwlock_init(&h->cflock, NULL);
	h->fd = -1;
	h->gen = 0;
	fs_log(FS_LOG_DEBUG, "%s: opened from the cache, engine offline", rel);
	return h;
}

static void open_common(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t ino, mode_t mode, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	bool creating = name != NULL;
	char rel[PATH_MAX], prel[PATH_MAX];
	struct fs_handle *h = NULL;
	struct stat st;
	int ret, fd = -1;

	if (creating && fs_is_silly_name(name)) {
		ret = -EPERM;
		goto out;
	}
	ret = creating ? fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel)) :
			 fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel));
	if (!ret && creating)
		ret = fs_inode_path(fs->inodes, parent, NULL, prel, sizeof(prel));
	if (ret)
		goto out;
	if (!creating && (h = offline_handle(fs, ino, rel, fi, &st)))
		goto opened;
	do {
		/* O_APPEND is left to the kernel's offsets, so that a journal
		 * replay writes where the data went the first time */
		int flags = (fi->flags & ~O_APPEND) | O_CLOEXEC;

		if ((ret = call_enter(&c)))
			break;
		if (creating && c.attempt)
			flags &= ~(O_EXCL | O_TRUNC);   /* the first try may have made it */
		fd = openat(c.b->rootfd, rel, flags | (creating ? O_CREAT : 0), mode);
		ret = fd < 0 ? -errno : 0;
		/* the cache validates its blocks against these attributes */
		if (!ret && (creating || fs->cache))
			ret = fstat(fd, &st) ? -errno : 0;
		if (!ret && creating)
			ret = own(&c, req, rel, prel, &st);
		if (!ret) {
			h = fs_handle_alloc(creating ? 0 : ino, fi->flags, false,
					    fs->journal_dir, fs->o->journal_mem);
			if (!h)
				ret = -ENOMEM;
			else {
				pthread_rwlock_init(&h->cflock, NULL);
				h->fd = fd;
				h->gen = c.b->gen;
				fd = -1;
			}
		}
		if (fd >= 0) {
			close(fd);
			fd = -1;
		}
	} while (call_again(&c, ret));
	if (ret)
		goto out;
	if (creating) {
		struct fuse_entry_param e;

		if ((ret = make_entry(fs, parent, name, &st, &e))) {
			fs_handle_put(fs->handles, h);
			goto out;
		}
		h->ino = e.ino;
		if ((ret = add_handle(fs, h, fi))) {
			fs_inode_forget(fs->inodes, e.ino, 1);
			goto out;
		}
		cache_attach(fs, h, rel, &st, fi);
		if (fuse_reply_create(req, &e, fi) == -ENOENT) {
			cache_detach(h, NULL);
			fs_inode_forget(fs->inodes, e.ino, 1);
			fs_inode_close(fs->inodes, e.ino);
			fs_handle_remove(fs->handles, fi->fh);
			fs_engine_count_handle(fs->engine, -1);
		}
		return;
	}
opened:
	if ((ret = add_handle(fs, h, fi)))
		goto out;
	cache_attach(fs, h, rel, &st, fi);
	if (fuse_reply_open(req, fi) == -ENOENT) {
		cache_detach(h, NULL);
		fs_inode_close(fs->inodes, ino);
		fs_handle_remove(fs->handles, fi->fh);
		fs_engine_count_handle(fs->engine, -1);
	}
	return;
out:
	fuse_reply_err(req, -ret);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	open_common(req, 0, NULL, ino, 0, fi);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	open_common(req, parent, name, 0, mode, fi);
}

static pthread_key_t rbuf_key;
static pthread_once_t rbuf_once = PTHREAD_ONCE_INIT;

static void rbuf_init(void)
{
	pthread_key_create(&rbuf_key, free);
}

/* A per-thread read buffer of RW_MAX bytes, freed when the thread exits. */
static char *rbuf(void)
{
	char *b;

	pthread_once(&rbuf_once, rbuf_init);
	b = pthread_getspecific(rbuf_key);
	if (!b && (b = malloc(RW_MAX)))
		pthread_setspecific(rbuf_key, b);
	return b;
}

static ssize_t pread_full(int fd, char *buf, size_t size, off_t off)
{
	size_t done = 0;

	while (done < size) {
		ssize_t n = pread(fd, buf + done, size - done, off + done);

		if (n < 0)
			return -errno;
		if (!n)
			break;
		done += n;
	}
	return done;
}

/*
 * Read through handle h from the engine: on an engine loss, wait for the
 * restart (which reopens h and replays its journal) and read again.
 * Returns bytes read (short only at EOF) or -errno.
 */
static ssize_t handle_pread(struct fs *fs, struct fs_handle *h, char *buf,
			    size_t size, off_t off)
{
	struct call c = CALL_INIT(fs);
	ssize_t n = 0;
	int ret;

	do {
		if ((ret = handle_enter(&c, h)))
			continue;
		n = pread_full(h->fd, buf, size, off);
		ret = n < 0 ? (int)n : 0;
		pthread_rwlock_unlock(&h->lock);
	} while (call_again(&c, ret));
	return ret ? ret : n;
}

struct fetch_arg {
	struct fs *fs;
	struct fs_handle *h;
};

/* cache_fetch_fn: a cache miss reads whole blocks from the engine */
static ssize_t cache_fetch(void *arg, void *buf, size_t len, off_t off)
{
	struct fetch_arg *a = arg;

	return handle_pread(a->fs, a->h, buf, len, off);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *h = get_handle(fs, fi);
	char *buf = rbuf();
	bool cached = false;
	ssize_t n = 0;

	if (!h || !buf) {
		fuse_reply_err(req, h ? ENOMEM : EBADF);
		goto out;
	}
	if (size > RW_MAX)
		size = RW_MAX;
	if (fs->cache) {
		struct fetch_arg a = { .fs = fs, .h = h };

		pthread_rwlock_rdlock(&h->cflock);
		if (h->cf) {
			n = cache_read(h->cf, buf, size, off, cache_fetch, &a);
			cached = true;
		}
		pthread_rwlock_unlock(&h->cflock);
	}
	if (!cached)
		n = handle_pread(fs, h, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, n);
out:
	if (h)
		fs_handle_put(fs->handles, h);
}

/*
 * Make the journal durable-or-droppable: fsync the backend when it grew
 * past journal_max so that memory and spill stay bounded.  Caller holds
 * h->lock for reading.
 */
static int checkpoint(struct fs *fs, struct fs_handle *h)
{
	uint64_t seq;

	pthread_mutex_lock(&h->jlock);
	seq = fs_journal_bytes(h->journal) > fs->o->journal_max ?
	      fs_journal_seq(h->journal) : 0;
	pthread_mutex_unlock(&h->jlock);
	if (!seq)
		return 0;
	if (fsync(h->fd))
		return -errno;
	pthread_mutex_lock(&h->jlock);
	fs_journal_drop(h->journal, seq);
	pthread_mutex_unlock(&h->jlock);
	return 0;
}

static int pwrite_full(int fd, const char *buf, size_t size, off_t off)
{
	for (size_t done = 0; done < size;) {
		ssize_t n = pwrite(fd, buf + done, size - done, off + done);

		if (n < 0)
			return -errno;
		if (!n)
			return -EIO;
		done += n;
	}
	return 0;
}

/* Write through handle h and journal it.  Caller holds h->lock (read). */
static int write_journaled(struct fs *fs, struct fs_handle *h, const char *buf,
			   size_t size, off_t off)
{
	int ret = pwrite_full(h->fd, buf, size, off);

	if (ret)
		return ret;
	pthread_mutex_lock(&h->jlock);
	ret = fs_journal_write(h->journal, buf, size, off);
	pthread_mutex_unlock(&h->jlock);
	if (ret)
		fs_log(FS_LOG_ERR, "%s: cannot journal a write, forcing fsync", strerror(-ret));
	return ret ? (fsync(h->fd) ? -errno : 0) : checkpoint(fs, h);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	struct fs_handle *h = get_handle(fs, fi);
	int ret;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	do {
		if ((ret = handle_enter(&c, h)))
			continue;
		ret = write_journaled(fs, h, buf, size, off);
		pthread_rwlock_unlock(&h->lock);
	} while (call_again(&c, ret));
	if (!ret)
		cache_after_write(fs, h, buf, size, off);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, size);
	fs_handle_put(fs->handles, h);
}

enum sync_kind { SYNC_FLUSH, SYNC_FSYNC, SYNC_FDATASYNC };

/* flush/fsync the backend; on success the journal up to here is moot. */
static int sync_handle(struct fs *fs, struct fs_handle *h, enum sync_kind kind)
{
	struct call c = CALL_INIT(fs);
	int ret;

	do {
		uint64_t seq;

		if ((ret = handle_enter(&c, h)))
			continue;
		pthread_mutex_lock(&h->jlock);
		seq = fs_journal_seq(h->journal);
		pthread_mutex_unlock(&h->jlock);
		if (kind == SYNC_FLUSH) {
			/* close(dup()) makes the engine flush this file */
			int fd = dup(h->fd);

			ret = fd < 0 || close(fd) ? -errno : 0;
		} else {
			ret = (kind == SYNC_FDATASYNC ? fdatasync(h->fd) : fsync(h->fd)) ?
			      -errno : 0;
		}
		if (!ret) {
			pthread_mutex_lock(&h->jlock);
			fs_journal_drop(h->journal, seq);
			pthread_mutex_unlock(&h->jlock);
		}
		pthread_rwlock_unlock(&h->lock);
	} while (call_again(&c, ret));
	return ret;
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *h = get_handle(fs, fi);
	bool dirty;
	int ret = 0;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	/*
	 * Every write since the last successful flush is in the journal, so an
	 * empty journal means the engine has nothing of ours to flush: close()
	 * of a reader then works even while the engine is down.
	 */
	pthread_mutex_lock(&h->jlock);
	dirty = fs_journal_entries(h->journal) > 0;
	pthread_mutex_unlock(&h->jlock);
	if (dirty)
		ret = sync_handle(fs, h, SYNC_FLUSH);
	fs_handle_put(fs->handles, h);
	fuse_reply_err(req, -ret);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *h = get_handle(fs, fi);
	int ret = h ? sync_handle(fs, h, datasync ? SYNC_FDATASYNC : SYNC_FSYNC) :
		      -EBADF;

	if (h)
		fs_handle_put(fs->handles, h);
	fuse_reply_err(req, -ret);
}

/* Remove a silly-renamed file once its last handle is gone. */
static void silly_cleanup(struct fs *fs, uint64_t ino, const char *rel)
{
	struct call c = CALL_INIT(fs);
	int ret;

	do {
		if ((ret = call_enter(&c)))
			break;
		ret = unlinkat(c.b->rootfd, rel, 0) ? -errno : 0;
	} while (call_again(&c, ret));
	if (ret && ret != -ENOENT)
		fs_log(FS_LOG_WARN, "%s: cannot remove silly-renamed %s", strerror(-ret), rel);
	fs_inode_drop_name(fs->inodes, ino);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *h = get_handle(fs, fi);
	char rel[PATH_MAX];
	bool wrote = false;
	struct stat st;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	/* writes not yet covered by a flush (mmap, a failed flush) */
	if (fs_journal_entries(h->journal))
		sync_handle(fs, h, SYNC_FSYNC);
	/* closing a backend fd talks to the engine: watch it for hangs */
	pthread_rwlock_wrlock(&h->lock);
	if (h->fd >= 0) {
		fs_engine_watch_begin(fs->engine);
		/* the attributes our writes left, so that the next open keeps
		 * the blocks (a dead generation's fd just fails here) */
		wrote = fs->cache && atomic_load(&h->wrote) && !fstat(h->fd, &st);
		close(h->fd);
		fs_engine_watch_end(fs->engine);
		h->fd = -1;
	}
	pthread_rwlock_unlock(&h->lock);
	if (fs->cache)
		cache_detach(h, wrote ? &st : NULL);
	fs_handle_remove(fs->handles, fi->fh);
	fs_engine_count_handle(fs->engine, -1);
	if (fs_inode_close_silly(fs->inodes, h->ino, rel, sizeof(rel)) == 1)
		silly_cleanup(fs, h->ino, rel);
	fs_handle_put(fs->handles, h);
	fuse_reply_err(req, 0);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
			 off_t len, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	struct fs_handle *h = get_handle(fs, fi);
	int ret;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	do {
		if ((ret = handle_enter(&c, h)))
			continue;
		ret = fallocate(h->fd, mode, off, len) ? -errno : 0;
		pthread_rwlock_unlock(&h->lock);
	} while (call_again(&c, ret));
	/* holes, zeroed ranges or a new size: simply drop the file's blocks */
	if (!ret && fs->cache)
		cache_evict_ino(fs, h->ino);
	fs_handle_put(fs->handles, h);
	fuse_reply_err(req, -ret);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	struct fs_handle *h = get_handle(fs, fi);
	off_t res = 0;
	int ret;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	do {
		if ((ret = handle_enter(&c, h)))
			continue;
		res = lseek(h->fd, off, whence);
		ret = res < 0 ? -errno : 0;
		pthread_rwlock_unlock(&h->lock);
	} while (call_again(&c, ret));
	fs_handle_put(fs->handles, h);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_lseek(req, res);
}

/*
 * copy_file_range through read + journaled write: a server-side copy
 * inside the engine would bypass the journal and could be lost by a crash.
 */
static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			       off_t off_out, struct fuse_file_info *fi_out,
			       size_t len, int flags)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *in = get_handle(fs, fi_in), *out = get_handle(fs, fi_out);
	char *buf = rbuf();
	size_t done = 0;
	int ret = 0;

	if (!in || !out || !buf) {
		ret = buf ? -EBADF : -ENOMEM;
		goto out;
	}
	if (flags) {
		ret = -EINVAL;
		goto out;
	}
	while (done < len && !ret) {
		size_t want = len - done > RW_MAX ? RW_MAX : len - done;
		struct call c = CALL_INIT(fs);
		ssize_t n = 0;

		n = handle_pread(fs, in, buf, want, off_in + done);
		ret = n < 0 ? (int)n : 0;
		if (ret || !n)
			break;
		do {
			if ((ret = handle_enter(&c, out)))
				continue;
			ret = write_journaled(fs, out, buf, n, off_out + done);
			pthread_rwlock_unlock(&out->lock);
		} while (call_again(&c, ret));
		if (!ret) {
			cache_after_write(fs, out, buf, n, off_out + done);
			done += n;
		}
	}
out:
	if (in)
		fs_handle_put(fs->handles, in);
	if (out)
		fs_handle_put(fs->handles, out);
	if (ret && !done)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, done);
}

/* ------------------------------------------------------- directories */

static void free_snapshot(struct fs_handle *h)
{
	for (size_t i = 0; i < h->nents; i++)
		free(h->ents[i].name);
	free(h->ents);
	h->ents = NULL;
	h->nents = 0;
}

/* Read the whole directory into h->ents.  Caller holds h->lock (write). */
static int snapshot(struct fs *fs, struct fs_handle *h)
{
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX];
	int ret;

	if ((ret = fs_inode_path(fs->inodes, h->ino, NULL, rel, sizeof(rel))))
		return ret;
	do {
		struct fs_dirent *v = NULL;
		size_t n = 0, cap = 0;
		struct dirent *d;
		DIR *dir;
		int fd;

		if ((ret = call_enter(&c)))
			break;
		fd = openat(c.b->rootfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		dir = fd >= 0 ? fdopendir(fd) : NULL;
		if (!dir) {
			ret = -errno;
			if (fd >= 0)
				close(fd);
			continue;
		}
		for (errno = 0; (d = readdir(dir)); errno = 0) {
			if (fs_is_silly_name(d->d_name))
				continue;
			if (n == cap) {
				struct fs_dirent *nv;

				cap = cap ? cap * 2 : 64;
				nv = realloc(v, cap * sizeof(*v));
				if (!nv)
					break;
				v = nv;
			}
			v[n].name = strdup(d->d_name);
			if (!v[n].name)
				break;
			v[n].ino = d->d_ino;
			v[n].type = d->d_type;
			n++;
		}
		ret = errno ? -errno : 0;
		closedir(dir);
		if (ret) {
			while (n--)
				free(v[n].name);
			free(v);
			continue;
		}
		free_snapshot(h);
		h->ents = v;
		h->nents = n;
	} while (call_again(&c, ret));
	return ret;
}

/*
 * The snapshot is taken at the first readdir, not here: `df` and other
 * probes open the mount point without listing it and must not start the
 * engine.
 */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *h = fs_handle_alloc(ino, O_RDONLY, true, NULL, 0);
	int ret;

	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if ((ret = add_handle(fs, h, fi))) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT) {
		fs_inode_close(fs->inodes, ino);
		fs_handle_remove(fs->handles, fi->fh);
		fs_engine_count_handle(fs->engine, -1);
	}
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi, bool plus)
{
	struct fs *fs = req_fs(req);
	struct fs_handle *h = get_handle(fs, fi);
	char *buf, dirrel[PATH_MAX];
	size_t pos = 0;
	int ret = 0;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	buf = malloc(size);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	pthread_rwlock_wrlock(&h->lock);
	/* first listing, or rewinddir(): a fresh snapshot, as POSIX asks */
	if (off == 0 || !h->listed)
		ret = snapshot(fs, h);
	h->listed = true;
	if (!ret && plus)
		ret = fs_inode_path(fs->inodes, ino, NULL, dirrel, sizeof(dirrel));
	for (size_t i = off; !ret && i < h->nents; i++) {
		struct fs_dirent *d = &h->ents[i];
		size_t need;

		if (plus && strcmp(d->name, ".") && strcmp(d->name, "..")) {
			struct call c = CALL_INIT(fs);
			struct fuse_entry_param e = { 0 };
			char rel[PATH_MAX];
			struct stat st;
			int r;

			if (snprintf(rel, sizeof(rel), "%s/%s", dirrel, d->name) >= (int)sizeof(rel))
				r = -ENAMETOOLONG;
			else do {
				if ((r = call_enter(&c)))
					break;
				r = stat_rel(&c, rel, &st);
			} while (call_again(&c, r));
			/* a vanished entry is listed without attributes */
			if (!r && make_entry(fs, ino, d->name, &st, &e))
				e.ino = 0;
			if (r)
				e.ino = 0;
			need = fuse_add_direntry_plus(req, buf + pos, size - pos, d->name,
						      &e, i + 1);
			if (need > size - pos) {
				if (e.ino)
					fs_inode_forget(fs->inodes, e.ino, 1);
				break;
			}
		} else {
			struct stat st = { .st_ino = d->ino, .st_mode = (mode_t)d->type << 12 };

			if (plus) {
				struct fuse_entry_param e = { .attr = st };

				need = fuse_add_direntry_plus(req, buf + pos, size - pos,
							      d->name, &e, i + 1);
			} else {
				need = fuse_add_direntry(req, buf + pos, size - pos, d->name,
							 &st, i + 1);
			}
			if (need > size - pos)
				break;
		}
		pos += need;
	}
	pthread_rwlock_unlock(&h->lock);
out:
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_buf(req, buf, pos);
	free(buf);
	fs_handle_put(fs->handles, h);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);

	fs_handle_remove(fs->handles, fi->fh);
	fs_engine_count_handle(fs->engine, -1);
	fs_inode_close(fs->inodes, ino);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			struct fuse_file_info *fi)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX];
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		int fd;

		if ((ret = call_enter(&c)))
			break;
		fd = openat(c.b->rootfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		ret = fd < 0 || (datasync ? fdatasync(fd) : fsync(fd)) ? -errno : 0;
		if (fd >= 0)
			close(fd);
	} while (call_again(&c, ret));
out:
	fuse_reply_err(req, -ret);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	struct statvfs sv;
	int ret;

	/* df and CSI volume stats must not start the engine */
	if (!fs_engine_running(fs->engine)) {
		pthread_mutex_lock(&fs->root_lock);
		sv = fs->root_statvfs;
		pthread_mutex_unlock(&fs->root_lock);
		fuse_reply_statfs(req, &sv);
		return;
	}
	do {
		if ((ret = call_enter(&c)))
			break;
		ret = fstatvfs(c.b->rootfd, &sv) ? -errno : 0;
	} while (call_again(&c, ret));
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	pthread_mutex_lock(&fs->root_lock);
	fs->root_statvfs = sv;
	pthread_mutex_unlock(&fs->root_lock);
	fuse_reply_statfs(req, &sv);
}

/* ------------------------------------------------------------ xattrs */

enum xop { X_SET, X_GET, X_LIST, X_REMOVE };

static void xattr_common(fuse_req_t req, fuse_ino_t ino, enum xop op,
			 const char *name, const char *value, size_t size,
			 int flags)
{
	struct fs *fs = req_fs(req);
	struct call c = CALL_INIT(fs);
	char rel[PATH_MAX], pp[PATH_MAX + 32], *buf = NULL;
	ssize_t n = 0;
	int ret;

	/* `ls -l` of the mount point probes xattrs: answer without starting */
	if (ino == FS_ROOT_INO && !fs_engine_running(fs->engine) &&
	    (op == X_GET || op == X_LIST)) {
		if (op == X_GET)
			fuse_reply_err(req, ENODATA);
		else if (size)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_xattr(req, 0);
		return;
	}
	if ((op == X_GET || op == X_LIST) && size && !(buf = malloc(size))) {
		ret = -ENOMEM;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = call_enter(&c)))
			break;
		if ((ret = proc_path(&c, rel, pp, sizeof(pp))))
			continue;
		switch (op) {
		case X_SET:
			n = lsetxattr(pp, name, value, size, flags);
			break;
		case X_GET:
			n = lgetxattr(pp, name, buf, size);
			break;
		case X_LIST:
			n = llistxattr(pp, buf, size);
			break;
		case X_REMOVE:
			n = lremovexattr(pp, name);
			break;
		}
		ret = n < 0 ? -errno : 0;
	} while (call_again(&c, ret));
out:
	if (ret)
		fuse_reply_err(req, -ret);
	else if (op == X_SET || op == X_REMOVE)
		fuse_reply_err(req, 0);
	else if (size)
		fuse_reply_buf(req, buf, n);
	else
		fuse_reply_xattr(req, n);
	free(buf);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	xattr_common(req, ino, X_SET, name, value, size, flags);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	xattr_common(req, ino, X_GET, name, NULL, size, 0);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	xattr_common(req, ino, X_LIST, NULL, NULL, size, 0);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	xattr_common(req, ino, X_REMOVE, name, NULL, 0, 0);
}

/* --------------------------------------------------------------- init */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	conn->max_write = RW_MAX;
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS |
			FUSE_CAP_WRITEBACK_CACHE);
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* see the design comment: reads must not need the engine */
	if (((struct fs *)userdata)->cache)
		conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.fallocate = op_fallocate,
	.lseek = op_lseek,
	.copy_file_range = op_copy_file_range,
};

const struct fuse_lowlevel_ops *fs_ops(void)
{
	return &ops;
}
