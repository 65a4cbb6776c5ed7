/*
 * Internals shared by the cache/ sources. Not part of the public interface.
 *
 * Invariants (all under cache.lock unless noted):
 *  - Only live entries are in the key hash, their file's block list and
 *    their tier's LRU list. A killed entry is "dead": it keeps its file on
 *    disk and its quota charge until its last pin is dropped, then the file
 *    is unlinked (outside the lock) and tier.used is decremented. So a pinned
 *    block is never freed under its reader, and tier.used is exactly the sum
 *    of block files on disk plus dead files not yet unlinked.
 *  - A plain copy of a whole file (whole.c) lives and dies with the entry
 *    of the file's first block: it is charged with it (entry_charge), made
 *    only while that entry is pinned and live, and unlinked with the block
 *    file by reap_run. Moves do not copy it. It is handed out only while
 *    its whole_gen is the file's cmeta.gen.
 *  - tier.used + tier.reserved <= tier.quota at all times: a writer reserves
 *    the block's bytes before writing, converts them to used on insert and
 *    releases them on failure.
 *  - cmeta.gen increases on every invalidation of a file (write, truncate,
 *    changed attributes at open, evict). A fetch or prefetch records gen
 *    when it starts and its block is stored only if gen is unchanged, so data
 *    fetched before an invalidation is never inserted after it.
 *  - Block file names are unique per write (key + seq), so replacing or
 *    moving a block never overwrites a file that a reader has pinned.
 *
 * Locks, in the order they nest (never the other way round):
 *
 *     cache_file.slot_lock  ->  cache.lock  ->  tier.lock
 *
 *  - cache_file.slot_lock: one handle's slots and its sequential detection.
 *    pf_read_ahead() takes cache.lock under it; slot_find() and slot_set()
 *    take it alone.
 *  - cache.lock: everything else that is shared (below). Never held across
 *    I/O, logging or a wakeup of the prefetch thread (pf_kick). The wait
 *    hooks are called under it, so they must take no lock of their own that
 *    is held while calling into the cache (fs/'s hang watch takes none).
 *  - tier.lock (tiers/tier_int.h): a leaf, taken under cache.lock by
 *    tier_usable() (reserve_locked, make_room_locked, promotion).
 *  There is no lock of the prefetch queue: pf_queue, store_q and their
 *  counters are under cache.lock, and the prefetch thread's own state (its
 *  ring, open files and reads) is touched by that thread alone. Every
 *  condition variable waits on cache.lock.
 *
 * Counters:
 *  - cache.st (struct cache_stats): every field is atomic, STAT_ADD() to
 *    bump, STAT_GET() to read, with or without cache.lock.
 *  - ctier.st (one tier): hits, checksum_failures and io_errors are atomic
 *    (the read path bumps them after dropping cache.lock); blocks,
 *    evictions, demotions, promotions and write_errors are plain and
 *    protected by cache.lock (every writer holds it and cache_get_stats()
 *    reads them under it). Its used/reserved/quota are not kept:
 *    cache_get_stats() fills them from struct ctier.
 *  - blkbuf.refs is atomic; cmeta.gen is written atomically under
 *    cache.lock and read without it by slot_find().
 *
 * Fixed once set, read without a lock: cache.cfg, state_dir, bs, ntiers
 * and each ctier's store, medium, verify, quota, high and low (set in
 * cache_new before any thread starts); the wait hooks (set before the first
 * cache_read); cache.pf (set before the prefetch thread starts, cleared by
 * cache_free once every thread is gone);
 * a cmeta's key, keylen and hash; a centry's identity and placement (key,
 * seq, index, meta, bytes, file_size, file_mtime_ns, len, dir, tier: a move
 * makes a new entry), so a pin holder reads them unlocked; a flight's meta,
 * index and gen, and its res and buf once FL_DONE.
 */
#ifndef LAZARUS_CACHE_INT_H
#define LAZARUS_CACHE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "cache/cache.h"

struct list {
	struct list *prev, *next;
};

static inline void list_init(struct list *l) { l->prev = l->next = l; }
static inline bool list_empty(const struct list *l) { return l->next == l; }
static inline void list_del(struct list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	list_init(n);
}
static inline void list_add_head(struct list *h, struct list *n)
{
	n->next = h->next;
	n->prev = h;
	h->next->prev = n;
	h->next = n;
}
static inline void list_add_tail(struct list *h, struct list *n)
{
	list_add_head(h->prev, n);
}
#define container_of(p, T, m) ((T *)((char *)(p) - offsetof(T, m)))

/* A chained hash table of nodes embedded in their owners (index.c). It
 * doubles when it holds as many nodes as buckets (on ENOMEM it keeps its
 * size and the chains grow longer); hash_of gives a node's hash, which its
 * owner keeps. Protected by whatever protects the owners. */
struct hnode {
	struct hnode *next;
};

struct htable {
	struct hnode **b;
	size_t size;           /* buckets, a power of two */
	size_t n;              /* nodes */
	uint64_t (*hash_of)(const struct hnode *n);
};

int htable_init(struct htable *t, size_t size, uint64_t (*hash_of)(const struct hnode *n));
void htable_release(struct htable *t);   /* the buckets, not the nodes */
void htable_add(struct htable *t, struct hnode *n);
void htable_del(struct htable *t, struct hnode *n);
/* First node of the chain that holds hash (walk it with ->next). */
static inline struct hnode *htable_chain(const struct htable *t, uint64_t hash)
{
	return t->b[hash & (t->size - 1)];
}

#define STAT_ADD(field, n) __atomic_add_fetch(&(field), (n), __ATOMIC_RELAXED)
#define STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* Refcounted block data. */
struct blkbuf {
	unsigned refs;         /* atomic */
	uint32_t len;          /* valid bytes; < block size only at EOF */
	char data[];
};

/* One file known to the cache (open, or with blocks cached). Protected by
 * cache.lock except as noted. */
struct cmeta {
	char *key;
	uint32_t keylen;
	uint64_t hash;         /* XXH3 of key */
	struct hnode hn;       /* cache.metas */
	unsigned refs;         /* handles + entries + flights + prefetch files */
	unsigned nblocks;      /* live entries */
	struct list blocks;    /* live entries (centry.mlink) */
	uint64_t gen;          /* atomic: written under cache.lock, read without by slot_find */
	int attrs_known;
	uint64_t rec_size;     /* backend size/mtime recorded for close-to-open */
	int64_t rec_mtime_ns;
	uint64_t rec_seq;      /* seq of the block that set rec_* at rebuild */
	uint64_t size;         /* current size as known through this proxy */
	char *backend_path;    /* for the prefetcher */
	uint64_t pf_backoff_ns;  /* no prefetch before this (monotonic) after an engine error */
	bool warmed;           /* read ahead by cache_warm_add, not opened since */
};

/* A listed file waiting for small-file read-ahead (cache.warm). */
struct warm {
	struct list link;
	char *key, *backend_path;
	uint64_t size;
	int64_t mtime_ns;
};

/* One block file. Identity and placement are fixed once inserted; dead,
 * moving, prefetched, whole*, pins and the links are protected by
 * cache.lock. */
struct centry {
	uint64_t key, seq, index;
	struct cmeta *meta;    /* holds a meta ref until freed */
	uint64_t bytes;        /* on-disk size, charged to the tier */
	uint64_t file_size;    /* footer attributes, kept when moving */
	int64_t file_mtime_ns;
	uint32_t len, dir;
	uint8_t tier;
	bool dead, moving, prefetched;
	/* (first blocks only) a plain copy of the whole file (whole.c)
	 * exists, whole_len bytes charged to the tier with the block, of the
	 * file at generation whole_gen; whole_sum is its XXH3-64 */
	bool whole, whole_busy;
	uint64_t whole_len, whole_gen, whole_sum;
	unsigned pins;
	struct hnode hn;       /* cache.entries, by key */
	struct list lru;       /* tier LRU (live) or reap list (dead) */
	struct list mlink;     /* meta->blocks */
};

/* Bytes e charges to its tier: the block file, and its plain copy. */
static inline uint64_t entry_charge(const struct centry *e)
{
	return e->bytes + (e->whole ? e->whole_len : 0);
}

/* FL_QUEUED: waiting for the prefetcher (still on pf_queue unless pf_taken,
 * e.g. while the prefetcher opens the file); a demand reader may claim it
 * and fetch the block itself. FL_RUNNING: being fetched; readers wait. */
enum flight_state { FL_QUEUED, FL_RUNNING, FL_DONE };

/* A fetch from the engine in progress; concurrent readers of the block wait
 * on it instead of fetching again. Protected by cache.lock; meta, index and
 * gen are fixed, res and buf too once FL_DONE. */
struct flight {
	struct cmeta *meta;
	uint64_t index, gen;
	enum flight_state state;
	bool prefetch;         /* started by the prefetcher */
	bool fill;             /* queued behind a small random read: started
				* only while no direct read is recent */
	bool pf_taken;         /* popped by the prefetch thread (which holds a ref) */
	bool used;             /* a reader consumed the prefetched data */
	int res;               /* 0 or -errno once FL_DONE */
	struct blkbuf *buf;    /* data once FL_DONE and res == 0 */
	unsigned refs;
	struct list link;      /* cache.flights */
	struct list qlink;     /* cache.pf_queue while FL_QUEUED, then
				* cache.store_q while its block waits to be stored */
};

struct ctier {
	/* fixed after cache_new */
	struct tier *store;
	enum tier_medium medium;
	bool verify;
	uint64_t quota, high, low;
	/* protected by cache.lock */
	bool draining;         /* above high, not yet back to low */
	uint64_t used, reserved;
	uint64_t freeing;      /* part of used on reap lists: unlinked soon */
	struct list lru;       /* head = most recently used */
	/* hits, checksum_failures, io_errors atomic; the rest under cache.lock;
	 * used/reserved/quota unused (see Counters above) */
	struct cache_tier_stats st;
};

struct promo {
	struct centry *e;      /* pinned */
	struct blkbuf *buf;
};

#define PROMO_MAX 32

struct pf_state;

struct cache {
	/* fixed after cache_new */
	struct cache_config cfg;
	char *state_dir;
	uint32_t bs;
	size_t ntiers;

	/* Lock order: cache_file.slot_lock -> lock -> tier.lock (see above).
	 * Never held across I/O, logging or pf_kick(). */
	pthread_mutex_t lock;
	pthread_cond_t flight_cv;   /* flight completions */
	pthread_cond_t mover_cv;    /* work for the mover */
	pthread_cond_t idle_cv;     /* mover/prefetcher went idle */
	char *labels;               /* protected by lock */
	struct ctier tiers[CACHE_MAX_TIERS];   /* see struct ctier */
	struct htable entries;      /* live centry by block key; protected by lock */
	struct htable metas;        /* cmeta by file key; protected by lock */
	struct list flights;        /* protected by lock */
	uint64_t seq;               /* protected by lock */
	struct promo promos[PROMO_MAX];  /* ring buffer, protected by lock */
	unsigned promo_head, promo_n;
	bool running;               /* protected by lock */
	bool mover_busy;            /* protected by lock */
	pthread_t mover;

	/* prefetch (prefetch.c); queues and their counters protected by lock */
	struct list pf_queue;
	unsigned pf_queued, pf_inflight;
	/* prefetched flights (FL_DONE, via flight.qlink) that the mover stores
	 * in a tier; they count in pf_inflight until stored */
	struct list store_q;
	uint64_t last_direct_ns;    /* atomic: monotonic time of the last direct read */
	struct pf_state *pf;        /* set before the prefetch thread starts,
				     * cleared by cache_free (pf_free) */
	/* small-file read-ahead (prefetch.c), protected by lock */
	struct list warm;           /* struct warm, oldest first */
	size_t nwarm;
	uint64_t warm_issued, warm_used;

	struct cache_stats st;      /* every field atomic: STAT_ADD, STAT_GET */

	/* set once before use (cache_set_wait_hooks) */
	void (*wait_begin)(void *arg);
	void (*wait_end)(void *arg);
	void *wait_arg;
};

struct cache_file {
	struct cache *c;
	struct cmeta *meta;
	/* Taken before cache.lock. Guards slot[], slot_next, last_block,
	 * seq_run and pf_until; c and meta are fixed. */
	pthread_mutex_t slot_lock;
	struct {
		uint64_t index, gen;
		struct blkbuf *buf;
	} slot[2];
	unsigned slot_next;
	uint64_t last_block;
	unsigned seq_run;
	uint64_t pf_until;          /* last block already queued for prefetch */
	/* The write assembly (write.c): the block a sequential writer is
	 * filling, stored once whole.  wa_lock is taken before cache.lock and
	 * guards wa_buf, wa_index and wa_gen. */
	pthread_mutex_t wa_lock;
	struct blkbuf *wa_buf;      /* NULL: none */
	uint64_t wa_index, wa_gen;
};

/* cache/ logs through tiers/' shim, tier_log() (tier.h): one sink for both,
 * never called with cache.lock held. */

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* index.c */
int index_init(struct cache *c);      /* 0 or -ENOMEM */
void index_release(struct cache *c);  /* frees entries and records, not files */
struct blkbuf *blkbuf_new(uint32_t cap);
void blkbuf_put(struct blkbuf *b);
struct blkbuf *blkbuf_get(struct blkbuf *b);
struct cmeta *meta_find_locked(struct cache *c, const char *key, size_t keylen);
/* Find or create; returns with a new reference, or NULL (ENOMEM, too long). */
struct cmeta *meta_get_locked(struct cache *c, const char *key, size_t keylen);
/* meta_get_locked() and the close-to-open check of cache_file_open():
 * blocks recorded with other attributes go to `reap`; *keep says whether
 * they matched.  Takes bp (the backend path, may be NULL).  NULL: no
 * memory. */
struct cmeta *meta_open_locked(struct cache *c, const char *key, uint64_t size,
			       int64_t mtime_ns, char *bp, struct list *reap, int *keep);
void meta_put_locked(struct cache *c, struct cmeta *m);
/* Kill the live entries of m from block from_index on. */
void meta_kill_blocks_locked(struct cache *c, struct cmeta *m, uint64_t from_index,
			     struct list *reap);
struct centry *entry_lookup_locked(struct cache *c, struct cmeta *m, uint64_t index);
/* 1 when every block of [off, off+len) of m is cached (len 0: the whole
 * recorded size). */
int contains_locked(struct cache *c, struct cmeta *m, uint64_t off, uint64_t len);
/* Make a new live entry (takes a meta reference) in tier e->tier at the LRU
 * head, charging e->bytes to the tier. */
void entry_insert_locked(struct cache *c, struct centry *e);
/* Remove e from the index (it becomes dead). Its file stays and stays
 * charged until the last pin is gone; unpinned entries go to reap. */
void entry_kill_locked(struct cache *c, struct centry *e, struct list *reap);
/* Count and log a failed read of e's block (err -EBADMSG: checksum
 * mismatch, else an I/O error); the caller drops the block. Call without
 * cache.lock (the counters are atomic). */
void entry_read_failed(struct cache *c, const struct centry *e, int err);
void entry_unpin_locked(struct cache *c, struct centry *e, struct list *reap);
void entry_unpin(struct cache *c, struct centry *e);
/* Unlink dead entries' files and release their charge. Call without lock. */
void reap_run(struct cache *c, struct list *reap);
/* The tier_block describing e's file (e's fields are fixed once inserted). */
void entry_desc(const struct cache *c, const struct centry *e, struct tier_block *b);
struct flight *flight_find_locked(struct cache *c, struct cmeta *m, uint64_t index);
struct flight *flight_new_locked(struct cache *c, struct cmeta *m, uint64_t index,
				 enum flight_state state, bool prefetch);
/* A successful flight stays findable (FL_DONE, with its data) until its
 * owner has stored the block and calls flight_finish_locked(): a reader that
 * comes in between takes the data instead of fetching the block a second
 * time. A failed one is unlisted at once, so that the next reader tries
 * again. */
void flight_complete(struct cache *c, struct flight *f, int res, struct blkbuf *buf);
void flight_finish_locked(struct cache *c, struct flight *f);
void flight_put(struct cache *c, struct flight *f);
void flight_put_locked(struct cache *c, struct flight *f);

/* placement.c */
/* Reserve need bytes in the first usable tier >= from that has room;
 * returns its index or -1. */
int reserve_locked(struct cache *c, size_t from, uint64_t need);
/* The least recently used entry of t that is neither pinned nor moving. */
struct centry *lru_victim_locked(struct ctier *t);
/* Store a block fetched at generation gen (dropped with -ESTALE if the file
 * was invalidated since). pf: the prefetch flight it came from, or NULL.
 * Call without lock. 0 or -errno. */
int block_store(struct cache *c, struct cmeta *m, uint64_t index, uint64_t gen,
		const void *data, uint32_t len, struct flight *pf);

/* mover.c */
int mover_start(struct cache *c, char *err, size_t errlen);
/* Stops the thread and does what it left (stores, queued promotions). */
void mover_stop(struct cache *c);
/* Queue pinned entry e for promotion to the top tier; takes the pin. buf:
 * the whole block if it is in memory, else NULL and the mover reads it. */
void promo_enqueue(struct cache *c, struct centry *e, struct blkbuf *buf);

/* rebuild.c */
/* Index the block files of every tier; sets cache.seq past all of them. */
int cache_rebuild(struct cache *c, char *err, size_t errlen);

/* prefetch.c */
int pf_start(struct cache *c, char *err, size_t errlen);
/* Stops the prefetch thread; its state (and so pf_kick) stays valid until
 * pf_free(), which cache_free() calls once the mover is stopped too. */
void pf_stop(struct cache *c);
void pf_free(struct cache *c);
/* Forget the small-file read-ahead list (cache_free). */
void pf_warm_free_locked(struct cache *c);
/* Wake the prefetch thread. Call without cache.lock (it may log). */
void pf_kick(struct cache *c);
/* Sequential detection for cf and read-ahead queueing for a read of blocks
 * [first, last]. Returns true when the read continues a sequential run. */
bool pf_read_ahead(struct cache_file *cf, uint64_t first, uint64_t last);
/* Have block index fetched whole in the background: it is in flight
 * already, or queue it for the prefetcher. The backlog is bounded (queued
 * flights hold no buffer, 2 x prefetch_depth of them with those in flight);
 * past it the block is left alone, and a later read of it queues it again.
 * Returns 1 when queued here, 0 when in flight or left alone, -EAGAIN when
 * the prefetcher cannot read this file (no path, or it failed on it
 * recently). */
int pf_fill_queue_locked(struct cache *c, struct cmeta *m, uint64_t index);

#endif
