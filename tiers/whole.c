/*
 * Plain copies of whole files ("whole files", tier.h): the data bytes of a
 * file alone, in <name>.whole next to the block file of its first block,
 * for FUSE passthrough, where the kernel reads a local file as the
 * application's file and so cannot skip a footer or check a chunk table.
 * Written piece by piece to <name>.whole.tmp and renamed once complete;
 * opening one may read it back whole and check it against the XXH3-64 the
 * writer computed.  All through the calling thread's ring.
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

#define WHOLE_CHECK_PIECE (1u << 20)    /* bytes per read when checking */

static void whole_names(const struct tier_block *b, char *tmp, char *name)
{
	block_name(tmp, BLOCK_NAME_MAX, b->key, b->seq, TIER_WHOLE_SUFFIX ".tmp");
	block_name(name, BLOCK_NAME_MAX, b->key, b->seq, TIER_WHOLE_SUFFIX);
}

int tier_whole_begin(struct tier *t, const struct tier_block *b)
{
	char tmp[BLOCK_NAME_MAX], name[BLOCK_NAME_MAX];
	int fd;

	if (b->dir >= t->ndirs)
		return -EINVAL;
	whole_names(b, tmp, name);
	fd = uring_openat(t->dirs[b->dir].dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			  0600);
	if (fd < 0)
		tier_log(TIER_LOG_WARN, "cache copy create failed: %s: %s", t->dirs[b->dir].path,
			 strerror(-fd));
	return fd;
}

int tier_whole_put(struct tier *t, const struct tier_block *b, int fd, const void *data,
		   size_t len, uint64_t off)
{
	struct iovec iov = { (void *)data, len };
	ssize_t n = uring_rw(fd, &iov, 1, (off_t)off, 1);
	int ret = n < 0 ? (int)n : (size_t)n != len ? -EIO : 0;

	if (ret)
		tier_log(TIER_LOG_WARN, "cache copy write failed: %s: %s", t->dirs[b->dir].path,
			 strerror(-ret));
	return ret;
}

int tier_whole_end(struct tier *t, const struct tier_block *b, int fd, int err)
{
	char tmp[BLOCK_NAME_MAX], name[BLOCK_NAME_MAX];
	int dfd = t->dirs[b->dir].dirfd, ret = uring_close(fd);

	whole_names(b, tmp, name);
	if (!err && !ret)
		ret = uring_renameat(dfd, tmp, name);
	if (!err && ret)
		tier_log(TIER_LOG_WARN, "cache copy write failed: %s: %s", t->dirs[b->dir].path,
			 strerror(-ret));
	if (err || ret)
		uring_unlinkat(dfd, tmp);
	return err ? err : ret;
}

int tier_whole_open(struct tier *t, const struct tier_block *b, uint64_t size, uint64_t sum,
		    int verify)
{
	char name[BLOCK_NAME_MAX], tmp[BLOCK_NAME_MAX];
	XXH3_state_t *xs = NULL;
	struct iovec iov;
	uint64_t fsize, off;
	char *buf = NULL;
	ssize_t n;
	int fd, ret;

	if (b->dir >= t->ndirs)
		return -EINVAL;
	whole_names(b, tmp, name);
	fd = uring_openat(t->dirs[b->dir].dirfd, name, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return fd;
	ret = uring_fsize(fd, &fsize);
	if (ret == 0 && fsize != size)
		ret = -EBADMSG;
	if (ret == 0 && verify) {
		buf = malloc(size < WHOLE_CHECK_PIECE ? size + 1 : WHOLE_CHECK_PIECE);
		xs = XXH3_createState();
		ret = buf && xs && XXH3_64bits_reset(xs) == XXH_OK ? 0 : -ENOMEM;
		for (off = 0; ret == 0 && off < size; off += (uint64_t)n) {
			size_t want = size - off < WHOLE_CHECK_PIECE ? size - off : WHOLE_CHECK_PIECE;

			iov = (struct iovec){ buf, want };
			n = uring_rw(fd, &iov, 1, (off_t)off, 0);
			if (n < 0)
				ret = (int)n;
			else if ((size_t)n != want)
				ret = -EBADMSG;
			else
				XXH3_64bits_update(xs, buf, want);
		}
		if (ret == 0 && XXH3_64bits_digest(xs) != sum)
			ret = -EBADMSG;
	}
	XXH3_freeState(xs);
	free(buf);
	if (ret < 0) {
		uring_close(fd);
		return ret;
	}
	return fd;
}

int tier_whole_remove(struct tier *t, const struct tier_block *b)
{
	char name[BLOCK_NAME_MAX], tmp[BLOCK_NAME_MAX];

	if (b->dir >= t->ndirs)
		return -EINVAL;
	whole_names(b, tmp, name);
	return uring_unlinkat(t->dirs[b->dir].dirfd, name);
}
