/*
 * fs/ops_file.c - open files: open, create, read, write, flush, fsync,
 * release, fallocate, lseek, copy_file_range.
 *
 * The crash-transparent work on a handle (reopen, journal, retries) lives
 * in fs/handle.c; the block cache coupling in fs/cache_link.c.  This file
 * turns FUSE requests into those calls and replies.
 *
 * O_APPEND is left to the kernel's offsets (the backend fd is opened
 * without it), so that a journal replay writes where the data went the
 * first time.
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/ops_int.h"
#include "fs/passthrough.h"

/*
 * A read-only open that needs no engine round trip: a handle without a
 * backend fd, of generation 0, which fs_handle_enter() opens by path on the
 * first read the block cache cannot serve, as it reopens any handle after
 * a restart.  That is possible when the metadata cache knows the file's
 * attributes (they are what the block cache is checked against), or while
 * the engine is offline for a file wholly in the block cache.  *st gets
 * the attributes.  NULL: take the normal path.
 */
static struct fs_handle *lazy_handle(struct fs *fs, uint64_t ino, const char *rel,
				     struct fuse_file_info *fi, struct stat *st)
{
	bool known, offline;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		return NULL;
	known = fs->meta && !fs_meta_attr(fs->meta, rel, st, false) && S_ISREG(st->st_mode);
	offline = !known && (!fs_meta_lookup(fs, rel, st) || fs_offline_attr(fs, ino, st));
	if (!known && !(offline && fs->cache && S_ISREG(st->st_mode) &&
			cache_holds_file(fs->cache, rel, st->st_size, fs_mtime_ns(st))))
		return NULL;
	return fs_handle_alloc(ino, fi->flags, false);
}

/*
 * Passthrough (fs/passthrough.c) is decided once the file's attributes are
 * known (the cache's copy is checked against them), for every open: an
 * open counted in `pt` until its handle is added (then in h->pt).  A
 * passthrough handle needs no backend fd (one it opened goes), as a lazy
 * handle, and nothing to reopen after an engine restart: its reads never
 * reach us.
 */
static void open_common(fuse_req_t req, fuse_ino_t parent, const char *name,
			fuse_ino_t ino, mode_t mode, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	bool creating = name != NULL;
	char rel[PATH_MAX], prel[PATH_MAX];
	struct fuse_entry_param e;
	struct fs_handle *h = NULL;
	struct stat st;
	int ret, fd = -1, pt = FS_PT_NONE, backing_id = 0;

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
	do {
		int flags = (fi->flags & ~O_APPEND) | O_CLOEXEC;

		/* first, and again after an engine loss (offline: from the
		 * cache) */
		if (!creating && (h = lazy_handle(fs, ino, rel, fi, &st)))
			goto opened;
		if ((ret = fs_call_enter(&c)))
			break;
		if (creating && c.attempt)
			flags &= ~(O_EXCL | O_TRUNC);   /* the first try may have made it */
		fd = openat(c.b->rootfd, rel, flags | (creating ? O_CREAT : 0), mode);
		ret = fd < 0 ? -errno : 0;
		/* the cache validates its blocks against these attributes */
		if (!ret && (creating || fs->cache))
			ret = fstat(fd, &st) ? -errno : 0;
		if (!ret && creating)
			ret = fs_own(fs, &c, req, rel, prel, &st);
		if (!ret) {
			h = fs_handle_alloc(ino, fi->flags, false);
			if (!h) {
				ret = -ENOMEM;
			} else {
				h->fd = fd;
				h->gen = c.b->gen;
				fd = -1;
			}
		}
		if (fd >= 0) {
			close(fd);
			fd = -1;
		}
	} while (fs_call_again(&c, ret));
	if (ret)
		goto out;
	if (creating || (fi->flags & O_TRUNC)) {
		fs_meta_changed(fs->meta, rel);
		if (creating)
			fs_meta_set_attr(fs->meta, rel, &st);
	}
	if (creating) {
		if ((ret = fs_make_entry(fs, parent, name, &st, h->gen, &e))) {
			fs_handle_put(fs->handles, h);
			goto out;
		}
		h->ino = ino = e.ino;
	}
opened:
	if ((pt = fs_pt_open(fs, ino, rel, &st, fi->flags, &backing_id)) < 0) {
		ret = pt;
		pt = FS_PT_NONE;
		if (creating)
			fs_inode_forget(fs->inodes, e.ino, 1);
		fs_handle_put(fs->handles, h);
		goto out;
	}
	if (pt == FS_PT_PASS && h->fd >= 0) {
		fs_closer_push(fs, h->fd);      /* the kernel reads the copy */
		h->fd = -1;
		h->gen = 0;
	}
	h->pt = (uint8_t)pt;
	h->backing = pt == FS_PT_PASS ? backing_id : 0;
	if ((ret = fs_add_handle(fs, h, fi))) {
		if (creating)
			fs_inode_forget(fs->inodes, e.ino, 1);
		goto out;
	}
	pt = FS_PT_NONE;        /* the handle's now */
	if (creating)
		fs_file_set_attrs(h->file, &st);
	fs_cache_attach(fs, h, rel, &st, fi);
	if (h->pt == FS_PT_PASS)
		ret = fs_pt_reply_open(req, fi, backing_id);
	else
		ret = creating ? fuse_reply_create(req, &e, fi) : fuse_reply_open(req, fi);
	if (ret == -ENOENT) {
		/* interrupted: the kernel never saw the handle (or the entry) */
		if (creating)
			fs_inode_forget(fs->inodes, e.ino, 1);
		fs_drop_handle(fs, h, fi);
	}
	return;
out:
	fs_pt_end(fs, ino, pt);
	fuse_reply_err(req, -ret);
}

void fs_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	open_common(req, 0, NULL, ino, 0, fi);
}

void fs_op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		  mode_t mode, struct fuse_file_info *fi)
{
	open_common(req, parent, name, 0, mode, fi);
}

void fs_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	char *buf = fs_rbuf();
	ssize_t n;

	if (!h || !buf) {
		fuse_reply_err(req, h ? ENOMEM : EBADF);
		goto out;
	}
	if (size > FS_RW_MAX)
		size = FS_RW_MAX;
	if (!fs_cache_read(fs, h, buf, size, off, &n))
		n = fs_handle_pread(fs, h, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, n);
out:
	if (h)
		fs_handle_put(fs->handles, h);
}

void fs_op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
		 off_t off, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	int ret;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	ret = fs_handle_write(fs, h, buf, size, off);
	if (!ret) {
		fs_cache_after_write(fs, h, buf, size, off);
		fs_meta_drop_ino(fs, h->ino);
	}
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, size);
	fs_handle_put(fs->handles, h);
}

void fs_op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
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
	if (fs_handle_dirty(fs, h, false))
		ret = fs_handle_sync(fs, h, FS_SYNC_FLUSH);
	fs_handle_put(fs->handles, h);
	fuse_reply_err(req, -ret);
}

void fs_op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		 struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	int ret = h ? fs_handle_sync(fs, h, datasync ? FS_SYNC_FDATASYNC : FS_SYNC_FSYNC) :
		      -EBADF;

	if (h)
		fs_handle_put(fs->handles, h);
	fuse_reply_err(req, -ret);
}

/* Remove a silly-renamed file once its last handle is gone. */
static void silly_cleanup(struct fs *fs, uint64_t ino, const char *rel)
{
	struct fs_call c = FS_CALL_INIT(fs->engine);
	int ret;

	do {
		if ((ret = fs_call_enter(&c)))
			break;
		ret = unlinkat(c.b->rootfd, rel, 0) ? -errno : 0;
	} while (fs_call_again(&c, ret));
	if (ret && ret != -ENOENT)
		fs_log(FS_LOG_WARN, "cannot remove silly-renamed file: %s: %s", rel,
		       strerror(-ret));
	fs_inode_drop_name(fs->inodes, ino);
}

void fs_op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	char rel[PATH_MAX];
	bool wrote = false;
	struct stat st;
	int fd;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	/* writes not yet covered by a flush (mmap, a failed flush) */
	if (fs_handle_dirty(fs, h, true))
		fs_handle_sync(fs, h, FS_SYNC_FSYNC);
	pthread_rwlock_wrlock(&h->lock);
	fd = h->fd;
	h->fd = -1;
	pthread_rwlock_unlock(&h->lock);
	if (fd >= 0) {
		/* the attributes our writes left, so that the next open keeps
		 * the blocks (a dead generation's fd just fails here) */
		if (fs->cache && atomic_load(&h->wrote)) {
			fs_engine_watch_begin(fs->engine);
			wrote = !fstat(fd, &st);
			fs_engine_watch_end(fs->engine);
		}
		/* the close is a round trip to the engine: off this path, but
		 * for a silly-renamed file whose removal may follow (an engine
		 * would keep a removed file that is still open) */
		if (fs_inode_is_silly(fs->inodes, h->ino)) {
			fs_engine_watch_begin(fs->engine);
			close(fd);
			fs_engine_watch_end(fs->engine);
		} else {
			fs_closer_push(fs, fd);
		}
	}
	fs_cache_detach(h, wrote ? &st : NULL);
	fs_handle_remove(fs->handles, fi->fh);
	fs_engine_count_handle(fs->engine, -1);
	fs_pt_end(fs, h->ino, h->pt);
	if (fs_inode_close_silly(fs->inodes, h->ino, rel, sizeof(rel)) == 1)
		silly_cleanup(fs, h->ino, rel);
	fs_handle_put(fs->handles, h);
	fuse_reply_err(req, 0);
}

void fs_op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
		     off_t len, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	int ret;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	ret = fs_handle_fallocate(fs, h, mode, off, len);
	/* holes, zeroed ranges or a new size: simply drop the file's blocks */
	if (!ret && fs->cache)
		fs_cache_evict_ino(fs, h->ino);
	if (!ret)
		fs_meta_drop_ino(fs, h->ino);
	fs_handle_put(fs->handles, h);
	fuse_reply_err(req, -ret);
}

struct lseek_arg {
	off_t off;
	int whence;
	off_t res;              /* out */
};

static int lseek_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		    void *arg)
{
	struct lseek_arg *a = arg;

	a->res = lseek(h->fd, a->off, a->whence);
	return a->res < 0 ? -errno : 0;
}

void fs_op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		 struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	struct lseek_arg a = { .off = off, .whence = whence };
	int ret;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	ret = fs_handle_call(fs, h, lseek_fn, &a);
	fs_handle_put(fs->handles, h);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_lseek(req, a.res);
}

/*
 * copy_file_range through read + journaled write: a server-side copy
 * inside the engine would bypass the journal and could be lost by a crash.
 */
void fs_op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			   struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			   off_t off_out, struct fuse_file_info *fi_out,
			   size_t len, int flags)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *in = fs_handle_get(fs->handles, fi_in->fh);
	struct fs_handle *out = fs_handle_get(fs->handles, fi_out->fh);
	char *buf = fs_rbuf();
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
		size_t want = len - done > FS_RW_MAX ? FS_RW_MAX : len - done;
		ssize_t n = fs_handle_pread(fs, in, buf, want, off_in + done);

		ret = n < 0 ? (int)n : 0;
		if (ret || !n)
			break;
		ret = fs_handle_write(fs, out, buf, n, off_out + done);
		if (!ret) {
			fs_cache_after_write(fs, out, buf, n, off_out + done);
			done += n;
		}
	}
	if (done)
		fs_meta_drop_ino(fs, out->ino);
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
