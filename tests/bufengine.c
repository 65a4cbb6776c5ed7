/*
 * bufengine: a test engine for lazarusfs that loses acknowledged writes on
 * kill -9, the way JuiceFS does.
 *
 *   bufengine [-f] [-o opts] SOURCE_DIR MOUNTPOINT
 *
 * It is a passthrough FUSE filesystem (libfuse3 high-level API) over
 * SOURCE_DIR with one twist: write() is acknowledged as soon as the data is
 * copied into memory; the data reaches the source file only when a writable
 * handle of that file is flushed (close), fsync'ed or released, or when the
 * buffer of the file grows past BUF_MAX_BYTES.  Killing the process with
 * SIGKILL therefore drops every write that an application saw succeed but
 * did not close or fsync, which is what the proxy's write journal must
 * replay after a restart.
 *
 * Design
 * - Every open source inode (dev, ino) has one struct bfile holding the
 *   pending writes of all its handles, in the order they were acknowledged;
 *   each entry remembers the fd of the handle that wrote it, so it is applied
 *   with pwrite() on that fd.  Like JuiceFS's per-inode writer, flushing any
 *   writable handle of a file applies the pending writes of the whole file.
 *   Flushing a read-only handle applies nothing (closing a reader must not
 *   make a writer's data durable).  An entry never outlives its fd: a
 *   writable handle applies all pending writes before its fd is closed.
 * - read() returns read-your-writes data: pread() from the fd, then the
 *   pending entries are copied over it in order.  getattr reports st_size
 *   including pending writes past EOF.  truncate trims pending writes.
 *   utimens and fallocate apply pending writes first, so a later apply does
 *   not clobber the mtime set by e.g. cp -p.
 * - fi->fh points to a struct bhandle (fd, writability, bfile; bfile is NULL
 *   for directories), so per-op code needs no table lookup.  Ops that get a
 *   handle use only the handle, never the path.
 *
 * Locking: table_lock protects the bfile list and refcounts; bfile.lock
 * protects a file's pending writes and serializes read/write/apply/truncate
 * of that file.  Lock order: never hold both (table_lock is only taken to
 * find/ref/unref a bfile).  No I/O is done under table_lock.
 *
 * Known simplifications: the O_APPEND flag is stripped from the source fd
 * (the kernel already passes the right offset; the source fd must honour
 * it); a failed apply drops the remaining pending writes of the file and
 * reports the error once; st_blocks is not adjusted for pending data; new
 * files are owned by the engine's uid (no chown to the caller); readdir
 * lists the whole directory in one call (no readdirplus); no locks, ioctl,
 * lseek or copy_file_range (the kernel falls back).  As in libfuse's default
 * mode, a file unlinked while open is renamed to .fuse_hidden* until its
 * last close (such a file stays in SOURCE_DIR after a kill -9).
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BUF_MAX_BYTES (64u << 20) /* per file; past this we apply early */

struct pent {                     /* one pending write */
	off_t off;
	size_t len, cap;
	int fd;                   /* fd of the handle that wrote it */
	char *data;
};

struct bfile {
	dev_t dev;
	ino_t ino;
	unsigned refs;            /* protected by table_lock */
	struct bfile *next;       /* protected by table_lock */
	pthread_mutex_t lock;
	struct pent *ents;        /* protected by lock */
	size_t nents, cap, bytes; /* protected by lock */
	off_t end;                /* max end of pending writes; by lock */
};

struct bhandle {
	int fd;
	int writable;
	struct bfile *f;
};

static const char *src_path;      /* realpath of SOURCE_DIR */
static int src_fd = -1;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bfile *table;       /* protected by table_lock */

/* ---- helpers ----------------------------------------------------------------- */

static const char *rel(const char *path)
{
	return path[1] ? path + 1 : ".";
}

/* declares abs[], the source path of path, for calls that have no *at() form */
#define ABS(path)                                                        \
	char abs[PATH_MAX];                                              \
	if (snprintf(abs, sizeof(abs), "%s%s", src_path, path) >= PATH_MAX) \
		return -ENAMETOOLONG
/* return 0 / the result, or -errno when a libc call failed */
#define RET(expr) return (expr) < 0 ? -errno : 0
#define RETN(expr) do { ssize_t n_ = (expr); return n_ < 0 ? -errno : (int)n_; } while (0)

static struct bhandle *H(struct fuse_file_info *fi)
{
	return fi ? (struct bhandle *)(uintptr_t)fi->fh : NULL;
}

/* ---- buffer table ---------------------------------------------------------- */

/* Returns a referenced bfile for (dev, ino); creates it if create is set. */
static struct bfile *bfile_get(dev_t dev, ino_t ino, int create)
{
	struct bfile *f;

	pthread_mutex_lock(&table_lock);
	for (f = table; f; f = f->next)
		if (f->dev == dev && f->ino == ino)
			break;
	if (!f && create && (f = calloc(1, sizeof(*f)))) {
		f->dev = dev;
		f->ino = ino;
		pthread_mutex_init(&f->lock, NULL);
		f->next = table;
		table = f;
	}
	if (f)
		f->refs++;
	pthread_mutex_unlock(&table_lock);
	return f;
}

static void bfile_put(struct bfile *f)
{
	struct bfile **pp;

	pthread_mutex_lock(&table_lock);
	if (--f->refs) {
		pthread_mutex_unlock(&table_lock);
		return;
	}
	for (pp = &table; *pp != f; pp = &(*pp)->next)
		;
	*pp = f->next;
	pthread_mutex_unlock(&table_lock);
	/* the last writable handle applied everything before closing */
	free(f->ents);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

static void bfile_clear_locked(struct bfile *f)
{
	for (size_t i = 0; i < f->nents; i++)
		free(f->ents[i].data);
	f->nents = f->bytes = 0;
	f->end = 0;
}

/* Writes all pending data to the source file, in order. */
static int bfile_apply_locked(struct bfile *f)
{
	int err = 0;

	for (size_t i = 0; i < f->nents && !err; i++) {
		struct pent *e = &f->ents[i];
		size_t done = 0;

		while (done < e->len) {
			ssize_t n = pwrite(e->fd, e->data + done, e->len - done,
					   e->off + done);
			if (n < 0) {
				err = -errno;
				break;
			}
			done += n;
		}
	}
	bfile_clear_locked(f);
	return err;
}

static int bfile_write_locked(struct bfile *f, int fd, const char *buf,
			      size_t size, off_t off)
{
	struct pent *e = f->nents ? &f->ents[f->nents - 1] : NULL;

	/* merge into the newest entry when it overlaps or extends it */
	if (e && e->fd == fd && off >= e->off && off <= e->off + (off_t)e->len) {
		size_t need = off - e->off + size;

		if (need > e->cap) {
			size_t cap = e->cap * 2 > need ? e->cap * 2 : need;
			char *d = realloc(e->data, cap);

			if (!d)
				return -ENOMEM;
			e->data = d;
			e->cap = cap;
		}
		memcpy(e->data + (off - e->off), buf, size);
		if (need > e->len) {
			f->bytes += need - e->len;
			e->len = need;
		}
	} else {
		if (f->nents == f->cap) {
			size_t cap = f->cap ? f->cap * 2 : 16;
			struct pent *n = realloc(f->ents, cap * sizeof(*n));

			if (!n)
				return -ENOMEM;
			f->ents = n;
			f->cap = cap;
		}
		e = &f->ents[f->nents];
		if (!(e->data = malloc(size ? size : 1)))
			return -ENOMEM;
		memcpy(e->data, buf, size);
		e->off = off;
		e->len = e->cap = size;
		e->fd = fd;
		f->nents++;
		f->bytes += size;
	}
	if (off + (off_t)size > f->end)
		f->end = off + size;
	if (f->bytes > BUF_MAX_BYTES)
		return bfile_apply_locked(f);
	return 0;
}

/* Drops pending data at or past size, after the source file was truncated. */
static void bfile_trim_locked(struct bfile *f, off_t size)
{
	size_t j = 0;

	f->end = 0;
	f->bytes = 0;
	for (size_t i = 0; i < f->nents; i++) {
		struct pent e = f->ents[i];

		if (e.off >= size) {
			free(e.data);
			continue;
		}
		if (e.off + (off_t)e.len > size)
			e.len = size - e.off;
		if (e.off + (off_t)e.len > f->end)
			f->end = e.off + e.len;
		f->bytes += e.len;
		f->ents[j++] = e;
	}
	f->nents = j;
}

static void bfile_fix_size(struct bfile *f, struct stat *st)
{
	pthread_mutex_lock(&f->lock);
	if (f->end > st->st_size)
		st->st_size = f->end;
	pthread_mutex_unlock(&f->lock);
}

/* ---- operations ------------------------------------------------------------ */

static void *be_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	cfg->use_ino = 1;
	return NULL;
}

static int be_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	struct bfile *f;

	if (h) {
		if (fstat(h->fd, st) < 0)
			return -errno;
		if (h->f)
			bfile_fix_size(h->f, st);
		return 0;
	}
	if (fstatat(src_fd, rel(path), st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (S_ISREG(st->st_mode) && (f = bfile_get(st->st_dev, st->st_ino, 0))) {
		bfile_fix_size(f, st);
		bfile_put(f);
	}
	return 0;
}

static int be_opendir(const char *path, struct fuse_file_info *fi)
{
	struct bhandle *h = calloc(1, sizeof(*h));

	if (!h)
		return -ENOMEM;
	h->fd = openat(src_fd, rel(path), O_RDONLY | O_DIRECTORY);
	if (h->fd < 0) {
		int err = -errno;
		free(h);
		return err;
	}
	fi->fh = (uintptr_t)h;
	return 0;
}

/* Lists the whole directory at once (offset 0 mode: libfuse buffers it). */
static int be_readdir(const char *path, void *buf, fuse_fill_dir_t fill,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	struct dirent *de;
	DIR *d;
	int fd = dup(H(fi)->fd);

	if (fd < 0)
		return -errno;
	if (!(d = fdopendir(fd))) {
		int err = -errno;
		close(fd);
		return err;
	}
	rewinddir(d); /* the dup shares its offset with earlier listings */
	while ((de = readdir(d))) {
		struct stat st = { .st_ino = de->d_ino, .st_mode = DTTOIF(de->d_type) };

		if (fill(buf, de->d_name, &st, 0, 0))
			break;
	}
	closedir(d);
	return 0;
}

static int be_releasedir(const char *path, struct fuse_file_info *fi)
{
	close(H(fi)->fd);
	free(H(fi));
	return 0;
}

static int be_mkdir(const char *p, mode_t m) { RET(mkdirat(src_fd, rel(p), m)); }
static int be_mknod(const char *p, mode_t m, dev_t r) { RET(mknodat(src_fd, rel(p), m, r)); }
static int be_rmdir(const char *p) { RET(unlinkat(src_fd, rel(p), AT_REMOVEDIR)); }
static int be_unlink(const char *p) { RET(unlinkat(src_fd, rel(p), 0)); }
static int be_symlink(const char *target, const char *p) { RET(symlinkat(target, src_fd, rel(p))); }
static int be_access(const char *p, int mask) { RET(faccessat(src_fd, rel(p), mask, 0)); }

static int be_link(const char *from, const char *to)
{
	RET(linkat(src_fd, rel(from), src_fd, rel(to), 0));
}

static int be_rename(const char *from, const char *to, unsigned int flags)
{
	RET(renameat2(src_fd, rel(from), src_fd, rel(to), flags));
}

static int be_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n = readlinkat(src_fd, rel(path), buf, size - 1);

	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int be_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	if (H(fi))
		RET(fchmod(H(fi)->fd, mode));
	RET(fchmodat(src_fd, rel(path), mode, 0));
}

static int be_chown(const char *path, uid_t uid, gid_t gid,
		    struct fuse_file_info *fi)
{
	if (H(fi))
		RET(fchown(H(fi)->fd, uid, gid));
	RET(fchownat(src_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int path_truncate(const char *path, off_t size)
{
	ABS(path);
	RET(truncate(abs, size));
}

static int be_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	struct bfile *f = h ? h->f : NULL;
	struct stat st;
	int err;

	if (!h && fstatat(src_fd, rel(path), &st, 0) == 0)
		f = bfile_get(st.st_dev, st.st_ino, 0);
	if (f)
		pthread_mutex_lock(&f->lock);
	if (h)
		err = ftruncate(h->fd, size) < 0 ? -errno : 0;
	else
		err = path_truncate(path, size);
	if (f) {
		if (!err)
			bfile_trim_locked(f, size);
		pthread_mutex_unlock(&f->lock);
		if (!h)
			bfile_put(f);
	}
	return err;
}

static int be_utimens(const char *path, const struct timespec tv[2],
		      struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	struct bfile *f = h ? h->f : NULL;
	struct stat st;
	int err = 0;

	if (!h && fstatat(src_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode))
		f = bfile_get(st.st_dev, st.st_ino, 0);
	if (f) {
		/* a later apply would clobber the mtime set here (cp -p) */
		pthread_mutex_lock(&f->lock);
		err = bfile_apply_locked(f);
	}
	if (!err && (h ? futimens(h->fd, tv)
		       : utimensat(src_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW)) < 0)
		err = -errno;
	if (f) {
		pthread_mutex_unlock(&f->lock);
		if (!h)
			bfile_put(f);
	}
	return err;
}

static int open_common(const char *path, int flags, mode_t mode,
		       struct fuse_file_info *fi)
{
	struct bhandle *h = calloc(1, sizeof(*h));
	struct stat st;
	int err;

	if (!h)
		return -ENOMEM;
	h->fd = openat(src_fd, rel(path), flags & ~O_APPEND, mode);
	if (h->fd < 0) {
		err = -errno;
		goto out_free;
	}
	if (fstat(h->fd, &st) < 0) {
		err = -errno;
		goto out_close;
	}
	if (!(h->f = bfile_get(st.st_dev, st.st_ino, 1))) {
		err = -ENOMEM;
		goto out_close;
	}
	h->writable = (flags & O_ACCMODE) != O_RDONLY;
	if (flags & O_TRUNC) {
		/* drop data other handles still buffer for the old contents */
		pthread_mutex_lock(&h->f->lock);
		bfile_trim_locked(h->f, 0);
		pthread_mutex_unlock(&h->f->lock);
	}
	fi->fh = (uintptr_t)h;
	return 0;
out_close:
	close(h->fd);
out_free:
	free(h);
	return err;
}

static int be_open(const char *path, struct fuse_file_info *fi)
{
	return open_common(path, fi->flags, 0, fi);
}

static int be_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	return open_common(path, fi->flags | O_CREAT, mode, fi);
}

static int be_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	struct bfile *f = h->f;
	struct stat st;
	size_t done = 0, len = 0;
	off_t eof;
	int err = 0;

	pthread_mutex_lock(&f->lock);
	if (fstat(h->fd, &st) < 0) {
		err = -errno;
		goto out_unlock;
	}
	eof = st.st_size > f->end ? st.st_size : f->end;
	len = off >= eof ? 0 : (size_t)(eof - off) < size ? (size_t)(eof - off) : size;
	memset(buf, 0, len);
	while (done < len) {
		ssize_t n = pread(h->fd, buf + done, len - done, off + done);

		if (n < 0) {
			err = -errno;
			goto out_unlock;
		}
		if (n == 0)
			break; /* the rest is pending data or a hole */
		done += n;
	}
	for (size_t i = 0; i < f->nents; i++) {
		struct pent *e = &f->ents[i];
		off_t lo = e->off > off ? e->off : off;
		off_t hi = e->off + (off_t)e->len;

		if (hi > off + (off_t)len)
			hi = off + len;
		if (lo < hi)
			memcpy(buf + (lo - off), e->data + (lo - e->off), hi - lo);
	}
out_unlock:
	pthread_mutex_unlock(&f->lock);
	return err ? err : (int)len;
}

static int be_write(const char *path, const char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	int err;

	pthread_mutex_lock(&h->f->lock);
	err = bfile_write_locked(h->f, h->fd, buf, size, off);
	pthread_mutex_unlock(&h->f->lock);
	return err ? err : (int)size;
}

static int be_flush(const char *path, struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	int err;

	if (!h->writable)
		return 0;
	pthread_mutex_lock(&h->f->lock);
	err = bfile_apply_locked(h->f);
	pthread_mutex_unlock(&h->f->lock);
	return err;
}

static int be_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	int err;

	pthread_mutex_lock(&h->f->lock);
	err = bfile_apply_locked(h->f);
	pthread_mutex_unlock(&h->f->lock);
	if (err)
		return err;
	RET(datasync ? fdatasync(h->fd) : fsync(h->fd));
}

static int be_release(const char *path, struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);

	be_flush(path, fi); /* nobody can see an error from release */
	close(h->fd);
	bfile_put(h->f);
	free(h);
	return 0;
}

static int be_fallocate(const char *path, int mode, off_t off, off_t len,
			struct fuse_file_info *fi)
{
	struct bhandle *h = H(fi);
	int err;

	pthread_mutex_lock(&h->f->lock);
	err = bfile_apply_locked(h->f);
	if (!err && fallocate(h->fd, mode, off, len) < 0)
		err = -errno;
	pthread_mutex_unlock(&h->f->lock);
	return err;
}

static int be_statfs(const char *p, struct statvfs *sv) { RET(fstatvfs(src_fd, sv)); }

static int be_setxattr(const char *p, const char *name, const char *value,
		       size_t size, int flags)
{
	ABS(p);
	RET(lsetxattr(abs, name, value, size, flags));
}

static int be_getxattr(const char *p, const char *name, char *value, size_t size)
{
	ABS(p);
	RETN(lgetxattr(abs, name, value, size));
}

static int be_listxattr(const char *p, char *list, size_t size) { ABS(p); RETN(llistxattr(abs, list, size)); }
static int be_removexattr(const char *p, const char *name) { ABS(p); RET(lremovexattr(abs, name)); }

static const struct fuse_operations be_ops = {
	.init = be_init,
	.getattr = be_getattr,
	.opendir = be_opendir,
	.readdir = be_readdir,
	.releasedir = be_releasedir,
	.mkdir = be_mkdir,
	.mknod = be_mknod,
	.rmdir = be_rmdir,
	.unlink = be_unlink,
	.rename = be_rename,
	.link = be_link,
	.symlink = be_symlink,
	.readlink = be_readlink,
	.chmod = be_chmod,
	.chown = be_chown,
	.truncate = be_truncate,
	.utimens = be_utimens,
	.create = be_create,
	.open = be_open,
	.read = be_read,
	.write = be_write,
	.flush = be_flush,
	.fsync = be_fsync,
	.release = be_release,
	.fallocate = be_fallocate,
	.statfs = be_statfs,
	.setxattr = be_setxattr,
	.getxattr = be_getxattr,
	.listxattr = be_listxattr,
	.removexattr = be_removexattr,
	.access = be_access,
};

/* Takes the first non-option argument as SOURCE_DIR; fuse keeps the rest. */
static int opt_proc(void *data, const char *arg, int key,
		    struct fuse_args *outargs)
{
	const char **src = data;

	if (key == FUSE_OPT_KEY_NONOPT && !*src) {
		*src = arg;
		return 0;
	}
	return 1;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	const char *src = NULL;
	int ret;

	/* libfuse 3.14.0 warns "invalid max threads" when max_idle_threads is unset */
	if (fuse_opt_parse(&args, &src, NULL, opt_proc) < 0 ||
	    fuse_opt_insert_arg(&args, 1, "-omax_idle_threads=10") < 0)
		return 1;
	if (!src) {
		fprintf(stderr, "usage: %s [-f] [-o opts] SOURCE_DIR MOUNTPOINT\n",
			argv[0]);
		return 1;
	}
	if (!(src_path = realpath(src, NULL)) ||
	    (src_fd = open(src_path, O_RDONLY | O_DIRECTORY)) < 0) {
		fprintf(stderr, "bufengine: cannot open source: %s: %s\n", src,
			strerror(errno));
		return 1;
	}
	if (strcmp(src_path, "/") == 0)
		src_path = ""; /* ABS() appends paths that start with / */
	signal(SIGUSR1, SIG_IGN);
	umask(0); /* the kernel already applied the caller's umask */
	ret = fuse_main(args.argc, args.argv, &be_ops, NULL);
	fuse_opt_free_args(&args);
	return ret;
}
