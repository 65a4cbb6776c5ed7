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

#define PF_MAX_FILES 8
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
	bool done, abandoned;
	int res;
	struct flight *f;     /* PF_READ, until the flight is completed */
	struct pf_file *file;
	struct blkbuf *buf;
	uint64_t off, deadline;
	uint32_t got, want;
	struct list link;     /* pf_state.reads or .abandoned */
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
	struct list files, reads, abandoned;
	unsigned nfiles, nreads;
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

/* Open the backend file of m through the ring (with a timeout). */
static struct pf_file *pf_file_get(struct pf_state *p, struct cmeta *m)
{
	struct cache *c = p->c;
	struct pf_file *pf;
	struct pf_req *r;
	struct io_uring_sqe *sqe;
	char *path = NULL;
	uint64_t deadline;
	int res;

	for (struct list *l = p->files.next; l != &p->files; l = l->next) {
		pf = container_of(l, struct pf_file, link);
		if (pf->meta == m) {
			list_del(&pf->link);
			list_add_head(&p->files, &pf->link);
			return pf;
		}
	}
	pthread_mutex_lock(&c->lock);
	if (m->backend_path)
		path = strdup(m->backend_path);
	pthread_mutex_unlock(&c->lock);
	r = calloc(1, sizeof(*r));
	if (!path || !r) {
		free(path);
		free(r);
		return NULL;
	}
	r->type = PF_OPEN;
	pf_reserve(p, 2);
	sqe = pf_sqe(p);
	io_uring_prep_openat(sqe, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data(sqe, r);
	sqe = pf_sqe(p);
	io_uring_prep_link_timeout(sqe, &p->ts, 0);
	io_uring_sqe_set_data(sqe, &p->tag);
	io_uring_submit(&p->ring);
	deadline = now_ns() + p->timeout_ns + PF_GRACE_NS;
	while (!r->done && now_ns() < deadline)
		pf_wait(p, 100);
	if (!r->done) {
		r->abandoned = true;   /* freed (and its fd closed) when the CQE comes */
		tier_log(TIER_LOG_WARN, "prefetch open abandoned: %s: engine not answering", path);
		free(path);
		return NULL;
	}
	res = r->res;
	free(r);
	if (res < 0) {
		tier_log(TIER_LOG_DEBUG, "prefetch open failed: %s: %s", path, strerror(-res));
		free(path);
		return NULL;
	}
	free(path);
	pf = calloc(1, sizeof(*pf));
	if (!pf) {
		pf_close_fd(p, res);
		return NULL;
	}
	pthread_mutex_lock(&c->lock);
	m->refs++;
	pthread_mutex_unlock(&c->lock);
	pf->meta = m;
	pf->fd = res;
	pf->refs = 1;
	pf->listed = true;
	list_add_head(&p->files, &pf->link);
	if (++p->nfiles > PF_MAX_FILES)
		pf_file_drop(p, container_of(p->files.prev, struct pf_file, link));
	return pf;
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

static void pf_begin(struct pf_state *p, struct flight *f)
{
	struct cache *c = p->c;
	struct pf_file *pf = NULL;
	struct pf_req *r = NULL;
	bool backoff;

	pthread_mutex_lock(&c->lock);
	backoff = pf_backing_off_locked(f->meta);
	pthread_mutex_unlock(&c->lock);
	if (!backoff)
		pf = pf_file_get(p, f->meta);   /* may wait for the engine */
	if (!pf_own(p, f))
		return;
	if (pf && (r = calloc(1, sizeof(*r))))
		r->buf = blkbuf_new(c->bs);
	if (!r || !r->buf) {
		free(r);
		pf_flight_done(p, f, backoff ? -ECANCELED : -EIO, NULL);
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
		r->res = res == -ECANCELED ? -ETIMEDOUT : res;
		r->done = true;
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
			if (!p->nreads)
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
