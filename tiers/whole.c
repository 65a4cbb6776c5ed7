/*
 * Plain copies of blocks ("whole files", tier.h): the data bytes of a
 * block alone, in <name>.whole next to its block file, for FUSE
 * passthrough, where the kernel reads a local file as the application's
 * file and so cannot skip a footer or check a chunk table.  Written to
 * <name>.whole.tmp and renamed; every open reads the copy back whole and
 * checks it against the XXH3-64 its writer returned.  All through the
 * calling thread's ring.
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

int tier_whole_write(struct tier *t, const struct tier_block *b, const void *data,
		     uint64_t *sum)
{
	char tmp[BLOCK_NAME_MAX], name[BLOCK_NAME_MAX];
	struct iovec iov;
	ssize_t n;
	int fd, ret;

	if (b->dir >= t->ndirs)
		return -EINVAL;
	block_name(tmp, sizeof(tmp), b->key, b->seq, TIER_WHOLE_SUFFIX ".tmp");
	block_name(name, sizeof(name), b->key, b->seq, TIER_WHOLE_SUFFIX);
	fd = uring_openat(t->dirs[b->dir].dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		ret = fd;
		goto out_fail;
	}
	iov = (struct iovec){ (void *)data, b->len };
	n = uring_rw(fd, &iov, 1, 0, 1);
	ret = uring_close(fd);
	if (n < 0)
		ret = (int)n;
	else if (n != (ssize_t)b->len)
		ret = -EIO;
	if (ret == 0)
		ret = uring_renameat(t->dirs[b->dir].dirfd, tmp, name);
	if (ret < 0) {
		uring_unlinkat(t->dirs[b->dir].dirfd, tmp);
		goto out_fail;
	}
	*sum = XXH3_64bits(data, b->len);
	return 0;
out_fail:
	tier_log(TIER_LOG_WARN, "cache copy write failed: %s: %s", t->dirs[b->dir].path,
		 strerror(-ret));
	return ret;
}

int tier_whole_open(struct tier *t, const struct tier_block *b, uint64_t sum)
{
	char name[BLOCK_NAME_MAX];
	struct iovec iov;
	uint64_t size;
	char *buf;
	ssize_t n;
	int fd, ret;

	if (b->dir >= t->ndirs)
		return -EINVAL;
	block_name(name, sizeof(name), b->key, b->seq, TIER_WHOLE_SUFFIX);
	fd = uring_openat(t->dirs[b->dir].dirfd, name, O_RDONLY, 0);
	if (fd < 0)
		return fd;
	buf = malloc(b->len + 1);   /* + 1: never malloc(0) */
	ret = buf ? uring_fsize(fd, &size) : -ENOMEM;
	if (ret == 0 && size != b->len)
		ret = -EBADMSG;
	if (ret == 0) {
		iov = (struct iovec){ buf, b->len };
		n = uring_rw(fd, &iov, 1, 0, 0);
		ret = n < 0 ? (int)n : n != (ssize_t)b->len ? -EBADMSG :
		      XXH3_64bits(buf, b->len) != sum ? -EBADMSG : 0;
	}
	free(buf);
	if (ret < 0) {
		uring_close(fd);
		return ret;
	}
	return fd;
}

int tier_whole_remove(struct tier *t, const struct tier_block *b)
{
	char name[BLOCK_NAME_MAX];

	if (b->dir >= t->ndirs)
		return -EINVAL;
	block_name(name, sizeof(name), b->key, b->seq, TIER_WHOLE_SUFFIX);
	return uring_unlinkat(t->dirs[b->dir].dirfd, name);
}
