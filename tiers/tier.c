/*
 * Block store over one or more directories; see tier.h for the format.
 *
 * All block-file I/O goes through a thread-local io_uring (uring_*() below).
 * Each helper follows liburing's examples/io_uring-cp.c: a per-request
 * struct is the user_data, -EAGAIN and short transfers are requeued, a full
 * SQ is handled by submitting and retrying, and every CQE is marked seen.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "tiers/tier.h"

#define TIER_MAGIC 0x314b4c4253525a4cULL /* "LZRSBLK1" little endian */
#define TIER_VERSION 2u   /* 2: chunk checksum table */
#define RING_DEPTH 8

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
	unsigned retry_s;
	pthread_mutex_t lock; /* guards dirs[].failed/retry_at only; never held across I/O */
	struct tier_dirstate dirs[TIER_MAX_DIRS];
};

/* ---- logging ------------------------------------------------------------ */

static void (*tier_log_fn)(int level, const char *msg);

void tier_set_log(void (*fn)(int level, const char *msg))
{
	tier_log_fn = fn;
}

__attribute__((format(printf, 2, 3)))
static void tlog(int level, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (tier_log_fn)
		tier_log_fn(level, msg);
	else if (level <= 4)
		fprintf(stderr, "lazarusfs: %s\n", msg);
}

/* ---- thread-local ring -------------------------------------------------- */

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static __thread struct io_uring *tls_ring;
static __thread int tls_ring_err;    /* why the last setup failed */

static void ring_destroy(void *p)
{
	struct io_uring *ring = p;

	io_uring_queue_exit(ring);
	free(ring);
}

static void ring_key_init(void)
{
	pthread_key_create(&ring_key, ring_destroy);
}

static struct io_uring *ring_get(void)
{
	struct io_uring *ring;
	int ret;

	if (tls_ring)
		return tls_ring;
	pthread_once(&ring_once, ring_key_init);
	ring = calloc(1, sizeof(*ring));
	if (!ring)
		return NULL;
	ret = io_uring_queue_init(RING_DEPTH, ring, 0);
	if (ret < 0) {
		free(ring);
		tls_ring_err = ret;
		tlog(3, "io_uring setup failed: %s", strerror(-ret));
		return NULL;
	}
	pthread_setspecific(ring_key, ring);
	tls_ring = ring;
	return ring;
}

/* One request: what io_uring-cp.c calls io_data. */
struct ureq {
	int res;
	int done;
};

static struct io_uring_sqe *sqe_get(struct io_uring *ring)
{
	struct io_uring_sqe *sqe;

	while (!(sqe = io_uring_get_sqe(ring)))
		io_uring_submit(ring);   /* SQ full: flush and retry */
	return sqe;
}

/* Submit the prepared SQE and wait for its completion. */
static int uring_run(struct io_uring *ring, struct io_uring_sqe *sqe)
{
	struct ureq rq = { 0, 0 };
	struct io_uring_cqe *cqe;
	int ret;

	io_uring_sqe_set_data(sqe, &rq);
	ret = io_uring_submit(ring);
	if (ret < 0)
		return ret;
	while (!rq.done) {
		ret = io_uring_wait_cqe(ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret < 0)
			return ret;
		struct ureq *r = io_uring_cqe_get_data(cqe);
		if (r) {
			r->res = cqe->res;
			r->done = 1;
		}
		io_uring_cqe_seen(ring, cqe);
	}
	return rq.res;
}

static int uring_openat(int dfd, const char *path, int flags, mode_t mode)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_openat(sqe, dfd, path, flags | O_CLOEXEC, mode);
	return uring_run(ring, sqe);
}

static int uring_close(int fd)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return close(fd) < 0 ? -errno : 0;
	sqe = sqe_get(ring);
	io_uring_prep_close(sqe, fd);
	return uring_run(ring, sqe);
}

static int uring_unlinkat(int dfd, const char *path)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_unlinkat(sqe, dfd, path, 0);
	return uring_run(ring, sqe);
}

static int uring_renameat(int dfd, const char *from, const char *to)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_renameat(sqe, dfd, from, dfd, to, 0);
	return uring_run(ring, sqe);
}

static int uring_mkdirat(int dfd, const char *path, mode_t mode)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_mkdirat(sqe, dfd, path, mode);
	return uring_run(ring, sqe);
}

static int uring_fsize(int fd, uint64_t *size)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;
	struct statx stx;
	int ret;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_statx(sqe, fd, "", AT_EMPTY_PATH, STATX_SIZE, &stx);
	ret = uring_run(ring, sqe);
	if (ret < 0)
		return ret;
	*size = stx.stx_size;
	return 0;
}

/* Transfer the whole iovec at offset off; requeue on -EAGAIN and short
 * transfers. Returns bytes transferred (short only at EOF for reads) or
 * -errno. The iovec array is consumed. */
static ssize_t uring_rw(int fd, struct iovec *iov, int iovcnt, off_t off, int write)
{
	struct io_uring *ring = ring_get();
	ssize_t total = 0;

	if (!ring)
		return -ENOMEM;
	while (iovcnt > 0) {
		struct io_uring_sqe *sqe = sqe_get(ring);
		int ret;

		if (write)
			io_uring_prep_writev(sqe, fd, iov, iovcnt, off);
		else
			io_uring_prep_readv(sqe, fd, iov, iovcnt, off);
		ret = uring_run(ring, sqe);
		if (ret == -EAGAIN || ret == -EINTR)
			continue;
		if (ret < 0)
			return ret;
		if (ret == 0) {
			if (write)
				return -EIO;
			break;      /* EOF */
		}
		total += ret;
		off += ret;
		/* advance the iovec past what was done (short I/O) */
		size_t n = (size_t)ret;
		while (iovcnt > 0 && n >= iov->iov_len) {
			n -= iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= n;
		}
	}
	return total;
}

/* ---- format ------------------------------------------------------------- */

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

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the block footer is stored in host order; add byte swapping for big endian"
#endif

uint64_t tier_block_key(const char *file_key, size_t file_key_len, uint64_t index)
{
	XXH3_state_t st;
	uint64_t le = index;

	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, file_key, file_key_len);
	XXH3_64bits_update(&st, &le, sizeof(le));
	return XXH3_64bits_digest(&st);
}

const char *tier_medium_name(enum tier_medium m)
{
	switch (m) {
	case TIER_MEM: return "MEM";
	case TIER_SSD: return "SSD";
	case TIER_HDD: return "HDD";
	}
	return "?";
}

int tier_medium_parse(const char *s, enum tier_medium *out)
{
	if (!strcasecmp(s, "MEM"))
		*out = TIER_MEM;
	else if (!strcasecmp(s, "SSD"))
		*out = TIER_SSD;
	else if (!strcasecmp(s, "HDD"))
		*out = TIER_HDD;
	else
		return -EINVAL;
	return 0;
}

static void block_name(char *buf, size_t len, uint64_t key, uint64_t seq, const char *suffix)
{
	snprintf(buf, len, "%02x/%016" PRIx64 "-%016" PRIx64 "%s",
		 (unsigned)(key >> 56), key, seq, suffix);
}

/* Parse "<16 hex>-<16 hex>" (exactly); returns 0 on match. */
static int parse_name(const char *name, uint64_t *key, uint64_t *seq)
{
	char *end;

	if (strlen(name) != 33 || name[16] != '-')
		return -1;
	for (int i = 0; i < 33; i++)
		if (i != 16 && !strchr("0123456789abcdef", name[i]))
			return -1;
	*key = strtoull(name, &end, 16);
	*seq = strtoull(name + 17, &end, 16);
	return 0;
}

static void footer_fill(struct footer *f, const struct tier_block *b)
{
	memset(f, 0, sizeof(*f));
	f->magic = TIER_MAGIC;
	f->version = TIER_VERSION;
	f->len = b->len;
	f->key = b->key;
	f->seq = b->seq;
	f->index = b->index;
	f->file_size = b->file_size;
	f->file_mtime_ns = b->file_mtime_ns;
	f->checksum = b->checksum;
	f->key_len = b->file_key_len;
	f->block_size = b->block_size;
	f->footer_sum = XXH3_64bits(f, offsetof(struct footer, footer_sum));
}

static int footer_valid(const struct footer *f)
{
	return f->magic == TIER_MAGIC && f->version == TIER_VERSION &&
	       f->footer_sum == XXH3_64bits(f, offsetof(struct footer, footer_sum)) &&
	       f->key_len > 0 && f->key_len <= TIER_KEY_MAX;
}

static size_t table_bytes(uint32_t len)
{
	return (size_t)tier_block_nchunks(len) * 8;
}

/* Everything after the data: [chunk table][file key][footer]. */
static size_t tail_bytes(const struct tier_block *b)
{
	return table_bytes(b->len) + b->file_key_len + TIER_FOOTER_SIZE;
}

/* Check a block's tail as read from disk against b: footer, identity, and
 * that the chunk table hashes to the footer's checksum. */
static int tail_check(const struct tier_block *b, const char *tail)
{
	size_t tlen = table_bytes(b->len);
	struct footer f;

	memcpy(&f, tail + tlen + b->file_key_len, sizeof(f));   /* may be unaligned */
	if (!footer_valid(&f) || f.key != b->key || f.seq != b->seq || f.len != b->len ||
	    f.index != b->index || f.key_len != b->file_key_len ||
	    memcmp(tail + tlen, b->file_key, b->file_key_len) != 0 ||
	    XXH3_64bits(tail, tlen) != f.checksum)
		return -EBADMSG;
	return 0;
}

/* Check the chunks of data bytes [start, end) against the chunk table.
 * start is chunk aligned, end is chunk aligned or the block's end; the bytes
 * are spread over the segments seg[] (a chunk may straddle two), hence the
 * streaming hash. */
static int chunks_check(const char *table, uint32_t start, uint32_t end, const struct iovec *seg)
{
	const char *p = seg->iov_base;
	size_t left = seg->iov_len;
	XXH3_state_t st;

	for (uint32_t pos = start; pos < end; pos += TIER_CHUNK) {
		size_t clen = end - pos < TIER_CHUNK ? end - pos : TIER_CHUNK;
		uint64_t want;

		XXH3_64bits_reset(&st);
		while (clen > 0) {
			size_t k;

			if (left == 0) {
				seg++;
				p = seg->iov_base;
				left = seg->iov_len;
			}
			k = left < clen ? left : clen;
			XXH3_64bits_update(&st, p, k);
			p += k;
			left -= k;
			clen -= k;
		}
		memcpy(&want, table + (size_t)(pos / TIER_CHUNK) * 8, sizeof(want));
		if (XXH3_64bits_digest(&st) != want)
			return -EBADMSG;
	}
	return 0;
}

/* ---- store -------------------------------------------------------------- */

static int errset(char *err, size_t errlen, int ret, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int errset(char *err, size_t errlen, int ret, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return ret;
}

int tier_open(struct tier **out, enum tier_medium medium, const char *const *dirs,
	      size_t ndirs, char *err, size_t errlen)
{
	struct tier *t;
	int ret = 0;

	*out = NULL;
	if (ndirs == 0 || ndirs > TIER_MAX_DIRS)
		return errset(err, errlen, -EINVAL, "tier %s: need 1 to %d directories",
			      tier_medium_name(medium), TIER_MAX_DIRS);
	if (!ring_get())
		return errset(err, errlen, tls_ring_err ? tls_ring_err : -ENOMEM,
			      "io_uring setup failed (needed by the cache): %s",
			      strerror(tls_ring_err ? -tls_ring_err : ENOMEM));
	t = calloc(1, sizeof(*t));
	if (!t)
		return errset(err, errlen, -ENOMEM, "out of memory");
	t->medium = medium;
	t->retry_s = 60;
	pthread_mutex_init(&t->lock, NULL);
	for (size_t i = 0; i < TIER_MAX_DIRS; i++)
		t->dirs[i].dirfd = t->dirs[i].lockfd = -1;

	for (size_t i = 0; i < ndirs; i++) {
		struct tier_dirstate *d = &t->dirs[i];
		struct stat st;

		t->ndirs = i + 1;
		d->path = strdup(dirs[i]);
		if (!d->path) {
			ret = errset(err, errlen, -ENOMEM, "out of memory");
			goto out_close;
		}
		if (stat(dirs[i], &st) < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory missing: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		if (!S_ISDIR(st.st_mode)) {
			ret = errset(err, errlen, -ENOTDIR, "cache directory is not a directory: %s", dirs[i]);
			goto out_close;
		}
		if (access(dirs[i], W_OK | X_OK) < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory not writable: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		d->dirfd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d->dirfd < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory open failed: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		ret = uring_openat(d->dirfd, ".lazarus.lock", O_RDWR | O_CREAT, 0600);
		if (ret < 0) {
			errset(err, errlen, ret, "cache directory not writable: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		d->lockfd = ret;
		if (flock(d->lockfd, LOCK_EX | LOCK_NB) < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory in use by another cache: %s", dirs[i]);
			goto out_close;
		}
		for (unsigned x = 0; x < 256; x++) {
			char sub[4];

			snprintf(sub, sizeof(sub), "%02x", x);
			ret = uring_mkdirat(d->dirfd, sub, 0700);
			if (ret < 0 && ret != -EEXIST) {
				errset(err, errlen, ret, "cache directory not writable: %s: %s", dirs[i], strerror(-ret));
				goto out_close;
			}
		}
		ret = 0;
	}
	*out = t;
	return 0;

out_close:
	tier_close(t);
	return ret;
}

void tier_close(struct tier *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->ndirs; i++) {
		if (t->dirs[i].lockfd >= 0)
			uring_close(t->dirs[i].lockfd);  /* drops the flock */
		if (t->dirs[i].dirfd >= 0)
			close(t->dirs[i].dirfd);
		free(t->dirs[i].path);
	}
	pthread_mutex_destroy(&t->lock);
	free(t);
}

enum tier_medium tier_medium_of(const struct tier *t) { return t->medium; }
size_t tier_ndirs(const struct tier *t) { return t->ndirs; }
const char *tier_dir(const struct tier *t, size_t i) { return i < t->ndirs ? t->dirs[i].path : NULL; }

void tier_set_retry(struct tier *t, unsigned seconds)
{
	pthread_mutex_lock(&t->lock);
	t->retry_s = seconds;
	pthread_mutex_unlock(&t->lock);
}

static int dir_ok_locked(struct tier *t, size_t i, time_t now)
{
	struct tier_dirstate *d = &t->dirs[i];

	if (d->failed && now >= d->retry_at) {
		d->failed = 0;
		tlog(6, "cache directory retried: %s", d->path);
	}
	return !d->failed;
}

int tier_usable(struct tier *t)
{
	time_t now = time(NULL);
	int ok = 0;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->ndirs && !ok; i++)
		ok = dir_ok_locked(t, i, now);
	pthread_mutex_unlock(&t->lock);
	return ok;
}

static void dir_fail(struct tier *t, size_t i, int err, const char *what)
{
	int first;

	pthread_mutex_lock(&t->lock);
	first = !t->dirs[i].failed;
	t->dirs[i].failed = 1;
	t->dirs[i].retry_at = time(NULL) + t->retry_s;
	pthread_mutex_unlock(&t->lock);
	if (first)
		tlog(3, "cache %s failed, directory skipped for %us: %s: %s", what, t->retry_s,
		     t->dirs[i].path, strerror(-err));
}

static int is_dir_error(int err)
{
	return err == -ENOSPC || err == -EIO || err == -EROFS || err == -EDQUOT;
}

int tier_write(struct tier *t, struct tier_block *b, const void *data)
{
	char tmp[64], name[64];
	struct footer f;
	struct iovec iov[4];
	time_t now = time(NULL);
	ssize_t total = (ssize_t)tier_block_bytes(b->len, b->file_key_len);
	uint32_t nchunks = tier_block_nchunks(b->len);
	uint64_t *table;
	ssize_t n;
	size_t dir = t->ndirs;
	int fd, ret;

	pthread_mutex_lock(&t->lock);
	for (size_t k = 0; k < t->ndirs; k++) {
		size_t i = (b->key + k) % t->ndirs;

		if (dir_ok_locked(t, i, now)) {
			dir = i;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	if (dir == t->ndirs)
		return -ENOSPC;
	table = malloc(table_bytes(b->len) + 1);   /* + 1: never malloc(0) */
	if (!table)
		return -ENOMEM;
	for (uint32_t i = 0; i < nchunks; i++) {
		uint32_t pos = i * TIER_CHUNK;

		table[i] = XXH3_64bits((const char *)data + pos,
				       b->len - pos < TIER_CHUNK ? b->len - pos : TIER_CHUNK);
	}
	b->dir = (uint32_t)dir;
	b->checksum = XXH3_64bits(table, table_bytes(b->len));
	footer_fill(&f, b);
	block_name(tmp, sizeof(tmp), b->key, b->seq, ".tmp");
	block_name(name, sizeof(name), b->key, b->seq, "");

	fd = uring_openat(t->dirs[dir].dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		ret = fd;
		goto out_fail;
	}
	iov[0] = (struct iovec){ (void *)data, b->len };
	iov[1] = (struct iovec){ table, table_bytes(b->len) };
	iov[2] = (struct iovec){ (void *)b->file_key, b->file_key_len };
	iov[3] = (struct iovec){ &f, sizeof(f) };
	n = uring_rw(fd, iov, 4, 0, 1);
	ret = uring_close(fd);
	if (n < 0)
		ret = (int)n;
	else if (n != total)
		ret = -EIO;
	if (ret < 0)
		goto out_unlink;
	ret = uring_renameat(t->dirs[dir].dirfd, tmp, name);
	if (ret < 0)
		goto out_unlink;
	free(table);
	return 0;

out_unlink:
	uring_unlinkat(t->dirs[dir].dirfd, tmp);
out_fail:
	free(table);
	if (is_dir_error(ret))
		dir_fail(t, dir, ret, "write");
	else
		tlog(4, "cache write failed: %s: %s", t->dirs[dir].path, strerror(-ret));
	return ret;
}

/* Open b's file for reading. */
static int block_open(struct tier *t, const struct tier_block *b)
{
	char name[64];

	if (b->dir >= t->ndirs || b->file_key_len > TIER_KEY_MAX)
		return -EINVAL;
	block_name(name, sizeof(name), b->key, b->seq, "");
	return uring_openat(t->dirs[b->dir].dirfd, name, O_RDONLY, 0);
}

/* Read want bytes of b's file at off; a short read means the file is torn. */
static int block_pread(struct tier *t, const struct tier_block *b, int fd, struct iovec *iov,
		       int iovcnt, off_t off, size_t want)
{
	ssize_t n = uring_rw(fd, iov, iovcnt, off, 0);

	if (n == -EIO)
		dir_fail(t, b->dir, (int)n, "read");
	if (n < 0)
		return (int)n;
	return (size_t)n == want ? 0 : -EBADMSG;
}

int tier_read(struct tier *t, const struct tier_block *b, void *buf, int verify)
{
	size_t tlen = tail_bytes(b);
	struct iovec iov[2];
	char *tail;
	int fd, ret;

	fd = block_open(t, b);
	if (fd < 0)
		return fd;
	tail = malloc(tlen);
	if (!tail) {
		ret = -ENOMEM;
		goto out_close;
	}
	iov[0] = (struct iovec){ buf, b->len };
	iov[1] = (struct iovec){ tail, tlen };
	ret = block_pread(t, b, fd, iov, 2, 0, b->len + tlen);
	if (ret == 0)
		ret = tail_check(b, tail);
	if (ret == 0 && verify)
		ret = chunks_check(tail, 0, b->len, &(struct iovec){ buf, b->len });
	if (ret == 0)
		ret = (int)b->len;
	free(tail);
out_close:
	uring_close(fd);
	return ret;
}

int tier_read_range(struct tier *t, const struct tier_block *b, uint32_t off, uint32_t len,
		    void *buf, int verify)
{
	size_t tlen = tail_bytes(b);
	uint32_t start, end, head = 0, over = 0;
	struct iovec seg[3], iov[3];
	char *tail, *bounce;
	int fd, nseg = 0, ret;

	if (off > b->len)
		return -EINVAL;
	if (len > b->len - off)
		len = b->len - off;
	if (len == 0)
		return 0;
	start = off;
	end = off + len;
	if (verify) {
		/* widen to whole chunks; the caller's bytes still land in buf */
		uint32_t last = (end - 1) / TIER_CHUNK * TIER_CHUNK;

		start = off / TIER_CHUNK * TIER_CHUNK;
		end = b->len - last > TIER_CHUNK ? last + TIER_CHUNK : b->len;
		head = off - start;
		over = end - (off + len);
	}
	fd = block_open(t, b);
	if (fd < 0)
		return fd;
	/* one allocation: [tail][head bounce][over bounce] */
	tail = malloc(tlen + head + over);
	if (!tail) {
		ret = -ENOMEM;
		goto out_close;
	}
	bounce = tail + tlen;
	iov[0] = (struct iovec){ tail, tlen };
	ret = block_pread(t, b, fd, iov, 1, (off_t)b->len, tlen);
	if (ret == 0)
		ret = tail_check(b, tail);
	if (ret < 0)
		goto out_free;
	if (head)
		seg[nseg++] = (struct iovec){ bounce, head };
	seg[nseg++] = (struct iovec){ buf, len };
	if (over)
		seg[nseg++] = (struct iovec){ bounce + head, over };
	memcpy(iov, seg, sizeof(seg[0]) * (size_t)nseg);   /* uring_rw consumes iov */
	ret = block_pread(t, b, fd, iov, nseg, (off_t)start, end - start);
	if (ret == 0 && verify)
		ret = chunks_check(tail, start, end, seg);
	if (ret == 0)
		ret = (int)len;
out_free:
	free(tail);
out_close:
	uring_close(fd);
	return ret;
}

int tier_remove(struct tier *t, const struct tier_block *b)
{
	char name[64];

	if (b->dir >= t->ndirs)
		return -EINVAL;
	block_name(name, sizeof(name), b->key, b->seq, "");
	return uring_unlinkat(t->dirs[b->dir].dirfd, name);
}

/* Validate one block file; fills b (file_key points into keybuf). Returns 0
 * when valid, -EBADMSG when torn or foreign, other -errno on I/O error. */
static int scan_one(int dfd, const char *rel, uint64_t key, uint64_t seq,
		    struct tier_block *b, char *keybuf)
{
	struct footer f;
	struct iovec iov[2];
	char *table = NULL;
	uint64_t size;
	size_t tlen;
	ssize_t n;
	int fd, ret;

	fd = uring_openat(dfd, rel, O_RDONLY, 0);
	if (fd < 0)
		return fd;
	ret = uring_fsize(fd, &size);
	if (ret < 0)
		goto out_close;
	ret = -EBADMSG;
	if (size < TIER_FOOTER_SIZE)
		goto out_close;
	iov[0] = (struct iovec){ &f, sizeof(f) };
	n = uring_rw(fd, iov, 1, (off_t)(size - TIER_FOOTER_SIZE), 0);
	if (n != (ssize_t)sizeof(f) || !footer_valid(&f) || f.key != key || f.seq != seq ||
	    size != tier_block_bytes(f.len, f.key_len))
		goto out_close;
	/* the chunk table must match the footer, or the block is torn */
	tlen = table_bytes(f.len);
	table = malloc(tlen + 1);   /* + 1: never malloc(0) */
	if (!table) {
		ret = -ENOMEM;
		goto out_close;
	}
	iov[0] = (struct iovec){ table, tlen };
	iov[1] = (struct iovec){ keybuf, f.key_len };
	n = uring_rw(fd, iov, 2, (off_t)f.len, 0);
	if (n != (ssize_t)(tlen + f.key_len) || XXH3_64bits(table, tlen) != f.checksum ||
	    tier_block_key(keybuf, f.key_len, f.index) != key)
		goto out_close;
	keybuf[f.key_len] = '\0';
	*b = (struct tier_block){
		.key = key, .seq = seq, .index = f.index, .len = f.len, .block_size = f.block_size,
		.file_size = f.file_size, .file_mtime_ns = f.file_mtime_ns,
		.checksum = f.checksum, .file_key = keybuf, .file_key_len = f.key_len,
	};
	ret = 0;
out_close:
	free(table);
	uring_close(fd);
	return ret;
}

int tier_scan(struct tier *t, int (*cb)(void *arg, const struct tier_block *b),
	      void *arg, unsigned *discarded)
{
	char *keybuf = malloc(TIER_KEY_MAX + 1);
	unsigned ndisc = 0;
	int ret = 0;

	if (!keybuf)
		return -ENOMEM;
	for (size_t i = 0; i < t->ndirs && ret == 0; i++) {
		for (unsigned x = 0; x < 256 && ret == 0; x++) {
			char sub[4], rel[300];
			struct dirent *de;
			DIR *dir;
			int fd;

			snprintf(sub, sizeof(sub), "%02x", x);
			fd = openat(t->dirs[i].dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (fd < 0)
				continue;
			dir = fdopendir(fd);
			if (!dir) {
				close(fd);
				continue;
			}
			while ((de = readdir(dir)) && ret == 0) {
				struct tier_block b;
				uint64_t key, seq;
				size_t nl = strlen(de->d_name);
				int r;

				if (de->d_name[0] == '.')
					continue;
				snprintf(rel, sizeof(rel), "%s/%s", sub, de->d_name);
				if (nl == 37 && !strcmp(de->d_name + 33, ".tmp")) {
					/* interrupted write: never served */
					uring_unlinkat(t->dirs[i].dirfd, rel);
					ndisc++;
					continue;
				}
				if (parse_name(de->d_name, &key, &seq) < 0 || (key >> 56) != x)
					continue;   /* not ours: leave it alone */
				r = scan_one(t->dirs[i].dirfd, rel, key, seq, &b, keybuf);
				if (r == -EBADMSG) {
					tlog(4, "cache block torn, discarded: %s/%s", t->dirs[i].path, rel);
					uring_unlinkat(t->dirs[i].dirfd, rel);
					ndisc++;
					continue;
				}
				if (r < 0) {
					tlog(4, "cache block unreadable, skipped: %s/%s: %s",
					     t->dirs[i].path, rel, strerror(-r));
					continue;
				}
				b.dir = (uint32_t)i;
				r = cb(arg, &b);
				if (r == 1)
					uring_unlinkat(t->dirs[i].dirfd, rel);
				else if (r != 0)
					ret = r;
			}
			closedir(dir);
		}
	}
	free(keybuf);
	if (discarded)
		*discarded = ndisc;
	return ret;
}
