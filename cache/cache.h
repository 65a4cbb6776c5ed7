/*
 * cache/: the tiered block cache of lazarusfs.
 *
 * Files are cut into fixed-size blocks (block_size, default 4 MiB). A block
 * is identified by XXH3 over (file key, block index), where the file key is
 * the path relative to the engine root. Blocks live in an ordered list of
 * tiers (tiers/tier.h: MEM, SSD, HDD), each with a quota and high/low
 * watermarks:
 *  - new blocks go to the first tier that is usable and has room;
 *  - a background mover thread demotes least-recently-used blocks to the next
 *    tier when a tier passes its high watermark, until it is at or below the
 *    low watermark; the last tier evicts;
 *  - a hit in a lower tier queues the block for promotion to the top tier;
 *  - quotas count apparent bytes on disk (data + chunk checksums + file key +
 *    80-byte footer, see tier_block_bytes(), and plain copies for FUSE
 *    passthrough, see cache_passthrough_fd()),
 *    are reserved before a block is written, and are never exceeded;
 *  - blocks being read are pinned and never unlinked under a reader.
 * Blocks read back from SSD/HDD (and MEM when verify_mem is set) are checked
 * against their XXH3 checksums (per 16 KiB chunk, only the chunks read); a
 * mismatch drops the block, bumps a counter and the data is fetched from the
 * engine instead.
 *
 * Threads: cache_new() starts a mover thread and, when prefetch > 0, a
 * prefetch thread, which reads blocks ahead and leaves storing them to the
 * mover (until stored, such a block serves readers from memory). Every
 * public function is thread-safe. Internally one mutex (struct cache.lock)
 * guards the index, LRU lists, quota accounting, file records, flights and
 * the prefetch and store queues; it is never held across I/O or logging.
 * Each open file has a second one for its block slots. Lock order:
 *     cache_file.slot_lock -> cache.lock -> tier.lock (tiers/, a leaf)
 * (details and which counters are atomic: cache_int.h).
 * io_uring: tier I/O uses one ring per thread (tiers/); the prefetch thread
 * owns its own ring, used by no other thread.
 *
 * Errors are 0 / -errno; functions taking err/errlen also write a one-line,
 * lowercase message there.
 */
#ifndef LAZARUS_CACHE_H
#define LAZARUS_CACHE_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

#include "tiers/tier.h"

#define CACHE_MAX_TIERS 8

struct cache_tier_config {
	int defined;               /* set once medium/paths/quota were given */
	enum tier_medium medium;
	char **paths;              /* owned, npaths entries */
	size_t npaths;
	uint64_t quota;            /* bytes */
	double high, low;          /* watermarks as fractions of quota (0.95, 0.80) */
};

struct cache_config {
	struct cache_tier_config tiers[CACHE_MAX_TIERS]; /* must be contiguous from tier0 */
	uint32_t block_size;       /* power of two, 64 KiB .. 64 MiB; default 4 MiB */
	unsigned prefetch;         /* blocks read ahead of a sequential reader (8; 0 = off) */
	unsigned prefetch_depth;   /* max engine reads in flight or waiting
				    * to be stored (16) */
	unsigned prefetch_timeout; /* seconds per engine read/open before it is cancelled (30) */
	uint64_t prefetch_files;   /* files listed up to this size are read ahead
				    * whole (1 MiB; 0 = off), see cache_warm_add() */
	int verify_mem;            /* also verify checksums of MEM blocks (0) */
};

/* Defaults; no tiers, so the cache is disabled until a tier is configured. */
void cache_config_init(struct cache_config *cfg);
void cache_config_release(struct cache_config *cfg);
/* Number of configured tiers (0 = cache disabled). */
size_t cache_config_ntiers(const struct cache_config *cfg);

/*
 * One -o option. Keys (N = 0..7, tier0 is the top tier):
 *   tierN=MEDIUM:PATH[|PATH...]:QUOTA   e.g. tier0=MEM:/dev/shm/lazarus:1G
 *   tierN_medium=MEM|SSD|HDD  tierN_path=PATH[|PATH...]  tierN_quota=SIZE
 *   tierN_high=FRACTION  tierN_low=FRACTION   (0.95 / 0.8, or 95% / 80%)
 *   block_size=SIZE  prefetch=N  prefetch_depth=N  prefetch_timeout=SECONDS
 *   verify_mem=0|1  config=FILE
 * SIZE takes K, M, G, T suffixes (powers of 1024, optional "i"/"iB"/"B").
 * Returns 0, -ENOENT when key is not a cache key (err untouched), or -EINVAL
 * (or the error of loading config=FILE) with a message in err.
 */
int cache_config_set(struct cache_config *cfg, const char *key, const char *value,
		     char *err, size_t errlen);

/*
 * Load an ini-like file (lazarusfs.conf(5)): "key = value" lines, '#' or ';'
 * comments, sections [cache] (or none) for global keys and [tierN] for tier
 * keys without the prefix (medium, path, quota, high, low; path may repeat).
 * Keys that are not cache keys go to other(arg, key, value, err, errlen) when
 * given (its -ENOENT means unknown), else they are an error. Errors are
 * reported as "FILE:LINE: message".
 */
int cache_config_load_cb(struct cache_config *cfg, const char *path,
			 int (*other)(void *arg, const char *key, const char *value,
				      char *err, size_t errlen),
			 void *arg, char *err, size_t errlen);
int cache_config_load(struct cache_config *cfg, const char *path, char *err, size_t errlen);

/* Validate cfg (contiguous tiers, watermarks, quotas >= one block). */
int cache_config_check(const struct cache_config *cfg, char *err, size_t errlen);

struct cache;
struct cache_file;

/*
 * Create the cache: checks cfg, opens every tier directory (must exist and
 * be writable: a clear error otherwise), rebuilds the index from the block
 * files on disk (torn and temp files are discarded) and starts the threads.
 * With no tiers configured, a pass-through cache is returned (cache_read
 * calls fetch directly; stats still count engine time). state_dir (may be
 * NULL) is where cache_write_textfile(c, NULL) writes. cfg is copied.
 */
int cache_new(struct cache **out, const struct cache_config *cfg, const char *state_dir,
	      char *err, size_t errlen);
/* Stops the threads, waits for in-flight prefetches, frees memory. Block
 * files stay on disk for the next cache_new(). No cache_file may be open. */
void cache_free(struct cache *c);

/*
 * Hang watch for readers: begin(arg) is called before a reader waits for a
 * block that another thread is fetching from the engine (a prefetch, or
 * another reader's miss), end(arg) when the wait is over. lazarusfs points
 * them at its engine hang watch, so a reader stuck behind a prefetch of a
 * frozen engine is seen by the watchdog like a reader inside the engine.
 * Both are called with cache.lock held: they must not block, take a lock
 * that is held around calls into the cache, or call back into the cache.
 * Set them before the first cache_read().
 */
void cache_set_wait_hooks(struct cache *c, void (*begin)(void *arg), void (*end)(void *arg),
			  void *arg);

/* Log sink for cache/ and tiers/, which share one shim (tier.h: named
 * levels, enum tier_log_level); the same as tier_set_log(). Called from any
 * thread, never with a cache lock held. Set it before cache_new(). */
void cache_set_log(tier_log_fn *fn);

/*
 * Open a file through the cache. key: path relative to the engine root.
 * size/mtime_ns: the backend's current attributes. If the cache recorded
 * different ones for key, the file's blocks are dropped (close-to-open) and
 * *keep_cache = 0; *keep_cache = 1 only when the recorded attributes matched.
 * backend_path: absolute path of the file on the engine mount, used by the
 * prefetcher (copied). Returns 0, -EINVAL (empty key), -ENAMETOOLONG (key
 * over TIER_KEY_MAX bytes) or -ENOMEM; on error the caller should read the
 * file without the cache.
 */
int cache_file_open(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns,
		    const char *backend_path, struct cache_file **out, int *keep_cache);
void cache_file_close(struct cache_file *cf);

/* Record the backend's attributes after a write through this proxy (the
 * cache already holds the written data), so the next open keeps the blocks
 * and the kernel page cache. Optional: without it the next open drops the
 * file's blocks because mtime changed. */
void cache_file_set_attr(struct cache_file *cf, uint64_t size, int64_t mtime_ns);

/* Drop the blocks of old_key and of everything below old_key/ (block keys
 * depend on the path, so a rename invalidates). new_key is dropped too, in
 * case it was replaced. */
void cache_file_rename(struct cache *c, const char *old_key, const char *new_key);

/* Demand fetch supplied by the core: read len bytes at off from the engine;
 * returns bytes read (short only at EOF) or -errno. Called without locks. */
typedef ssize_t (*cache_fetch_fn)(void *arg, void *buf, size_t len, off_t off);

/*
 * Read [off, off+len) through the cache. Hits come from the tiers (only the
 * 16 KiB chunks covering the range are read and verified), misses are
 * fetched as whole blocks through fetch and stored. A small miss (at most
 * 1/8 of a block) outside a sequential run is read from the engine as asked
 * instead, and the prefetcher (when on) fills the block once such reads
 * pause. Concurrent
 * misses of one block share a single fetch; a reader never waits for a
 * prefetch of a block that is not already in flight. Returns bytes (short at
 * EOF) or -errno from fetch. Thread-safe, many readers at once.
 */
ssize_t cache_read(struct cache_file *cf, void *buf, size_t len, off_t off,
		   cache_fetch_fn fetch, void *arg);

/* After the engine accepted a write of buf at off: cached blocks that
 * overlap are updated in place (read-modify-write) or dropped, so a later
 * read returns the written bytes.  Blocks that were not cached are
 * assembled from the writes of cf that fill them from their first byte on,
 * and stored once whole; the file's last block, partly written, is stored
 * by cache_file_flush_writes() (cache_file_close() calls it).  Serialised
 * per cf; a tier store runs in the caller. */
void cache_write(struct cache_file *cf, const void *buf, size_t len, off_t off);
/* Store the partly written last block of the file, if it is still that,
 * and end the write assembly of cf. */
void cache_file_flush_writes(struct cache_file *cf);
/* After the engine truncated the file to size: drops blocks past size and
 * the block holding the old or new end. */
void cache_truncate(struct cache_file *cf, uint64_t size);

/* Statistics: text ("key: value" lines), JSON (json != 0). *out is malloc'd.
 * Returns 0 or -ENOMEM. */
int cache_stats_format(struct cache *c, int json, char **out);
/* Prometheus textfile (node_exporter textfile collector), written to
 * path.tmp and renamed; path NULL = <state_dir>/lazarusfs_cache.prom.
 * labels (e.g. mount="/mnt/x") are added to every sample when set. */
int cache_write_textfile(struct cache *c, const char *path);
/* The same families, appended to an open stream (for a mount's own
 * textfile, which adds the proxy's). */
void cache_prom_write(struct cache *c, FILE *f);
void cache_set_labels(struct cache *c, const char *labels);

/* Drop blocks of key_prefix and everything below it (NULL or "" = all).
 * Pinned blocks are unlinked as soon as their readers finish. Returns the
 * number of blocks dropped. */
int cache_evict(struct cache *c, const char *key_prefix);
/* 1 when every block of [off, off+len) of key is cached (len 0 = up to the
 * recorded file size), else 0. For resumable warmup. */
int cache_contains(struct cache *c, const char *key, uint64_t off, uint64_t len);
/* 1 when the cache recorded exactly these attributes for key and holds
 * every block of it, so that cache_file_open() with them keeps them all and
 * reads never need the engine; else 0. */
int cache_holds_file(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns);

/*
 * FUSE passthrough (cache/whole.c): an O_RDONLY fd of a local file that
 * holds exactly the bytes of key, for the kernel to read as the file.  Only
 * for a file of 1 byte or more, recorded with these attributes and wholly
 * cached: it gets a plain copy (assembled from reads of its blocks that
 * check every chunk, charged to its first block's tier, dropped with that
 * block or once the file changes), and every call on a tier that verifies
 * reads (SSD, HDD, MEM with verify_mem) reads the copy whole and checks it
 * before handing it out.  The caller owns (closes) the fd.  -ENODATA: not
 * wholly cached with these attributes (or empty); -ENOSPC: no room in the
 * tier for the copy; -EBUSY: another call is making it; -EBADMSG: a
 * checksum mismatch (the block was dropped); -ESTALE: invalidated
 * meanwhile; or another -errno.
 */
int cache_passthrough_fd(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns);

/*
 * Small-file read-ahead.  A directory listing names the files a loader is
 * about to read: the proxy calls this for each regular file of a listing
 * (with the attributes it was listed with) no bigger than prefetch_files.
 * The prefetch thread reads them whole into the cache in the background
 * when it has nothing else to do, at most prefetch_depth reads at once.
 * The list is bounded (CACHE_WARM_MAX files; more are dropped), and read
 * ahead stops while files it fetched go unopened: once 64 were fetched
 * and fewer than a quarter of them opened, it waits for opens to catch up.
 * Returns 1 when queued, 0 when not (off, too big, already cached, list
 * full).
 */
#define CACHE_WARM_MAX 65536
int cache_warm_add(struct cache *c, const char *key, uint64_t size, int64_t mtime_ns,
		   const char *backend_path);

/* Counters for tests and tools. */
struct cache_tier_stats {
	uint64_t used, reserved, quota, blocks;
	uint64_t hits, demotions, promotions, evictions;
	uint64_t checksum_failures, io_errors, write_errors;
};
struct cache_stats {
	size_t ntiers;
	struct cache_tier_stats tier[CACHE_MAX_TIERS];
	uint64_t lookups, hits, misses, fill_skipped;
	uint64_t checksum_failures, torn_discarded, invalidations;
	uint64_t prefetch_issued, prefetch_done, prefetch_failed, prefetch_used, prefetch_wasted;
	uint64_t files_listed, files_read_ahead, files_used, files_dropped;
	uint64_t direct_reads;      /* small random misses read from the engine as is */
	uint64_t copies_written, copies_opened;   /* plain copies (cache_passthrough_fd) */
	uint64_t engine_reads, engine_bytes, engine_ns;
};
void cache_get_stats(struct cache *c, struct cache_stats *st);

/* Block until the mover has nothing left to do (watermarks satisfied,
 * promotion queue empty) and no prefetch is in flight. For tests and
 * orderly shutdown. */
void cache_quiesce(struct cache *c);

#endif
