/*
 * The read path (cache_read, block_get).
 *
 * For one block:
 *   1. the handle's two-slot buffer (whole blocks fetched by this handle);
 *   2. a live entry: pin it, read and verify just the requested range (its
 *      16 KiB chunks) outside the lock straight into the caller's buffer,
 *      unpin or hand the pin to the promotion queue;
 *   3. a small miss outside a sequential run: read just the range from the
 *      engine and queue the block for a background fill (read_direct);
 *   4. a flight for the block: wait for it if it is running, or claim it
 *      and fetch it ourselves if the prefetcher has only queued it;
 *   5. otherwise start a flight, fetch through the core, store the block.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

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
	entry_read_failed(c, e, r);
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
	queued = m->size - index * c->bs <= c->bs / 8 ? -EAGAIN : 0;
	/* before the fill is queued: the prefetcher must see this read and
	 * hold the fill back, not start it beside the read */
	if (!queued) {
		__atomic_store_n(&c->last_direct_ns, now_ns(), __ATOMIC_RELAXED);
		queued = pf_fill_queue_locked(c, m, index);
	}
	pthread_mutex_unlock(&c->lock);
	if (queued < 0)
		return queued;
	if (queued)
		pf_kick(c);
	STAT_ADD(c->st.misses, 1);
	STAT_ADD(c->st.lookups, 1);
	STAT_ADD(c->st.direct_reads, 1);
	return engine_fetch(c, fetch, arg, dst, len, (off_t)(index * c->bs + boff));
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
	seq = pf_read_ahead(cf, (uint64_t)off / c->bs, ((uint64_t)off + len - 1) / c->bs);
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
