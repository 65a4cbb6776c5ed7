/*
 * Plain copies of whole files for FUSE passthrough (cache_passthrough_fd).
 *
 * With passthrough the kernel reads a local file as the application's file,
 * so that file must hold the file's bytes and nothing else; a block file
 * holds a chunk table and a footer after its data.  A file no bigger than
 * one block, wholly cached, therefore gets a plain copy of its one block's
 * data next to the block file (tiers/whole.c), made from a read of the
 * block that checks every chunk, the first time it is opened for
 * passthrough.  Why a copy and not a block format whose data is the file:
 * the format, the ranged reads, the scan and the mover stay as they are,
 * and a copy is derived data that can always be made again from its block.
 *
 * Rules (the invariants are in cache_int.h):
 *  - a copy belongs to one entry (one block file: key + seq) and goes with
 *    it: eviction, demotion, promotion, every invalidation (a write, a
 *    truncate, changed attributes at open, evict, rename, unlink) kills the
 *    entry, and reap_run unlinks the copy with the block;
 *  - it is charged to the entry's tier (its length), reserved before it is
 *    written, so quotas hold as for blocks; no room, no copy;
 *  - its XXH3-64 lives in the entry, in memory only: every open reads the
 *    copy whole and checks it (tier_whole_open), a mismatch drops the entry
 *    (block and copy) and counts as a checksum failure, and the scan at
 *    mount deletes the copies of an earlier process.
 * The kernel keeps its own reference to the file it reads, so an entry
 * dropped while a passthrough open still reads its copy only unlinks the
 * name: the bytes (a whole file as it was when opened) stay readable, and
 * their space is freed by the last close.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache_int.h"

/* Make e's copy: e is pinned and live, its charge reserved in its tier,
 * e->whole_busy set by the caller.  Called and returns with c->lock held. */
static int whole_make_locked(struct cache *c, struct centry *e, uint64_t gen,
			     struct list *reap)
{
	struct ctier *t = &c->tiers[e->tier];
	struct tier_block b;
	uint64_t sum = 0;
	int rret, ret;
	char *buf;

	entry_desc(c, e, &b);
	pthread_mutex_unlock(&c->lock);
	buf = malloc(b.len + 1);        /* + 1: never malloc(0) */
	/* every chunk checked, whatever the tier's verify setting */
	rret = ret = buf ? tier_read(t->store, &b, buf, 1) : -ENOMEM;
	if (rret < 0 && rret != -ENOMEM)
		entry_read_failed(c, e, rret);
	else if (rret >= 0)
		ret = tier_whole_write(t->store, &b, buf, &sum);
	free(buf);
	pthread_mutex_lock(&c->lock);
	t->reserved -= e->len;
	e->whole_busy = false;
	if (rret < 0 && rret != -ENOMEM)
		entry_kill_locked(c, e, reap);  /* a bad block: reaped at unpin */
	if (ret < 0)
		return ret;
	/* the copy is e's now: charged with it, unlinked with it */
	e->whole = true;
	e->whole_sum = sum;
	t->used += e->len;
	STAT_ADD(c->st.copies_written, 1);
	if (e->dead || e->meta->gen != gen)
		return -ESTALE;         /* invalidated meanwhile: reaped at unpin */
	if (t->used + t->reserved > t->high)
		pthread_cond_signal(&c->mover_cv);
	return 0;
}

int cache_passthrough_fd(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns)
{
	struct cmeta *m;
	struct centry *e;
	struct ctier *t;
	struct tier_block b;
	struct list reap;
	uint64_t gen, sum;
	bool bad = false;
	unsigned ti;
	int ret;

	if (!c->ntiers)
		return -ENODATA;
	if (size == 0 || size > c->bs)
		return -EFBIG;
	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	m = meta_find_locked(c, key, strlen(key));
	e = m && m->attrs_known && m->rec_size == size && m->size == size &&
	    m->rec_mtime_ns == mtime_ns ? entry_lookup_locked(c, m, 0) : NULL;
	if (!e || e->len != size) {
		pthread_mutex_unlock(&c->lock);
		return -ENODATA;
	}
	if (e->whole_busy) {            /* another open is making it */
		pthread_mutex_unlock(&c->lock);
		return -EBUSY;
	}
	ti = e->tier;
	t = &c->tiers[ti];
	e->pins++;
	list_del(&e->lru);              /* most recently used */
	list_add_head(&t->lru, &e->lru);
	gen = m->gen;
	if (!e->whole) {
		if (t->used + t->reserved + e->len > t->quota) {
			ret = -ENOSPC;
			goto out_unpin;
		}
		t->reserved += e->len;
		e->whole_busy = true;
		if ((ret = whole_make_locked(c, e, gen, &reap)) < 0)
			goto out_unpin;
	}
	entry_desc(c, e, &b);
	sum = e->whole_sum;
	pthread_mutex_unlock(&c->lock);

	ret = tier_whole_open(t->store, &b, sum);

	pthread_mutex_lock(&c->lock);
	if (ret == -EBADMSG) {
		bad = true;
		STAT_ADD(t->st.checksum_failures, 1);
		STAT_ADD(c->st.checksum_failures, 1);
		entry_kill_locked(c, e, &reap);
	} else if (ret >= 0 && (e->dead || m->gen != gen)) {
		close(ret);             /* invalidated while we read it */
		ret = -ESTALE;
	} else if (ret >= 0) {
		STAT_ADD(c->st.copies_opened, 1);
	}
out_unpin:
	entry_unpin_locked(c, e, &reap);
	pthread_mutex_unlock(&c->lock);
	if (bad)
		tier_log(TIER_LOG_ERR, "cache copy checksum mismatch, dropped: tier%u %s", ti, key);
	reap_run(c, &reap);
	return ret;
}
