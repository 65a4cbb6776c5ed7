/*
 * fs/passthrough.c - FUSE passthrough for files wholly in a cache tier.
 *
 * With passthrough (kernel 6.9, protocol 7.40) the kernel serves read,
 * splice and mmap of an open file from a local "backing" file itself: no
 * READ reaches us or the engine.  We pass through only onto the cache's
 * own plain copies of whole files (cache_passthrough_fd, cache/whole.c),
 * never onto the engine's mount, whose crash would then reach the
 * application: an engine crash or restart, or the proxy being stopped,
 * does not touch the reads of an open passthrough file at all.
 *
 * Only on read-only mounts.  The kernel's io modes are per inode
 * (fs/fuse/iomode.c):
 *   1. an inode open in cached (normal) mode refuses a passthrough open;
 *   2. an inode open in passthrough mode refuses a normal open, and a
 *      passthrough open with another backing file;
 *   3. FOPEN_KEEP_CACHE (anything outside FOPEN_PASSTHROUGH_MASK) is
 *      refused with FOPEN_PASSTHROUGH.
 * A refusal fails the application's open() with EIO, after our reply.  On
 * a writable mount rule 2 would leave us one choice for an open for
 * writing of a file some reader has open in passthrough mode: fail it
 * (ETXTBSY, as for a running program), since serving it through the same
 * backing file would write into our copy, not the engine.  Writers of a
 * dataset would meet errors they never had, so on a writable mount
 * passthrough is not negotiated at all.  On a ro mount the kernel refuses
 * every open for writing, truncate and create before it reaches us.  (A
 * remount rw keeps the connection and what INIT negotiated: then an open
 * for writing of a file open for passthrough fails with EROFS, and other
 * writers open normally.)
 *
 * Negotiation.  Debian's libfuse 3.14 knows nothing of it, so the session
 * reads and writes /dev/fuse through our own read and writev
 * (fs/session_io.c, which the proxy's takeover shares), which call two
 * hooks on INIT:
 * fs_pt_init_seen() with the first request (whether the kernel offers
 * FUSE_PASSTHROUGH: flags2, with FUSE_INIT_EXT) and fs_pt_init_reply()
 * with libfuse's reply, which gets FUSE_PASSTHROUGH in flags2 (libfuse
 * sets FUSE_INIT_EXT and fills flags2 exactly when the kernel sent
 * FUSE_INIT_EXT) and max_stack_depth 1 (backing files on a plain local
 * file system; the kernel refuses passthrough with FUSE_WRITEBACK_CACHE,
 * which we never ask for).  INIT is the only request until its reply is
 * written, so the worker that handles it sets fs->passthrough before any
 * other request can be read.  The hooks run only with passthrough=auto,
 * ro, a cache and CAP_SYS_ADMIN (FUSE_DEV_IOC_BACKING_OPEN needs it):
 * fs_pt_wanted().  A proxy that takes over from a dead one (fs/takeover.h)
 * calls them on the saved INIT, so that it negotiates the same, and counts
 * the dead one's opens again (fs_pt_restore) with the backing ids the
 * connection still holds.
 *
 * An open.  The backing file is registered with FUSE_DEV_IOC_BACKING_OPEN
 * on the session fd, which returns a backing id; the OPEN reply carries
 * FOPEN_PASSTHROUGH (and FOPEN_NOFLUSH: nothing to flush) and that id in a
 * 7.40 fuse_open_out.  The kernel looks the id up when the opening task
 * processes our reply, after our write returned, so the id must stay
 * registered until then; we close it (FUSE_DEV_IOC_BACKING_CLOSE) when the
 * last passthrough handle of the inode is released, which is also what
 * rule 2 needs: every open while one is open gets the same id.
 *
 * Rules 1 and 2 are kept by counting every open, per node id, as
 * passthrough or other, from our decision until its release (or the failed
 * reply).  Those counts cover the kernel's: a close returns before its
 * RELEASE is served, never the other way round.  So an open passes
 * through when the inode has passthrough opens (same backing id), or when
 * it has no other open and the cache has a copy of the whole file with the
 * attributes the open validated; otherwise it opens normally (a missed
 * chance at worst, never a refused open).  O_DIRECT opens are not passed
 * through unless they must (rule 2).  While passthrough opens share a
 * copy, they read the file as it was when the first of them opened it; a
 * change behind our back shows to opens after the last close.
 *
 * Refusals: EPERM, ENOTTY or EINVAL from BACKING_OPEN mean passthrough is
 * not available after all (no CAP_SYS_ADMIN in the kernel's eyes, e.g. in
 * a user namespace; no support), ELOOP or EOPNOTSUPP that the tier's file
 * system cannot back files, EXDEV (ours) that the copy sits on a FUSE
 * mount; we log it once and stop trying (the counts go on for the opens
 * passed through).  Any other failure falls back to a normal open for
 * that open only.
 *
 * Locking: pt.lock guards the inode records; it is a leaf, never held
 * across I/O, an ioctl or logging.  An open that finds another open
 * setting up the inode's backing file waits on pt.cv (local I/O only).
 */
#include "config.h"

#include <errno.h>
#include <linux/capability.h>
#include <linux/fuse.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
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
	/* negotiation: written by the one worker serving INIT (see above) */
	_Atomic(const char *) why;      /* why not on (static), NULL when on */
	bool offered;                   /* the kernel offers passthrough */
	struct pt_init_out init_out;    /* the patched INIT reply */
	atomic_bool off;                /* given up after a refusal */

	pthread_mutex_t lock;           /* a leaf */
	pthread_cond_t cv;              /* set-ups done */
	struct pt_inode *b[PT_BUCKETS]; /* protected by lock */

	atomic_uint_fast64_t opens, shared, fallbacks;
};

int fs_pt_new(struct fs_pt **out)
{
	struct fs_pt *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	atomic_init(&p->why, "not asked for");
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

/* ------------------------------------------------------------ INIT hooks */

void fs_pt_init_seen(struct fs *fs, const void *init_in, size_t len)
{
	const struct fuse_in_header *in = init_in;
	const struct fuse_init_in *arg = (const void *)(in + 1);

	fs->pt->offered = len >= sizeof(*in) + offsetof(struct fuse_init_in, flags2) +
				 sizeof(arg->flags2) &&
			  in->opcode == FUSE_INIT && arg->major == FUSE_KERNEL_VERSION &&
			  (arg->flags & FUSE_INIT_EXT) && (arg->flags2 & PT_INIT_PASSTHROUGH2);
	if (!fs->pt->offered)
		atomic_store(&fs->pt->why, "the kernel does not offer it");
}

void fs_pt_init_reply(struct fs *fs, struct iovec *iov, int count)
{
	struct fs_pt *p = fs->pt;
	const struct fuse_out_header *oh = iov[0].iov_base;
	struct pt_init_out *out = &p->init_out;
	const char *why = NULL;

	if (!p->offered)
		why = atomic_load(&p->why);
	else if (!fs->cache)            /* it failed to start */
		why = "no block cache";
	else if (count != 2 || iov[0].iov_len < sizeof(*oh) || oh->error ||
		 iov[1].iov_len < offsetof(struct pt_init_out, unused) ||
		 iov[1].iov_len > sizeof(*out))
		why = "unexpected INIT reply";
	if (!why) {
		memcpy(out, iov[1].iov_base, iov[1].iov_len);
		if (!(out->flags & FUSE_INIT_EXT) || (out->flags & FUSE_WRITEBACK_CACHE))
			why = "INIT reply without flags2, or with writeback cache";
	}
	if (why) {
		atomic_store(&p->why, why);
		fs_log(FS_LOG_INFO, "passthrough off: %s", why);
		return;
	}
	out->flags2 |= PT_INIT_PASSTHROUGH2;
	out->max_stack_depth = 1;
	iov[1].iov_base = out;
	atomic_store(&p->why, NULL);
	atomic_store(&fs->passthrough, true);
	fs_log(FS_LOG_INFO, "passthrough on: files wholly in a cache tier are read by the kernel");
}

static bool have_sys_admin(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return false;
	return d[CAP_SYS_ADMIN / 32].effective & (1u << (CAP_SYS_ADMIN % 32));
}

bool fs_pt_wanted(struct fs *fs)
{
	struct fs_pt *p = fs->pt;
	const char *why = NULL;

	if (!fs->o->passthrough)
		atomic_store(&p->why, "passthrough=off");
	else if (!cache_config_ntiers(&fs->o->cache))
		atomic_store(&p->why, "no block cache");
	else if (!fs->o->readonly)
		why = "the mount is writable";
	else if (!have_sys_admin())
		why = "no CAP_SYS_ADMIN";
	else
		return true;
	if (why) {
		atomic_store(&p->why, why);
		fs_log(FS_LOG_INFO, "passthrough off: %s", why);
	}
	return false;
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

static bool refusal(int err)
{
	return err == -EXDEV || err == -EPERM || err == -ENOTTY || err == -EINVAL ||
	       err == -ELOOP || err == -EOPNOTSUPP;
}

/* The backing file for a new passthrough inode: the cache's copy of rel,
 * checked to be local, registered.  A backing id, or -errno. */
static int backing_open(struct fs *fs, const char *rel, const struct stat *st)
{
	struct pt_backing_map map = { .fd = -1 };
	struct statfs sfs;
	int fd, id = -1, err;

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
	if (refusal(err) && !atomic_exchange(&fs->pt->off, true))
		fs_log(FS_LOG_WARN, "passthrough off: a cache file cannot back files: %s",
		       err == -EXDEV ? "it is on a FUSE mount" : strerror(-err));
	return err;
}

int fs_pt_open(struct fs *fs, uint64_t ino, const char *rel, const struct stat *st,
	       int flags, int *backing_id)
{
	struct fs_pt *p = fs->pt;
	bool reader = (flags & O_ACCMODE) == O_RDONLY && !(flags & O_TRUNC);
	bool may_pass;
	struct pt_inode *r;
	int id;

	if (!atomic_load_explicit(&fs->passthrough, memory_order_relaxed))
		return FS_PT_NONE;
	may_pass = reader && !(flags & O_DIRECT) && S_ISREG(st->st_mode) && st->st_size > 0 &&
		   !atomic_load_explicit(&p->off, memory_order_relaxed);
	pthread_mutex_lock(&p->lock);
	while ((r = get_locked(p, ino)) && r->setting_up)
		pthread_cond_wait(&p->cv, &p->lock);
	if (!r) {
		pthread_mutex_unlock(&p->lock);
		return -ENOMEM;
	}
	if (r->npass) {                 /* the kernel wants the same backing file */
		if (!reader) {
			pthread_mutex_unlock(&p->lock);
			return -EROFS;
		}
		r->npass++;
		*backing_id = r->backing_id;
		pthread_mutex_unlock(&p->lock);
		atomic_fetch_add(&p->opens, 1);
		atomic_fetch_add(&p->shared, 1);
		return FS_PT_PASS;
	}
	if (r->nother || !may_pass) {
		r->nother++;
		pthread_mutex_unlock(&p->lock);
		/* a chance missed: the file is open normally already */
		if (may_pass && cache_holds_file(fs->cache, rel, (uint64_t)st->st_size,
						 fs_mtime_ns(st)))
			atomic_fetch_add(&p->fallbacks, 1);
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
	} else {
		r->npass--;
		r->nother++;
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->lock);
	if (id > 0)
		atomic_fetch_add(&p->opens, 1);
	/* not wholly cached, or no room for the copy: the normal path */
	else if (id != -ENODATA && id != -ENOSPC)
		atomic_fetch_add(&p->fallbacks, 1);
	return id > 0 ? FS_PT_PASS : FS_PT_OTHER;
}

int fs_pt_restore(struct fs *fs, uint64_t ino, int mode, int backing_id)
{
	struct fs_pt *p = fs->pt;
	struct pt_inode *r;

	if (mode == FS_PT_NONE)
		return 0;
	pthread_mutex_lock(&p->lock);
	r = get_locked(p, ino);
	if (r && mode == FS_PT_PASS) {
		r->npass++;
		r->backing_id = backing_id;
	} else if (r) {
		r->nother++;
	}
	pthread_mutex_unlock(&p->lock);
	return r ? 0 : -ENOMEM;
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

void fs_pt_get_stats(struct fs *fs, struct fs_pt_stats *st)
{
	struct fs_pt *p = fs->pt;
	bool on = atomic_load(&fs->passthrough);

	st->state = !on ? "off" : atomic_load(&p->off) ? "refused" : "on";
	st->why = on ? NULL : atomic_load(&p->why);
	st->opens = atomic_load(&p->opens);
	st->shared = atomic_load(&p->shared);
	st->fallbacks = atomic_load(&p->fallbacks);
}
