/*
 * The mover thread: stores blocks the prefetcher read (store_q), demotes the
 * least recently used blocks of a tier above its high watermark to the next
 * tier until it is back at its low watermark (the last tier evicts), and
 * promotes blocks hit in a lower tier to the top tier (a bounded queue).
 * Every move copies the block to a new file name and swaps the entry under
 * cache.lock, so a reader holding a pin on the old one is never disturbed.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cache/cache_int.h"

/* Copy pinned entry e (caller's pin is consumed) to tier j, where need bytes
 * are already reserved. buf: data if already in memory (promotion), else it
 * is read from e's tier. Called and returns with c->lock held. */
static void move_block_locked(struct cache *c, struct centry *e, size_t j, struct blkbuf *buf)
{
	struct ctier *src = &c->tiers[e->tier], *dst = &c->tiers[j];
	size_t from = e->tier;
	struct tier_block sb, db;
	struct centry *e2;
	struct list reap;

	list_init(&reap);
	e->moving = true;
	entry_desc(c, e, &sb);
	/* a new name: the old file may still await its unlink in this tier */
	db = sb;
	db.seq = ++c->seq;
	pthread_mutex_unlock(&c->lock);

	int rret = 0, wret = 0;

	if (!buf) {
		buf = blkbuf_new(e->len);
		rret = buf ? tier_read(src->store, &sb, buf->data, src->verify) : -ENOMEM;
	} else {
		blkbuf_get(buf);
	}
	if (rret >= 0)
		wret = tier_write(dst->store, &db, buf->data);
	else
		entry_read_failed(c, e, rret);
	blkbuf_put(buf);

	pthread_mutex_lock(&c->lock);
	dst->reserved -= e->bytes;
	e->moving = false;
	if (rret < 0) {
		entry_kill_locked(c, e, &reap);   /* bad or unreadable: drop it */
	} else if (wret < 0) {
		dst->st.write_errors++;
	} else if (e->dead || !(e2 = malloc(sizeof(*e2)))) {
		/* dropped meanwhile (or no memory): the copy goes */
		pthread_mutex_unlock(&c->lock);
		tier_remove(dst->store, &db);
		pthread_mutex_lock(&c->lock);
	} else {
		*e2 = *e;
		e2->pins = 0;
		e2->dead = e2->moving = false;
		e2->whole = e2->whole_busy = false;   /* the copy stays with e */
		e2->tier = (uint8_t)j;
		e2->dir = db.dir;
		e2->seq = db.seq;
		e->prefetched = false;   /* moved, not wasted */
		entry_kill_locked(c, e, &reap);
		entry_insert_locked(c, e2);
		if (j > from)
			src->st.demotions++;
		else
			src->st.promotions++;
	}
	entry_unpin_locked(c, e, &reap);
	if (!list_empty(&reap)) {
		pthread_mutex_unlock(&c->lock);
		reap_run(c, &reap);
		pthread_mutex_lock(&c->lock);
	}
}

/* Store the oldest prefetched block waiting in store_q, if any; returns
 * true if there was one. Called and returns with the lock held. */
static bool store_step_locked(struct cache *c)
{
	struct flight *f;

	if (list_empty(&c->store_q))
		return false;
	f = container_of(c->store_q.next, struct flight, qlink);
	list_del(&f->qlink);
	pthread_mutex_unlock(&c->lock);
	block_store(c, f->meta, f->index, f->gen, f->buf->data, f->buf->len, f);
	pthread_mutex_lock(&c->lock);
	c->pf_inflight--;
	pthread_cond_broadcast(&c->idle_cv);
	flight_finish_locked(c, f);
	pthread_mutex_unlock(&c->lock);
	pf_kick(c);               /* it may be waiting for room under prefetch_depth */
	pthread_mutex_lock(&c->lock);
	return true;
}

static struct promo promo_pop_locked(struct cache *c)
{
	struct promo p = c->promos[c->promo_head];

	c->promo_head = (c->promo_head + 1) % PROMO_MAX;
	c->promo_n--;
	return p;
}

/* One unit of mover work; returns true if it did something. Lock held.
 * Stores come first: they hold prefetch buffers and prefetch depth. */
static bool mover_step_locked(struct cache *c)
{
	if (store_step_locked(c))
		return true;
	for (size_t k = c->ntiers; k-- > 0;) {
		struct ctier *t = &c->tiers[k];
		struct centry *e;
		int j = -1;

		uint64_t level = t->used + t->reserved - t->freeing;

		if (level > t->high)
			t->draining = true;
		if (t->draining && level <= t->low)
			t->draining = false;
		if (!t->draining)
			continue;
		e = lru_victim_locked(t);
		if (!e) {
			t->draining = false;   /* all pinned; retried on the next wakeup */
			continue;
		}
		if (k + 1 < c->ntiers)
			j = reserve_locked(c, k + 1, e->bytes);
		if (j < 0) {
			struct list reap;

			list_init(&reap);
			t->st.evictions++;
			entry_kill_locked(c, e, &reap);
			pthread_mutex_unlock(&c->lock);
			reap_run(c, &reap);
			pthread_mutex_lock(&c->lock);
			return true;
		}
		e->pins++;
		move_block_locked(c, e, (size_t)j, NULL);
		return true;
	}
	if (c->promo_n) {
		struct promo p = promo_pop_locked(c);
		struct ctier *t0 = &c->tiers[0];
		struct list reap;

		if (!p.e->dead && !p.e->moving && p.e->tier > 0 && tier_usable(t0->store) &&
		    t0->used + t0->reserved + p.e->bytes <= t0->quota) {
			t0->reserved += p.e->bytes;
			move_block_locked(c, p.e, 0, p.buf);
			blkbuf_put(p.buf);
			return true;
		}
		list_init(&reap);
		entry_unpin_locked(c, p.e, &reap);
		blkbuf_put(p.buf);
		pthread_mutex_unlock(&c->lock);
		reap_run(c, &reap);
		pthread_mutex_lock(&c->lock);
		return true;
	}
	return false;
}

static void *mover_main(void *arg)
{
	struct cache *c = arg;

	pthread_mutex_lock(&c->lock);
	while (c->running) {
		struct timespec ts;

		c->mover_busy = true;
		while (c->running && mover_step_locked(c))
			;
		c->mover_busy = false;
		pthread_cond_broadcast(&c->idle_cv);
		if (!c->running)
			break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&c->mover_cv, &c->lock, &ts);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

static bool promo_queued_locked(const struct cache *c, const struct centry *e)
{
	for (unsigned i = 0; i < c->promo_n; i++)
		if (c->promos[(c->promo_head + i) % PROMO_MAX].e == e)
			return true;
	return false;
}

void promo_enqueue(struct cache *c, struct centry *e, struct blkbuf *buf)
{
	bool queued = false;

	pthread_mutex_lock(&c->lock);
	/* small reads hit one block many times: one queued move is enough */
	if (c->promo_n < PROMO_MAX && !e->dead && !e->moving && !promo_queued_locked(c, e)) {
		c->promos[(c->promo_head + c->promo_n) % PROMO_MAX] = (struct promo){ e, blkbuf_get(buf) };
		c->promo_n++;
		queued = true;
		pthread_cond_signal(&c->mover_cv);
	}
	pthread_mutex_unlock(&c->lock);
	if (!queued)
		entry_unpin(c, e);
}

void cache_quiesce(struct cache *c)
{
	pthread_mutex_lock(&c->lock);
	for (;;) {
		while (mover_step_locked(c))
			;
		if (!c->mover_busy && !c->pf_queued && !c->pf_inflight && !c->promo_n)
			break;
		pthread_cond_wait(&c->idle_cv, &c->lock);
	}
	pthread_mutex_unlock(&c->lock);
}

int mover_start(struct cache *c, char *err, size_t errlen)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	c->running = true;
	pthread_mutex_unlock(&c->lock);
	ret = -pthread_create(&c->mover, NULL, mover_main, c);
	if (ret < 0) {
		pthread_mutex_lock(&c->lock);
		c->running = false;
		pthread_mutex_unlock(&c->lock);
		snprintf(err, errlen, "cache thread start failed: mover: %s", strerror(-ret));
	}
	return ret;
}

void mover_stop(struct cache *c)
{
	struct list reap;
	bool had_mover;

	pthread_mutex_lock(&c->lock);
	had_mover = c->running;
	c->running = false;
	pthread_cond_broadcast(&c->mover_cv);
	pthread_mutex_unlock(&c->lock);
	if (had_mover)
		pthread_join(c->mover, NULL);
	/* what it left: prefetched blocks to store, queued promotions */
	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	while (store_step_locked(c))
		;
	while (c->promo_n) {
		struct promo p = promo_pop_locked(c);

		entry_unpin_locked(c, p.e, &reap);
		blkbuf_put(p.buf);
	}
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
}
