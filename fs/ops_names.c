/*
 * fs/ops_names.c - operations on names: mknod, mkdir, symlink, unlink,
 * rmdir, rename, link, and the silly rename of open files.
 *
 * None of these is idempotent, yet each may run twice: once before an
 * engine crash and again after the restart (fs_call_again).  A retry that
 * finds its own result (EEXIST for a create, ENOENT for a removal, the
 * target in place for a rename) counts as done.
 *
 * Silly rename: a file unlinked (or renamed over) while open is moved to a
 * hidden name at the engine root instead, as NFS clients do, so that its
 * handles can still be reopened by path after a restart.  The last release
 * removes it (fs/ops_file.c).  fs_inode_make_silly() decides, under the
 * inode table lock, whether a release slipped in between; then nobody else
 * will remove the file and we do it here.
 */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <unistd.h>

#include "fs/ops_int.h"

enum mkkind { MK_NOD, MK_DIR, MK_SYMLINK };

static void make_node(fuse_req_t req, fuse_ino_t parent, const char *name,
		      enum mkkind kind, mode_t mode, dev_t rdev,
		      const char *link)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX], prel[PATH_MAX];
	uint64_t gen = 0;
	struct stat st;
	int ret;

	if (fs_is_silly_name(name)) {
		ret = -EPERM;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, parent, NULL, prel, sizeof(prel))))
		goto out;
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		gen = c.b->gen;
		if (kind == MK_DIR)
			ret = mkdirat(c.b->rootfd, rel, mode);
		else if (kind == MK_SYMLINK)
			ret = symlinkat(link, c.b->rootfd, rel);
		else
			ret = mknodat(c.b->rootfd, rel, mode, rdev);
		ret = ret ? -errno : 0;
		/* a retry finding its own result: the first try made it */
		if (ret == -EEXIST && c.attempt)
			ret = 0;
		if (!ret)
			ret = fs_stat_rel(&c, rel, &st);
		if (!ret)
			ret = fs_own(fs, &c, req, rel, prel, &st);
	} while (fs_call_again(&c, ret));
	if (!ret) {
		fs_meta_changed(fs->meta, rel);
		fs_meta_set_attr(fs->meta, rel, &st);
	}
out:
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fs_reply_entry(req, fs, parent, name, &st, gen);
}

void fs_op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		 mode_t mode, dev_t rdev)
{
	make_node(req, parent, name, MK_NOD, mode, rdev, NULL);
}

void fs_op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		 mode_t mode)
{
	make_node(req, parent, name, MK_DIR, mode, 0, NULL);
}

void fs_op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		   const char *name)
{
	make_node(req, parent, name, MK_SYMLINK, 0, 0, link);
}

/*
 * (parent, name) is about to go.  If it is the name the open handles of its
 * file went through and the file has another, move them to that one.
 */
static void move_handles_off(struct fs *fs, const struct fs_call *c,
			     uint64_t ino, uint64_t parent, const char *name)
{
	char other[PATH_MAX];

	if (ino && fs_inode_nopen(fs->inodes, ino) > 0 &&
	    fs_inode_is_first_name(fs->inodes, ino, parent, name) &&
	    !fs_inode_path_except(fs->inodes, ino, parent, name, other, sizeof(other)))
		fs_handle_rebind(fs, c, ino, other);
}

/* A hidden name for open file `ino`, chosen once per operation, so that
 * a retry after an engine crash uses the same one. */
static void silly_name(struct fs *fs, uint64_t ino, char *silly, size_t len)
{
	snprintf(silly, len, FS_SILLY_PREFIX "%llx-%llx", (unsigned long long)ino,
		 (unsigned long long)atomic_fetch_add(&fs->silly_seq, 1));
}

/*
 * Rename (parent, name) out of the way to the hidden name `silly` at the
 * engine root, because handles are still open on it.  A retry (c->attempt)
 * that finds the source gone and the hidden name there counts the first
 * try's rename as done.
 */
static int silly_rename(struct fs *fs, struct fs_call *c, uint64_t parent,
			const char *name, const char *silly)
{
	char rel[PATH_MAX], srel[PATH_MAX];
	struct fs_move *mv;
	struct stat st;
	int ret;

	/* at the engine root, so the old directory can still be removed */
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, FS_ROOT_INO, silly, srel, sizeof(srel))))
		return ret;
	mv = fs_move_begin(fs, rel, srel);
	ret = renameat(c->b->rootfd, rel, c->b->rootfd, srel) ? -errno : 0;
	if (ret == -ENOENT && c->attempt && !fs_stat_rel(c, srel, &st))
		ret = 0;
	if (ret) {
		fs_move_end(fs, mv);
		return ret;
	}
	fs_log(FS_LOG_DEBUG, "silly-renamed open file %s", rel);
	ret = fs_inode_make_silly(fs->inodes, parent, name, FS_ROOT_INO, silly);
	fs_move_end(fs, mv);
	if (ret == 0) {
		/* the last release came in between: nobody else removes it */
		if (unlinkat(c->b->rootfd, srel, 0))
			return -errno;
		fs_inode_unlink(fs->inodes, FS_ROOT_INO, silly);
	}
	return 0;
}

void fs_op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX], sname[NAME_MAX + 1] = "";
	bool silly = false;
	uint64_t ino = 0;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		ino = fs_inode_find(fs->inodes, parent, name);
		/* open and about to lose its last name: keep it reachable */
		if (ino && fs_inode_nopen(fs->inodes, ino) > 0 &&
		    fs_inode_nnames(fs->inodes, ino) == 1) {
			if (!sname[0])
				silly_name(fs, ino, sname, sizeof(sname));
			ret = silly_rename(fs, &c, parent, name, sname);
			silly = !ret;
		} else {
			move_handles_off(fs, &c, ino, parent, name);
			ret = unlinkat(c.b->rootfd, rel, 0) ? -errno : 0;
			if (ret == -ENOENT && c.attempt)
				ret = 0;
			if (!ret)
				fs_inode_unlink(fs->inodes, parent, name);
		}
	} while (fs_call_again(&c, ret));
	if (!ret) {
		fs_meta_changed(fs->meta, rel);
		fs_meta_set_missing(fs->meta, rel);
		/* the file's link count changed for its other names */
		if (ino && fs_inode_nnames(fs->inodes, ino))
			fs_meta_drop_ino(fs, ino);
	}
	if (!ret && fs->cache) {
		/* a silly rename, or the loss of a file's first name, moved the
		 * path (the cache key) of its open handles */
		if (silly || (ino && fs_inode_nopen(fs->inodes, ino) > 0))
			fs_cache_detach_moved(fs);
		cache_evict(fs->cache, rel);
	}
out:
	fuse_reply_err(req, -ret);
}

void fs_op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX];
	int ret;

	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))))
		goto out;
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		ret = unlinkat(c.b->rootfd, rel, AT_REMOVEDIR) ? -errno : 0;
		if (ret == -ENOENT && c.attempt)
			ret = 0;
	} while (fs_call_again(&c, ret));
	if (!ret) {
		fs_inode_unlink(fs->inodes, parent, name);
		fs_meta_drop_tree(fs->meta, rel);
		fs_meta_changed(fs->meta, rel);
		fs_meta_set_missing(fs->meta, rel);
	}
	if (!ret && fs->cache)
		cache_evict(fs->cache, rel);
out:
	fuse_reply_err(req, -ret);
}

void fs_op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		  fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX], nrel[PATH_MAX], sname[NAME_MAX + 1] = "";
	struct fs_move *mv = NULL;
	struct stat st;
	int ret;

	if (fs_is_silly_name(name) || fs_is_silly_name(newname)) {
		ret = -EPERM;
		goto out;
	}
	if ((ret = fs_inode_path(fs->inodes, parent, name, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, newparent, newname, nrel, sizeof(nrel))))
		goto out;
	/* an exchange leaves both paths in place: a reopen cannot tell */
	if (!(flags & RENAME_EXCHANGE))
		mv = fs_move_begin(fs, rel, nrel);
	do {
		uint64_t victim;

		if ((ret = fs_call_enter(&c)))
			break;
		/* an open file about to be replaced must stay reachable */
		victim = fs_inode_find(fs->inodes, newparent, newname);
		if (!(flags & RENAME_EXCHANGE) && victim &&
		    fs_inode_nopen(fs->inodes, victim) > 0 &&
		    fs_inode_nnames(fs->inodes, victim) == 1 &&
		    victim != fs_inode_find(fs->inodes, parent, name) &&
		    !(flags & RENAME_NOREPLACE) && !fs_stat_rel(&c, rel, &st) &&
		    !S_ISDIR(st.st_mode)) {
			if (!sname[0])
				silly_name(fs, victim, sname, sizeof(sname));
			if ((ret = silly_rename(fs, &c, newparent, newname, sname)))
				continue;
		}
		if (!(flags & RENAME_EXCHANGE) && victim)
			move_handles_off(fs, &c, victim, newparent, newname);
		ret = renameat2(c.b->rootfd, rel, c.b->rootfd, nrel, flags) ? -errno : 0;
		if (ret == -ENOENT && c.attempt && !fs_stat_rel(&c, nrel, &st))
			ret = 0;        /* the first try moved it */
	} while (fs_call_again(&c, ret));
	if (!ret) {
		uint64_t victim = fs_inode_find(fs->inodes, newparent, newname);

		/* a file renamed over keeps its other names, with one link less */
		if (victim)
			fs_meta_drop_ino(fs, victim);
		fs_meta_drop_tree(fs->meta, rel);
		fs_meta_drop_tree(fs->meta, nrel);
		fs_meta_changed(fs->meta, rel);
		fs_meta_changed(fs->meta, nrel);
		if (flags & RENAME_EXCHANGE)
			fs_inode_exchange(fs->inodes, parent, name, newparent, newname);
		else if (!c.attempt || fs_inode_find(fs->inodes, parent, name))
			fs_inode_rename(fs->inodes, parent, name, newparent, newname);
		/* else a resent rename that a dead proxy carried out, table
		 * included (fs/takeover.h): the kernel had looked the source up,
		 * so an unknown source means the move is already in the table */
		/* detach first, so no handle refills the old keys afterwards */
		if (fs->cache) {
			fs_cache_detach_moved(fs);
			cache_file_rename(fs->cache, rel, nrel);
		}
	}
	fs_move_end(fs, mv);
out:
	fuse_reply_err(req, -ret);
}

void fs_op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		const char *newname)
{
	struct fs *fs = fs_req(req);
	struct fs_call c = FS_CALL_INIT(fs->engine);
	char rel[PATH_MAX], nrel[PATH_MAX];
	uint64_t gen = 0;
	struct stat st;
	int ret;

	if ((ret = fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel))) ||
	    (ret = fs_inode_path(fs->inodes, newparent, newname, nrel, sizeof(nrel))))
		goto out;
	do {
		if ((ret = fs_call_enter(&c)))
			break;
		gen = c.b->gen;
		ret = linkat(c.b->rootfd, rel, c.b->rootfd, nrel, 0) ? -errno : 0;
		if (ret == -EEXIST && c.attempt)
			ret = 0;
		if (!ret)
			ret = fs_stat_rel(&c, nrel, &st);
	} while (fs_call_again(&c, ret));
out:
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fs_meta_changed(fs->meta, nrel);
	fs_meta_drop_ino(fs, ino);      /* its link count changed */
	/* the new name is another name of the same node: one inode, one
	 * page cache and one journal for the kernel and for us */
	if ((ret = fs_inode_link(fs->inodes, ino, newparent, newname, &st, gen))) {
		fuse_reply_err(req, -ret);
		return;
	}
	fs_reply_entry(req, fs, newparent, newname, &st, gen);
}
