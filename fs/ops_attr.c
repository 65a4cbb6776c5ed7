/*
 * fs/ops_attr.c - names to inodes and their attributes: lookup, forget,
 * getattr, setattr, readlink, statfs.
 *
 * The mount point itself must answer without the engine: kubelet, CSI
 * probes and df stat and statfs it, and that must not start a lazily
 * started engine.  The root's last real attributes are kept (and saved in
 * <dir>/root.attr for the next mount) to stand in for it meanwhile.
 */
#include "config.h"

#include <limits.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fs/ops_int.h"

/* The engine root's attributes, remembered for when it is stopped
 * (permission checks on the root need them). */
static void remember_root(struct fs *fs, const struct stat *st)
{
	bool changed;

	pthread_mutex_lock(&fs->root_lock);
	changed = fs->root_stat.st_mode != st->st_mode ||
		  fs->root_stat.st_uid != st->st_uid ||
		  fs->root_stat.st_gid != st->st_gid;
	fs->root_stat = *st;
	pthread_mutex_unlock(&fs->root_lock);
	if (changed)
		fs_root_attr_save(fs, st);
}

void fs_op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX];
	uint64_t gen = 0;
	struct stat st;
	int ret;

	if (fs_is_silly_name(name)) {
		ret = -ENOENT;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))))
		goto out;
	do {
		/* first, and again after an engine loss: what we know may do */
		if ((ret = fs_meta_lookup(fs, rel, &st)) != -EAGAIN)
			goto out;
		if (fs_offline_attr(fs, fs_inode_find(fs->inodes, parent, name), &st)) {
			ret = 0;
			goto out;
		}
		if ((ret = fs_call_enter(&c)))
			break;
		ret = fs_stat_rel(&c, rel, &st);
		gen = c.b->gen;
	} while (fs_call_again(&c, ret));
	if (!ret)
		fs_meta_set_attr(fs->meta, rel, &st);
	else if (ret == -ENOENT)
		fs_meta_set_missing(fs->meta, rel);
out:
	if (ret == -ENOENT && fs->o->negative_timeout > 0) {
		struct fuse_entry_param e = { .entry_timeout = fs->o->negative_timeout };

		fuse_reply_entry(req, &e);
	} else if (ret) {
		fuse_reply_err(req, -ret);
	} else {
		fs_reply_entry(req, fs, parent, name, &st, gen);
	}
}

void fs_op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_inode_forget(fs_req(req)->inodes, ino, nlookup);
	fuse_reply_none(req);
}

void fs_op_forget_multi(fuse_req_t req, size_t count,
			struct fuse_forget_data *forgets)
{
	struct fs *fs = fs_req(req);

	for (size_t i = 0; i < count; i++)
		fs_inode_forget(fs->inodes, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

void fs_op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX];
	struct stat st;
	int ret;

	/*
	 * kubelet and CSI probes (root) stat the mount point: no engine start.
	 * Another user gets the engine's real root, because the kernel checks
	 * that user's permissions against these attributes; root passes them
	 * anyway.
	 */
	if (ino == FS_ROOT_INO && fuse_req_ctx(req)->uid == 0 &&
	    !fs_engine_running(fs->engine)) {
		pthread_mutex_lock(&fs->root_lock);
		st = fs->root_stat;
		pthread_mutex_unlock(&fs->root_lock);
		/* not cached: the real attributes replace these once it runs */
		fuse_reply_attr(req, &st, 0);
		return;
	}
	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		/* first, and again after an engine loss: what we know may do */
		if (!fs_meta_lookup(fs, rel, &st) || fs_offline_attr(fs, ino, &st))
			goto reply;
		if ((ret = fs_call_enter(&c)))
			break;
		ret = fs_stat_rel(&c, rel, &st);
	} while (fs_call_again(&c, ret));
	if (!ret)
		fs_meta_set_attr(fs->meta, rel, &st);
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (ino == FS_ROOT_INO)
		remember_root(fs, &st);
	if (fs->cache)
		fs_inode_attr_set(fs->inodes, ino, &st);
reply:
	fs_fill_attr(fs, ino, &st);
	fuse_reply_attr(req, &st, fs->o->attr_timeout);
}

struct setattr_arg {
	uint64_t ino;
	const char *rel;
	struct stat *attr;
	int valid;
	struct stat st;         /* out: attributes afterwards */
};

/* Apply a setattr by path, the size through h->fd when h is given. */
static int do_setattr(struct fs *fs, const struct fs_call *c,
		      struct fs_handle *h, struct setattr_arg *a)
{
	const struct stat *attr = a->attr;
	int valid = a->valid, ret = 0;
	const char *rel = a->rel;
	uint64_t ino = a->ino;

	if (valid & FUSE_SET_ATTR_MODE &&
	    fchmodat(c->b->rootfd, rel, attr->st_mode & 07777, 0))
		return -errno;
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) &&
	    fchownat(c->b->rootfd, rel,
		     valid & FUSE_SET_ATTR_UID ? attr->st_uid : (uid_t)-1,
		     valid & FUSE_SET_ATTR_GID ? attr->st_gid : (gid_t)-1,
		     AT_SYMLINK_NOFOLLOW))
		return -errno;
	/* journaled: a replay must not bring back what this cut off */
	if (valid & FUSE_SET_ATTR_SIZE) {
		ret = h ? fs_handle_truncate_fd(fs, h, attr->st_size) :
			  fs_handle_truncate_path(fs, c, ino, rel, attr->st_size);
		if (ret)
			return ret;
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT },
					  { .tv_nsec = UTIME_OMIT } };

		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		if (utimensat(c->b->rootfd, rel, ts, AT_SYMLINK_NOFOLLOW))
			return -errno;
	}
	return fs_stat_rel(c, rel, &a->st);
}

static int setattr_fn(struct fs *fs, struct fs_call *c, struct fs_handle *h,
		      void *arg)
{
	return do_setattr(fs, c, h, arg);
}

void fs_op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		   int valid, struct fuse_file_info *fi)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX];
	struct setattr_arg a = { .ino = ino, .rel = rel, .attr = attr, .valid = valid };
	struct fs_handle *h = NULL;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	/* a truncate of an open file goes through its fd (ftruncate) */
	if (fi && (valid & FUSE_SET_ATTR_SIZE))
		h = fs_handle_get(fs->handles, fi->fh);
	if (h) {
		ret = fs_handle_call(fs, h, setattr_fn, &a);
		fs_handle_put(fs->handles, h);
	} else {
		do {
			if ((ret = fs_call_enter(&c)))
				break;
			ret = do_setattr(fs, &c, NULL, &a);
		} while (fs_call_again(&c, ret));
	}
	if (!ret && (valid & FUSE_SET_ATTR_SIZE))
		fs_cache_truncate_all(fs, ino, rel, attr->st_size);
	if (!ret)
		fs_meta_set_attr(fs->meta, rel, &a.st);
	else
		fs_meta_drop(fs->meta, rel);
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fs_fill_attr(fs, ino, &a.st);
	fuse_reply_attr(req, &a.st, fs->o->attr_timeout);
}

void fs_op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX], target[PATH_MAX + 1];
	ssize_t n = 0;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		n = readlinkat(c.b->rootfd, rel, target, sizeof(target) - 1);
		ret = n < 0 ? -errno : 0;
	} while (fs_call_again(&c, ret));
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	target[n] = 0;
	fuse_reply_readlink(req, target);
}

void fs_op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	struct statvfs sv;
	int ret;

	/* df and CSI volume stats must not start the engine */
	if (!fs_engine_running(fs->engine)) {
		pthread_mutex_lock(&fs->root_lock);
		sv = fs->root_statvfs;
		pthread_mutex_unlock(&fs->root_lock);
		fuse_reply_statfs(req, &sv);
		return;
	}
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		ret = fstatvfs(c.b->rootfd, &sv) ? -errno : 0;
	} while (fs_call_again(&c, ret));
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	pthread_mutex_lock(&fs->root_lock);
	fs->root_statvfs = sv;
	pthread_mutex_unlock(&fs->root_lock);
	fuse_reply_statfs(req, &sv);
}
