/*
 * fs/ops_dir.c - directories and extended attributes: opendir, readdir,
 * readdirplus, releasedir, fsyncdir, and the xattr calls.
 *
 * A directory handle serves a snapshot of the whole listing, taken at the
 * first readdir (not at opendir: `df` and other probes open the mount
 * point without listing it and must not start the engine) and again on
 * rewinddir (offset 0), as POSIX asks.  Offsets are indices into the
 * snapshot, so a listing keeps its position across engine restarts, which
 * backend directory offsets would not.
 *
 * Locking: readdir holds the directory handle's lock (for writing) while
 * it refreshes the snapshot and, for readdirplus, stats its entries, which
 * may wait for an engine restart.  That is allowed for directory handles
 * (see the rule in fs/handle.h): recovery never takes their locks.
 */
#include "config.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs/ops_int.h"

static void free_snapshot(struct fs_handle *h)
{
	for (size_t i = 0; i < h->nents; i++)
		free(h->ents[i].name);
	free(h->ents);
	h->ents = NULL;
	h->nents = 0;
}

/* Read the open directory into a fresh vector (silly names left out). */
static int read_entries(DIR *dir, struct fs_dirent **out, size_t *count)
{
	struct fs_dirent *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *d;
	int ret = 0;

	for (errno = 0; (d = readdir(dir)); errno = 0) {
		/* ours, and libfuse's own for a file removed while its engine
		 * still had it open (bindfs, sshfs, s3fs do that; lazarusfs
		 * closes its backend fds in the background, and a kill before
		 * the engine's release leaves such a file behind) */
		if (fs_is_silly_name(d->d_name) || !strncmp(d->d_name, ".fuse_hidden", 12))
			continue;
		if (n == cap) {
			struct fs_dirent *nv;

			cap = cap ? cap * 2 : 64;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				ret = -ENOMEM;
				goto out_free;
			}
			v = nv;
		}
		v[n].name = strdup(d->d_name);
		if (!v[n].name) {
			ret = -ENOMEM;
			goto out_free;
		}
		v[n].ino = d->d_ino;
		v[n].type = d->d_type;
		n++;
	}
	if (errno) {
		ret = -errno;
		goto out_free;
	}
	*out = v;
	*count = n;
	return 0;
out_free:
	while (n--)
		free(v[n].name);
	free(v);
	return ret;
}

/* Read the whole directory into h->ents.  Caller holds h->lock (write). */
static int snapshot(struct fs *fs, struct fs_handle *h)
{
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX];
	int ret;

	if ((ret = fs_inode_path(fs->inodes, h->ino, NULL, rel, sizeof(rel))))
		return ret;
	if (fs->meta) {
		struct fs_dirent *v;
		size_t n;

		ret = fs_meta_listing(fs->meta, rel, &v, &n, false);
		if (ret == -EAGAIN && fs_engine_offline(fs->engine))
			ret = fs_meta_listing(fs->meta, rel, &v, &n, true);
		if (!ret) {
			free_snapshot(h);
			h->ents = v;
			h->nents = n;
			return 0;
		}
	}
	do {
		struct fs_dirent *v;
		size_t n;
		DIR *dir;
		int fd;

		if ((ret = fs_call_enter(&c)))
			break;
		fd = openat(c.b->rootfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		dir = fd >= 0 ? fdopendir(fd) : NULL;
		if (!dir) {
			ret = -errno;
			if (fd >= 0)
				close(fd);
			continue;
		}
		ret = read_entries(dir, &v, &n);
		closedir(dir);
		if (ret)
			continue;
		fs_meta_set_listing(fs->meta, rel, v, n);
		free_snapshot(h);
		h->ents = v;
		h->nents = n;
	} while (fs_call_again(&c, ret));
	return ret;
}

void fs_op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_alloc(ino, O_RDONLY, true);
	int ret;

	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if ((ret = fs_add_handle(fs, h, fi))) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (fuse_reply_open(req, fi) == -ENOENT)
		fs_drop_handle(fs, h, fi);
}

/* Add entry i of the snapshot, with attributes (readdirplus, which gives
 * the kernel a lookup count) or without.  Returns the bytes it needs,
 * more than `left` when it did not fit (nothing added then). */
static size_t add_entry(fuse_req_t req, struct fs *fs, fuse_ino_t ino,
			const char *dirrel, const struct fs_dirent *d, size_t i,
			bool plus, char *buf, size_t left)
{
	struct fuse_entry_param e = { 0 };
	struct stat st = { .st_ino = d->ino, .st_mode = (mode_t)d->type << 12 };
	size_t need;

	if (!plus)
		return fuse_add_direntry(req, buf, left, d->name, &st, i + 1);
	if (strcmp(d->name, ".") && strcmp(d->name, "..")) {
		struct fs_call c = FS_CALL_INIT(fs->engine);
		char rel[PATH_MAX];
		uint64_t gen = 0;
		int r;

		if (!strcmp(dirrel, "."))
			r = snprintf(rel, sizeof(rel), "%s", d->name) >= (int)sizeof(rel) ?
			    -ENAMETOOLONG : 0;
		else
			r = snprintf(rel, sizeof(rel), "%s/%s", dirrel, d->name) >= (int)sizeof(rel) ?
			    -ENAMETOOLONG : 0;
		if (!r && (r = fs_meta_lookup(fs, rel, &st)) == -EAGAIN) {
			do {
				if ((r = fs_call_enter(&c)))
					break;
				r = fs_stat_rel(&c, rel, &st);
				gen = c.b->gen;
			} while (fs_call_again(&c, r));
			if (!r)
				fs_meta_set_attr(fs->meta, rel, &st);
		}
		/* a vanished entry is listed without attributes */
		if (r || fs_make_entry(fs, ino, d->name, &st, gen, &e))
			e.ino = 0;
		/* a loader that lists a directory reads its files next */
		else if (fs->cache && S_ISREG(st.st_mode))
			fs_cache_warm(fs, rel, &st);
	} else {
		e.attr = st;
	}
	need = fuse_add_direntry_plus(req, buf, left, d->name, &e, i + 1);
	if (need > left && e.ino)
		fs_inode_forget(fs->inodes, e.ino, 1);
	return need;
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi, bool plus)
{
	struct fs *fs = fs_req(req);
	struct fs_handle *h = fs_handle_get(fs->handles, fi->fh);
	char *buf, dirrel[PATH_MAX];
	size_t pos = 0;
	int ret = 0;

	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	buf = malloc(size);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	pthread_rwlock_wrlock(&h->lock);
	/* first listing, or rewinddir(): a fresh snapshot, as POSIX asks */
	if (off == 0 || !h->listed)
		ret = snapshot(fs, h);
	h->listed = true;
	if (!ret && plus)
		ret = fs_inode_path(fs->inodes, ino, NULL, dirrel, sizeof(dirrel));
	for (size_t i = off; !ret && i < h->nents; i++) {
		size_t need = add_entry(req, fs, ino, dirrel, &h->ents[i], i, plus,
					buf + pos, size - pos);

		if (need > size - pos)
			break;
		pos += need;
	}
	pthread_rwlock_unlock(&h->lock);
out:
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_buf(req, buf, pos);
	free(buf);
	fs_handle_put(fs->handles, h);
}

void fs_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, false);
}

void fs_op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, true);
}

void fs_op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);

	fs_handle_remove(fs->handles, fi->fh);
	fs_engine_count_handle(fs->engine, -1);
	fs_inode_close(fs->inodes, ino);
	fuse_reply_err(req, 0);
}

void fs_op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX];
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		int fd;

		if ((ret = fs_call_enter(&c)))
			break;
		fd = openat(c.b->rootfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		ret = fd < 0 || (datasync ? fdatasync(fd) : fsync(fd)) ? -errno : 0;
		if (fd >= 0)
			close(fd);
	} while (fs_call_again(&c, ret));
out:
	fuse_reply_err(req, -ret);
}

/* ------------------------------------------------------------ xattrs */

enum xop { X_SET, X_GET, X_LIST, X_REMOVE };

static void xattr_common(fuse_req_t req, fuse_ino_t ino, enum xop op,
			 const char *name, const char *value, size_t size,
			 int flags)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX], pp[PATH_MAX + 32], *buf = NULL;
	ssize_t n = 0;
	int ret;

	/* `ls -l` of the mount point probes xattrs: answer without starting */
	if (ino == FS_ROOT_INO && !fs_engine_running(fs->engine) &&
	    (op == X_GET || op == X_LIST)) {
		if (op == X_GET)
			fuse_reply_err(req, ENODATA);
		else if (size)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_xattr(req, 0);
		return;
	}
	if ((op == X_GET || op == X_LIST) && size && !(buf = malloc(size))) {
		ret = -ENOMEM;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		if ((ret = fs_proc_path(&c, rel, pp, sizeof(pp))))
			continue;
		switch (op) {
		case X_SET:
			n = lsetxattr(pp, name, value, size, flags);
			break;
		case X_GET:
			n = lgetxattr(pp, name, buf, size);
			break;
		case X_LIST:
			n = llistxattr(pp, buf, size);
			break;
		case X_REMOVE:
			n = lremovexattr(pp, name);
			break;
		}
		ret = n < 0 ? -errno : 0;
	} while (fs_call_again(&c, ret));
out:
	if (ret)
		fuse_reply_err(req, -ret);
	else if (op == X_SET || op == X_REMOVE)
		fuse_reply_err(req, 0);
	else if (size)
		fuse_reply_buf(req, buf, n);
	else
		fuse_reply_xattr(req, n);
	free(buf);
}

void fs_op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		    const char *value, size_t size, int flags)
{
	xattr_common(req, ino, X_SET, name, value, size, flags);
}

void fs_op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
		    size_t size)
{
	xattr_common(req, ino, X_GET, name, NULL, size, 0);
}

void fs_op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	xattr_common(req, ino, X_LIST, NULL, NULL, size, 0);
}

void fs_op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	xattr_common(req, ino, X_REMOVE, name, NULL, 0, 0);
}
