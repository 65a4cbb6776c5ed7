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
