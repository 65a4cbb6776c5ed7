/*
 * Rebuild at mount: the index is made from the block files of every tier
 * (tier_scan validates each one). Blocks of an older version of a file,
 * duplicates of a block (a crash during a move or an update), blocks of
 * another block size and blocks over a shrunk quota are deleted. Each
 * tier's LRU is then ordered by write sequence.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache_int.h"

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

int cache_rebuild(struct cache *c, char *err, size_t errlen)
{
	struct timespec ts;
	uint64_t max_seq = 0;
	int ret;

	for (size_t i = 0; i < c->ntiers; i++) {
		struct rebuild_ctx x = { .c = c, .tier = i };
		unsigned disc = 0;

		list_init(&x.reap);
		ret = tier_scan(c->tiers[i].store, rebuild_cb, &x, &disc);
		reap_run(c, &x.reap);
		if (ret < 0) {
			snprintf(err, errlen, "cache rebuild failed: %s: %s",
				 tier_dir(c->tiers[i].store, 0), strerror(-ret));
			return ret;
		}
		STAT_ADD(c->st.torn_discarded, disc);
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
		tier_log(TIER_LOG_INFO, "cache ready: %zu tiers, %zu blocks indexed, %" PRIu64 " torn discarded",
		      c->ntiers, c->entries.n, STAT_GET(c->st.torn_discarded));
	return 0;
}
