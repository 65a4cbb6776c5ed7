/*
 * Plain copies of whole files for FUSE passthrough (cache_passthrough_fd).
 *
 * With passthrough the kernel reads a local file as the application's file,
 * so that file must hold the file's bytes and nothing else; a block file
 * holds a chunk table and a footer after its data.  A file whose blocks are
 * all cached therefore gets a plain copy of its data next to the block
 * file of its first block (tiers/whole.c), assembled from reads of every
 * block that check every chunk, the first time it is opened for
 * passthrough.  Why a copy and not a block format whose data is the file:
 * the format, the ranged reads, the scan and the mover stay as they are,
 * and a copy is derived data that can always be made again from its
 * blocks.
 *
 * Rules (the invariants are in cache_int.h):
 *  - a copy belongs to the entry of its file's first block (one block
 *    file: key + seq) and goes with it: eviction, demotion, promotion, an
 *    invalidation that kills it (changed attributes at open, evict,
 *    rename, unlink, a write or truncate of that block), and reap_run
 *    unlinks the copy with the block;
 *  - it is of the file at one generation (whole_gen): a write or truncate
 *    of a later block bumps the file's generation, and the next call finds
 *    the copy stale and drops it with its block (later blocks may go, by
 *    eviction or a bad checksum, without touching the copy: it was checked
 *    when made);
 *  - it is charged to the first block's tier (the file's length), reserved
 *    before it is written, so quotas hold as for blocks; no room, no copy;
 *  - its XXH3-64 lives in the entry, in memory only: every call on a tier
 *    that verifies reads (SSD, HDD, MEM with verify_mem) reads the copy
 *    whole and checks it (tier_whole_open), a mismatch drops the entry
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
#include <xxhash.h>

#include "cache/cache_int.h"

/* Copy block index of e0's file (at generation gen) into fd, the copy
 * named after b0, at its offset, hashing it into xs.  e0: the first block,
 * pinned by the caller.  Called without c->lock. */
static int whole_copy_block(struct cache *c, struct centry *e0, const struct tier_block *b0,
			    uint64_t index, uint64_t size, uint64_t gen, char *buf, int fd,
			    XXH3_state_t *xs, struct list *reap)
{
	struct cmeta *m = e0->meta;
	uint64_t off = index * c->bs, len = size - off < c->bs ? size - off : c->bs;
	struct tier_block b;
	struct centry *e;
	int ret, rret;

	pthread_mutex_lock(&c->lock);
	e = index ? entry_lookup_locked(c, m, index) : e0;
	if (!e || e->dead || m->gen != gen || e->len != len)
		e = NULL;               /* dropped or changed meanwhile */
	else if (index)
		e->pins++;
	pthread_mutex_unlock(&c->lock);
	if (!e)
		return -ESTALE;

	entry_desc(c, e, &b);
	/* every chunk checked, whatever the tier's verify setting */
	rret = tier_read(c->tiers[e->tier].store, &b, buf, 1);
	if (rret < 0 && rret != -ENOMEM)
		entry_read_failed(c, e, rret);
	ret = rret < 0 ? rret : 0;
	if (!ret) {
		XXH3_64bits_update(xs, buf, len);
		ret = tier_whole_put(c->tiers[e0->tier].store, b0, fd, buf, len, off);
	}

	pthread_mutex_lock(&c->lock);
	if (rret < 0 && rret != -ENOMEM)
		entry_kill_locked(c, e, reap);  /* a bad block: reaped at unpin */
	if (index)
		entry_unpin_locked(c, e, reap);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* Make e's copy of its file (size bytes, at generation gen): e is the
 * first block, pinned and live, size reserved in its tier, e->whole_busy
 * set by the caller.  Called and returns with c->lock held. */
static int whole_make_locked(struct cache *c, struct centry *e, uint64_t size, uint64_t gen,
			     struct list *reap)
{
	struct ctier *t = &c->tiers[e->tier];
	uint64_t nblocks = (size + c->bs - 1) / c->bs;
	XXH3_state_t *xs;
	struct tier_block b;
	int ret, fd;
	char *buf;

	entry_desc(c, e, &b);
	pthread_mutex_unlock(&c->lock);
	buf = malloc(c->bs);
	xs = XXH3_createState();
	fd = tier_whole_begin(t->store, &b);
	ret = fd < 0 ? fd : !buf || !xs || XXH3_64bits_reset(xs) != XXH_OK ? -ENOMEM : 0;
	for (uint64_t i = 0; ret == 0 && i < nblocks; i++)
		ret = whole_copy_block(c, e, &b, i, size, gen, buf, fd, xs, reap);
	if (fd >= 0)
		ret = tier_whole_end(t->store, &b, fd, ret);
	pthread_mutex_lock(&c->lock);
	t->reserved -= size;
	e->whole_busy = false;
	if (ret == 0) {
		/* the copy is e's now: charged with it, unlinked with it */
		e->whole = true;
		e->whole_len = size;
		e->whole_gen = gen;
		e->whole_sum = XXH3_64bits_digest(xs);
		t->used += size;
		STAT_ADD(c->st.copies_written, 1);
		if (e->dead || e->meta->gen != gen)
			ret = -ESTALE;  /* invalidated meanwhile: reaped at unpin */
		else if (t->used + t->reserved > t->high)
			pthread_cond_signal(&c->mover_cv);
	}
	XXH3_freeState(xs);
	free(buf);
	return ret;
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

	if (!c->ntiers || size == 0)
		return -ENODATA;
	list_init(&reap);
	pthread_mutex_lock(&c->lock);
	m = meta_find_locked(c, key, strlen(key));
	e = m && m->attrs_known && m->rec_size == size && m->size == size &&
	    m->rec_mtime_ns == mtime_ns ? entry_lookup_locked(c, m, 0) : NULL;
	if (!e || (!e->whole && !contains_locked(c, m, 0, size))) {
		pthread_mutex_unlock(&c->lock);
		return -ENODATA;
	}
	if (e->whole_busy) {            /* another call is making it */
		pthread_mutex_unlock(&c->lock);
		return -EBUSY;
	}
	gen = m->gen;
	if (e->whole && (e->whole_gen != gen || e->whole_len != size)) {
		/* the file changed since: the copy goes, with its block */
		entry_kill_locked(c, e, &reap);
		pthread_mutex_unlock(&c->lock);
		reap_run(c, &reap);
		return -ENODATA;
	}
	ti = e->tier;
	t = &c->tiers[ti];
	e->pins++;
	list_del(&e->lru);              /* most recently used */
	list_add_head(&t->lru, &e->lru);
	if (!e->whole) {
		if (t->used + t->reserved + size > t->quota) {
			ret = -ENOSPC;
			goto out_unpin;
		}
		t->reserved += size;
		e->whole_busy = true;
		if ((ret = whole_make_locked(c, e, size, gen, &reap)) < 0)
			goto out_unpin;
	}
	entry_desc(c, e, &b);
	sum = e->whole_sum;
	pthread_mutex_unlock(&c->lock);

	ret = tier_whole_open(t->store, &b, size, sum, t->verify);

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
