/*
 * fs/session_io.c - our read and writev on /dev/fuse (fs/takeover.h).
 *
 * libfuse 3.14 lets a daemon read and write the session itself
 * (fuse_session_custom_io).  We do nothing but read(2) and writev(2),
 * plus four things around INIT and resent requests:
 *
 *   - Passthrough (fs/passthrough.c), which libfuse 3.14 cannot
 *     negotiate: its hooks see the INIT request and patch the reply.  This
 *     is the only part when takeover is off.
 *   - The first worker keeps the INIT request it reads, and the reply
 *     libfuse writes to it (the first write with INIT's unique id), in the
 *     shared page, before the reply reaches the kernel.
 *   - A successor's first read returns that saved INIT instead of reading:
 *     the kernel sends INIT once per connection, and libfuse answers every
 *     request with EIO until it has processed one.  Its reply is compared
 *     with the saved one (same protocol minor, flags, max_write...; the
 *     options are the same command line) and swallowed.  fs_run() serves
 *     that INIT on its own thread before any worker thread reads, so that
 *     no real request can overtake it.
 *   - Requests the kernel resends after FUSE_NOTIFY_RESEND carry bit 63 in
 *     their unique id.  The thread that read one remembers it until its
 *     next read: the handlers then treat the request as a retry that may
 *     find its own result (the dead worker may have carried it out without
 *     answering), as they already do after an engine crash (fs_call_again:
 *     a mkdir that meets EEXIST with the directory there succeeds).
 *
 * Protocol 7.40 (kernel 6.9) names we need and Debian's <linux/fuse.h>
 * (7.38) lacks are defined here under our own names.
 */
#include "config.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include "fs/fs_int.h"
#include "fs/passthrough.h"
#include "fs/takeover.h"

#define SIO_NOTIFY_RESEND 7             /* FUSE_NOTIFY_RESEND, 7.40 */
#define SIO_UNIQUE_RESEND (1ull << 63)  /* FUSE_UNIQUE_RESEND, 7.40 */

static _Thread_local bool tls_resent;
static _Thread_local void *tls_touched;         /* the buffer prefaulted */

/* The session's: a process has one at a time. */
static struct {
	atomic_bool init_read;          /* INIT seen (or fed) */
	atomic_bool init_done;          /* its reply seen */
	atomic_ullong init_unique;
	atomic_bool mismatch;           /* a successor negotiated otherwise */
	bool pt;                        /* call the passthrough hooks */
} sio;

bool fs_tko_resent(void)
{
	return tls_resent;
}

static ssize_t sio_read(int fd, void *buf, size_t len, void *userdata)
{
	struct fs *fs = userdata;
	struct fs_tko_shared *sh = fs->tko ? fs->tko->sh : NULL;
	const struct fuse_in_header *ih = buf;
	ssize_t n;

	tls_resent = false;
	if (sh && fs->tko->successor && !atomic_load(&sio.init_read)) {
		if (len < sh->init_in_len)
			return -1;
		memcpy(buf, sh->init_in, sh->init_in_len);
		n = (ssize_t)sh->init_in_len;
		goto init;
	}
	/*
	 * The kernel copies a request into our buffer inside read(); if that
	 * copy faults while we are being killed, it fails, and the kernel
	 * ends the request with EIO for the application instead of keeping it
	 * for a resend.  So every page of the buffer is touched before its
	 * first read (libfuse keeps one buffer per thread).
	 */
	if (sh && tls_touched != buf) {
		memset(buf, 0, len);
		tls_touched = buf;
	}
	n = read(fd, buf, len);
	if (n < (ssize_t)sizeof(*ih))
		return n;
	tls_resent = (ih->unique & SIO_UNIQUE_RESEND) != 0;
	if (atomic_load(&sio.init_read) || ih->opcode != FUSE_INIT)
		return n;
	if (sh && (size_t)n <= sizeof(sh->init_in)) {
		memcpy(sh->init_in, buf, (size_t)n);
		sh->init_in_len = (uint32_t)n;
	}
init:
	if (sio.pt) {
		int err = errno;

		fs_pt_init_seen(fs, buf, (size_t)n);
		errno = err;
	}
	atomic_store(&sio.init_unique, ih->unique);
	atomic_store(&sio.init_read, true);
	return n;
}

/* Flatten iov into buf (at most cap bytes): the total length. */
static size_t flatten(const struct iovec *iov, int count, unsigned char *buf, size_t cap)
{
	size_t at = 0;

	for (int i = 0; i < count; i++) {
		if (at + iov[i].iov_len <= cap)
			memcpy(buf + at, iov[i].iov_base, iov[i].iov_len);
		at += iov[i].iov_len;
	}
	return at;
}

static ssize_t sio_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fs *fs = userdata;
	struct fs_tko_shared *sh = fs->tko ? fs->tko->sh : NULL;
	const struct fuse_out_header *oh = iov[0].iov_base;
	unsigned char tmp[FS_TKO_INIT_MAX];
	struct iovec v[2];
	size_t n;

	if (atomic_load(&sio.init_done) || !atomic_load(&sio.init_read) || count > 2 ||
	    iov[0].iov_len < sizeof(*oh) || oh->unique != atomic_load(&sio.init_unique))
		return writev(fd, iov, count);
	atomic_store(&sio.init_done, true);
	/* the hook may point v[1] at a patched copy; libfuse's stays as is */
	memcpy(v, iov, (size_t)count * sizeof(*v));
	if (sio.pt)
		fs_pt_init_reply(fs, v, count);
	if (!sh)
		return writev(fd, v, count);
	if (!fs->tko->successor) {
		n = flatten(v, count, sh->init_out, sizeof(sh->init_out));
		sh->init_out_len = n <= sizeof(sh->init_out) ? (uint32_t)n : 0;
		return writev(fd, v, count);
	}
	/* a successor: the kernel has had its reply; only check ours */
	n = flatten(v, count, tmp, sizeof(tmp));
	if (n != sh->init_out_len || memcmp(tmp, sh->init_out, n))
		atomic_store(&sio.mismatch, true);
	return (ssize_t)flatten(iov, count, tmp, 0);
}

int fs_session_io_install(struct fs *fs, int fd)
{
	static const struct fuse_custom_io io = { .read = sio_read, .writev = sio_writev };

	/* one session per process (a test may make several in a row) */
	atomic_store(&sio.init_read, false);
	atomic_store(&sio.init_done, false);
	atomic_store(&sio.mismatch, false);
	sio.pt = fs_pt_wanted(fs);
	if (!fs->tko && !sio.pt)
		return 0;               /* nothing to do: libfuse's own io */
	if (fs->tko && fs->tko->successor &&
	    (!fs->tko->sh->init_in_len || !fs->tko->sh->init_out_len))
		return -EPROTO;         /* the first worker died before INIT */
	return fuse_session_custom_io(fs->se, &io, fd) ? -EIO : 0;
}

bool fs_session_io_mismatch(void)
{
	return atomic_load(&sio.mismatch);
}

int fs_session_io_resend(struct fs *fs)
{
	struct fuse_out_header oh = { .len = sizeof(oh), .error = SIO_NOTIFY_RESEND };

	return write(fuse_session_fd(fs->se), &oh, sizeof(oh)) == sizeof(oh) ? 0 : -errno;
}
