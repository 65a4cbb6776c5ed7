/*
 * fs/handle.c - the life of an open file across engine restarts.
 *
 * Invariants (h is a file handle, f = h->file, b the entered generation):
 *  - h->fd belongs to generation h->gen.  Nobody uses h->fd without holding
 *    h->lock for reading with h->gen == b->gen; nobody replaces it without
 *    holding h->lock for writing.
 *  - Every change (write, truncate, fallocate) acknowledged through any
 *    handle of f, or by path, and not yet made durable by a flush or fsync
 *    is in f->journal, in the order the engine applied it: each change is
 *    made and recorded under f->lock.
 *  - Before requests may use generation b, the supervisor has replayed the
 *    journal of every file onto b and made it durable there with an fsync
 *    (fs_recover_handles); only then are the handles reopened.  A replay
 *    that meets a dead engine again is simply run again by the next
 *    recovery: it is idempotent (fs/journal.c).
 *  - A handle whose file cannot be reopened (gone, no path) is broken: its
 *    calls fail with EIO from then on; the others are not affected.
 *
 * Bounds: after each journaled write the file is checkpointed (fsync, then
 * the journal up to there retired) when its unretired journal holds more
 * than journal_max bytes, more than twice the file's size plus 1 MiB (an
 * application that rewrites one region), or a change older than
 * journal_age; the checkpointer thread applies the age bound to files that
 * stopped writing.  So a replay never has more than about journal_max of
 * data to write.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs/ops_int.h"

static bool loss_errno(int ret)
{
	return ret == -ENOTCONN || ret == -ECONNABORTED || ret == -EIO;
}

/*
 * openat(rel) on generation b; where nothing is found, at the path a
 * rename in flight moves it to (rel is updated then).  -1 with errno.
 */
static int open_moved(struct fs *fs, struct fs_backend *b, char *rel, size_t len,
		      int flags)
{
	char moved[PATH_MAX];
	int fd = openat(b->rootfd, rel, flags);

	if (fd >= 0 || errno != ENOENT || fs_move_translate(fs, rel, moved, sizeof(moved)))
		return fd;
	fd = openat(b->rootfd, moved, flags);
	if (fd >= 0)
		snprintf(rel, len, "%s", moved);
	return fd;
}

/*
 * Replay f's journal onto generation `b` and make it durable there (fsync),
 * once per generation.  Caller holds f->lock.  Returns 0, or an engine-loss
 * -errno (the next recovery replays again); any other failure loses the
 * changes, which is logged, and marks the file lost.
 */
static int file_replay(struct fs *fs, struct fs_file *f, struct fs_backend *b)
{
	size_t entries, bytes;
	char rel[PATH_MAX];
	uint64_t seq;
	double t0;
	int fd, ret;

	if (!f->journal || f->replayed_gen >= b->gen || f->lost)
		return 0;
	entries = fs_journal_entries(f->journal);
	if (!entries) {
		f->replayed_gen = b->gen;
		return 0;
	}
	bytes = fs_journal_bytes(f->journal);
	seq = fs_journal_seq(f->journal);
	t0 = fs_now();
	if ((ret = fs_inode_path(fs->inodes, f->ino, NULL, rel, sizeof(rel))))
		goto out_lost;
	fd = open_moved(fs, b, rel, sizeof(rel), O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && f->have_attrs) {
		/* the engine lost the file's creation itself (s3fs uploads a
		 * new file only when it is first flushed): the create was
		 * acknowledged, so make it again */
		fd = openat(b->rootfd, rel, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			    f->mode & 07777);
		if (fd >= 0) {
			if (fchown(fd, f->uid, f->gid) || fchmod(fd, f->mode & 07777))
				fs_log(FS_LOG_WARN, "cannot restore the owner of a re-created file: %s: %s",
				       rel, strerror(errno));
			fs_log(FS_LOG_WARN, "re-created %s, which the engine had lost", rel);
		}
	}
	if (fd < 0) {
		ret = -errno;
		goto out_fd;
	}
	ret = fs_journal_replay(f->journal, fd);
	if (!ret)
		ret = fsync(fd) ? -errno : 0;
	close(fd);
out_fd:
	if (loss_errno(ret))
		return ret;
	if (ret)
		goto out_lost;
	fs_journal_retire(f->journal, seq, 0);
	f->replayed_gen = b->gen;
	fs_log(FS_LOG_INFO, "replayed %zu journaled changes (%zu bytes) to %s in %.3f s",
	       entries, bytes, rel, fs_now() - t0);
	return 0;
out_lost:
	fs_log(FS_LOG_ERR, "cannot replay %zu journaled changes of inode %llu, they are lost: %s",
	       entries, (unsigned long long)f->ino, strerror(-ret));
	fs_journal_retire(f->journal, seq, 0);
	f->lost = true;
	return 0;
}

/*
 * Reopen `h` against generation `b`, its file's journal replayed first.
 * Caller holds h->lock for writing.  Returns 0, an engine-loss -errno for
 * the caller to report, or marks the handle broken (-EIO) when the file is
 * gone.
 */
static int handle_reopen(struct fs *fs, struct fs_handle *h,
			 struct fs_backend *b)
{
	int flags = (h->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_APPEND)) | O_CLOEXEC;
	char rel[PATH_MAX];
	bool lost;
	int fd, ret;

	if (h->gen >= b->gen || h->broken)
		return h->broken;
	/* normally done by fs_recover_handles already */
	pthread_mutex_lock(&h->file->lock);
	ret = file_replay(fs, h->file, b);
	lost = h->file->lost;
	pthread_mutex_unlock(&h->file->lock);
	if (ret)
		return ret;
	if (lost && (h->flags & O_ACCMODE) != O_RDONLY) {
		/* its acknowledged changes are gone: fail, do not go on writing */
		h->broken = -EIO;
		return h->broken;
	}
	ret = fs_inode_path(fs->inodes, h->ino, NULL, rel, sizeof(rel));
	if (ret) {
		fs_log(FS_LOG_ERR, "cannot reopen handle of inode %llu, it now fails with EIO: no path: %s",
		       (unsigned long long)h->ino, strerror(-ret));
		h->broken = -EIO;
		return h->broken;
	}
	fd = open_moved(fs, b, rel, sizeof(rel), flags);
	if (fd < 0) {
		ret = -errno;
		if (loss_errno(ret))
			return ret;
		fs_log(FS_LOG_ERR, "cannot open on the engine, its handle now fails with EIO: %s: %s",
		       rel, strerror(-ret));
		h->broken = -EIO;
		return h->broken;
	}
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
	struct fs_file **fv;
	size_t n, nf;
	int ret = 0, reopened = 0;

	fs_engine_watch_begin(fs->engine);
	nf = fs_file_all(fs->handles, &fv);
	for (size_t i = 0; i < nf && !ret; i++) {
		pthread_mutex_lock(&fv[i]->lock);
		ret = file_replay(fs, fv[i], b);
		pthread_mutex_unlock(&fv[i]->lock);
	}
	fs_file_put_all(fs->handles, fv, nf);
	fs_engine_watch_end(fs->engine);
	if (ret)
		return ret;
	n = fs_handle_all(fs->handles, 0, &v);
	for (size_t i = 0; i < n && !ret; i++) {
		struct fs_handle *h = v[i];

		if (h->dir)
			continue;       /* directory handles live on snapshots */
		pthread_rwlock_wrlock(&h->lock);
		/* a handle never opened on the engine opens when first used */
		if (h->gen < b->gen && !h->broken && h->fd >= 0) {
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

void fs_journal_totals(struct fs *fs, size_t *bytes, size_t *entries)
{
	struct fs_file **v;
	size_t n = fs_file_all(fs->handles, &v);

	*bytes = *entries = 0;
	for (size_t i = 0; i < n; i++) {
		if (!v[i]->journal)
			continue;
		pthread_mutex_lock(&v[i]->lock);
		*bytes += fs_journal_bytes(v[i]->journal);
		*entries += fs_journal_entries(v[i]->journal);
		pthread_mutex_unlock(&v[i]->lock);
	}
	fs_file_put_all(fs->handles, v, n);
}

void fs_file_set_attrs(struct fs_file *f, const struct stat *st)
{
	pthread_mutex_lock(&f->lock);
	f->mode = st->st_mode;
	f->uid = st->st_uid;
	f->gid = st->st_gid;
	f->have_attrs = true;
	pthread_mutex_unlock(&f->lock);
}

void fs_handle_rebind(struct fs *fs, const struct fs_call *c, uint64_t ino,
		      const char *rel)
{
	struct fs_handle **v;
	size_t n = fs_handle_all(fs->handles, ino, &v);

	for (size_t i = 0; i < n; i++) {
		struct fs_handle *h = v[i];
		int fd;

		if (h->dir)
			continue;
		pthread_rwlock_wrlock(&h->lock);
		if (h->gen == c->b->gen && !h->broken && h->fd >= 0) {
			fd = openat(c->b->rootfd, rel,
				    (h->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_APPEND)) | O_CLOEXEC);
			if (fd >= 0) {
				close(h->fd);
				h->fd = fd;
			}
		}
		pthread_rwlock_unlock(&h->lock);
	}
	fs_handle_put_all(fs->handles, v, n);
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

/* ----------------------------------------------------------- changes */

/*
 * The journal of f wants a checkpoint?  Caller holds f->lock.
 */
static bool needs_checkpoint(struct fs *fs, struct fs_file *f)
{
	struct fs_journal *j = f->journal;
	size_t bytes = fs_journal_bytes(j);

	return fs_journal_entries(j) &&
	       (bytes > fs->o->journal_max ||
		bytes > 2 * (uint64_t)fs_journal_size(j) + (1u << 20) ||
		fs_journal_age(j) >= fs->o->journal_age);
}

/* fsync h->fd; on success everything acknowledged before is durable.
 * Caller holds h->lock for reading, not f->lock. */
static int checkpoint(struct fs_handle *h, bool datasync)
{
	struct fs_file *f = h->file;
	uint64_t seq = 0;

	if (f->journal) {
		pthread_mutex_lock(&f->lock);
		seq = fs_journal_seq(f->journal);
		pthread_mutex_unlock(&f->lock);
	}
	if (datasync ? fdatasync(h->fd) : fsync(h->fd))
		return -errno;
	if (f->journal) {
		pthread_mutex_lock(&f->lock);
		fs_journal_retire(f->journal, seq, 0);
		pthread_mutex_unlock(&f->lock);
	}
	atomic_store(&h->unflushed, false);
	return 0;
}

/*
 * Record a change made under f->lock.  When the journal cannot take it,
 * make the change durable at once instead (an fsync under f->lock, so that
 * nothing recorded after it can be older).  Returns 0, or -errno when
 * neither worked (the change is then not acknowledged).
 */
static int record(struct fs_handle *h, int jret)
{
	struct fs_file *f = h->file;

	if (!jret)
		return 0;
	fs_log(FS_LOG_ERR, "cannot journal a change, making it durable now: %s", strerror(-jret));
	if (fsync(h->fd))
		return -errno;
	fs_journal_retire(f->journal, fs_journal_seq(f->journal), 0);
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
	struct fs_file *f = h->file;
	bool cp = false;
	int ret;

	pthread_mutex_lock(&f->lock);
	ret = fs_pwrite_all(h->fd, a->buf, a->size, a->off);
	if (!ret && f->journal) {
		ret = record(h, fs_journal_write(f->journal, h->tag, a->buf, a->size, a->off));
		cp = !ret && needs_checkpoint(fs, f);
	}
	pthread_mutex_unlock(&f->lock);
	if (ret)
		return ret;
	atomic_store(&h->unflushed, true);
	return cp ? checkpoint(h, false) : 0;
}

int fs_handle_write(struct fs *fs, struct fs_handle *h, const char *buf,
		    size_t size, off_t off)
{
	struct write_arg a = { .buf = buf, .size = size, .off = off };

	return fs_handle_call(fs, h, write_fn, &a);
}

int fs_handle_truncate_fd(struct fs *fs, struct fs_handle *h, off_t size)
{
	struct fs_file *f = h->file;
	int ret;

	pthread_mutex_lock(&f->lock);
	ret = ftruncate(h->fd, size) ? -errno : 0;
	if (!ret && f->journal)
		ret = record(h, fs_journal_truncate(f->journal, h->tag, size));
	pthread_mutex_unlock(&f->lock);
	if (!ret)
		atomic_store(&h->unflushed, true);
	return ret;
}

int fs_handle_truncate_path(struct fs *fs, const struct fs_call *c,
			    uint64_t ino, const char *rel, off_t size)
{
	struct fs_file *f = fs_file_find(fs->handles, ino);
	char pp[PATH_MAX + 32];
	int ret;

	if ((ret = fs_proc_path(c, rel, pp, sizeof(pp))))
		goto out;
	if (f)
		pthread_mutex_lock(&f->lock);
	ret = truncate(pp, size) ? -errno : 0;
	if (!ret && f && f->journal && (ret = fs_journal_truncate(f->journal, 0, size))) {
		/* make it durable instead, by path */
		int fd = openat(c->b->rootfd, rel, O_WRONLY | O_CLOEXEC);

		fs_log(FS_LOG_ERR, "cannot journal a truncate, making it durable now: %s",
		       strerror(-ret));
		ret = fd < 0 || fsync(fd) ? -errno : 0;
		if (fd >= 0)
			close(fd);
		if (!ret)
			fs_journal_retire(f->journal, fs_journal_seq(f->journal), 0);
	}
	if (f)
		pthread_mutex_unlock(&f->lock);
out:
	if (f)
		fs_file_put(fs->handles, f);
	return ret;
}

struct falloc_arg {
	int mode;
	off_t off, len;
};

static int falloc_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		     void *arg)
{
	struct falloc_arg *a = arg;
	struct fs_file *f = h->file;
	int ret;

	pthread_mutex_lock(&f->lock);
	ret = fallocate(h->fd, a->mode, a->off, a->len) ? -errno : 0;
	if (!ret && f->journal)
		ret = record(h, fs_journal_fallocate(f->journal, h->tag, a->mode, a->off, a->len));
	pthread_mutex_unlock(&f->lock);
	if (!ret)
		atomic_store(&h->unflushed, true);
	return ret;
}

int fs_handle_fallocate(struct fs *fs, struct fs_handle *h, int mode,
			off_t off, off_t len)
{
	struct falloc_arg a = { .mode = mode, .off = off, .len = len };

	return fs_handle_call(fs, h, falloc_fn, &a);
}

/* ------------------------------------------------------------- syncs */

static int sync_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		   void *arg)
{
	enum fs_sync_kind kind = *(enum fs_sync_kind *)arg;
	struct fs_file *f = h->file;
	uint64_t seq = 0;
	int fd, ret;

	if (kind != FS_SYNC_FLUSH)
		return checkpoint(h, kind == FS_SYNC_FDATASYNC);
	if (f->journal) {
		pthread_mutex_lock(&f->lock);
		seq = fs_journal_seq(f->journal);
		pthread_mutex_unlock(&f->lock);
	}
	/* close(dup()) makes the engine flush this file */
	fd = dup(h->fd);
	ret = fd < 0 || close(fd) ? -errno : 0;
	if (ret)
		return ret;
	if (f->journal) {
		pthread_mutex_lock(&f->lock);
		fs_journal_retire(f->journal, seq, h->tag);
		pthread_mutex_unlock(&f->lock);
	}
	atomic_store(&h->unflushed, false);
	return 0;
}

int fs_handle_sync(struct fs *fs, struct fs_handle *h, enum fs_sync_kind kind)
{
	return fs_handle_call(fs, h, sync_fn, &kind);
}

bool fs_handle_dirty(struct fs *fs, struct fs_handle *h, bool release)
{
	struct fs_file *f = h->file;
	bool dirty;

	if (!f || !f->journal)
		return atomic_load(&h->unflushed);
	pthread_mutex_lock(&f->lock);
	/* changes made by path (tag 0) belong to no handle: the release of
	 * any handle makes them durable, so none is left behind with the
	 * last one */
	dirty = fs_journal_has_tag(f->journal, h->tag) ||
		(release && fs_journal_has_tag(f->journal, 0));
	pthread_mutex_unlock(&f->lock);
	return dirty;
}

/* ------------------------------------------------------ checkpointer */

struct fs_checkpointer {
	pthread_t thread;
	pthread_mutex_t lock;   /* a leaf */
	pthread_cond_t cv;      /* CLOCK_MONOTONIC */
	bool stop;              /* protected by lock */
};

/* fsync every file whose oldest unretired change is past journal_age. */
static void checkpoint_old(struct fs *fs)
{
	struct fs_file **fv;
	size_t nf = fs_file_all(fs->handles, &fv);

	for (size_t i = 0; i < nf; i++) {
		struct fs_file *f = fv[i];
		struct fs_handle **v;
		bool old;
		size_t n;

		if (!f->journal)
			continue;
		pthread_mutex_lock(&f->lock);
		old = fs_journal_entries(f->journal) &&
		      fs_journal_age(f->journal) >= fs->o->journal_age;
		pthread_mutex_unlock(&f->lock);
		if (!old)
			continue;
		/* through one writable handle (a reader's fsync need not make
		 * a writer's data durable on every engine) */
		n = fs_handle_all(fs->handles, f->ino, &v);
		for (size_t k = 0; k < n; k++)
			if ((v[k]->flags & O_ACCMODE) != O_RDONLY) {
				fs_handle_sync(fs, v[k], FS_SYNC_FSYNC);
				break;
			}
		fs_handle_put_all(fs->handles, v, n);
	}
	fs_file_put_all(fs->handles, fv, nf);
}

static void *checkpointer_main(void *arg)
{
	struct fs *fs = arg;
	struct fs_checkpointer *cp = fs->checkpointer;
	double period = fs->o->journal_age / 2 > 0.1 ? fs->o->journal_age / 2 : 0.1;
	struct timespec ts;

	pthread_mutex_lock(&cp->lock);
	while (!cp->stop) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += (time_t)period;
		ts.tv_nsec += (long)((period - (time_t)period) * 1e9);
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&cp->cv, &cp->lock, &ts);
		if (cp->stop)
			break;
		pthread_mutex_unlock(&cp->lock);
		checkpoint_old(fs);
		pthread_mutex_lock(&cp->lock);
	}
	pthread_mutex_unlock(&cp->lock);
	return NULL;
}

int fs_checkpointer_start(struct fs *fs)
{
	struct fs_checkpointer *cp;
	pthread_condattr_t ca;
	int ret;

	if (!fs_opts_journals(fs->o) || fs->o->journal_age <= 0)
		return 0;
	cp = calloc(1, sizeof(*cp));
	if (!cp)
		return -ENOMEM;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&cp->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&cp->lock, NULL);
	fs->checkpointer = cp;
	ret = -pthread_create(&cp->thread, NULL, checkpointer_main, fs);
	if (ret) {
		fs->checkpointer = NULL;
		pthread_cond_destroy(&cp->cv);
		pthread_mutex_destroy(&cp->lock);
		free(cp);
	}
	return ret;
}

void fs_checkpointer_stop(struct fs *fs)
{
	struct fs_checkpointer *cp = fs->checkpointer;

	if (!cp)
		return;
	pthread_mutex_lock(&cp->lock);
	cp->stop = true;
	pthread_cond_signal(&cp->cv);
	pthread_mutex_unlock(&cp->lock);
	pthread_join(cp->thread, NULL);
	pthread_cond_destroy(&cp->cv);
	pthread_mutex_destroy(&cp->lock);
	free(cp);
	fs->checkpointer = NULL;
}
