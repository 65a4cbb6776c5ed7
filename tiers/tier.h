/*
 * tiers/: one block store per storage medium (MEM, SSD, HDD).
 *
 * A store owns one or more directories and the on-disk block format. It
 * knows nothing about quotas, LRU order or which blocks are wanted: that is
 * cache/'s job. Every data and metadata operation on block files (openat,
 * read, write, statx, renameat, unlinkat, mkdirat, close) goes through
 * liburing. Only directory listing (no io_uring opcode exists for it in
 * liburing 2.3) and the advisory flock on the directory lock file use plain
 * syscalls.
 *
 * Rings: one io_uring per thread, created lazily on first use and destroyed
 * when the thread exits, so no ring is ever shared and none needs a lock.
 * Each call keeps exactly one request in flight on the calling thread's ring
 * and requeues it on -EAGAIN and on short reads/writes.
 *
 * On-disk layout:  <dir>/<xx>/<key:016x>-<seq:016x>   (xx = top byte of key)
 * Block file (format version 2):
 *   [data: len bytes][chunk table: nchunks x 8 bytes][file key: key_len bytes]
 *   [footer: 80 bytes]
 * The data is cut into TIER_CHUNK-byte chunks (the last one may be short),
 * nchunks = ceil(len / TIER_CHUNK), and the chunk table holds the XXH3-64 of
 * each, so a ranged read verifies only the chunks it covers. The footer
 * (little endian) holds magic, version, data length, block key, sequence
 * number, block index, block size, file size and mtime when the block was
 * fetched, XXH3-64 of the chunk table (so it covers the data transitively),
 * the file key length, and an XXH3-64 of the footer itself. Blocks are
 * written to "<name>.tmp" and renamed into place, so a crash leaves either a
 * temp file (discarded at scan) or a whole file; a file whose length, footer
 * or chunk table does not match (torn, truncated, zeroed, older format) is
 * discarded at scan, and data corruption is caught by the chunk checksums at
 * read time.
 *
 * Plain copies (for FUSE passthrough, cache/whole.c): a file whose blocks
 * are all cached may have a copy of its data bytes alone, nothing else, in
 * <dir>/<xx>/<key:016x>-<seq:016x>.whole, named after its first block and
 * next to it, so that the kernel can read it as the file.  Its checksum is
 * not on disk: the writer computes it, and the cache keeps it in memory,
 * so copies do not outlive the process that made them: tier_scan()
 * deletes every one it finds (and their temp files).
 *
 * Locking: struct tier has one internal mutex guarding the per-directory
 * health flags; it is never held across I/O or logging, and no other lock
 * is taken under it, so callers may hold their own (cache/ calls
 * tier_usable() under cache.lock). All functions are thread-safe.
 */
#ifndef LAZARUS_TIER_H
#define LAZARUS_TIER_H

#include <stddef.h>
#include <stdint.h>

enum tier_medium { TIER_MEM = 0, TIER_SSD = 1, TIER_HDD = 2 };

#define TIER_FOOTER_SIZE 80u
#define TIER_CHUNK 16384u   /* data bytes per chunk checksum */
#define TIER_MAX_DIRS 16
#define TIER_KEY_MAX 4096   /* longest file key (relative path) accepted */

struct tier;

/* Description of one block file. file_key is borrowed (not owned) except in
 * the tier_scan() callback, where it points into memory valid only during
 * the call. */
struct tier_block {
	uint64_t key;        /* XXH3 over (file key, block index), see tier_block_key() */
	uint64_t seq;        /* unique, increasing write sequence (part of the name) */
	uint64_t index;      /* block index within the file */
	uint32_t len;        /* data bytes (<= block size; short only for the last block) */
	uint32_t block_size; /* the cache's block size when written (rebuild rejects others) */
	uint32_t dir;        /* which of the store's directories holds it */
	uint64_t file_size;  /* file size recorded when the block was stored */
	int64_t file_mtime_ns;
	uint64_t checksum;   /* XXH3-64 of the chunk table (filled by tier_write/tier_scan) */
	const char *file_key;
	uint32_t file_key_len;
};

/* Block key: XXH3-64 over the file key bytes followed by the 64-bit
 * little-endian block index. */
uint64_t tier_block_key(const char *file_key, size_t file_key_len, uint64_t index);

/* Chunks (checksum table entries) of a block of len data bytes. */
static inline uint32_t tier_block_nchunks(uint32_t len)
{
	return (uint32_t)(((uint64_t)len + TIER_CHUNK - 1) / TIER_CHUNK);
}

/* Bytes a block occupies on disk (apparent file size); this is what quotas
 * count. */
static inline uint64_t tier_block_bytes(uint32_t len, uint32_t file_key_len)
{
	return (uint64_t)len + 8ull * tier_block_nchunks(len) + file_key_len + TIER_FOOTER_SIZE;
}

const char *tier_medium_name(enum tier_medium m);      /* "MEM", "SSD", "HDD" */
int tier_medium_parse(const char *s, enum tier_medium *out); /* 0 or -EINVAL */

/* Open a store over dirs[0..ndirs). Each directory must exist and be a
 * writable directory; the 256 fan-out subdirectories are created, and an
 * exclusive flock on <dir>/.lazarus.lock guards against two caches sharing a
 * directory. Returns 0, or -errno with a one-line message in err. */
int tier_open(struct tier **out, enum tier_medium medium, const char *const *dirs,
	      size_t ndirs, char *err, size_t errlen);
void tier_close(struct tier *t);

enum tier_medium tier_medium_of(const struct tier *t);
size_t tier_ndirs(const struct tier *t);
const char *tier_dir(const struct tier *t, size_t i);

/* Write a block: picks a healthy directory (preferring key % ndirs), writes
 * <name>.tmp and renames it into place. Sets b->dir and b->checksum. On
 * ENOSPC, EIO, EROFS or EDQUOT the directory is marked failed for
 * fail_retry_s seconds (see tier_set_retry). Returns 0 or -errno; -ENOSPC
 * when no directory is healthy. */
int tier_write(struct tier *t, struct tier_block *b, const void *data);

/* Read a block into buf (at least b->len bytes). Checks footer, length,
 * identity and the chunk table against the footer; checks every chunk when
 * verify is set. Returns b->len, -EBADMSG on any mismatch (torn, corrupt), or
 * another -errno (-ENOENT if the file is gone, -EIO, ...). An -EIO marks the
 * directory failed. */
int tier_read(struct tier *t, const struct tier_block *b, void *buf, int verify);

/* Read data bytes [off, off+len) of a block into buf, len clamped to b->len.
 * Checks footer, identity and chunk table as tier_read() does; with verify,
 * reads the whole chunks covering the range and checks each of them (and
 * only them: corruption elsewhere in the block goes unnoticed). The range
 * lands directly in buf; partial chunks at either end go through a bounce
 * buffer. Returns bytes copied (0 when off == b->len), -EINVAL when
 * off > b->len, -EBADMSG on any mismatch, or another -errno. An -EIO marks
 * the directory failed. */
int tier_read_range(struct tier *t, const struct tier_block *b, uint32_t off, uint32_t len,
		    void *buf, int verify);

/* Unlink a block file (b->key, b->seq, b->dir). Returns 0 or -errno;
 * -ENOENT counts as success for callers that only want it gone. */
int tier_remove(struct tier *t, const struct tier_block *b);

/* Scan every directory: delete temp files and torn or foreign-format block
 * files, and call cb for every valid block (file_key valid during the call
 * only). A non-zero return from cb stops the scan and is returned; cb may
 * return 1 to ask for the block file to be deleted (e.g. over quota) and the
 * scan goes on. *discarded counts deleted torn/temp files. Returns 0 or
 * -errno. */
int tier_scan(struct tier *t, int (*cb)(void *arg, const struct tier_block *b),
	      void *arg, unsigned *discarded);

/*
 * Write a plain copy named after block b (b->dir, key, seq): begin returns
 * the fd of its temp file (or -errno), put writes len bytes at off (0 or
 * -errno), end closes fd and renames the copy into place when err (the
 * caller's) is 0, else removes it and returns err; 0 or -errno.  Each logs
 * its own failures.
 */
int tier_whole_begin(struct tier *t, const struct tier_block *b);
int tier_whole_put(struct tier *t, const struct tier_block *b, int fd, const void *data,
		   size_t len, uint64_t off);
int tier_whole_end(struct tier *t, const struct tier_block *b, int fd, int err);
/* Open b's plain copy read-only after checking its size, and with verify
 * after reading it whole and checking its XXH3-64 against sum.  A new
 * O_RDONLY|O_CLOEXEC fd (the caller closes it), -EBADMSG on a mismatch,
 * -ENOENT when there is none, or another -errno. */
int tier_whole_open(struct tier *t, const struct tier_block *b, uint64_t size, uint64_t sum,
		    int verify);
/* Unlink b's plain copy: 0 or -errno (-ENOENT when there is none). */
int tier_whole_remove(struct tier *t, const struct tier_block *b);

/* 1 when at least one directory accepts new blocks. */
int tier_usable(struct tier *t);
/* Seconds a failed directory is skipped before it is tried again (60). */
void tier_set_retry(struct tier *t, unsigned seconds);

/*
 * Logging: one shim for tiers/ and cache/ (which logs through it too), so
 * both reach one sink. A message is one line, "what failed: object:
 * strerror", lowercase. The sink is never called with a lock of cache/ or
 * tiers/ held, and may be called from any thread. NULL restores the default:
 * errors and warnings to stderr. cache_set_log() sets the same sink.
 */
enum tier_log_level { TIER_LOG_ERR, TIER_LOG_WARN, TIER_LOG_INFO, TIER_LOG_DEBUG };
typedef void tier_log_fn(enum tier_log_level level, const char *msg);
void tier_set_log(tier_log_fn *fn);
void tier_log(enum tier_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
