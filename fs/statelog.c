/*
 * fs/statelog.c - an append-only record log in a memfd (fs/takeover.h).
 *
 * Layout of the memfd: a 4 KiB header, then region 0 at REGION0 and
 * region 1 at REGION0 + REGION_MAX, both sparse.  The header (mapped
 * shared, so a successor and the holder see it) says which region is live
 * and how long each is.  An append writes the record with pwrite() and only
 * then stores the new length: a process that dies in between leaves the
 * record out, which is the same as dying before the change it describes
 * (the owner appends before it answers the kernel).  A snapshot writes the
 * other region from its start, stores its length, and then flips `live`:
 * until that one store the old log is complete, after it the snapshot is.
 * The old region's pages are then punched out.
 *
 * Nothing here does I/O: a memfd is memory.  That is why the inode and
 * handle tables may append under their leaf locks.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs/fs.h"
#include "fs/takeover.h"

#define SL_MAGIC 0x474c5a4cu    /* "LZLG" */
#define HDR_SIZE 4096
#define REGION0 HDR_SIZE
#define REGION_MAX (4ull << 30)

struct sl_hdr {
	uint32_t magic;
	uint32_t version;
	atomic_uint live;               /* 0 or 1 */
	atomic_bool broken;
	atomic_ullong len[2];
};

struct sl_rec {
	uint32_t len;                   /* of the payload */
	uint32_t type;
};

struct fs_statelog {
	int fd;
	struct sl_hdr *h;
	atomic_bool *alarm;             /* also set when the log breaks, or NULL */
	unsigned snap;                  /* region a snapshot is written into */
	uint64_t snap_len;
};

static off_t region(unsigned i)
{
	return (off_t)(REGION0 + i * REGION_MAX);
}

int fs_statelog_open(struct fs_statelog **out, int fd, const char *name)
{
	struct fs_statelog *l = calloc(1, sizeof(*l));
	bool fresh = fd < 0;
	int ret;

	if (!l)
		return -ENOMEM;
	if (fresh && (fd = memfd_create(name, MFD_CLOEXEC)) < 0) {
		ret = -errno;
		goto out_free;
	}
	l->fd = fd;
	if (fresh && ftruncate(fd, region(1) + (off_t)REGION_MAX)) {
		ret = -errno;
		goto out_close;
	}
	l->h = mmap(NULL, HDR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (l->h == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	if (fresh) {
		l->h->magic = SL_MAGIC;
		l->h->version = 1;
	} else if (l->h->magic != SL_MAGIC || l->h->version != 1 || l->h->live > 1) {
		ret = -EUCLEAN;
		munmap(l->h, HDR_SIZE);
		goto out_close;
	}
	*out = l;
	return 0;
out_close:
	close(fd);
out_free:
	free(l);
	return ret;
}

void fs_statelog_free(struct fs_statelog *l)
{
	if (!l)
		return;
	munmap(l->h, HDR_SIZE);
	close(l->fd);
	free(l);
}

void fs_statelog_set_alarm(struct fs_statelog *l, atomic_bool *alarm)
{
	l->alarm = alarm;
}

int fs_statelog_fd(const struct fs_statelog *l)
{
	return l->fd;
}

size_t fs_statelog_size(const struct fs_statelog *l)
{
	return (size_t)atomic_load(&l->h->len[atomic_load(&l->h->live)]);
}

/* Write one record at `at` in region i: its length, or -errno. */
static ssize_t put(struct fs_statelog *l, unsigned i, uint64_t at, uint32_t type,
		   const void *p, size_t len)
{
	struct sl_rec r = { .len = (uint32_t)len, .type = type };
	struct iovec v[2] = { { &r, sizeof(r) }, { (void *)p, len } };
	size_t n = sizeof(r) + len;

	if (len > UINT32_MAX || at + n > REGION_MAX)
		return -EFBIG;
	if (pwritev(l->fd, v, 2, region(i) + (off_t)at) != (ssize_t)n)
		return errno ? -errno : -EIO;
	return (ssize_t)n;
}

static int fail(struct fs_statelog *l, int err)
{
	if (l->alarm)
		atomic_store(l->alarm, true);
	if (!atomic_exchange(&l->h->broken, true))
		fs_log(FS_LOG_ERR, "takeover state log failed, a crash of the proxy will now lose the mount: %s",
		       strerror(-err));
	return err;
}

int fs_statelog_append(struct fs_statelog *l, uint32_t type, const void *p,
		       size_t len)
{
	unsigned live = atomic_load(&l->h->live);
	uint64_t at = atomic_load(&l->h->len[live]);
	ssize_t n;

	if (atomic_load(&l->h->broken))
		return -EUCLEAN;
	if ((n = put(l, live, at, type, p, len)) < 0)
		return fail(l, (int)n);
	atomic_store_explicit(&l->h->len[live], at + (uint64_t)n, memory_order_release);
	return 0;
}

void fs_statelog_snap_begin(struct fs_statelog *l)
{
	l->snap = atomic_load(&l->h->live) ^ 1;
	l->snap_len = 0;
}

int fs_statelog_snap_add(struct fs_statelog *l, uint32_t type, const void *p,
			 size_t len)
{
	ssize_t n = put(l, l->snap, l->snap_len, type, p, len);

	if (n < 0)
		return fail(l, (int)n);
	l->snap_len += (uint64_t)n;
	return 0;
}

int fs_statelog_snap_commit(struct fs_statelog *l)
{
	unsigned old = l->snap ^ 1;

	if (atomic_load(&l->h->broken))
		return -EUCLEAN;
	atomic_store_explicit(&l->h->len[l->snap], l->snap_len, memory_order_release);
	atomic_store_explicit(&l->h->live, l->snap, memory_order_release);
	/* the old region is dead now: give its memory back */
	if (fallocate(l->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, region(old),
		      (off_t)REGION_MAX))
		fs_log(FS_LOG_DEBUG, "cannot punch the old state log region: %s", strerror(errno));
	atomic_store(&l->h->len[old], 0);
	return 0;
}

int fs_statelog_each(struct fs_statelog *l,
		     int (*fn)(void *arg, uint32_t type, const void *p, size_t len),
		     void *arg)
{
	unsigned live = atomic_load(&l->h->live);
	uint64_t end = atomic_load_explicit(&l->h->len[live], memory_order_acquire), at = 0;
	char *buf = NULL;
	size_t cap = 0;
	int ret = 0;

	if (atomic_load(&l->h->broken))
		return -EUCLEAN;
	while (!ret && at + sizeof(struct sl_rec) <= end) {
		struct sl_rec r;

		if (pread(l->fd, &r, sizeof(r), region(live) + (off_t)at) != sizeof(r) ||
		    at + sizeof(r) + r.len > end) {
			ret = -EUCLEAN;
			break;
		}
		if (r.len + 1 > cap) {
			char *nb = realloc(buf, r.len + 1);

			if (!nb) {
				ret = -ENOMEM;
				break;
			}
			buf = nb;
			cap = r.len + 1;
		}
		if (r.len && pread(l->fd, buf, r.len, region(live) + (off_t)(at + sizeof(r))) !=
		    (ssize_t)r.len) {
			ret = -EUCLEAN;
			break;
		}
		buf[r.len] = 0;
		ret = fn(arg, r.type, buf, r.len);
		at += sizeof(r) + r.len;
	}
	free(buf);
	return ret;
}
