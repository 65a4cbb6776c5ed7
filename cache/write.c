/*
 * The write and truncate path (cache_write, cache_truncate, and the
 * attributes recorded after a write), and the other invalidations: eviction
 * by key prefix and rename. Every invalidation bumps the file's cmeta.gen
 * under cache.lock, so that a fetch that started before it never stores
 * stale data after it (block_store compares gen).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

/*
 * The write assembly of cf holds block wa_index as written so far (bytes
 * [0, wa_buf->len)) at generation wa_gen.  A sequential writer fills it a
 * write at a time and the block is stored once, when it is whole (or, for
 * the file's last block, at close): storing every partial block again, as
 * a read-modify-write of the piece before it, would cost the writer more
 * tier I/O than the data it writes.  wa_lock held.
 */
static void wa_drop(struct cache_file *cf)
{
	blkbuf_put(cf->wa_buf);
	cf->wa_buf = NULL;
}

/* Store the assembly if it is the file's whole last block and nothing
 * changed the file since (block_store checks wa_gen), then drop it. */
static void wa_store_tail(struct cache_file *cf)
{
	struct cache *c = cf->c;
	uint64_t bstart = cf->wa_index * c->bs, size;
	bool tail;

	if (!cf->wa_buf)
		return;
	pthread_mutex_lock(&c->lock);
	size = cf->meta->size;
	tail = cf->meta->gen == cf->wa_gen && size > bstart && size - bstart == cf->wa_buf->len;
	pthread_mutex_unlock(&c->lock);
	if (tail)
		block_store(c, cf->meta, cf->wa_index, cf->wa_gen, cf->wa_buf->data, cf->wa_buf->len, NULL);
	wa_drop(cf);
}

void cache_file_flush_writes(struct cache_file *cf)
{
	pthread_mutex_lock(&cf->wa_lock);
	wa_store_tail(cf);
	pthread_mutex_unlock(&cf->wa_lock);
}

/*
 * Piece [ws, we) of block b (at bstart) was written with data src, the
 * write's generation being gen (prev before it).  Extend the assembly, or
 * start one at a block's first byte; a whole block is stored at once.
 * Anything else ends the assembly: the block is not cached.
 */
static void wa_write(struct cache_file *cf, uint64_t b, uint32_t ws, uint32_t we,
		     const char *src, uint64_t prev, uint64_t gen)
{
	struct cache *c = cf->c;

	/* the writer moved elsewhere, or someone else changed the file */
	if (cf->wa_buf && (cf->wa_index != b || cf->wa_gen != prev || cf->wa_buf->len != ws))
		wa_drop(cf);
	if (!cf->wa_buf) {
		if (ws != 0 || !(cf->wa_buf = blkbuf_new(c->bs)))
			return;
		cf->wa_index = b;
		cf->wa_buf->len = 0;
	}
	memcpy(cf->wa_buf->data + ws, src, we - ws);
	cf->wa_buf->len = we;
	cf->wa_gen = gen;
	if (we == c->bs) {
		block_store(c, cf->meta, b, gen, cf->wa_buf->data, we, NULL);
		wa_drop(cf);
	}
}

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
	pthread_mutex_lock(&cf->wa_lock);
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

	/* Blocks that were cached get their new contents stored at once
	 * (read-modify-write); the others go through the write assembly. */
	for (uint64_t b = first; olds && b <= last; b++) {
		struct centry *e = olds[b - first];
		uint64_t bstart = b * bs;
		uint32_t ws = (uint32_t)((uint64_t)off > bstart ? (uint64_t)off - bstart : 0);
		uint32_t we = (uint32_t)(wend < bstart + bs ? wend - bstart : bs);
		const char *src = (const char *)buf + (bstart + ws - (uint64_t)off);
		struct blkbuf *nb = NULL;

		if (!e) {
			wa_write(cf, b, ws, we, src, gen - 1, gen);
			continue;
		}
		if (ws <= e->len) {
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
		}
		if (nb) {
			memcpy(nb->data + ws, src, we - ws);
			block_store(c, m, b, gen, nb->data, nb->len, NULL);
			blkbuf_put(nb);
		}
		entry_unpin(c, e);
	}
	pthread_mutex_unlock(&cf->wa_lock);
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

void cache_file_set_attr(struct cache_file *cf, uint64_t size, int64_t mtime_ns)
{
	struct cache *c = cf->c;

	pthread_mutex_lock(&c->lock);
	cf->meta->attrs_known = 1;
	cf->meta->rec_size = cf->meta->size = size;
	cf->meta->rec_mtime_ns = mtime_ns;
	pthread_mutex_unlock(&c->lock);
}

/* ---- eviction ----------------------------------------------------------- */

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
	for (size_t i = 0; i < c->metas.size; i++) {
		for (struct hnode *hn = c->metas.b[i]; hn; hn = hn->next) {
			struct cmeta *m = container_of(hn, struct cmeta, hn);

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
