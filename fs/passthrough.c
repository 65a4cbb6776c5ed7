/*
 * fs/passthrough.c - FUSE passthrough for files wholly in a cache tier.
 *
 * With passthrough (kernel 6.9, protocol 7.40) the kernel serves read,
 * splice and mmap of an open file from a local "backing" file itself: no
 * READ reaches us or the engine.  We pass through only onto the cache's
 * own plain copies of whole files (cache_passthrough_fd, cache/whole.c),
 * never onto the engine's mount, whose crash would then reach the
 * application: an engine crash or restart does not touch an open
 * passthrough file at all.
 *
 * Negotiation.  Debian's libfuse 3.14 knows nothing of it, so the session
 * reads and writes /dev/fuse through our own read and writev
 * (fuse_session_custom_io).  The read looks at the first request, INIT:
 * whether the kernel offers FUSE_PASSTHROUGH (flags2, with FUSE_INIT_EXT).
 * The writev patches libfuse's INIT reply: FUSE_PASSTHROUGH in flags2
 * (libfuse sets FUSE_INIT_EXT and fills flags2 exactly when the kernel sent
 * FUSE_INIT_EXT) and max_stack_depth 1 (backing files on a plain local file
 * system; the kernel refuses passthrough with FUSE_WRITEBACK_CACHE, which
 * we never ask for).  Everything else passes through untouched, and the
 * read behaves exactly as read(2) (libfuse handles EINTR, ENOENT and
 * ENODEV as before).  INIT is the only request until its reply is written,
 * so the worker that handles it sets fs->passthrough before any other
 * request can be read.  We negotiate only with a cache configured, the
 * option on, and CAP_SYS_ADMIN (FUSE_DEV_IOC_BACKING_OPEN needs it).
 *
 * An open.  The backing file is registered with FUSE_DEV_IOC_BACKING_OPEN
 * on the session fd, which returns a backing id; the OPEN reply carries
 * FOPEN_PASSTHROUGH and that id in a 7.40 fuse_open_out.  The kernel looks
 * the id up only when the opening task processes our reply, after our
 * write returned, so the id must stay registered until then; we close it
 * (FUSE_DEV_IOC_BACKING_CLOSE) when the last passthrough handle of the
 * inode is released, which is also what the second rule below needs.
 *
 * The kernel's io-mode rules (fs/fuse/iomode.c) are per inode:
 *   1. an inode open in cached (normal) mode refuses a passthrough open;
 *   2. an inode open in passthrough mode refuses a normal open, and a
 *      passthrough open with another backing file;
 *   3. FOPEN_KEEP_CACHE (or anything outside FOPEN_PASSTHROUGH_MASK) is
 *      refused with FOPEN_PASSTHROUGH.
 * A refusal fails the application's open() with EIO, after our reply: we
 * must never send one.  So every open of a regular file is counted here,
 * per node id, as passthrough or other, from our decision until its
 * release (or the failed reply).  Those counts cover the kernel's: a close
 * returns before its RELEASE is served, never the other way round.  Then:
 *   - a read-only open passes through when the inode has passthrough opens
 *     (same backing id), or when it has no other open and the cache has a
 *     copy of the whole file with the attributes the open validated;
 *     otherwise it opens normally;
 *   - an open for writing (and a truncate by path, and a create that opens
 *     an existing file) of an inode with passthrough opens waits a little
 *     for releases in flight, then fails with ETXTBSY, as for a running
 *     program: the kernel would refuse it (rule 2), and serving it through
 *     the same backing file would write into our copy instead of the
 *     engine.  Only writable mounts meet this; on a ro mount the kernel
 *     refuses writes before they reach us.
 * While passthrough opens share a copy, the bytes they read are those of
 * the file when the first of them opened it; writes cannot happen then,
 * and a change behind our back shows to opens after the last close.
 *
 * Refusals: EPERM, ENOTTY or EINVAL from BACKING_OPEN mean passthrough is
 * not available (no CAP_SYS_ADMIN in the kernel's eyes, no support), ELOOP
 * or EOPNOTSUPP that the tier's file system cannot back files; we log it
 * once and stop trying (the counts go on for the opens passed through).
 * Any other failure falls back to a normal open for that open only.
 *
 * Locking: pt.lock guards the inode records; it is a leaf, never held
 * across I/O or an ioctl.  A read-only open that finds another open setting
 * up the inode's backing file waits on pt.cv (local I/O only).
 */
#include "config.h"

#include <errno.h>
#include <linux/capability.h>
#include <linux/fuse.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fs/ops_int.h"
#include "fs/passthrough.h"

/*
 * Protocol 7.40 (kernel 6.9), which Debian's <linux/fuse.h> (7.38) lacks;
 * from the kernel's include/uapi/linux/fuse.h.  Our own names, so that a
 * newer header cannot clash.
 */
#define PT_INIT_PASSTHROUGH2    (1u << 5)       /* FUSE_PASSTHROUGH (1ULL << 37), in flags2 */
#define PT_FOPEN_PASSTHROUGH    (1u << 7)       /* FOPEN_PASSTHROUGH */
struct pt_init_out {                    /* struct fuse_init_out, 7.40 */
	uint32_t major, minor, max_readahead, flags;
	uint16_t max_background, congestion_threshold;
	uint32_t max_write, time_gran;
	uint16_t max_pages, map_alignment;
	uint32_t flags2;
	uint32_t max_stack_depth;
	uint32_t unused[6];
};
struct pt_open_out {                    /* struct fuse_open_out, 7.40 */
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};
struct pt_backing_map {                 /* struct fuse_backing_map */
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define PT_DEV_IOC_BACKING_OPEN         _IOW(229, 1, struct pt_backing_map)
#define PT_DEV_IOC_BACKING_CLOSE        _IOW(229, 2, uint32_t)
_Static_assert(sizeof(struct pt_init_out) == sizeof(struct fuse_init_out), "7.40 init_out");
_Static_assert(offsetof(struct pt_init_out, flags2) == offsetof(struct fuse_init_out, flags2),
	       "7.40 init_out");
_Static_assert(sizeof(struct pt_open_out) == sizeof(struct fuse_open_out), "7.40 open_out");

#define PT_BUCKETS 256
#define PT_WAIT_MS 1000         /* for releases in flight, before ETXTBSY */

/* The opens of one node id, as the kernel counts them. */
struct pt_inode {
	uint64_t ino;
	unsigned npass;         /* passthrough opens, with one being set up */
	unsigned nother;        /* normal opens */
	bool setting_up;        /* an open is registering the backing file */
	int backing_id;         /* > 0 once set up, while npass > 0 */
	struct pt_inode *next;
};

struct fs_pt {
	/* negotiation, by the worker that handles INIT (see above) */
	atomic_bool init_seen;          /* the first request was read */
	atomic_bool init_replied;
	atomic_bool offered;            /* the kernel offers passthrough */
	atomic_uint_fast64_t init_unique;
	atomic_bool off;                /* given up after a refusal */

	pthread_mutex_t lock;           /* a leaf */
	pthread_cond_t cv;              /* set-ups and releases */
	struct pt_inode *b[PT_BUCKETS]; /* protected by lock */

	atomic_uint_fast64_t opens, shared, fallbacks, conflicts;
};

int fs_pt_new(struct fs_pt **out)
{
	struct fs_pt *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cv, NULL);
	*out = p;
	return 0;
}

void fs_pt_free(struct fs_pt *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < PT_BUCKETS; i++)
		for (struct pt_inode *r = p->b[i], *next; r; r = next) {
			next = r->next;
			free(r);
		}
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* ------------------------------------------------------- negotiation */

static void saw_first_request(struct fs_pt *p, const void *buf, size_t n)
{
	const struct fuse_in_header *in = buf;
	const struct fuse_init_in *arg = (const void *)(in + 1);

	if (in->opcode == FUSE_INIT &&
	    n >= sizeof(*in) + offsetof(struct fuse_init_in, flags2) + sizeof(arg->flags2) &&
	    arg->major == FUSE_KERNEL_VERSION && (arg->flags & FUSE_INIT_EXT) &&
	    (arg->flags2 & PT_INIT_PASSTHROUGH2)) {
		atomic_store(&p->init_unique, in->unique);
		atomic_store(&p->offered, true);
	}
	atomic_store_explicit(&p->init_seen, true, memory_order_release);
}

/* read(2) as libfuse would call it, looking at the first request */
static ssize_t pt_read(int fd, void *buf, size_t len, void *userdata)
{
	struct fs *fs = userdata;
	ssize_t n = read(fd, buf, len);

	if (n >= (ssize_t)sizeof(struct fuse_in_header) &&
	    !atomic_load_explicit(&fs->pt->init_seen, memory_order_acquire)) {
		int err = errno;

		saw_first_request(fs->pt, buf, (size_t)n);
		errno = err;
	}
	return n;
}

/* writev(2), with FUSE_PASSTHROUGH and max_stack_depth in the INIT reply */
static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fs *fs = userdata;
	struct fs_pt *p = fs->pt;
	const struct fuse_out_header *oh = iov[0].iov_base;
	struct pt_init_out out;
	struct iovec patched[2];

	if (atomic_load_explicit(&p->init_replied, memory_order_relaxed) ||
	    !atomic_load(&p->offered) || count != 2 || iov[0].iov_len < sizeof(*oh) ||
	    oh->unique != atomic_load(&p->init_unique))
		return writev(fd, iov, count);
	atomic_store(&p->init_replied, true);
	if (oh->error || iov[1].iov_len < offsetof(struct pt_init_out, unused) ||
	    iov[1].iov_len > sizeof(out))
		return writev(fd, iov, count);
	memset(&out, 0, sizeof(out));
	memcpy(&out, iov[1].iov_base, iov[1].iov_len);
	if (!(out.flags & FUSE_INIT_EXT) || (out.flags & FUSE_WRITEBACK_CACHE)) {
		fs_log(FS_LOG_INFO, "passthrough not negotiated: the INIT reply has no flags2");
		return writev(fd, iov, count);
	}
	out.flags2 |= PT_INIT_PASSTHROUGH2;
	out.max_stack_depth = 1;
	atomic_store(&fs->passthrough, true);
	patched[0] = iov[0];
	patched[1] = (struct iovec){ &out, iov[1].iov_len };
	return writev(fd, patched, 2);
}

static bool have_sys_admin(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return false;
	return d[CAP_SYS_ADMIN / 32].effective & (1u << (CAP_SYS_ADMIN % 32));
}

int fs_pt_install(struct fs *fs)
{
	static const struct fuse_custom_io io = { .read = pt_read, .writev = pt_writev };

	if (!fs->o->passthrough || !cache_config_ntiers(&fs->o->cache))
		return 0;
	if (!have_sys_admin()) {
		fs_log(FS_LOG_INFO, "passthrough off: no CAP_SYS_ADMIN");
		return 0;
	}
	return fuse_session_custom_io(fs->se, &io, fuse_session_fd(fs->se));
}

/* ------------------------------------------------------------ counts */

static struct pt_inode **slot_locked(struct fs_pt *p, uint64_t ino)
{
	struct pt_inode **pp = &p->b[ino % PT_BUCKETS];

	while (*pp && (*pp)->ino != ino)
		pp = &(*pp)->next;
	return pp;
}

/* The record of ino, made on first use; NULL: no memory. */
static struct pt_inode *get_locked(struct fs_pt *p, uint64_t ino)
{
	struct pt_inode **pp = slot_locked(p, ino);

	if (!*pp && (*pp = calloc(1, sizeof(**pp))))
		(*pp)->ino = ino;
	return *pp;
}

/* Free r when nothing is counted in it any more. */
static void put_locked(struct fs_pt *p, struct pt_inode *r)
{
	struct pt_inode **pp;

	if (r->npass || r->nother || r->setting_up)
		return;
	pp = slot_locked(p, r->ino);
	*pp = r->next;
	free(r);
}

static void deadline_in(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* Wait (lock held) until ino has no passthrough open, up to PT_WAIT_MS:
 * 0, or -ETXTBSY. */
static int wait_no_pass_locked(struct fs_pt *p, uint64_t ino)
{
	struct timespec until;
	struct pt_inode *r = *slot_locked(p, ino);

	if (!r || (!r->npass && !r->setting_up))
		return 0;
	deadline_in(&until, PT_WAIT_MS);
	while ((r = *slot_locked(p, ino)) && (r->npass || r->setting_up))
		if (pthread_cond_timedwait(&p->cv, &p->lock, &until) == ETIMEDOUT)
			break;
	if (r && (r->npass || r->setting_up)) {
		atomic_fetch_add(&p->conflicts, 1);
		return -ETXTBSY;
	}
	return 0;
}

int fs_pt_writer(struct fs *fs, uint64_t ino)
{
	struct fs_pt *p = fs->pt;
	struct pt_inode *r;
	int ret;

	if (!atomic_load_explicit(&fs->passthrough, memory_order_relaxed))
		return FS_PT_NONE;
	pthread_mutex_lock(&p->lock);
	ret = wait_no_pass_locked(p, ino);
	if (!ret && !(r = get_locked(p, ino)))
		ret = -ENOMEM;
	if (!ret) {
		r->nother++;
		ret = FS_PT_OTHER;
	}
	pthread_mutex_unlock(&p->lock);
	return ret;
}

int fs_pt_changing(struct fs *fs, uint64_t ino)
{
	struct fs_pt *p = fs->pt;
	int ret;

	if (!ino || !atomic_load_explicit(&fs->passthrough, memory_order_relaxed))
		return 0;
	pthread_mutex_lock(&p->lock);
	ret = wait_no_pass_locked(p, ino);
	pthread_mutex_unlock(&p->lock);
	return ret;
}

/* The backing file for a new passthrough inode: the cache's copy of rel,
 * checked to be local, registered.  A backing id, or -errno. */
static int backing_open(struct fs *fs, const char *rel, const struct stat *st)
{
	struct pt_backing_map map = { .fd = -1 };
	struct statfs sfs;
	int fd, id, err;

	fd = cache_passthrough_fd(fs->cache, rel, (uint64_t)st->st_size, fs_mtime_ns(st));
	if (fd < 0)
		return fd;
	/* never onto a FUSE mount (the engine's, or a tier on one) */
	if (fstatfs(fd, &sfs) || sfs.f_type == FUSE_SUPER_MAGIC) {
		err = -EXDEV;
	} else {
		map.fd = fd;
		id = ioctl(fuse_session_fd(fs->se), PT_DEV_IOC_BACKING_OPEN, &map);
		err = id > 0 ? 0 : id < 0 ? -errno : -EIO;
	}
	close(fd);
	if (!err)
		return id;
	if ((err == -EXDEV || err == -EPERM || err == -ENOTTY || err == -EINVAL ||
	     err == -ELOOP || err == -EOPNOTSUPP) && !atomic_exchange(&fs->pt->off, true))
		fs_log(FS_LOG_WARN, "passthrough off: a cache file cannot back files: %s",
		       err == -EXDEV ? "it is on a FUSE mount" : strerror(-err));
	return err;
}

int fs_pt_reader(struct fs *fs, uint64_t ino, const char *rel, const struct stat *st,
		 bool may_pass, int *backing_id)
{
	struct fs_pt *p = fs->pt;
	struct pt_inode *r;
	int id = -ENODATA, mode;

	if (!atomic_load_explicit(&fs->passthrough, memory_order_relaxed))
		return FS_PT_NONE;
	may_pass = may_pass && fs->cache && st && S_ISREG(st->st_mode) && st->st_size > 0 &&
		   !atomic_load_explicit(&p->off, memory_order_relaxed);
	pthread_mutex_lock(&p->lock);
	while ((r = get_locked(p, ino)) && r->setting_up)
		pthread_cond_wait(&p->cv, &p->lock);
	if (!r) {
		pthread_mutex_unlock(&p->lock);
		return -ENOMEM;
	}
	if (r->npass) {                 /* the kernel wants the same backing file */
		r->npass++;
		*backing_id = r->backing_id;
		atomic_fetch_add(&p->opens, 1);
		atomic_fetch_add(&p->shared, 1);
		pthread_mutex_unlock(&p->lock);
		return FS_PT_PASS;
	}
	if (r->nother || !may_pass) {
		r->nother++;
		pthread_mutex_unlock(&p->lock);
		return FS_PT_OTHER;
	}
	r->npass++;
	r->setting_up = true;
	pthread_mutex_unlock(&p->lock);

	id = backing_open(fs, rel, st);

	pthread_mutex_lock(&p->lock);
	r->setting_up = false;
	if (id > 0) {
		r->backing_id = id;
		*backing_id = id;
		mode = FS_PT_PASS;
		atomic_fetch_add(&p->opens, 1);
	} else {
		r->npass--;
		r->nother++;
		mode = FS_PT_OTHER;
		if (id != -ENODATA && id != -EFBIG)
			atomic_fetch_add(&p->fallbacks, 1);
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->lock);
	return mode;
}

void fs_pt_end(struct fs *fs, uint64_t ino, int mode)
{
	struct fs_pt *p = fs->pt;
	struct pt_inode *r;
	uint32_t id = 0;

	if (mode == FS_PT_NONE)
		return;
	pthread_mutex_lock(&p->lock);
	r = *slot_locked(p, ino);
	if (!r) {
		pthread_mutex_unlock(&p->lock);
		fs_log(FS_LOG_ERR, "passthrough: release of an uncounted open of inode %llu",
		       (unsigned long long)ino);
		return;
	}
	if (mode == FS_PT_PASS && !--r->npass) {
		id = (uint32_t)r->backing_id;
		r->backing_id = 0;
	} else if (mode == FS_PT_OTHER) {
		r->nother--;
	}
	put_locked(p, r);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->lock);
	/* the kernel holds its own references to the backing file by now */
	if (id && ioctl(fuse_session_fd(fs->se), PT_DEV_IOC_BACKING_CLOSE, &id))
		fs_log(FS_LOG_WARN, "passthrough: closing backing id %u failed: %s", id,
		       strerror(errno));
}

/* ------------------------------------------------------------ replies */

int fs_pt_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int backing_id)
{
	/* no FOPEN_KEEP_CACHE (refused with passthrough), and no FLUSH on
	 * close: a read-only passthrough handle has nothing to flush */
	struct pt_open_out out = {
		.fh = fi->fh, .open_flags = PT_FOPEN_PASSTHROUGH | FOPEN_NOFLUSH,
		.backing_id = backing_id,
	};
	struct iovec iov = { &out, sizeof(out) };

	return fuse_reply_iov(req, &iov, 1);
}

int fs_pt_add_stats(struct fs *fs, bool json, char **reply)
{
	struct fs_pt *p = fs->pt;
	const char *state = !atomic_load(&fs->passthrough) ? "off" :
			    atomic_load(&p->off) ? "refused" : "on";
	unsigned long long v[4] = {
		atomic_load(&p->opens), atomic_load(&p->shared),
		atomic_load(&p->fallbacks), atomic_load(&p->conflicts),
	};
	char *s = NULL, *end;
	int n;

	if (json) {
		end = strrchr(*reply, '}');
		if (!end)
			return -EINVAL;
		*end = 0;
		n = asprintf(&s, "%s%s\"passthrough\":{\"state\":\"%s\",\"opens\":%llu,"
			     "\"shared\":%llu,\"fallbacks\":%llu,\"conflicts\":%llu}}\n",
			     *reply, end[-1] == '{' ? "" : ",", state, v[0], v[1], v[2], v[3]);
	} else {
		n = asprintf(&s, "%spassthrough: %s\npassthrough_opens: %llu\n"
			     "passthrough_shared: %llu\npassthrough_fallbacks: %llu\n"
			     "passthrough_conflicts: %llu\n", *reply, state, v[0], v[1], v[2], v[3]);
	}
	if (n < 0)
		return -ENOMEM;
	free(*reply);
	*reply = s;
	return 0;
}
