/*
 * The calling thread's io_uring and the block-file I/O helpers over it.
 *
 * Rings: one per thread, created lazily on first use and destroyed when the
 * thread exits (a pthread key destructor), so no ring is ever shared and
 * none needs a lock. Each helper follows liburing's examples/io_uring-cp.c:
 * a per-request struct is the user_data, -EAGAIN and short transfers are
 * requeued, a full SQ is handled by submitting and retrying, and every CQE
 * is marked seen. One request is in flight at a time.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tiers/tier_int.h"

#define RING_DEPTH 8

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
		tier_log(TIER_LOG_ERR, "io_uring setup failed: thread ring: %s", strerror(-ret));
		return NULL;
	}
	pthread_setspecific(ring_key, ring);
	tls_ring = ring;
	return ring;
}

int uring_ready(void)
{
	return ring_get() ? 0 : tls_ring_err ? tls_ring_err : -ENOMEM;
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

int uring_openat(int dfd, const char *path, int flags, mode_t mode)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_openat(sqe, dfd, path, flags | O_CLOEXEC, mode);
	return uring_run(ring, sqe);
}

int uring_close(int fd)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return close(fd) < 0 ? -errno : 0;
	sqe = sqe_get(ring);
	io_uring_prep_close(sqe, fd);
	return uring_run(ring, sqe);
}

int uring_unlinkat(int dfd, const char *path)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_unlinkat(sqe, dfd, path, 0);
	return uring_run(ring, sqe);
}

int uring_renameat(int dfd, const char *from, const char *to)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_renameat(sqe, dfd, from, dfd, to, 0);
	return uring_run(ring, sqe);
}

int uring_mkdirat(int dfd, const char *path, mode_t mode)
{
	struct io_uring *ring = ring_get();
	struct io_uring_sqe *sqe;

	if (!ring)
		return -ENOMEM;
	sqe = sqe_get(ring);
	io_uring_prep_mkdirat(sqe, dfd, path, mode);
	return uring_run(ring, sqe);
}

int uring_fsize(int fd, uint64_t *size)
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

ssize_t uring_rw(int fd, struct iovec *iov, int iovcnt, off_t off, int write)
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
