/*
 * Placement and quota: a new block goes to the first usable tier with room
 * for it, reserved before it is written so that a quota is never exceeded;
 * when none has room, LRU blocks of the last usable tier are evicted.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdlib.h>

#include "cache/cache_int.h"

int reserve_locked(struct cache *c, size_t from, uint64_t need)
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

struct centry *lru_victim_locked(struct ctier *t)
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
