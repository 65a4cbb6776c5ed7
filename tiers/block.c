/*
 * Block I/O: write (to a temp name, renamed into place), whole and ranged
 * reads with verification, remove. All through the calling thread's ring.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <xxhash.h>

#include "tiers/tier_int.h"

static int is_dir_error(int err)
{
	return err == -ENOSPC || err == -EIO || err == -EROFS || err == -EDQUOT;
}

int tier_write(struct tier *t, struct tier_block *b, const void *data)
{
	char tmp[BLOCK_NAME_MAX], name[BLOCK_NAME_MAX];
	struct footer f;
	struct iovec iov[4];
	ssize_t total = (ssize_t)tier_block_bytes(b->len, b->file_key_len);
	uint64_t *table;
	ssize_t n;
	size_t dir = dir_pick(t, b->key);
	int fd, ret;

	if (dir == t->ndirs)
		return -ENOSPC;
	table = malloc(table_bytes(b->len) + 1);   /* + 1: never malloc(0) */
	if (!table)
		return -ENOMEM;
	table_fill(table, data, b->len);
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
		tier_log(TIER_LOG_WARN, "cache write failed: %s: %s", t->dirs[dir].path, strerror(-ret));
	return ret;
}

/* Open b's file for reading. */
static int block_open(struct tier *t, const struct tier_block *b)
{
	char name[BLOCK_NAME_MAX];

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
	char name[BLOCK_NAME_MAX];

	if (b->dir >= t->ndirs)
		return -EINVAL;
	block_name(name, sizeof(name), b->key, b->seq, "");
	return uring_unlinkat(t->dirs[b->dir].dirfd, name);
}
