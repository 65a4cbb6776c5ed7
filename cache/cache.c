/*
 * Tiered block cache: index, placement, LRU, watermarks, mover thread,
 * read/write/truncate paths, close-to-open validation and rebuild.
 * See cache_int.h for the invariants this file keeps.
 *
 * Read path for one block (cache_read, block_get):
 *   1. the handle's two-slot buffer (whole blocks fetched by this handle);
 *   2. a live entry: pin it, read and verify just the requested range (its
 *      16 KiB chunks) outside the lock straight into the caller's buffer,
 *      unpin or hand the pin to the promotion queue;
 *   3. a flight for the block: wait for it if it is running, or claim it
 *      and fetch it ourselves if the prefetcher has only queued it;
 *   4. otherwise start a flight, fetch through the core, store the block.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "cache/cache_int.h"

/* ---- logging ------------------------------------------------------------ */

static void (*cache_log_fn)(int level, const char *msg);

void cache_set_log(void (*fn)(int level, const char *msg))
{
	cache_log_fn = fn;
	tier_set_log(fn);
}

void clog_(int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (cache_log_fn)
		cache_log_fn(level, msg);
	else if (level <= 4)
		fprintf(stderr, "lazarusfs: %s\n", msg);
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- buffers ------------------------------------------------------------ */

struct blkbuf *blkbuf_new(uint32_t cap)
{
	struct blkbuf *b = malloc(sizeof(*b) + cap);

	if (b) {
		b->refs = 1;
		b->len = 0;
	}
	return b;
}

struct blkbuf *blkbuf_get(struct blkbuf *b)
{
	if (b)
		__atomic_add_fetch(&b->refs, 1, __ATOMIC_RELAXED);
	return b;
}

void blkbuf_put(struct blkbuf *b)
{
	if (b && __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(b);
}

/* ---- file records ------------------------------------------------------- */

static struct cmeta *meta_find_locked(struct cache *c, const char *key, size_t keylen)
{
	uint64_t h = XXH3_64bits(key, keylen);
	struct cmeta *m;

	for (m = c->mhash[h & (c->mhash_size - 1)]; m; m = m->hnext)
		if (m->hash == h && m->keylen == keylen && !memcmp(m->key, key, keylen))
			return m;
	return NULL;
}

static void mhash_grow_locked(struct cache *c)
{
	size_t nsize = c->mhash_size * 2;
	struct cmeta **nh = calloc(nsize, sizeof(*nh));

	if (!nh)
		return;
	for (size_t i = 0; i < c->mhash_size; i++) {
		struct cmeta *m = c->mhash[i], *next;

		for (; m; m = next) {
			next = m->hnext;
			m->hnext = nh[m->hash & (nsize - 1)];
			nh[m->hash & (nsize - 1)] = m;
		}
	}
	free(c->mhash);
	c->mhash = nh;
	c->mhash_size = nsize;
}

/* Find or create; returns with a new reference, or NULL (ENOMEM, too long). */
static struct cmeta *meta_get_locked(struct cache *c, const char *key, size_t keylen)
{
	struct cmeta *m = meta_find_locked(c, key, keylen);
	size_t b;

	if (m) {
		m->refs++;
		return m;
	}
	if (keylen == 0 || keylen > TIER_KEY_MAX)
		return NULL;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->key = strndup(key, keylen))) {
		free(m);
		return NULL;
	}
	m->keylen = (uint32_t)keylen;
	m->hash = XXH3_64bits(key, keylen);
	m->refs = 1;
	list_init(&m->blocks);
	if (c->nmetas >= c->mhash_size)
		mhash_grow_locked(c);
	b = m->hash & (c->mhash_size - 1);
	m->hnext = c->mhash[b];
	c->mhash[b] = m;
	c->nmetas++;
	return m;
}

void meta_put_locked(struct cache *c, struct cmeta *m)
{
	struct cmeta **pp;

	if (--m->refs > 0)
		return;
	for (pp = &c->mhash[m->hash & (c->mhash_size - 1)]; *pp; pp = &(*pp)->hnext) {
		if (*pp == m) {
			*pp = m->hnext;
			break;
		}
	}
	c->nmetas--;
	free(m->backend_path);
	free(m->key);
	free(m);
}

/* ---- entries ------------------------------------------------------------ */

static size_t ehash_bucket(const struct cache *c, uint64_t key)
{
	return (size_t)(key & (c->ehash_size - 1));
}

static void ehash_grow_locked(struct cache *c)
{
	size_t nsize = c->ehash_size * 2;
	struct centry **nh = calloc(nsize, sizeof(*nh));

	if (!nh)
		return;
	for (size_t i = 0; i < c->ehash_size; i++) {
		struct centry *e = c->ehash[i], *next;

		for (; e; e = next) {
			next = e->hnext;
			e->hnext = nh[e->key & (nsize - 1)];
			nh[e->key & (nsize - 1)] = e;
		}
	}
	free(c->ehash);
	c->ehash = nh;
	c->ehash_size = nsize;
}

struct centry *entry_lookup_locked(struct cache *c, struct cmeta *m, uint64_t index)
{
	uint64_t key = tier_block_key(m->key, m->keylen, index);
	struct centry *e;

	for (e = c->ehash[ehash_bucket(c, key)]; e; e = e->hnext)
		if (e->key == key && e->meta == m && e->index == index)
			return e;
	return NULL;
}

/* Make a new live entry (takes a meta reference) in tier t at the LRU head,
 * charging bytes to the tier. */
static void entry_insert_locked(struct cache *c, struct centry *e)
{
	struct ctier *t = &c->tiers[e->tier];
	size_t b;

	if (c->nentries >= c->ehash_size)
		ehash_grow_locked(c);
	b = ehash_bucket(c, e->key);
	e->hnext = c->ehash[b];
	c->ehash[b] = e;
	c->nentries++;
	e->meta->refs++;
	e->meta->nblocks++;
	list_add_tail(&e->meta->blocks, &e->mlink);
	list_add_head(&t->lru, &e->lru);
	t->used += e->bytes;
	t->st.blocks++;
	if (t->used + t->reserved > t->high)
		pthread_cond_signal(&c->mover_cv);
}

/* Remove e from the index (it becomes dead). Its file stays and stays
 * charged until the last pin is gone; unpinned entries go to reap. */
static void entry_kill_locked(struct cache *c, struct centry *e, struct list *reap)
{
	struct centry **pp;

	if (e->dead)
		return;
	for (pp = &c->ehash[ehash_bucket(c, e->key)]; *pp; pp = &(*pp)->hnext) {
		if (*pp == e) {
			*pp = e->hnext;
			break;
		}
	}
	c->nentries--;
	list_del(&e->lru);
	list_del(&e->mlink);
	e->meta->nblocks--;
	e->dead = true;
	if (e->prefetched)
		STAT_ADD(c->st.prefetch_wasted, 1);
	if (e->pins == 0) {
		list_add_tail(reap, &e->lru);
		c->tiers[e->tier].freeing += e->bytes;
	}
}

static void entry_desc(const struct cache *c, const struct centry *e, struct tier_block *b)
{
	*b = (struct tier_block){
		.key = e->key, .seq = e->seq, .index = e->index, .len = e->len, .dir = e->dir,
		.block_size = c->bs,
		.file_size = e->file_size, .file_mtime_ns = e->file_mtime_ns,
		.file_key = e->meta->key, .file_key_len = e->meta->keylen,
	};
}

/* Unlink dead entries' files and release their charge. Call without lock. */
static void reap_run(struct cache *c, struct list *reap)
{
	while (!list_empty(reap)) {
		struct centry *e = container_of(reap->next, struct centry, lru);
		struct tier_block b;
		int ret;

		list_del(&e->lru);
		entry_desc(c, e, &b);
		ret = tier_remove(c->tiers[e->tier].store, &b);
		if (ret < 0 && ret != -ENOENT)
			clog_(4, "cache block unlink failed: %s", strerror(-ret));
		pthread_mutex_lock(&c->lock);
		c->tiers[e->tier].used -= e->bytes;
		c->tiers[e->tier].freeing -= e->bytes;
		c->tiers[e->tier].st.blocks--;
		meta_put_locked(c, e->meta);
		pthread_mutex_unlock(&c->lock);
		free(e);
	}
}

static void entry_unpin_locked(struct cache *c, struct centry *e, struct list *reap)
{
	if (--e->pins == 0 && e->dead) {
		list_add_tail(reap, &e->lru);
		c->tiers[e->tier].freeing += e->bytes;
	}
}

static void entry_unpin(struct cache *c, struct centry *e)
{
	struct list reap;

	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	entry_unpin_locked(c, e, &reap);
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
}

static void meta_kill_blocks_locked(struct cache *c, struct cmeta *m, uint64_t from_index,
				    struct list *reap)
{
	struct list *p, *next;

	for (p = m->blocks.next; p != &m->blocks; p = next) {
		struct centry *e = container_of(p, struct centry, mlink);

		next = p->next;
		if (e->index >= from_index)
			entry_kill_locked(c, e, reap);
	}
}

/* ---- flights ------------------------------------------------------------ */

struct flight *flight_find_locked(struct cache *c, struct cmeta *m, uint64_t index)
{
	struct list *p;

	for (p = c->flights.next; p != &c->flights; p = p->next) {
		struct flight *f = container_of(p, struct flight, link);

		if (f->meta == m && f->index == index && f->gen == m->gen)
			return f;
	}
	return NULL;
}

static struct flight *flight_new_locked(struct cache *c, struct cmeta *m, uint64_t index,
					enum flight_state state, bool prefetch)
{
	struct flight *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->meta = m;
	m->refs++;
	f->index = index;
	f->gen = m->gen;
	f->state = state;
	f->prefetch = prefetch;
	f->refs = 1;
	list_add_tail(&c->flights, &f->link);
	list_init(&f->qlink);
	return f;
}

/* A successful flight stays findable (FL_DONE, with its data) until its
 * owner has stored the block and calls flight_finish_locked(): a reader that
 * comes in between takes the data instead of fetching the block a second
 * time. A failed one is unlisted at once, so that the next reader tries
 * again. */
void flight_complete(struct cache *c, struct flight *f, int res, struct blkbuf *buf)
{
	pthread_mutex_lock(&c->lock);
	f->state = FL_DONE;
	f->res = res;
	f->buf = res == 0 ? blkbuf_get(buf) : NULL;
	if (res != 0)
		list_del(&f->link);
	pthread_cond_broadcast(&c->flight_cv);
	pthread_mutex_unlock(&c->lock);
}

void flight_finish_locked(struct cache *c, struct flight *f)
{
	list_del(&f->link);
	flight_put_locked(c, f);
}

void flight_put_locked(struct cache *c, struct flight *f)
{
	if (--f->refs > 0)
		return;
	meta_put_locked(c, f->meta);
	blkbuf_put(f->buf);
	free(f);
}

void flight_put(struct cache *c, struct flight *f)
{
	pthread_mutex_lock(&c->lock);
	flight_put_locked(c, f);
	pthread_mutex_unlock(&c->lock);
}

/* ---- placement ---------------------------------------------------------- */

/* Reserve need bytes in the first usable tier >= from that has room. */
static int reserve_locked(struct cache *c, size_t from, uint64_t need)
{
	for (size_t i = from; i < c->ntiers; i++) {
		struct ctier *t = &c->tiers[i];

		if (t->used + t->reserved + need <= t->quota && tier_usable(t->store)) {
			t->reserved += need;
			return (int)i;
		}
	}
	return -1;
}

static struct centry *lru_victim_locked(struct ctier *t)
{
	for (struct list *p = t->lru.prev; p != &t->lru; p = p->prev) {
		struct centry *e = container_of(p, struct centry, lru);

		if (!e->pins && !e->moving)
			return e;
	}
	return NULL;
}

/* Kill LRU blocks of the last usable tier until need bytes would fit once
 * they are unlinked. Returns true if anything was killed. */
static bool make_room_locked(struct cache *c, uint64_t need, struct list *reap)
{
	bool any = false;

	for (size_t k = c->ntiers; k-- > 0;) {
		struct ctier *t = &c->tiers[k];

		if (!tier_usable(t->store))
			continue;
		while (t->used + t->reserved - t->freeing + need > t->quota) {
			struct centry *e = lru_victim_locked(t);

			if (!e)
				break;
			t->st.evictions++;
			entry_kill_locked(c, e, reap);
			any = true;
		}
		return any;
	}
	return any;
}

/* Store a block fetched at generation gen (dropped if the file was
 * invalidated since). pf: the prefetch flight it came from, or NULL. */
int block_store(struct cache *c, struct cmeta *m, uint64_t index, uint64_t gen,
		const void *data, uint32_t len, struct flight *pf)
{
	uint64_t need = tier_block_bytes(len, m->keylen);
	struct tier_block b;
	struct centry *e;
	struct list reap;
	size_t from = 0;
	int ti = -1, ret, attempt = 0;

	if (c->ntiers == 0 || len == 0)
		return -ENOSPC;
	list_init(&reap);
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	pthread_mutex_lock(&c->lock);
again:
	if (m->gen != gen || entry_lookup_locked(c, m, index)) {
		ret = -ESTALE;
		goto out_unlock;
	}
	ti = reserve_locked(c, from, need);
	if (ti < 0) {
		if (attempt++ < 2 && make_room_locked(c, need, &reap)) {
			pthread_mutex_unlock(&c->lock);
			reap_run(c, &reap);
			pthread_mutex_lock(&c->lock);
			goto again;
		}
		STAT_ADD(c->st.fill_skipped, 1);
		ret = -ENOSPC;
		goto out_unlock;
	}
	b = (struct tier_block){
		.key = tier_block_key(m->key, m->keylen, index), .seq = ++c->seq, .index = index,
		.len = len, .block_size = c->bs, .file_size = m->rec_size, .file_mtime_ns = m->rec_mtime_ns,
		.file_key = m->key, .file_key_len = m->keylen,
	};
	pthread_mutex_unlock(&c->lock);

	ret = tier_write(c->tiers[ti].store, &b, data);

	pthread_mutex_lock(&c->lock);
	c->tiers[ti].reserved -= need;
	if (ret < 0) {
		c->tiers[ti].st.write_errors++;
		from = (size_t)ti + 1;     /* skip the failing tier for this block */
		if (from < c->ntiers)
			goto again;
		goto out_unlock;
	}
	if (m->gen != gen || entry_lookup_locked(c, m, index)) {
		/* invalidated or filled by someone else meanwhile */
		pthread_mutex_unlock(&c->lock);
		tier_remove(c->tiers[ti].store, &b);
		free(e);
		return -ESTALE;
	}
	*e = (struct centry){
		.key = b.key, .seq = b.seq, .index = index, .meta = m, .bytes = need,
		.file_size = b.file_size, .file_mtime_ns = b.file_mtime_ns,
		.len = len, .dir = b.dir, .tier = (uint8_t)ti, .prefetched = pf && !pf->used,
	};
	entry_insert_locked(c, e);
	pthread_mutex_unlock(&c->lock);
	return 0;

out_unlock:
	pthread_mutex_unlock(&c->lock);
	free(e);
	reap_run(c, &reap);
	return ret;
}

/* ---- mover: demotion, eviction, promotion ------------------------------- */

/* Copy pinned entry e (caller's pin is consumed) to tier j, where need bytes
 * are already reserved. buf: data if already in memory (promotion), else it
 * is read from e's tier. Called and returns with c->lock held. */
static void move_block_locked(struct cache *c, struct centry *e, size_t j, struct blkbuf *buf)
{
	struct ctier *src = &c->tiers[e->tier], *dst = &c->tiers[j];
	size_t from = e->tier;
	struct tier_block sb, db;
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
	blkbuf_put(buf);

	pthread_mutex_lock(&c->lock);
	dst->reserved -= e->bytes;
	e->moving = false;
	if (rret < 0) {
		/* the source block is bad or unreadable: drop it */
		if (rret == -EBADMSG) {
			src->st.checksum_failures++;
			STAT_ADD(c->st.checksum_failures, 1);
			clog_(3, "cache block checksum mismatch, dropped: tier%zu %s block %" PRIu64,
			      from, e->meta->key, e->index);
		} else {
			src->st.io_errors++;
		}
		entry_kill_locked(c, e, &reap);
	} else if (wret < 0) {
		dst->st.write_errors++;
	} else if (e->dead) {
		pthread_mutex_unlock(&c->lock);
		tier_remove(dst->store, &db);
		pthread_mutex_lock(&c->lock);
	} else {
		struct centry *e2 = malloc(sizeof(*e2));

		if (!e2) {
			pthread_mutex_unlock(&c->lock);
			tier_remove(dst->store, &db);
			pthread_mutex_lock(&c->lock);
		} else {
			*e2 = *e;
			e2->pins = 0;
			e2->dead = e2->moving = false;
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
	pf_kick_locked(c);        /* it may be waiting for room under prefetch_depth */
	return true;
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
		struct promo p = c->promos[c->promo_head];
		struct ctier *t0 = &c->tiers[0];
		struct list reap;

		c->promo_head = (c->promo_head + 1) % PROMO_MAX;
		c->promo_n--;
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

/* Queue pinned entry e for promotion to the top tier; takes the pin. buf:
 * the whole block if it is in memory, else NULL and the mover reads it. */
static void promo_enqueue(struct cache *c, struct centry *e, struct blkbuf *buf)
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

void cache_set_wait_hooks(struct cache *c, void (*begin)(void *arg), void (*end)(void *arg),
			  void *arg)
{
	c->wait_begin = begin && end ? begin : NULL;
	c->wait_end = end;
	c->wait_arg = arg;
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

/* ---- rebuild ------------------------------------------------------------ */

struct rebuild_ctx {
	struct cache *c;
	size_t tier;
	struct list reap;
	uint64_t max_seq;
};

static int rebuild_cb(void *arg, const struct tier_block *b)
{
	struct rebuild_ctx *x = arg;
	struct cache *c = x->c;
	struct ctier *t = &c->tiers[x->tier];
	uint64_t need = tier_block_bytes(b->len, b->file_key_len);
	struct cmeta *m;
	struct centry *old, *e;
	int ret = 0;

	if (b->seq > x->max_seq)
		x->max_seq = b->seq;
	if (b->block_size != c->bs || b->len > c->bs)
		return 1;   /* written with another block size */
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	pthread_mutex_lock(&c->lock);
	m = meta_get_locked(c, b->file_key, b->file_key_len);
	if (!m) {
		ret = -ENOMEM;
		goto out;
	}
	if (!m->attrs_known) {
		m->attrs_known = 1;
		m->rec_size = m->size = b->file_size;
		m->rec_mtime_ns = b->file_mtime_ns;
		m->rec_seq = b->seq;
	} else if (m->rec_size != b->file_size || m->rec_mtime_ns != b->file_mtime_ns) {
		/* blocks of two versions of the file: the newest write wins */
		if (b->seq < m->rec_seq) {
			ret = 1;
			goto out_put;
		}
		meta_kill_blocks_locked(c, m, 0, &x->reap);
		m->rec_size = m->size = b->file_size;
		m->rec_mtime_ns = b->file_mtime_ns;
		m->rec_seq = b->seq;
	}
	old = entry_lookup_locked(c, m, b->index);
	if (old) {
		/* same block twice (crash during a move or an update) */
		if (old->seq >= b->seq) {
			ret = 1;
			goto out_put;
		}
		entry_kill_locked(c, old, &x->reap);
	}
	if (t->used + need > t->quota) {
		ret = 1;    /* quota shrank since the blocks were written */
		goto out_put;
	}
	*e = (struct centry){
		.key = b->key, .seq = b->seq, .index = b->index, .meta = m, .bytes = need,
		.file_size = b->file_size, .file_mtime_ns = b->file_mtime_ns,
		.len = b->len, .dir = b->dir, .tier = (uint8_t)x->tier,
	};
	entry_insert_locked(c, e);
	e = NULL;
out_put:
	meta_put_locked(c, m);
out:
	pthread_mutex_unlock(&c->lock);
	free(e);
	return ret;
}

static int cmp_seq(const void *a, const void *b)
{
	const struct centry *x = *(struct centry *const *)a, *y = *(struct centry *const *)b;

	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Order a tier's LRU by write sequence: newest at the head. */
static void lru_sort(struct ctier *t)
{
	size_t n = 0, i = 0;
	struct centry **v;
	struct list *p;

	for (p = t->lru.next; p != &t->lru; p = p->next)
		n++;
	if (n < 2 || !(v = malloc(n * sizeof(*v))))
		return;
	for (p = t->lru.next; p != &t->lru; p = p->next)
		v[i++] = container_of(p, struct centry, lru);
	qsort(v, n, sizeof(*v), cmp_seq);
	list_init(&t->lru);
	for (i = 0; i < n; i++)
		list_add_head(&t->lru, &v[i]->lru);
	free(v);
}

/* ---- lifecycle ---------------------------------------------------------- */

static int config_copy(struct cache_config *dst, const struct cache_config *src)
{
	*dst = *src;
	for (size_t i = 0; i < CACHE_MAX_TIERS; i++) {
		dst->tiers[i].paths = NULL;
		dst->tiers[i].npaths = 0;
	}
	for (size_t i = 0; i < CACHE_MAX_TIERS; i++) {
		const struct cache_tier_config *s = &src->tiers[i];

		if (!s->npaths)
			continue;
		dst->tiers[i].paths = calloc(s->npaths, sizeof(char *));
		if (!dst->tiers[i].paths)
			return -ENOMEM;
		dst->tiers[i].npaths = s->npaths;
		for (size_t k = 0; k < s->npaths; k++)
			if (!(dst->tiers[i].paths[k] = strdup(s->paths[k])))
				return -ENOMEM;
	}
	return 0;
}

int cache_new(struct cache **out, const struct cache_config *cfg, const char *state_dir,
	      char *err, size_t errlen)
{
	struct cache *c;
	struct timespec ts;
	uint64_t max_seq = 0;
	int ret;

	*out = NULL;
	ret = cache_config_check(cfg, err, errlen);
	if (ret < 0)
		return ret;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->flight_cv, NULL);
	pthread_cond_init(&c->mover_cv, NULL);
	pthread_cond_init(&c->idle_cv, NULL);
	list_init(&c->flights);
	list_init(&c->store_q);
	list_init(&c->pf_queue);
	for (size_t i = 0; i < CACHE_MAX_TIERS; i++)
		list_init(&c->tiers[i].lru);
	c->ehash_size = c->mhash_size = 1024;
	c->ehash = calloc(c->ehash_size, sizeof(*c->ehash));
	c->mhash = calloc(c->mhash_size, sizeof(*c->mhash));
	ret = -ENOMEM;
	if (!c->ehash || !c->mhash || config_copy(&c->cfg, cfg) < 0 ||
	    (state_dir && !(c->state_dir = strdup(state_dir)))) {
		snprintf(err, errlen, "out of memory");
		goto out_free;
	}
	c->bs = cfg->block_size;
	c->ntiers = cache_config_ntiers(cfg);

	for (size_t i = 0; i < c->ntiers; i++) {
		const struct cache_tier_config *tc = &c->cfg.tiers[i];
		struct ctier *t = &c->tiers[i];

		ret = tier_open(&t->store, tc->medium, (const char *const *)tc->paths, tc->npaths, err, errlen);
		if (ret < 0)
			goto out_free;
		t->medium = tc->medium;
		t->verify = tc->medium != TIER_MEM || cfg->verify_mem;
		t->quota = tc->quota;
		t->high = (uint64_t)((double)tc->quota * tc->high);
		t->low = (uint64_t)((double)tc->quota * tc->low);
	}
	for (size_t i = 0; i < c->ntiers; i++) {
		struct rebuild_ctx x = { .c = c, .tier = i };
		unsigned disc = 0;

		list_init(&x.reap);
		ret = tier_scan(c->tiers[i].store, rebuild_cb, &x, &disc);
		reap_run(c, &x.reap);
		if (ret < 0) {
			snprintf(err, errlen, "cache rebuild failed: %s: %s",
				 tier_dir(c->tiers[i].store, 0), strerror(-ret));
			goto out_free;
		}
		c->st.torn_discarded += disc;
		if (x.max_seq > max_seq)
			max_seq = x.max_seq;
	}
	for (size_t i = 0; i < c->ntiers; i++)
		lru_sort(&c->tiers[i]);
	/* sequence numbers keep growing across restarts */
	clock_gettime(CLOCK_REALTIME, &ts);
	c->seq = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
	if (c->seq <= max_seq)
		c->seq = max_seq + 1;
	if (c->ntiers)
		clog_(6, "cache ready: %zu tiers, %zu blocks indexed, %" PRIu64 " torn discarded",
		      c->ntiers, c->nentries, c->st.torn_discarded);

	c->running = true;
	if (c->ntiers) {
		ret = -pthread_create(&c->mover, NULL, mover_main, c);
		if (ret < 0) {
			c->running = false;
			snprintf(err, errlen, "cache thread start failed: %s", strerror(-ret));
			goto out_free;
		}
		if (cfg->prefetch > 0) {
			ret = pf_start(c, err, errlen);
			if (ret < 0)
				goto out_stop;
		}
	}
	*out = c;
	return 0;

out_stop:
	pthread_mutex_lock(&c->lock);
	c->running = false;
	pthread_cond_broadcast(&c->mover_cv);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->mover, NULL);
out_free:
	cache_free(c);
	return ret;
}

void cache_free(struct cache *c)
{
	bool had_mover;

	if (!c)
		return;
	pf_stop(c);
	pthread_mutex_lock(&c->lock);
	had_mover = c->running && c->ntiers;
	c->running = false;
	pthread_cond_broadcast(&c->mover_cv);
	pthread_mutex_unlock(&c->lock);
	if (had_mover)
		pthread_join(c->mover, NULL);
	pthread_mutex_lock(&c->lock);
	while (store_step_locked(c))
		;
	pthread_mutex_unlock(&c->lock);
	while (c->promo_n) {
		struct promo p = c->promos[c->promo_head];
		struct list reap;

		list_init(&reap);
		c->promo_head = (c->promo_head + 1) % PROMO_MAX;
		c->promo_n--;
		pthread_mutex_lock(&c->lock);
		entry_unpin_locked(c, p.e, &reap);
		pthread_mutex_unlock(&c->lock);
		reap_run(c, &reap);
		blkbuf_put(p.buf);
	}
	/* free the index; block files stay for the next start */
	for (size_t i = 0; c->ehash && i < c->ehash_size; i++) {
		struct centry *e = c->ehash[i], *next;

		for (; e; e = next) {
			next = e->hnext;
			free(e);
		}
	}
	for (size_t i = 0; c->mhash && i < c->mhash_size; i++) {
		struct cmeta *m = c->mhash[i], *next;

		for (; m; m = next) {
			next = m->hnext;
			free(m->backend_path);
			free(m->key);
			free(m);
		}
	}
	for (size_t i = 0; i < c->ntiers; i++)
		tier_close(c->tiers[i].store);
	free(c->ehash);
	free(c->mhash);
	cache_config_release(&c->cfg);
	free(c->state_dir);
	free(c->labels);
	pthread_cond_destroy(&c->idle_cv);
	pthread_cond_destroy(&c->mover_cv);
	pthread_cond_destroy(&c->flight_cv);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* ---- files -------------------------------------------------------------- */

int cache_file_open(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns,
		    const char *backend_path, struct cache_file **out, int *keep_cache)
{
	struct cache_file *cf = calloc(1, sizeof(*cf));
	char *bp = backend_path ? strdup(backend_path) : NULL;
	struct list reap;
	struct cmeta *m;
	int keep = 0;

	*out = NULL;
	*keep_cache = 0;
	if (!cf || (backend_path && !bp)) {
		free(cf);
		free(bp);
		return -ENOMEM;
	}
	if (!*key || strlen(key) > TIER_KEY_MAX) {
		free(cf);
		free(bp);
		return *key ? -ENAMETOOLONG : -EINVAL;
	}
	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	m = meta_get_locked(c, key, strlen(key));
	if (!m) {
		pthread_mutex_unlock(&c->lock);
		free(cf);
		free(bp);
		return -ENOMEM;
	}
	if (m->attrs_known && m->rec_size == size && m->rec_mtime_ns == mtime_ns) {
		keep = 1;
	} else {
		if (m->attrs_known || m->nblocks) {
			meta_kill_blocks_locked(c, m, 0, &reap);
			STAT_ADD(c->st.invalidations, 1);
		}
		__atomic_add_fetch(&m->gen, 1, __ATOMIC_RELEASE);
		m->attrs_known = 1;
		m->rec_size = m->size = size;
		m->rec_mtime_ns = mtime_ns;
	}
	if (bp) {
		free(m->backend_path);
		m->backend_path = bp;
	}
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);

	cf->c = c;
	cf->meta = m;
	cf->last_block = UINT64_MAX;
	pthread_mutex_init(&cf->slot_lock, NULL);
	*out = cf;
	*keep_cache = keep;
	return 0;
}

void cache_file_close(struct cache_file *cf)
{
	struct cache *c;

	if (!cf)
		return;
	c = cf->c;
	for (int i = 0; i < 2; i++)
		blkbuf_put(cf->slot[i].buf);
	pthread_mutex_lock(&c->lock);
	meta_put_locked(c, cf->meta);
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_destroy(&cf->slot_lock);
	free(cf);
}

void cache_file_set_attr(struct cache_file *cf, uint64_t size, int64_t mtime_ns)
{
	struct cache *c = cf->c;

	pthread_mutex_lock(&c->lock);
	cf->meta->attrs_known = 1;
	cf->meta->rec_size = cf->meta->size = size;
	cf->meta->rec_mtime_ns = mtime_ns;
	pthread_mutex_unlock(&c->lock);
}

static bool key_matches(const char *key, const char *prefix)
{
	size_t n;

	if (!prefix || !*prefix || !strcmp(prefix, "/") || !strcmp(prefix, "."))
		return true;
	n = strlen(prefix);
	if (prefix[n - 1] == '/')
		return !strncmp(key, prefix, n);
	return !strncmp(key, prefix, n) && (key[n] == '\0' || key[n] == '/');
}

int cache_evict(struct cache *c, const char *key_prefix)
{
	struct list reap;
	int n = 0;

	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->mhash_size; i++) {
		for (struct cmeta *m = c->mhash[i]; m; m = m->hnext) {
			if (!key_matches(m->key, key_prefix))
				continue;
			n += (int)m->nblocks;
			meta_kill_blocks_locked(c, m, 0, &reap);
			__atomic_add_fetch(&m->gen, 1, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
	return n;
}

void cache_file_rename(struct cache *c, const char *old_key, const char *new_key)
{
	if (old_key && *old_key)
		cache_evict(c, old_key);
	if (new_key && *new_key)
		cache_evict(c, new_key);
}

static int contains_locked(struct cache *c, struct cmeta *m, uint64_t off, uint64_t len)
{
	if (!m || !m->attrs_known)
		return 0;
	if (len == 0)
		len = m->size > off ? m->size - off : 0;
	if (off + len > m->size)
		len = m->size > off ? m->size - off : 0;
	for (uint64_t b = off / c->bs; len && b <= (off + len - 1) / c->bs; b++)
		if (!entry_lookup_locked(c, m, b))
			return 0;
	return 1;
}

int cache_contains(struct cache *c, const char *key, uint64_t off, uint64_t len)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	ret = contains_locked(c, c->ntiers ? meta_find_locked(c, key, strlen(key)) : NULL, off, len);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int cache_holds_file(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns)
{
	struct cmeta *m;
	int ret;

	pthread_mutex_lock(&c->lock);
	m = c->ntiers ? meta_find_locked(c, key, strlen(key)) : NULL;
	ret = m && m->attrs_known && m->rec_size == size && m->size == size &&
	      m->rec_mtime_ns == mtime_ns && contains_locked(c, m, 0, 0);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* ---- read --------------------------------------------------------------- */

static ssize_t engine_fetch(struct cache *c, cache_fetch_fn fetch, void *arg, char *buf,
			    size_t len, off_t off)
{
	uint64_t t0 = now_ns();
	size_t got = 0;
	ssize_t r = 0;

	while (got < len) {
		size_t want = len - got;

		r = fetch(arg, buf + got, want, off + (off_t)got);
		if (r <= 0)
			break;
		got += (size_t)r;
		if ((size_t)r < want)
			break;      /* short only at EOF */
	}
	STAT_ADD(c->st.engine_ns, now_ns() - t0);
	STAT_ADD(c->st.engine_reads, 1);
	STAT_ADD(c->st.engine_bytes, got);
	return r < 0 ? r : (ssize_t)got;
}

static void slot_set(struct cache_file *cf, uint64_t index, uint64_t gen, struct blkbuf *buf)
{
	unsigned s;
	struct blkbuf *old;

	pthread_mutex_lock(&cf->slot_lock);
	s = cf->slot[0].index == index ? 0 : cf->slot[1].index == index ? 1 : cf->slot_next;
	old = cf->slot[s].buf;
	cf->slot[s].index = index;
	cf->slot[s].gen = gen;
	cf->slot[s].buf = blkbuf_get(buf);
	cf->slot_next = s ^ 1;
	pthread_mutex_unlock(&cf->slot_lock);
	blkbuf_put(old);
}

static struct blkbuf *slot_find(struct cache_file *cf, uint64_t index)
{
	uint64_t gen = __atomic_load_n(&cf->meta->gen, __ATOMIC_ACQUIRE);
	struct blkbuf *b = NULL;

	pthread_mutex_lock(&cf->slot_lock);
	for (int i = 0; i < 2; i++)
		if (cf->slot[i].buf && cf->slot[i].index == index && cf->slot[i].gen == gen)
			b = blkbuf_get(cf->slot[i].buf);
	pthread_mutex_unlock(&cf->slot_lock);
	return b;
}

/*
 * A tier hit: read [off, off+len) of live entry e into dst, or with whole
 * set the whole block into a new buffer returned there. Called with c->lock
 * held (e was found under it); returns without it. e stays pinned across
 * the read, so its file is never unlinked under us. Returns bytes read, or
 * -errno once the bad or unreadable block was dropped (the caller fetches
 * it from the engine instead).
 */
static ssize_t entry_read_unlock(struct cache *c, struct centry *e, uint32_t off, uint32_t len,
				 void *dst, struct blkbuf **whole)
{
	size_t ti = e->tier;
	struct ctier *t = &c->tiers[ti];
	struct tier_block b;
	struct list reap;
	int r;

	e->pins++;
	list_del(&e->lru);              /* most recently used */
	list_add_head(&t->lru, &e->lru);
	entry_desc(c, e, &b);
	if (e->prefetched) {
		e->prefetched = false;
		STAT_ADD(c->st.prefetch_used, 1);
	}
	pthread_mutex_unlock(&c->lock);
	STAT_ADD(c->st.lookups, 1);
	if (whole) {
		*whole = blkbuf_new(c->bs);
		dst = *whole ? (*whole)->data : NULL;
	}
	r = dst ? tier_read_range(t->store, &b, off, len, dst, t->verify) : -ENOMEM;
	if (r >= 0) {
		STAT_ADD(c->st.hits, 1);
		STAT_ADD(t->st.hits, 1);
		if (whole)
			(*whole)->len = (uint32_t)r;
		if (ti > 0)
			promo_enqueue(c, e, whole ? *whole : NULL);   /* takes the pin */
		else
			entry_unpin(c, e);
		return r;
	}
	if (r == -EBADMSG) {
		STAT_ADD(t->st.checksum_failures, 1);
		STAT_ADD(c->st.checksum_failures, 1);
		clog_(3, "cache block checksum mismatch, dropped: tier%zu %s block %" PRIu64,
		      ti, e->meta->key, e->index);
	} else {
		STAT_ADD(t->st.io_errors, 1);
		clog_(4, "cache block read failed, dropped: tier%zu %s block %" PRIu64 ": %s",
		      ti, e->meta->key, e->index, strerror(-r));
	}
	if (whole) {
		blkbuf_put(*whole);
		*whole = NULL;
	}
	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	entry_kill_locked(c, e, &reap);
	entry_unpin_locked(c, e, &reap);
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
	return r;
}

/* Read [boff, boff+len) of block index straight from its tier into dst.
 * Returns bytes read (short or 0 past the block's end; *blen: its length),
 * or -errno when no tier holds it or it was bad (and dropped). */
static ssize_t block_read_tier(struct cache_file *cf, uint64_t index, uint32_t boff,
			       uint32_t len, void *dst, uint32_t *blen)
{
	struct cache *c = cf->c;
	struct centry *e;

	pthread_mutex_lock(&c->lock);
	e = entry_lookup_locked(c, cf->meta, index);
	if (!e) {
		pthread_mutex_unlock(&c->lock);
		return -ENOENT;
	}
	*blen = e->len;
	return entry_read_unlock(c, e, boff < e->len ? boff : e->len, len, dst, NULL);
}

/* Get block `index` of cf (data, verified). *out holds a reference. */
static int block_get(struct cache_file *cf, uint64_t index, struct blkbuf **out,
		     cache_fetch_fn fetch, void *arg)
{
	struct cache *c = cf->c;
	struct cmeta *m = cf->meta;
	struct blkbuf *buf;
	struct flight *f;
	uint64_t gen;
	ssize_t r;

	*out = slot_find(cf, index);
	if (*out)
		return 0;
	for (int attempt = 0;; attempt++) {
		struct centry *e;

		pthread_mutex_lock(&c->lock);
		gen = m->gen;
		e = attempt < 3 ? entry_lookup_locked(c, m, index) : NULL;
		if (e) {
			/* stored since cache_read() looked: read it whole; the
			 * slot is only for fetched blocks */
			if (entry_read_unlock(c, e, 0, c->bs, NULL, &buf) < 0)
				continue;   /* dropped: fetch it */
			*out = buf;
			return 0;
		}
		f = flight_find_locked(c, m, index);
		if (f && f->state == FL_QUEUED) {
			/* the prefetcher has not started it: fetch it here (we
			 * take over the owner's reference) */
			if (!f->pf_taken) {
				list_del(&f->qlink);
				c->pf_queued--;
			}
			f->state = FL_RUNNING;
			f->prefetch = false;
			STAT_ADD(c->st.misses, 1);
			STAT_ADD(c->st.lookups, 1);
			pthread_mutex_unlock(&c->lock);
			break;
		}
		if (f) {
			bool watch = f->state != FL_DONE && c->wait_begin;

			f->refs++;
			/* an engine read on our behalf: under the hang watch */
			if (watch)
				c->wait_begin(c->wait_arg);
			while (f->state != FL_DONE)
				pthread_cond_wait(&c->flight_cv, &c->lock);
			if (watch)
				c->wait_end(c->wait_arg);
			if (f->res == 0) {
				buf = blkbuf_get(f->buf);
				if (f->prefetch && !f->used) {
					/* count each prefetched block once */
					struct centry *pe = entry_lookup_locked(c, m, index);

					f->used = true;
					if (pe && pe->prefetched)
						pe->prefetched = false;
					STAT_ADD(c->st.prefetch_used, 1);
				}
				STAT_ADD(c->st.misses, 1);
				STAT_ADD(c->st.lookups, 1);
				flight_put_locked(c, f);
				pthread_mutex_unlock(&c->lock);
				slot_set(cf, index, gen, buf);
				*out = buf;
				return 0;
			}
			flight_put_locked(c, f);
			pthread_mutex_unlock(&c->lock);
			continue;   /* it failed: try again, fetching ourselves */
		}
		f = flight_new_locked(c, m, index, FL_RUNNING, false);
		pthread_mutex_unlock(&c->lock);
		if (!f)
			return -ENOMEM;
		STAT_ADD(c->st.misses, 1);
		STAT_ADD(c->st.lookups, 1);
		break;
	}
	/* we own flight f: fetch the whole block */
	buf = blkbuf_new(c->bs);
	r = buf ? engine_fetch(c, fetch, arg, buf->data, c->bs, (off_t)(index * c->bs)) : -ENOMEM;
	if (r < 0) {
		flight_complete(c, f, (int)r, NULL);
		flight_put(c, f);
		blkbuf_put(buf);
		return (int)r;
	}
	buf->len = (uint32_t)r;
	flight_complete(c, f, 0, buf);
	if (buf->len)
		block_store(c, m, index, f->gen, buf->data, buf->len, NULL);
	pthread_mutex_lock(&c->lock);
	flight_finish_locked(c, f);
	pthread_mutex_unlock(&c->lock);
	slot_set(cf, index, gen, buf);
	*out = buf;
	return 0;
}

/*
 * Have block `index` fetched whole in the background: it is in flight
 * already, or queue it for the prefetcher. The backlog is bounded (queued
 * flights hold no buffer, 8 x prefetch_depth of them); past it the block is
 * left alone, and a later read of it queues it again. Returns 1 when queued
 * here, 0 when in flight or left alone, -EAGAIN when the prefetcher cannot
 * read this file (no path, or it failed on it recently).
 */
static int fill_queue_locked(struct cache *c, struct cmeta *m, uint64_t index)
{
	struct flight *f;

	if (!m->backend_path || (m->pf_backoff_ns && now_ns() < m->pf_backoff_ns))
		return -EAGAIN;
	if (flight_find_locked(c, m, index) || c->pf_queued + c->pf_inflight >= 2 * c->cfg.prefetch_depth)
		return 0;
	f = flight_new_locked(c, m, index, FL_QUEUED, true);
	if (!f)
		return -EAGAIN;
	f->fill = true;
	list_add_tail(&c->pf_queue, &f->qlink);
	c->pf_queued++;
	STAT_ADD(c->st.prefetch_issued, 1);
	return 1;
}

/*
 * A small read that missed, outside a sequential run: fetching the whole
 * block first would make a 4 KiB random read wait for 4 MiB. Read just the
 * range from the engine, and queue the block for a background fill, which
 * the prefetcher starts only once direct reads pause (prefetch.c): over an
 * engine with one pipe (sshfs, a remote store) a 4 MiB fill in flight would
 * stall every small read queued behind it. Returns bytes or -errno; -EAGAIN
 * when the prefetcher cannot fill it, or when the block is a short last
 * block no bigger than a small read: the caller fetches the whole block.
 */
static ssize_t read_direct(struct cache_file *cf, uint64_t index, uint32_t boff, uint32_t len,
			   void *dst, cache_fetch_fn fetch, void *arg)
{
	struct cache *c = cf->c;
	struct cmeta *m = cf->meta;
	int queued;

	pthread_mutex_lock(&c->lock);
	/* a short last block costs no more whole than the range: fetch and
	 * store it now rather than read it twice */
	queued = m->size - index * c->bs <= c->bs / 8 ? -EAGAIN : fill_queue_locked(c, m, index);
	pthread_mutex_unlock(&c->lock);
	if (queued < 0)
		return queued;
	__atomic_store_n(&c->last_direct_ns, now_ns(), __ATOMIC_RELAXED);
	if (queued)
		pf_kick(c);
	STAT_ADD(c->st.misses, 1);
	STAT_ADD(c->st.lookups, 1);
	STAT_ADD(c->st.direct_reads, 1);
	return engine_fetch(c, fetch, arg, dst, len, (off_t)(index * c->bs + boff));
}

/* Sequential detection and prefetch queueing (see prefetch.c). Returns true
 * when the read continues a sequential run. */
static bool prefetch_maybe(struct cache_file *cf, uint64_t first, uint64_t last)
{
	struct cache *c = cf->c;
	struct cmeta *m = cf->meta;
	bool queued = false;

	pthread_mutex_lock(&cf->slot_lock);
	if (cf->last_block != UINT64_MAX && (first == cf->last_block || first == cf->last_block + 1)) {
		cf->seq_run++;
	} else {
		cf->seq_run = 0;
		cf->pf_until = 0;
	}
	cf->last_block = last;
	if (cf->seq_run >= 1 && c->pf) {
		uint64_t from = last + 1 > cf->pf_until ? last + 1 : cf->pf_until;
		uint64_t to = last + c->cfg.prefetch;

		pthread_mutex_lock(&c->lock);
		if (m->pf_backoff_ns && now_ns() < m->pf_backoff_ns)
			to = 0;     /* the engine failed us recently */
		for (uint64_t b = from; m->backend_path && b <= to; b++) {
			struct flight *f;

			if (b * c->bs >= m->size ||
			    c->pf_queued + c->pf_inflight >= 2 * c->cfg.prefetch_depth)
				break;
			cf->pf_until = b + 1;
			if (entry_lookup_locked(c, m, b) || flight_find_locked(c, m, b))
				continue;
			f = flight_new_locked(c, m, b, FL_QUEUED, true);
			if (!f)
				break;
			list_add_tail(&c->pf_queue, &f->qlink);
			c->pf_queued++;
			STAT_ADD(c->st.prefetch_issued, 1);
			queued = true;
		}
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_unlock(&cf->slot_lock);
	if (queued)
		pf_kick(c);
	return cf->seq_run >= 1;
}

ssize_t cache_read(struct cache_file *cf, void *buf, size_t len, off_t off,
		   cache_fetch_fn fetch, void *arg)
{
	struct cache *c = cf->c;
	size_t done = 0;
	bool seq;

	if (len == 0 || off < 0)
		return off < 0 ? -EINVAL : 0;
	if (c->ntiers == 0)
		return engine_fetch(c, fetch, arg, buf, len, off);
	seq = prefetch_maybe(cf, (uint64_t)off / c->bs, ((uint64_t)off + len - 1) / c->bs);
	while (done < len) {
		uint64_t pos = (uint64_t)off + done;
		uint64_t index = pos / c->bs;
		uint32_t boff = (uint32_t)(pos % c->bs);
		uint32_t want = (uint32_t)(len - done < c->bs - boff ? len - done : c->bs - boff);
		char *dst = (char *)buf + done;
		struct blkbuf *b;
		uint32_t blen = 0;
		ssize_t n = 0;
		int ret;

		/* a whole block in memory, else just the range from its tier,
		 * else (small and random) the range from the engine, else fetch
		 * the whole block */
		b = slot_find(cf, index);
		if (!b && (n = block_read_tier(cf, index, boff, want, dst, &blen)) < 0) {
			n = -EAGAIN;
			if (!seq && c->pf && want <= c->bs / 8)
				n = read_direct(cf, index, boff, want, dst, fetch, arg);
			if (n >= 0)
				blen = (uint32_t)n < want ? boff + (uint32_t)n : c->bs;
			else if (n != -EAGAIN)
				return done ? (ssize_t)done : n;
			else if ((ret = block_get(cf, index, &b, fetch, arg)) < 0)
				return done ? (ssize_t)done : ret;
		}
		if (b) {
			blen = b->len;
			n = blen > boff ? (ssize_t)(blen - boff < want ? blen - boff : want) : 0;
			memcpy(dst, b->data + boff, (size_t)n);
			blkbuf_put(b);
		}
		done += (size_t)n;
		if (blen < c->bs || n == 0)
			break;   /* end of file */
	}
	return (ssize_t)done;
}

/* ---- write / truncate --------------------------------------------------- */

void cache_write(struct cache_file *cf, const void *buf, size_t len, off_t off)
{
	struct cache *c = cf->c;
	struct cmeta *m = cf->meta;
	uint64_t bs = c->bs, wend = (uint64_t)off + len, first, last, gen, old_size, new_size;
	struct centry **olds = NULL;
	struct list reap;

	if (len == 0 || c->ntiers == 0 || off < 0)
		return;
	first = (uint64_t)off / bs;
	last = (wend - 1) / bs;
	olds = calloc(last - first + 1, sizeof(*olds));
	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	gen = __atomic_add_fetch(&m->gen, 1, __ATOMIC_RELEASE);
	old_size = m->size;
	new_size = wend > old_size ? wend : old_size;
	m->size = new_size;
	/* the old last block is no longer the last one: its short length lies */
	if (wend > old_size && old_size % bs && old_size / bs < first) {
		struct centry *e = entry_lookup_locked(c, m, old_size / bs);

		if (e)
			entry_kill_locked(c, e, &reap);
	}
	for (uint64_t b = first; b <= last; b++) {
		struct centry *e = entry_lookup_locked(c, m, b);

		if (!e)
			continue;
		if (olds) {
			e->pins++;
			olds[b - first] = e;
		}
		entry_kill_locked(c, e, &reap);
	}
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);

	/* Store the new contents of blocks we can reconstruct: blocks that were
	 * cached (read-modify-write) and blocks the write covers completely. */
	for (uint64_t b = first; olds && b <= last; b++) {
		struct centry *e = olds[b - first];
		uint64_t bstart = b * bs;
		uint32_t ws = (uint32_t)((uint64_t)off > bstart ? (uint64_t)off - bstart : 0);
		uint32_t we = (uint32_t)(wend < bstart + bs ? wend - bstart : bs);
		uint32_t blen = (uint32_t)(new_size - bstart < bs ? new_size - bstart : bs);
		struct blkbuf *nb = NULL;

		if (e && ws <= e->len) {
			struct tier_block tb;
			struct ctier *t = &c->tiers[e->tier];

			nb = blkbuf_new(c->bs);
			entry_desc(c, e, &tb);
			if (nb && (ws == 0 && we >= e->len ? 0 : tier_read(t->store, &tb, nb->data, t->verify)) >= 0) {
				nb->len = e->len > we ? e->len : we;
			} else {
				blkbuf_put(nb);
				nb = NULL;
			}
		} else if (!e && ws == 0 && we == blen) {
			nb = blkbuf_new(c->bs);
			if (nb)
				nb->len = we;
		}
		if (nb) {
			memcpy(nb->data + ws, (const char *)buf + (bstart + ws - (uint64_t)off), we - ws);
			block_store(c, m, b, gen, nb->data, nb->len, NULL);
			blkbuf_put(nb);
		}
		if (e)
			entry_unpin(c, e);
	}
	free(olds);
}

void cache_truncate(struct cache_file *cf, uint64_t size)
{
	struct cache *c = cf->c;
	struct cmeta *m = cf->meta;
	struct list reap;
	uint64_t keep;

	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	__atomic_add_fetch(&m->gen, 1, __ATOMIC_RELEASE);
	keep = (size < m->size ? size : m->size) / c->bs;
	meta_kill_blocks_locked(c, m, keep, &reap);
	m->size = size;
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
}
