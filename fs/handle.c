/*
 * fs/handle.c - the life of an open file across engine restarts.
 *
 * Invariants (h is a file handle, b the entered generation):
 *  - h->fd belongs to generation h->gen.  Nobody uses h->fd without holding
 *    h->lock for reading with h->gen == b->gen; nobody replaces it without
 *    holding h->lock for writing.
 *  - Every write acknowledged through h and not yet covered by a successful
 *    flush or fsync is in h->journal, in the order the engine applied it.
 *  - Before a reopened fd is used for anything, the journal has been
 *    replayed onto it.  Both the supervisor (fs_recover_handles, before it
 *    lets requests through) and a request that meets an old fd
 *    (fs_handle_enter) reopen through handle_reopen(), under h->lock for
 *    writing, so the replay happens exactly once per generation.
 *  - A handle whose file cannot be reopened (gone, no path) is broken: its
 *    calls fail with EIO from then on; the others are not affected.
 *
 * The journal lock (jlock) is a leaf: it is held only to append, inspect
 * or drop entries, or across a replay (which runs under h->lock for
 * writing, so no writer of h appends meanwhile).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs_int.h"

/*
 * Reopen `h` against generation `b` and replay its journal.  Caller holds
 * h->lock for writing.  Returns 0, an engine-loss -errno for the caller to
 * report, or marks the handle broken (-EIO) when the file is gone.
 */
static int handle_reopen(struct fs *fs, struct fs_handle *h,
			 struct fs_backend *b)
{
	int flags = (h->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_APPEND)) | O_CLOEXEC;
	size_t entries, bytes;
	char rel[PATH_MAX];
	int fd, ret;

	if (h->gen >= b->gen || h->broken)
		return h->broken;
	ret = fs_inode_path(fs->inodes, h->ino, NULL, rel, sizeof(rel));
	if (ret) {
		fs_log(FS_LOG_ERR, "cannot reopen handle of inode %llu, it now fails with EIO: no path: %s",
		       (unsigned long long)h->ino, strerror(-ret));
		h->broken = -EIO;
		return h->broken;
	}
	fd = openat(b->rootfd, rel, flags);
	if (fd < 0) {
		ret = -errno;
		if (ret == -ENOTCONN || ret == -ECONNABORTED || ret == -EIO)
			return ret;
		fs_log(FS_LOG_ERR, "cannot reopen after engine restart, its handle now fails with EIO: %s: %s",
		       rel, strerror(-ret));
		h->broken = -EIO;
		return h->broken;
	}
	pthread_mutex_lock(&h->jlock);
	ret = fs_journal_replay(h->journal, fd);
	entries = fs_journal_entries(h->journal);
	bytes = fs_journal_bytes(h->journal);
	pthread_mutex_unlock(&h->jlock);
	if (ret) {
		close(fd);
		return ret;
	}
	if (entries)
		fs_log(FS_LOG_INFO, "replayed %zu journaled writes (%zu bytes) to %s",
		       entries, bytes, rel);
	if (h->fd >= 0)
		close(h->fd);
	h->fd = fd;
	h->gen = b->gen;
	return 0;
}

int fs_handle_enter(struct fs *fs, struct fs_call *c, struct fs_handle *h)
{
	int ret;

	if ((ret = fs_call_enter(c)))
		return ret;
	for (;;) {
		uint64_t gen;

		pthread_rwlock_rdlock(&h->lock);
		if (h->broken) {
			ret = h->broken;
			pthread_rwlock_unlock(&h->lock);
			return ret;
		}
		gen = h->gen;
		if (gen == c->b->gen)
			return 0;
		pthread_rwlock_unlock(&h->lock);
		if (gen > c->b->gen)
			return -ENOTCONN;       /* we hold an old generation: retry */
		pthread_rwlock_wrlock(&h->lock);
		ret = handle_reopen(fs, h, c->b);
		pthread_rwlock_unlock(&h->lock);
		if (ret)
			return ret;
	}
}

int fs_handle_call(struct fs *fs, struct fs_handle *h, fs_handle_fn fn,
		   void *arg)
{
	struct fs_call c = FS_CALL_INIT(fs->engine);
	int ret;

	do {
		if ((ret = fs_handle_enter(fs, &c, h)))
			continue;       /* fs_call_again() decides on a retry */
		ret = fn(fs, &c, h, arg);
		pthread_rwlock_unlock(&h->lock);
	} while (fs_call_again(&c, ret));
	return ret;
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

/* ------------------------------------------------------------- reads */

struct pread_arg {
	char *buf;
	size_t size;
	off_t off;
	ssize_t n;              /* out */
};

static int pread_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		    void *arg)
{
	struct pread_arg *a = arg;

	a->n = fs_pread_all(h->fd, a->buf, a->size, a->off);
	return a->n < 0 ? (int)a->n : 0;
}

ssize_t fs_handle_pread(struct fs *fs, struct fs_handle *h, char *buf,
			size_t size, off_t off)
{
	struct pread_arg a = { .buf = buf, .size = size, .off = off };
	int ret = fs_handle_call(fs, h, pread_fn, &a);

	return ret ? ret : a.n;
}

/* ------------------------------------------------------------ writes */

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

struct write_arg {
	const char *buf;
	size_t size;
	off_t off;
};

static int write_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		    void *arg)
{
	struct write_arg *a = arg;
	int ret = fs_pwrite_all(h->fd, a->buf, a->size, a->off);

	if (ret)
		return ret;
	pthread_mutex_lock(&h->jlock);
	ret = fs_journal_write(h->journal, a->buf, a->size, a->off);
	pthread_mutex_unlock(&h->jlock);
	if (ret) {
		fs_log(FS_LOG_ERR, "cannot journal a write, forcing fsync: %s", strerror(-ret));
		return fsync(h->fd) ? -errno : 0;
	}
	return checkpoint(fs, h);
}

int fs_handle_write(struct fs *fs, struct fs_handle *h, const char *buf,
		    size_t size, off_t off)
{
	struct write_arg a = { .buf = buf, .size = size, .off = off };

	return fs_handle_call(fs, h, write_fn, &a);
}

/* ------------------------------------------------------------- syncs */

static int sync_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		   void *arg)
{
	enum fs_sync_kind kind = *(enum fs_sync_kind *)arg;
	uint64_t seq;
	int ret;

	pthread_mutex_lock(&h->jlock);
	seq = fs_journal_seq(h->journal);
	pthread_mutex_unlock(&h->jlock);
	if (kind == FS_SYNC_FLUSH) {
		/* close(dup()) makes the engine flush this file */
		int fd = dup(h->fd);

		ret = fd < 0 || close(fd) ? -errno : 0;
	} else {
		ret = (kind == FS_SYNC_FDATASYNC ? fdatasync(h->fd) : fsync(h->fd)) ?
		      -errno : 0;
	}
	if (!ret) {
		pthread_mutex_lock(&h->jlock);
		fs_journal_drop(h->journal, seq);
		pthread_mutex_unlock(&h->jlock);
	}
	return ret;
}

int fs_handle_sync(struct fs *fs, struct fs_handle *h, enum fs_sync_kind kind)
{
	return fs_handle_call(fs, h, sync_fn, &kind);
}

bool fs_handle_dirty(struct fs_handle *h)
{
	bool dirty;

	pthread_mutex_lock(&h->jlock);
	dirty = h->journal && fs_journal_entries(h->journal) > 0;
	pthread_mutex_unlock(&h->jlock);
	return dirty;
}

void fs_handle_journal_truncate(struct fs *fs, uint64_t ino, off_t size)
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
