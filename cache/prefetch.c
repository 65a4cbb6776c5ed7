/*
 * Prefetcher. Readers queue flights (FL_QUEUED) on cache.pf_queue: the
 * blocks ahead of a handle that reads sequentially (pf_read_ahead), and the
 * block behind a small random read that was served from the engine as is
 * (pf_fill_queue_locked). One thread, which owns one io_uring (no other
 * thread touches it), starts up to prefetch_depth of them at once as
 * whole-block reads of the backend file, which it opens itself (O_RDONLY,
 * through the ring) and keeps open in a small LRU of files. A finished
 * read goes to cache.store_q for the mover to write to a tier, so that this
 * thread keeps the engine busy; it counts against prefetch_depth until
 * stored, which bounds the queue. The thread's state lives until
 * cache_free() has stopped the mover too (pf_stop, then pf_free), so the
 * mover may wake it (pf_kick) without a lock.
 *
 * Every open and read is linked to an IORING_OP_LINK_TIMEOUT of
 * prefetch_timeout seconds, so a hung engine cancels them; a request whose
 * CQE still does not arrive 5 s after that is abandoned: its flight fails
 * (waiting readers fetch the block themselves) and its buffer is kept until
 * the CQE comes, since the kernel may still write into it. Any error drops
 * the prefetch and closes the file; the next attempt reopens it.
 *
 * Requests follow io_uring-cp.c: struct pf_req is the user_data, -EAGAIN and
 * short reads are requeued, a full SQ is flushed and retried, and every CQE
 * is marked seen. The link timeouts carry &pf_state.tag and are ignored.
 * The thread sleeps in io_uring_wait_cqe_timeout(); new work arrives as a
 * completion of a read on an eventfd that pf_kick() writes.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cache/cache_int.h"

#define PF_MAX_FILES 32
#define PF_GRACE_NS (5ULL * 1000000000ULL)
#define PF_BACKOFF_NS (5ULL * 1000000000ULL)  /* after an engine error */
#define PF_FILL_IDLE_NS (100ULL * 1000000ULL)  /* quiet time before fills start */

/* ---- the producer side: readers queue blocks ---------------------------- */

/* The engine failed a prefetch of m recently: leave m alone for a while. */
static bool pf_backing_off_locked(const struct cmeta *m)
{
	return m->pf_backoff_ns && now_ns() < m->pf_backoff_ns;
}

/* The backlog bound: queued flights hold no buffer, in-flight ones do. */
static bool pf_backlog_full_locked(const struct cache *c)
{
	return c->pf_queued + c->pf_inflight >= 2 * c->cfg.prefetch_depth;
}

/* Queue block index of m for the prefetch thread (the caller kicks it). */
static struct flight *pf_queue_locked(struct cache *c, struct cmeta *m, uint64_t index, bool fill)
{
	struct flight *f = flight_new_locked(c, m, index, FL_QUEUED, true);

	if (!f)
		return NULL;
	f->fill = fill;
	list_add_tail(&c->pf_queue, &f->qlink);
	c->pf_queued++;
	STAT_ADD(c->st.prefetch_issued, 1);
	return f;
}

int pf_fill_queue_locked(struct cache *c, struct cmeta *m, uint64_t index)
{
	if (!m->backend_path || pf_backing_off_locked(m))
		return -EAGAIN;
	if (flight_find_locked(c, m, index) || pf_backlog_full_locked(c))
		return 0;
	return pf_queue_locked(c, m, index, true) ? 1 : -EAGAIN;
}

int cache_warm_add(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns,
		   const char *backend_path)
{
	struct warm *w;
	int ret = 0;

	if (!c->pf || !c->cfg.prefetch_files || !size || size > c->cfg.prefetch_files ||
	    !backend_path || cache_holds_file(c, key, size, mtime_ns))
		return 0;
	w = calloc(1, sizeof(*w));
	if (!w || !(w->key = strdup(key)) || !(w->backend_path = strdup(backend_path))) {
		if (w)
			free(w->key);
		free(w);
		return 0;
	}
	w->size = size;
	w->mtime_ns = mtime_ns;
	pthread_mutex_lock(&c->lock);
	STAT_ADD(c->st.files_listed, 1);
	if (c->nwarm < CACHE_WARM_MAX) {
		list_add_tail(&c->warm, &w->link);
		c->nwarm++;
		ret = 1;
		w = NULL;
	} else {
		STAT_ADD(c->st.files_dropped, 1);
	}
	pthread_mutex_unlock(&c->lock);
	if (w) {
		free(w->key);
		free(w->backend_path);
		free(w);
	}
	if (ret)
		pf_kick(c);
	return ret;
}

void pf_warm_free_locked(struct cache *c)
{
	while (!list_empty(&c->warm)) {
		struct warm *w = container_of(c->warm.next, struct warm, link);

		list_del(&w->link);
		free(w->key);
		free(w->backend_path);
		free(w);
	}
	c->nwarm = 0;
}

/*
 * The prefetch thread has room and nothing queued: turn listed files into
 * queued flights, whole files, while the backlog allows and read-ahead is
 * not running away from the opens.  Caller holds c->lock; blocks whose
 * file changed go to `reap`.  Returns the flights queued.
 */
static unsigned pf_warm_locked(struct cache *c, struct list *reap)
{
	unsigned queued = 0;

	while (!list_empty(&c->warm) && c->pf_queued + c->pf_inflight < c->cfg.prefetch_depth) {
		struct warm *w = container_of(c->warm.next, struct warm, link);
		struct cmeta *m;
		int keep;

		/* fetched files go unopened: wait for the opens to catch up */
		if (c->warm_issued >= 64 && c->warm_used * 4 < c->warm_issued)
			break;
		list_del(&w->link);
		c->nwarm--;
		m = meta_open_locked(c, w->key, w->size, w->mtime_ns, w->backend_path, reap, &keep);
		w->backend_path = NULL;         /* taken */
		if (m && !pf_backing_off_locked(m) && !(keep && contains_locked(c, m, 0, 0))) {
			for (uint64_t b = 0; b * c->bs < w->size; b++) {
				if (entry_lookup_locked(c, m, b) || flight_find_locked(c, m, b))
					continue;
				if (!pf_queue_locked(c, m, b, false))
					break;
				queued++;
			}
			m->warmed = true;
			c->warm_issued++;
			STAT_ADD(c->st.files_read_ahead, 1);
		}
		if (m)
			meta_put_locked(c, m);
		free(w->key);
		free(w);
	}
	return queued;
}

bool pf_read_ahead(struct cache_file *cf, uint64_t first, uint64_t last)
{
	struct cache *c = cf->c;
	struct cmeta *m = cf->meta;
	bool queued = false, seq;

	pthread_mutex_lock(&cf->slot_lock);
	if (cf->last_block != UINT64_MAX && (first == cf->last_block || first == cf->last_block + 1)) {
		cf->seq_run++;
	} else {
		cf->seq_run = 0;
		cf->pf_until = 0;
	}
	cf->last_block = last;
	seq = cf->seq_run >= 1;
	if (seq && c->pf) {
		uint64_t from = last + 1 > cf->pf_until ? last + 1 : cf->pf_until;
		uint64_t to = last + c->cfg.prefetch;

		pthread_mutex_lock(&c->lock);
		if (pf_backing_off_locked(m))
			to = 0;
		for (uint64_t b = from; m->backend_path && b <= to; b++) {
			if (b * c->bs >= m->size || pf_backlog_full_locked(c))
				break;
			cf->pf_until = b + 1;
			if (entry_lookup_locked(c, m, b) || flight_find_locked(c, m, b))
				continue;
			if (!pf_queue_locked(c, m, b, false))
				break;
			queued = true;
		}
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_unlock(&cf->slot_lock);
	if (queued)
		pf_kick(c);
	return seq;
}

/* ---- the prefetch thread ------------------------------------------------- */

struct pf_file {
	struct cmeta *meta;   /* holds a meta reference */
	int fd;
	unsigned refs;        /* the file list + each read */
	bool listed;
	struct list link;
};

enum pf_type { PF_WAKE, PF_OPEN, PF_READ };

struct pf_req {
	enum pf_type type;
	bool abandoned;
	struct flight *f;     /* PF_READ, until the flight is completed */
	struct pf_file *file;
	struct blkbuf *buf;
	uint64_t off, deadline;
	uint32_t got, want;
	struct list link;     /* pf_state.reads, .opens or .abandoned */
	/* PF_OPEN: the file being opened and the flights (owned) waiting */
	struct cmeta *meta;   /* holds a meta reference until completed */
	char *path;
	struct flight **waiters;
	unsigned nwaiters, capw;
};

struct pf_state {
	/* fixed after pf_start */
	struct cache *c;
	int efd;              /* pf_kick() writes it, from any thread */
	int tag;              /* user_data of link timeouts and closes */
	struct __kernel_timespec ts;
	uint64_t timeout_ns;
	pthread_t thread;
	/* protected by cache.lock */
	bool stop;
	/* owned by the prefetch thread */
	struct io_uring ring;
	uint64_t efd_val;
	struct pf_req wake;
	struct list files, reads, opens, abandoned;
	unsigned nfiles, nreads, nopens;
};

static struct io_uring_sqe *pf_sqe(struct pf_state *p)
{
	struct io_uring_sqe *sqe;

	while (!(sqe = io_uring_get_sqe(&p->ring)))
		io_uring_submit(&p->ring);
	return sqe;
}

/* Make room for n linked SQEs so a request and its timeout stay together. */
static void pf_reserve(struct pf_state *p, unsigned n)
{
	if (io_uring_sq_space_left(&p->ring) < n)
		io_uring_submit(&p->ring);
}

static void pf_arm_wake(struct pf_state *p)
{
	struct io_uring_sqe *sqe = pf_sqe(p);

	io_uring_prep_read(sqe, p->efd, &p->efd_val, sizeof(p->efd_val), 0);
	io_uring_sqe_set_data(sqe, &p->wake);
	io_uring_submit(&p->ring);
}

static void pf_close_fd(struct pf_state *p, int fd)
{
	struct io_uring_sqe *sqe = pf_sqe(p);

	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data(sqe, &p->tag);
	io_uring_submit(&p->ring);
}

static void pf_file_put(struct pf_state *p, struct pf_file *pf)
{
	if (--pf->refs > 0)
		return;
	pthread_mutex_lock(&p->c->lock);
	meta_put_locked(p->c, pf->meta);
	pthread_mutex_unlock(&p->c->lock);
	free(pf);
}

static void pf_file_drop(struct pf_state *p, struct pf_file *pf)
{
	if (!pf->listed)
		return;
	list_del(&pf->link);
	p->nfiles--;
	pf->listed = false;
	if (pf->fd >= 0)
		pf_close_fd(p, pf->fd);   /* in-flight reads keep their own file reference */
	pf->fd = -1;
	pf_file_put(p, pf);
}

static void pf_handle(struct pf_state *p, struct io_uring_cqe *cqe);

/* Process completions for up to ms milliseconds, then expire overdue reads. */
static void pf_wait(struct pf_state *p, unsigned ms);

static void pf_read_submit(struct pf_state *p, struct pf_req *r)
{
	struct io_uring_sqe *sqe;

	pf_reserve(p, 2);
	sqe = pf_sqe(p);
	io_uring_prep_read(sqe, r->file->fd, r->buf->data + r->got, r->want - r->got, r->off + r->got);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data(sqe, r);
	sqe = pf_sqe(p);
	io_uring_prep_link_timeout(sqe, &p->ts, 0);
	io_uring_sqe_set_data(sqe, &p->tag);
	r->deadline = now_ns() + p->timeout_ns + PF_GRACE_NS;
	io_uring_submit(&p->ring);
}

/* The open backend file of m, or NULL. */
static struct pf_file *pf_file_find(struct pf_state *p, struct cmeta *m)
{
	for (struct list *l = p->files.next; l != &p->files; l = l->next) {
		struct pf_file *pf = container_of(l, struct pf_file, link);

		if (pf->meta == m) {
			list_del(&pf->link);
			list_add_head(&p->files, &pf->link);
			return pf;
		}
	}
	return NULL;
}

/* A backend file that just opened: listed, the least recent one beyond
 * PF_MAX_FILES closed. */
static struct pf_file *pf_file_add(struct pf_state *p, struct cmeta *m, int fd)
{
	struct cache *c = p->c;
	struct pf_file *pf = calloc(1, sizeof(*pf));

	if (!pf) {
		pf_close_fd(p, fd);
		return NULL;
	}
	pthread_mutex_lock(&c->lock);
	m->refs++;
	pthread_mutex_unlock(&c->lock);
	pf->meta = m;
	pf->fd = fd;
	pf->refs = 1;
	pf->listed = true;
	list_add_head(&p->files, &pf->link);
	if (++p->nfiles > PF_MAX_FILES)
		pf_file_drop(p, container_of(p->files.prev, struct pf_file, link));
	return pf;
}

/* The open in progress for m, or NULL. */
static struct pf_req *pf_open_find(struct pf_state *p, struct cmeta *m)
{
	for (struct list *l = p->opens.next; l != &p->opens; l = l->next) {
		struct pf_req *r = container_of(l, struct pf_req, link);

		if (r->meta == m)
			return r;
	}
	return NULL;
}

/* Flight f (owned) waits for open r. */
static bool pf_open_wait(struct pf_req *r, struct flight *f)
{
	if (r->nwaiters == r->capw) {
		unsigned cap = r->capw ? r->capw * 2 : 4;
		struct flight **nw = realloc(r->waiters, cap * sizeof(*nw));

		if (!nw)
			return false;
		r->waiters = nw;
		r->capw = cap;
	}
	r->waiters[r->nwaiters++] = f;
	return true;
}

/*
 * Open the backend file of m through the ring (with a link timeout) for
 * the flight f we own; its read starts when the open completes
 * (pf_open_done), so many small files are opened at once.  false: could
 * not even ask.
 */
static bool pf_open_submit(struct pf_state *p, struct cmeta *m, struct flight *f)
{
	struct cache *c = p->c;
	struct io_uring_sqe *sqe;
	struct pf_req *r = calloc(1, sizeof(*r));

	if (!r)
		return false;
	pthread_mutex_lock(&c->lock);
	if (m->backend_path)
		r->path = strdup(m->backend_path);
	m->refs++;
	pthread_mutex_unlock(&c->lock);
	r->meta = m;
	if (!r->path || !pf_open_wait(r, f)) {
		pthread_mutex_lock(&c->lock);
		meta_put_locked(c, m);
		pthread_mutex_unlock(&c->lock);
		free(r->path);
		free(r->waiters);
		free(r);
		return false;
	}
	r->type = PF_OPEN;
	r->deadline = now_ns() + p->timeout_ns + PF_GRACE_NS;
	list_add_tail(&p->opens, &r->link);
	p->nopens++;
	pf_reserve(p, 2);
	sqe = pf_sqe(p);
	io_uring_prep_openat(sqe, AT_FDCWD, r->path, O_RDONLY | O_CLOEXEC, 0);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data(sqe, r);
	sqe = pf_sqe(p);
	io_uring_prep_link_timeout(sqe, &p->ts, 0);
	io_uring_sqe_set_data(sqe, &p->tag);
	io_uring_submit(&p->ring);
	return true;
}

/* Take ownership of a popped flight before starting it. Returns false when
 * a demand reader claimed it meanwhile; our reference is then dropped. */
static bool pf_own(struct pf_state *p, struct flight *f)
{
	struct cache *c = p->c;
	bool own;

	pthread_mutex_lock(&c->lock);
	own = f->state == FL_QUEUED;
	if (own) {
		f->state = FL_RUNNING;
	} else {
		c->pf_inflight--;
		pthread_cond_broadcast(&c->idle_cv);
		flight_put_locked(c, f);
	}
	pthread_mutex_unlock(&c->lock);
	return own;
}

/* The flight we own is over: complete it and drop the prefetcher
 * reference. Data goes to store_q with the owner reference: the mover
 * stores it (store_step_locked; cache_free() drains what is left) while this
 * thread goes on reading and the flight serves readers. Otherwise (failed,
 * or empty past EOF) drop the owner reference here too. */
static void pf_flight_done(struct pf_state *p, struct flight *f, int res, struct blkbuf *buf)
{
	struct cache *c = p->c;

	flight_complete(c, f, res, buf);
	if (res == 0)
		STAT_ADD(c->st.prefetch_done, 1);
	else
		STAT_ADD(c->st.prefetch_failed, 1);
	pthread_mutex_lock(&c->lock);
	if (res == 0 && buf && buf->len) {
		list_add_tail(&c->store_q, &f->qlink);
		pthread_cond_signal(&c->mover_cv);
		flight_put_locked(c, f);
		pthread_mutex_unlock(&c->lock);
		return;
	}
	if (res < 0 && res != -ECANCELED)
		f->meta->pf_backoff_ns = now_ns() + PF_BACKOFF_NS;
	c->pf_inflight--;
	pthread_cond_broadcast(&c->idle_cv);
	flight_finish_locked(c, f);
	flight_put_locked(c, f);
	pthread_mutex_unlock(&c->lock);
}

static void pf_read_finish(struct pf_state *p, struct pf_req *r, int err)
{
	struct flight *f = r->f;

	list_del(&r->link);
	p->nreads--;
	r->f = NULL;
	if (err) {
		tier_log(TIER_LOG_DEBUG, "prefetch read failed, dropped: %s block %llu: %s", f->meta->key,
		      (unsigned long long)f->index, strerror(-err));
		pf_file_drop(p, r->file);
	} else {
		r->buf->len = r->got;
		STAT_ADD(p->c->st.engine_bytes, r->got);
		STAT_ADD(p->c->st.engine_reads, 1);
	}
	pf_flight_done(p, f, err, err ? NULL : r->buf);
	if (r->abandoned) {
		list_add_tail(&p->abandoned, &r->link);
		return;
	}
	pf_file_put(p, r->file);
	blkbuf_put(r->buf);
	free(r);
}

/* Read flight f (owned) from the open file pf. */
static void pf_read_start(struct pf_state *p, struct flight *f, struct pf_file *pf)
{
	struct cache *c = p->c;
	struct pf_req *r = calloc(1, sizeof(*r));

	if (r && !(r->buf = blkbuf_new(c->bs))) {
		free(r);
		r = NULL;
	}
	if (!r) {
		pf_flight_done(p, f, -EIO, NULL);
		return;
	}
	pf->refs++;
	r->type = PF_READ;
	r->f = f;
	r->file = pf;
	r->off = f->index * (uint64_t)c->bs;
	r->want = c->bs;
	list_add_tail(&p->reads, &r->link);
	p->nreads++;
	pf_read_submit(p, r);
}

static void pf_begin(struct pf_state *p, struct flight *f)
{
	struct cache *c = p->c;
	struct pf_file *pf;
	struct pf_req *o;
	bool backoff;

	pthread_mutex_lock(&c->lock);
	backoff = pf_backing_off_locked(f->meta);
	pthread_mutex_unlock(&c->lock);
	if (!pf_own(p, f))
		return;
	if (backoff) {
		pf_flight_done(p, f, -ECANCELED, NULL);
		return;
	}
	if ((pf = pf_file_find(p, f->meta))) {
		pf_read_start(p, f, pf);
		return;
	}
	o = pf_open_find(p, f->meta);
	if (o ? !pf_open_wait(o, f) : !pf_open_submit(p, f->meta, f))
		pf_flight_done(p, f, -EIO, NULL);
}

/* An open is over (res: its fd or -errno): start its waiters' reads, or
 * fail them; the request itself stays for the caller to free. */
static void pf_open_done(struct pf_state *p, struct pf_req *r, int res)
{
	struct cache *c = p->c;
	struct pf_file *pf = NULL;

	list_del(&r->link);
	p->nopens--;
	if (res >= 0)
		pf = pf_file_add(p, r->meta, res);
	else
		tier_log(TIER_LOG_DEBUG, "prefetch open failed: %s: %s", r->path, strerror(-res));
	for (unsigned i = 0; i < r->nwaiters; i++) {
		if (pf)
			pf_read_start(p, r->waiters[i], pf);
		else
			pf_flight_done(p, r->waiters[i], res < 0 ? res : -EIO, NULL);
	}
	pthread_mutex_lock(&c->lock);
	meta_put_locked(c, r->meta);
	pthread_mutex_unlock(&c->lock);
	r->meta = NULL;
	free(r->path);
	r->path = NULL;
	free(r->waiters);
	r->waiters = NULL;
	r->nwaiters = 0;
}

static void pf_handle(struct pf_state *p, struct io_uring_cqe *cqe)
{
	void *data = io_uring_cqe_get_data(cqe);
	int res = cqe->res;
	struct pf_req *r = data;

	io_uring_cqe_seen(&p->ring, cqe);
	if (!data || data == &p->tag)
		return;
	if (r == &p->wake) {
		bool stop;

		pthread_mutex_lock(&p->c->lock);
		stop = p->stop;
		pthread_mutex_unlock(&p->c->lock);
		if (!stop)
			pf_arm_wake(p);
		return;
	}
	if (r->abandoned && !r->f) {
		/* late completion of a request we gave up on */
		if (r->type == PF_OPEN) {
			if (res >= 0)
				pf_close_fd(p, res);
		} else {
			list_del(&r->link);
			pf_file_put(p, r->file);
			blkbuf_put(r->buf);
		}
		free(r);
		return;
	}
	if (r->type == PF_OPEN) {
		pf_open_done(p, r, res == -ECANCELED ? -ETIMEDOUT : res);
		free(r);
		return;
	}
	if (res == -EAGAIN || res == -EINTR) {
		pf_read_submit(p, r);
	} else if (res < 0) {
		pf_read_finish(p, r, res == -ECANCELED ? -ETIMEDOUT : res);
	} else if (res == 0) {
		pf_read_finish(p, r, 0);          /* EOF: short last block */
	} else {
		r->got += (uint32_t)res;
		if (r->got < r->want)
			pf_read_submit(p, r);         /* short read: requeue the rest */
		else
			pf_read_finish(p, r, 0);
	}
}

static void pf_wait(struct pf_state *p, unsigned ms)
{
	struct __kernel_timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long long)(ms % 1000) * 1000000 };
	struct io_uring_cqe *cqe;
	uint64_t now;
	int ret;

	ret = io_uring_wait_cqe_timeout(&p->ring, &cqe, &ts);
	if (ret == 0) {
		pf_handle(p, cqe);
		while (io_uring_peek_cqe(&p->ring, &cqe) == 0)
			pf_handle(p, cqe);
	}
	now = now_ns();
	for (struct list *l = p->opens.next, *next; l != &p->opens; l = next) {
		struct pf_req *r = container_of(l, struct pf_req, link);

		next = l->next;
		if (now > r->deadline) {
			tier_log(TIER_LOG_WARN, "prefetch open abandoned: %s: engine not answering",
				 r->path);
			/* freed (and its fd closed) when the CQE comes */
			pf_open_done(p, r, -ETIMEDOUT);
			r->abandoned = true;
		}
	}
	for (struct list *l = p->reads.next, *next; l != &p->reads; l = next) {
		struct pf_req *r = container_of(l, struct pf_req, link);

		next = l->next;
		if (now > r->deadline) {
			tier_log(TIER_LOG_WARN, "prefetch read abandoned: %s block %llu: engine not answering",
				 r->f->meta->key, (unsigned long long)r->f->index);
			r->abandoned = true;
			pf_read_finish(p, r, -ETIMEDOUT);
		}
	}
}

static void *pf_main(void *arg)
{
	struct pf_state *p = arg;
	struct cache *c = p->c;
	struct flight *take[64];

	pf_arm_wake(p);
	for (;;) {
		struct list *l, *next;
		bool stop, fills_wait;
		unsigned n = 0;

		pthread_mutex_lock(&c->lock);
		stop = p->stop;
		/* fills yield to small reads that go to the engine directly */
		fills_wait = !stop && now_ns() - __atomic_load_n(&c->last_direct_ns, __ATOMIC_RELAXED) <
				      PF_FILL_IDLE_NS;
		if (!stop && list_empty(&c->pf_queue) && !list_empty(&c->warm)) {
			struct list reap;

			list_init(&reap);
			if (pf_warm_locked(c, &reap)) {
				pthread_mutex_unlock(&c->lock);
				reap_run(c, &reap);
				continue;       /* take them */
			}
			pthread_mutex_unlock(&c->lock);
			reap_run(c, &reap);
			pthread_mutex_lock(&c->lock);
		}
		for (l = c->pf_queue.next; l != &c->pf_queue && n < 64 &&
		     (stop || c->pf_inflight < c->cfg.prefetch_depth); l = next) {
			struct flight *f = container_of(l, struct flight, qlink);

			next = l->next;
			if (f->fill && fills_wait)
				continue;
			list_del(&f->qlink);
			c->pf_queued--;
			c->pf_inflight++;
			f->pf_taken = true;    /* stays FL_QUEUED until pf_own() */
			f->refs++;
			take[n++] = f;
		}
		pthread_mutex_unlock(&c->lock);
		for (unsigned i = 0; i < n; i++) {
			if (stop) {
				if (pf_own(p, take[i]))
					pf_flight_done(p, take[i], -ECANCELED, NULL);
			}
			else
				pf_begin(p, take[i]);
		}
		if (stop) {
			uint64_t soon = now_ns() + 1000000000ULL;

			if (n)
				continue;    /* drain the whole queue first */
			/* give in-flight reads one second, then abandon them */
			for (l = p->reads.next; l != &p->reads; l = l->next) {
				struct pf_req *r = container_of(l, struct pf_req, link);

				if (r->deadline > soon)
					r->deadline = soon;
			}
			for (l = p->opens.next; l != &p->opens; l = l->next) {
				struct pf_req *r = container_of(l, struct pf_req, link);

				if (r->deadline > soon)
					r->deadline = soon;
			}
			if (!p->nreads && !p->nopens)
				break;
		}
		pf_wait(p, fills_wait ? 50 : 1000);
	}
	while (!list_empty(&p->files))
		pf_file_drop(p, container_of(p->files.next, struct pf_file, link));
	/* abandoned requests may still be written by the kernel: leak them */
	return NULL;
}

int pf_start(struct cache *c, char *err, size_t errlen)
{
	struct pf_state *p = calloc(1, sizeof(*p));
	unsigned entries = 2 * c->cfg.prefetch_depth + 16;
	const char *what = "eventfd";
	int ret;

	if (!p)
		return -ENOMEM;
	p->c = c;
	p->wake.type = PF_WAKE;
	p->timeout_ns = (uint64_t)c->cfg.prefetch_timeout * 1000000000ULL;
	p->ts.tv_sec = c->cfg.prefetch_timeout;
	list_init(&p->files);
	list_init(&p->reads);
	list_init(&p->opens);
	list_init(&p->abandoned);
	p->efd = eventfd(0, EFD_CLOEXEC);
	if (p->efd < 0) {
		ret = -errno;
		goto out_free;
	}
	what = "io_uring setup";
	ret = io_uring_queue_init(entries, &p->ring, 0);
	if (ret < 0)
		goto out_close;
	c->pf = p;
	what = "thread";
	ret = -pthread_create(&p->thread, NULL, pf_main, p);
	if (ret < 0) {
		c->pf = NULL;
		goto out_ring;
	}
	return 0;

out_ring:
	io_uring_queue_exit(&p->ring);
out_close:
	close(p->efd);
out_free:
	free(p);
	snprintf(err, errlen, "prefetch start failed: %s: %s", what, strerror(-ret));
	return ret;
}

void pf_kick(struct cache *c)
{
	uint64_t one = 1;

	if (c->pf && write(c->pf->efd, &one, sizeof(one)) < 0)
		tier_log(TIER_LOG_DEBUG, "prefetch wakeup failed: eventfd: %s", strerror(errno));
}

void pf_stop(struct cache *c)
{
	struct pf_state *p = c->pf;

	if (!p)
		return;
	pthread_mutex_lock(&c->lock);
	p->stop = true;
	pthread_mutex_unlock(&c->lock);
	pf_kick(c);
	pthread_join(p->thread, NULL);
}

void pf_free(struct cache *c)
{
	struct pf_state *p = c->pf;

	if (!p)
		return;
	c->pf = NULL;
	io_uring_queue_exit(&p->ring);
	close(p->efd);
	free(p);
}
