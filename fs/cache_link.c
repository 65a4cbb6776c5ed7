/*
 * fs/cache_link.c - the coupling between open handles and the block cache
 * (fs/ops_int.h): attach and detach cache files, keep cached blocks true
 * to what the engine accepted, and fetch misses through the handle.
 *
 * Block keys are paths.  A handle's cache file is keyed by the path it was
 * opened at (h->ckey); when that path changes (rename, silly rename), the
 * handle is detached and reads the engine directly from then on, while its
 * writes and truncates drop the blocks of the file's current path, which
 * other handles may cache.
 *
 * Locking: users of h->cf hold h->cflock for reading; attach and detach
 * take it for writing.  A reader holds it across a cache miss, which may
 * wait for an engine restart (allowed: see fs/handle.h).
 */
#include "config.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "fs/ops_int.h"

void fs_cache_attach(struct fs *fs, struct fs_handle *h, const char *rel,
		     const struct stat *st, struct fuse_file_info *fi)
{
	char bpath[PATH_MAX + 64], cur[PATH_MAX];
	struct cache_file *cf;
	int keep = 0, ret;
	char *key;

	if (!fs->cache || !S_ISREG(st->st_mode))
		return;
	/* the prefetcher reads the engine by path */
	if (snprintf(bpath, sizeof(bpath), "%s/%s", fs_engine_backend(fs->engine),
		     rel) >= (int)sizeof(bpath)) {
		fs_log(FS_LOG_DEBUG, "not cached, path too long: %s", rel);
		return;
	}
	key = strdup(rel);
	ret = key ? cache_file_open(fs->cache, rel, st->st_size, fs_mtime_ns(st),
				    bpath, &cf, &keep) : -ENOMEM;
	if (ret) {
		fs_log(FS_LOG_DEBUG, "cache open failed, reading uncached: %s: %s",
		       rel, strerror(-ret));
		free(key);
		return;
	}
	pthread_rwlock_wrlock(&h->cflock);
	h->cf = cf;
	h->ckey = key;
	pthread_rwlock_unlock(&h->cflock);
	/* a rename that ran meanwhile may have missed us: blocks are keyed
	 * by path, so a handle whose path moved must not cache */
	if (fs_inode_path(fs->inodes, h->ino, NULL, cur, sizeof(cur)) ||
	    strcmp(cur, rel)) {
		fs_cache_detach(h, NULL);
		return;
	}
	fi->keep_cache = keep;
}

void fs_cache_detach(struct fs_handle *h, const struct stat *st)
{
	struct cache_file *cf;
	char *key;

	pthread_rwlock_wrlock(&h->cflock);
	cf = h->cf;
	key = h->ckey;
	h->cf = NULL;
	h->ckey = NULL;
	pthread_rwlock_unlock(&h->cflock);
	if (!cf)
		return;
	if (st)
		cache_file_set_attr(cf, st->st_size, fs_mtime_ns(st));
	cache_file_close(cf);
	free(key);
}

void fs_cache_detach_moved(struct fs *fs)
{
	struct fs_handle **v;
	size_t n = fs_handle_all(fs->handles, 0, &v);
	char cur[PATH_MAX];

	for (size_t i = 0; i < n; i++) {
		struct fs_handle *h = v[i];
		bool moved;

		if (h->dir)
			continue;
		pthread_rwlock_rdlock(&h->cflock);
		moved = h->ckey &&
			(fs_inode_path(fs->inodes, h->ino, NULL, cur, sizeof(cur)) ||
			 strcmp(cur, h->ckey));
		pthread_rwlock_unlock(&h->cflock);
		if (moved)
			fs_cache_detach(h, NULL);
	}
	fs_handle_put_all(fs->handles, v, n);
}

void fs_cache_detach_all(struct fs *fs)
{
	struct fs_handle **v;
	size_t n;

	if (!fs->cache || !fs->handles)
		return;
	n = fs_handle_all(fs->handles, 0, &v);
	for (size_t i = 0; i < n; i++)
		if (!v[i]->dir)
			fs_cache_detach(v[i], NULL);
	fs_handle_put_all(fs->handles, v, n);
}

void fs_cache_evict_ino(struct fs *fs, uint64_t ino)
{
	char rel[PATH_MAX];

	if (fs->cache && !fs_inode_path(fs->inodes, ino, NULL, rel, sizeof(rel)))
		cache_evict(fs->cache, rel);
}

void fs_cache_after_write(struct fs *fs, struct fs_handle *h,
			  const char *buf, size_t size, off_t off)
{
	bool done = false;

	if (!fs->cache)
		return;
	pthread_rwlock_rdlock(&h->cflock);
	if (h->cf) {
		cache_write(h->cf, buf, size, off);
		atomic_store(&h->wrote, true);
		done = true;
	}
	pthread_rwlock_unlock(&h->cflock);
	/* a detached handle: other handles may cache this file by its path */
	if (!done)
		fs_cache_evict_ino(fs, h->ino);
}

void fs_cache_truncate_all(struct fs *fs, uint64_t ino, const char *rel,
			   off_t size)
{
	struct fs_handle **v;
	bool done = false;
	size_t n;

	if (!fs->cache)
		return;
	n = fs_handle_all(fs->handles, ino, &v);
	for (size_t i = 0; i < n; i++) {
		if (v[i]->dir)
			continue;
		pthread_rwlock_rdlock(&v[i]->cflock);
		if (v[i]->cf) {
			cache_truncate(v[i]->cf, size);
			done = true;
		}
		pthread_rwlock_unlock(&v[i]->cflock);
	}
	fs_handle_put_all(fs->handles, v, n);
	if (!done)
		cache_evict(fs->cache, rel);
}

struct fetch_arg {
	struct fs *fs;
	struct fs_handle *h;
};

/* cache_fetch_fn: a miss reads whole blocks from the engine through h */
static ssize_t fetch(void *arg, void *buf, size_t len, off_t off)
{
	struct fetch_arg *a = arg;

	return fs_handle_pread(a->fs, a->h, buf, len, off);
}

bool fs_cache_read(struct fs *fs, struct fs_handle *h, char *buf, size_t size,
		   off_t off, ssize_t *n)
{
	struct fetch_arg a = { .fs = fs, .h = h };
	bool cached = false;

	if (!fs->cache)
		return false;
	pthread_rwlock_rdlock(&h->cflock);
	if (h->cf) {
		*n = cache_read(h->cf, buf, size, off, fetch, &a);
		cached = true;
	}
	pthread_rwlock_unlock(&h->cflock);
	return cached;
}

void fs_cache_warm(struct fs *fs, const char *rel, const struct stat *st)
{
	char bpath[PATH_MAX + 64];

	if (snprintf(bpath, sizeof(bpath), "%s/%s", fs_engine_backend(fs->engine), rel) <
	    (int)sizeof(bpath))
		cache_warm_add(fs->cache, rel, st->st_size, fs_mtime_ns(st), bpath);
}
