/*
 * Internals shared by the tiers/ sources; the public interface is tier.h.
 *
 *   tier.c    the store: open/close, directories and their health
 *   block.c   block I/O: write, read, ranged read, remove
 *   format.c  the on-disk format: names, footer, chunk table, verification
 *   scan.c    the scan at mount (rebuild of cache/'s index)
 *   whole.c   plain copies of whole files for FUSE passthrough
 *   uring.c   the calling thread's io_uring and the I/O helpers over it
 *   log.c     the log shim shared with cache/
 */
#ifndef LAZARUS_TIER_INT_H
#define LAZARUS_TIER_INT_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

#include "tiers/tier.h"

struct tier_dirstate {
	char *path;
	int dirfd;
	int lockfd;
	int failed;           /* protected by tier.lock */
	time_t retry_at;      /* protected by tier.lock */
};

struct tier {
	enum tier_medium medium;
	size_t ndirs;
	unsigned retry_s;     /* protected by lock */
	/* Guards dirs[].failed/retry_at and retry_s only; never held across
	 * I/O or logging. A leaf: cache.lock may be held when it is taken
	 * (tier_usable), nothing is taken under it. */
	pthread_mutex_t lock;
	struct tier_dirstate dirs[TIER_MAX_DIRS];
};

/* tier.c: directory health */
/* Pick a healthy directory for a new block (preferring key % ndirs), or
 * return t->ndirs when none is. */
size_t dir_pick(struct tier *t, uint64_t key);
/* Mark directory i failed for retry_s seconds after err (-errno) in what
 * ("write", "read"); logs the first failure. */
void dir_fail(struct tier *t, size_t i, int err, const char *what);

/* format.c: the block file format (see tier.h) */
struct footer {
	uint64_t magic;
	uint32_t version;
	uint32_t len;
	uint64_t key;
	uint64_t seq;
	uint64_t index;
	uint64_t file_size;
	int64_t file_mtime_ns;
	uint64_t checksum;
	uint32_t key_len;
	uint32_t block_size;
	uint64_t footer_sum;  /* XXH3 of everything above */
};
_Static_assert(sizeof(struct footer) == TIER_FOOTER_SIZE, "footer layout");

#define BLOCK_NAME_MAX 64
/* a file's plain copy is "<its first block's name>.whole" (tier.h) */
#define TIER_WHOLE_SUFFIX ".whole"
/* "<xx>/<key:016x>-<seq:016x><suffix>" */
void block_name(char *buf, size_t len, uint64_t key, uint64_t seq, const char *suffix);
/* Parse "<16 hex>-<16 hex>" (exactly); returns 0 on match, -1 otherwise. */
int block_name_parse(const char *name, uint64_t *key, uint64_t *seq);
void footer_fill(struct footer *f, const struct tier_block *b);
/* 1 when magic, version, self checksum and key length are right. */
int footer_valid(const struct footer *f);
/* Bytes of the chunk table of a block of len data bytes. */
size_t table_bytes(uint32_t len);
/* Everything after the data: [chunk table][file key][footer]. */
size_t tail_bytes(const struct tier_block *b);
/* Fill table (table_bytes(len) bytes) with the chunk checksums of data. */
void table_fill(uint64_t *table, const void *data, uint32_t len);
/* Check a block's tail as read from disk against b: footer, identity, and
 * that the chunk table hashes to the footer's checksum. 0 or -EBADMSG. */
int tail_check(const struct tier_block *b, const char *tail);
/* Check the chunks of data bytes [start, end) against the chunk table.
 * start is chunk aligned, end is chunk aligned or the block's end; the bytes
 * are spread over the segments seg[] (a chunk may straddle two). 0 or
 * -EBADMSG. */
int chunks_check(const char *table, uint32_t start, uint32_t end, const struct iovec *seg);

/* uring.c: each call runs one request on the calling thread's ring (made on
 * first use) and waits for it; -errno on failure. */
/* Make sure the calling thread has a ring: 0 or -errno. */
int uring_ready(void);
int uring_openat(int dfd, const char *path, int flags, mode_t mode);
int uring_close(int fd);
int uring_unlinkat(int dfd, const char *path);
int uring_renameat(int dfd, const char *from, const char *to);
int uring_mkdirat(int dfd, const char *path, mode_t mode);
int uring_fsize(int fd, uint64_t *size);
/* Transfer the whole iovec at offset off; requeue on -EAGAIN and short
 * transfers. Returns bytes transferred (short only at EOF for reads) or
 * -errno. The iovec array is consumed. */
ssize_t uring_rw(int fd, struct iovec *iov, int iovcnt, off_t off, int write);

#endif
