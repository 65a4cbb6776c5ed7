/*
 * fs/meta.h - the metadata cache of the proxy (fs/meta.c), private to fs/:
 * attributes, missing names and complete directory listings of the
 * engine, by path relative to its root ("." for the root).
 *
 * Every function takes the cache's own lock (a leaf) and does no I/O under
 * it; every function accepts m == NULL (no cache) and then caches nothing.
 */
#ifndef LAZARUSFS_META_H
#define LAZARUSFS_META_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "fs/fs.h"

/* One directory entry, as a listing keeps it. */
struct fs_dirent {
	char *name;
	ino_t ino;
	unsigned char type;     /* DT_* */
};

struct fs_meta_stats {
	uint64_t hits, negative_hits, misses, evictions;
	size_t entries, bytes, max_bytes;
};

struct fs_meta;

/* Entries expire `ttl` seconds after they were learnt (INFINITY: never);
 * at most about max_bytes are kept, the least recently used go first. */
int fs_meta_new(struct fs_meta **out, double ttl, size_t max_bytes);
void fs_meta_free(struct fs_meta *m);

/*
 * What is known of `rel`: 0 with *st, -ENOENT when it is known not to
 * exist (a missing mark, or a complete listing of its directory without
 * it), -EAGAIN when nothing fresh is known.  With stale_ok, expired
 * entries count too (the offline service).
 */
int fs_meta_attr(struct fs_meta *m, const char *rel, struct stat *st, bool stale_ok);
void fs_meta_set_attr(struct fs_meta *m, const char *rel, const struct stat *st);
void fs_meta_set_missing(struct fs_meta *m, const char *rel);
/* Forget `rel` (its attributes and listing). */
void fs_meta_drop(struct fs_meta *m, const char *rel);
/* `rel` was created, removed or changed through us: forget it and its
 * directory (whose listing, mtime and link count changed). */
void fs_meta_changed(struct fs_meta *m, const char *rel);
/* Forget `rel` and everything below it ("." : everything). */
void fs_meta_drop_tree(struct fs_meta *m, const char *rel);
/* A copy of the complete listing of directory `rel` (free the names and
 * the vector), or -EAGAIN; -ENOMEM. */
int fs_meta_listing(struct fs_meta *m, const char *rel, struct fs_dirent **out,
		    size_t *n, bool stale_ok);
void fs_meta_set_listing(struct fs_meta *m, const char *rel,
			 const struct fs_dirent *ents, size_t n);
void fs_meta_get_stats(struct fs_meta *m, struct fs_meta_stats *out);
/*
 * Write every entry to `path` (atomically) / read them back.  `tag` names
 * the dataset: a file with another tag is ignored.  A missing file is no
 * error; a damaged one keeps what came before the damage.  Loaded entries
 * are fresh only with ttl INFINITY, else already expired.
 */
int fs_meta_save(struct fs_meta *m, const char *path, uint64_t tag);
int fs_meta_load(struct fs_meta *m, const char *path, uint64_t tag);

#endif
