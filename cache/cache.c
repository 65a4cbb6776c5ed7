/*
 * Tiered block cache: lifecycle (cache_new, cache_free) and file handles
 * (cache_file_open with close-to-open validation, cache_file_close).
 *
 * Where the rest lives (the invariants are in cache_int.h):
 *   index.c      block buffers, file records, entries, pins, flights
 *   placement.c  reserving room in a tier, eviction to make room, block_store
 *   mover.c      the mover thread: stores, demotion, promotion
 *   rebuild.c    the index from the block files at mount
 *   read.c       cache_read: slots, tier hits, direct reads, demand fetches
 *   write.c      cache_write, cache_truncate, cache_evict, rename
 *   prefetch.c   read-ahead: queueing (readers) and the prefetch thread
 *   stats.c      counters, text/JSON, Prometheus textfile
 *   config.c     options and the configuration file
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_int.h"

void cache_set_log(tier_log_fn *fn)
{
	tier_set_log(fn);
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
	list_init(&c->warm);
	for (size_t i = 0; i < CACHE_MAX_TIERS; i++)
		list_init(&c->tiers[i].lru);
	ret = -ENOMEM;
	if (index_init(c) < 0 || config_copy(&c->cfg, cfg) < 0 ||
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
	ret = cache_rebuild(c, err, errlen);
	if (ret < 0)
		goto out_free;
	if (c->ntiers) {
		ret = mover_start(c, err, errlen);
		if (ret == 0 && cfg->prefetch > 0)
			ret = pf_start(c, err, errlen);
		if (ret < 0)
			goto out_free;
	}
	*out = c;
	return 0;

out_free:
	cache_free(c);
	return ret;
}

void cache_free(struct cache *c)
{
	if (!c)
		return;
	pf_stop(c);
	mover_stop(c);      /* stores what the prefetcher left, kicking it */
	pf_free(c);
	pthread_mutex_lock(&c->lock);
	pf_warm_free_locked(c);
	pthread_mutex_unlock(&c->lock);
	index_release(c);   /* block files stay for the next start */
	for (size_t i = 0; i < c->ntiers; i++)
		tier_close(c->tiers[i].store);
	cache_config_release(&c->cfg);
	free(c->state_dir);
	free(c->labels);
	pthread_cond_destroy(&c->idle_cv);
	pthread_cond_destroy(&c->mover_cv);
	pthread_cond_destroy(&c->flight_cv);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

void cache_set_wait_hooks(struct cache *c, void (*begin)(void *arg), void (*end)(void *arg),
			  void *arg)
{
	c->wait_begin = begin && end ? begin : NULL;
	c->wait_end = end;
	c->wait_arg = arg;
}

/* ---- files -------------------------------------------------------------- */

struct cmeta *meta_open_locked(struct cache *c, const char *key, uint64_t size,
				int64_t mtime_ns, char *bp, struct list *reap, int *keep)
{
	struct cmeta *m = meta_get_locked(c, key, strlen(key));

	if (!m) {
		free(bp);
		return NULL;
	}
	*keep = m->attrs_known && m->rec_size == size && m->rec_mtime_ns == mtime_ns;
	if (!*keep) {
		if (m->attrs_known || m->nblocks) {
			meta_kill_blocks_locked(c, m, 0, reap);
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
	return m;
}

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
	m = meta_open_locked(c, key, size, mtime_ns, bp, &reap, &keep);
	if (m && m->warmed) {
		m->warmed = false;
		c->warm_used++;
		STAT_ADD(c->st.files_used, 1);
	}
	pthread_mutex_unlock(&c->lock);
	reap_run(c, &reap);
	if (!m) {
		free(cf);
		return -ENOMEM;
	}

	cf->c = c;
	cf->meta = m;
	cf->last_block = UINT64_MAX;
	pthread_mutex_init(&cf->slot_lock, NULL);
	pthread_mutex_init(&cf->wa_lock, NULL);
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
	cache_file_flush_writes(cf);
	for (int i = 0; i < 2; i++)
		blkbuf_put(cf->slot[i].buf);
	pthread_mutex_lock(&c->lock);
	meta_put_locked(c, cf->meta);
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_destroy(&cf->slot_lock);
	pthread_mutex_destroy(&cf->wa_lock);
	free(cf);
}
