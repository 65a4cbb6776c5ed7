/*
 * The index and pins: refcounted block buffers, file records (cmeta, by file
 * key), block entries (centry, by block key, on their file's list and their
 * tier's LRU), the reaping of dead entries once unpinned, and flights (engine
 * fetches in progress that readers share). The invariants: cache_int.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "cache/cache_int.h"

/* ---- tables ------------------------------------------------------------- */

int htable_init(struct htable *t, size_t size, uint64_t (*hash_of)(const struct hnode *n))
{
	t->b = calloc(size, sizeof(*t->b));
	t->size = size;
	t->n = 0;
	t->hash_of = hash_of;
	return t->b ? 0 : -ENOMEM;
}

void htable_release(struct htable *t)
{
	free(t->b);
	t->b = NULL;
}

static void htable_grow(struct htable *t)
{
	size_t nsize = t->size * 2;
	struct hnode **nb = calloc(nsize, sizeof(*nb));

	if (!nb)
		return;
	for (size_t i = 0; i < t->size; i++) {
		struct hnode *n = t->b[i], *next;

		for (; n; n = next) {
			size_t k = t->hash_of(n) & (nsize - 1);

			next = n->next;
			n->next = nb[k];
			nb[k] = n;
		}
	}
	free(t->b);
	t->b = nb;
	t->size = nsize;
}

void htable_add(struct htable *t, struct hnode *n)
{
	struct hnode **head;

	if (t->n >= t->size)
		htable_grow(t);
	head = &t->b[t->hash_of(n) & (t->size - 1)];
	n->next = *head;
	*head = n;
	t->n++;
}

void htable_del(struct htable *t, struct hnode *n)
{
	for (struct hnode **pp = &t->b[t->hash_of(n) & (t->size - 1)]; *pp; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			t->n--;
			return;
		}
	}
}

static uint64_t meta_hash(const struct hnode *n)
{
	return container_of(n, struct cmeta, hn)->hash;
}

static uint64_t entry_hash(const struct hnode *n)
{
	return container_of(n, struct centry, hn)->key;
}

int index_init(struct cache *c)
{
	int ret = htable_init(&c->entries, 1024, entry_hash);

	return ret ? ret : htable_init(&c->metas, 1024, meta_hash);
}

void index_release(struct cache *c)
{
	for (size_t i = 0; c->entries.b && i < c->entries.size; i++) {
		for (struct hnode *n = c->entries.b[i], *next; n; n = next) {
			next = n->next;
			free(container_of(n, struct centry, hn));
		}
	}
	for (size_t i = 0; c->metas.b && i < c->metas.size; i++) {
		for (struct hnode *n = c->metas.b[i], *next; n; n = next) {
			struct cmeta *m = container_of(n, struct cmeta, hn);

			next = n->next;
			free(m->backend_path);
			free(m->key);
			free(m);
		}
	}
	htable_release(&c->entries);
	htable_release(&c->metas);
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

struct cmeta *meta_find_locked(struct cache *c, const char *key, size_t keylen)
{
	uint64_t h = XXH3_64bits(key, keylen);

	for (struct hnode *n = htable_chain(&c->metas, h); n; n = n->next) {
		struct cmeta *m = container_of(n, struct cmeta, hn);

		if (m->hash == h && m->keylen == keylen && !memcmp(m->key, key, keylen))
			return m;
	}
	return NULL;
}

struct cmeta *meta_get_locked(struct cache *c, const char *key, size_t keylen)
{
	struct cmeta *m = meta_find_locked(c, key, keylen);

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
	htable_add(&c->metas, &m->hn);
	return m;
}

void meta_put_locked(struct cache *c, struct cmeta *m)
{
	if (--m->refs > 0)
		return;
	htable_del(&c->metas, &m->hn);
	free(m->backend_path);
	free(m->key);
	free(m);
}

/* ---- entries ------------------------------------------------------------ */

struct centry *entry_lookup_locked(struct cache *c, struct cmeta *m, uint64_t index)
{
	uint64_t key = tier_block_key(m->key, m->keylen, index);

	for (struct hnode *n = htable_chain(&c->entries, key); n; n = n->next) {
		struct centry *e = container_of(n, struct centry, hn);

		if (e->key == key && e->meta == m && e->index == index)
			return e;
	}
	return NULL;
}

void entry_insert_locked(struct cache *c, struct centry *e)
{
	struct ctier *t = &c->tiers[e->tier];

	htable_add(&c->entries, &e->hn);
	e->meta->refs++;
	e->meta->nblocks++;
	list_add_tail(&e->meta->blocks, &e->mlink);
	list_add_head(&t->lru, &e->lru);
	t->used += e->bytes;
	t->st.blocks++;
	if (t->used + t->reserved > t->high)
		pthread_cond_signal(&c->mover_cv);
}

void entry_kill_locked(struct cache *c, struct centry *e, struct list *reap)
{
	if (e->dead)
		return;
	htable_del(&c->entries, &e->hn);
	list_del(&e->lru);
	list_del(&e->mlink);
	e->meta->nblocks--;
	e->dead = true;
	if (e->prefetched)
		STAT_ADD(c->st.prefetch_wasted, 1);
	if (e->pins == 0) {
		list_add_tail(reap, &e->lru);
		c->tiers[e->tier].freeing += entry_charge(e);
	}
}

void entry_desc(const struct cache *c, const struct centry *e, struct tier_block *b)
{
	*b = (struct tier_block){
		.key = e->key, .seq = e->seq, .index = e->index, .len = e->len, .dir = e->dir,
		.block_size = c->bs,
		.file_size = e->file_size, .file_mtime_ns = e->file_mtime_ns,
		.file_key = e->meta->key, .file_key_len = e->meta->keylen,
	};
}

void reap_run(struct cache *c, struct list *reap)
{
	while (!list_empty(reap)) {
		struct centry *e = container_of(reap->next, struct centry, lru);
		struct tier_block b;
		int ret;

		list_del(&e->lru);
		entry_desc(c, e, &b);
		ret = tier_remove(c->tiers[e->tier].store, &b);
		if (ret < 0 && ret != -ENOENT)
			tier_log(TIER_LOG_WARN, "cache block unlink failed: tier%u %s block %" PRIu64 ": %s",
				 (unsigned)e->tier, e->meta->key, e->index, strerror(-ret));
		/* dead and unpinned: nobody else looks at e now */
		if (e->whole && (ret = tier_whole_remove(c->tiers[e->tier].store, &b)) < 0 &&
		    ret != -ENOENT)
			tier_log(TIER_LOG_WARN, "cache copy unlink failed: tier%u %s: %s",
				 (unsigned)e->tier, e->meta->key, strerror(-ret));
		pthread_mutex_lock(&c->lock);
		c->tiers[e->tier].used -= entry_charge(e);
		c->tiers[e->tier].freeing -= entry_charge(e);
		c->tiers[e->tier].st.blocks--;
		meta_put_locked(c, e->meta);
		pthread_mutex_unlock(&c->lock);
		free(e);
	}
}

void entry_read_failed(struct cache *c, const struct centry *e, int err)
{
	size_t ti = e->tier;

	if (err == -EBADMSG) {
		STAT_ADD(c->tiers[ti].st.checksum_failures, 1);
		STAT_ADD(c->st.checksum_failures, 1);
		tier_log(TIER_LOG_ERR, "cache block checksum mismatch, dropped: tier%zu %s block %" PRIu64,
			 ti, e->meta->key, e->index);
	} else {
		STAT_ADD(c->tiers[ti].st.io_errors, 1);
		tier_log(TIER_LOG_WARN, "cache block read failed, dropped: tier%zu %s block %" PRIu64 ": %s",
			 ti, e->meta->key, e->index, strerror(-err));
	}
}

void entry_unpin_locked(struct cache *c, struct centry *e, struct list *reap)
{
	if (--e->pins == 0 && e->dead) {
		list_add_tail(reap, &e->lru);
		c->tiers[e->tier].freeing += entry_charge(e);
	}
}

void entry_unpin(struct cache *c, struct centry *e)
{
	struct list reap;

	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	entry_unpin_locked(c, e, &reap);
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
}

void meta_kill_blocks_locked(struct cache *c, struct cmeta *m, uint64_t from_index,
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

struct flight *flight_new_locked(struct cache *c, struct cmeta *m, uint64_t index,
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

/* ---- queries ------------------------------------------------------------ */

int contains_locked(struct cache *c, struct cmeta *m, uint64_t off, uint64_t len)
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
