/*
 * fs/fs_int.h - private to fs/: the mount object that fs/mount.c builds and
 * every request handler (fs/ops*.c) works on, and the control socket
 * server (fs/ctl.c).  The engine supervisor and the handles have headers
 * of their own (fs/engine.h, fs/handle.h); the lock order of fs/ is written
 * down in fs/handle.h.
 */
#ifndef LAZARUSFS_FS_INT_H
#define LAZARUSFS_FS_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fs/engine.h"
#include "fs/fs.h"
#include "fs/handle.h"
#include "fs/meta.h"

/* ---------------------------------------------------------------- ctl */

/* Answer one command line; *reply is malloc'd (or NULL on -ENOMEM). */
typedef int (*fs_ctl_fn)(void *arg, const char *cmd, char **reply);
struct fs_ctl;

/* Listen on `path` (mode 0600), replacing any socket file there, and serve
 * connections one at a time from a thread of its own. */
int fs_ctl_new(struct fs_ctl **out, const char *path, fs_ctl_fn fn, void *arg);
void fs_ctl_free(struct fs_ctl *c);
/* Record the ready mount in the registry / take it out again (ours only). */
int fs_registry_add(struct fs *fs, const char *sock);
void fs_registry_remove(struct fs *fs);
/* The fs_ctl_fn of a mount: status, stats, evict, contains (fs/ctl.c). */
int fs_ctl_handler(void *arg, const char *cmd, char **reply);

/* ---------------------------------------------------------------- mount */

struct fs_prom;
struct fs_checkpointer;
struct fs_closer;
struct fs_move;
struct fs_tko;

struct fs {
	/* immutable while requests run */
	struct fs_opts *o;
	char id[17];
	char *dir;              /* <state_dir>/<id> */
	char *journal_dir;      /* <dir>/journal */
	struct fs_inode_table *inodes;  /* internally locked */
	struct fs_handle_table *handles;        /* internally locked */
	struct fs_engine *engine;       /* internally locked */
	struct fs_ctl *ctl;
	struct fuse_session *se;
	struct cache *cache;    /* NULL = no cache configured */
	struct fs_meta *meta;   /* NULL = no metadata cache (meta_ttl 0) */
	struct fs_prom *prom;   /* Prometheus textfile writer, or NULL */
	struct fs_checkpointer *checkpointer;   /* journal age bound, or NULL */
	struct fs_closer *closer;       /* closes backend fds, or NULL */
	struct fs_tko *tko;             /* takeover state, or NULL (off) */

	pthread_mutex_t root_lock;      /* a leaf */
	struct stat root_stat;          /* protected by root_lock */
	struct statvfs root_statvfs;    /* protected by root_lock */

	atomic_uint_fast64_t silly_seq;
	atomic_bool readahead_tuned;
	atomic_bool upgrading;          /* lazarusctl upgrade: drain and exit */

	pthread_mutex_t moves_lock;     /* a leaf */
	struct fs_move *moves;          /* protected by moves_lock */
};

const struct fuse_lowlevel_ops *fs_ops(void);
/* Root owner and mode as the engine last reported them, kept in
 * <dir>/root.attr for the next mount (best effort). */
void fs_root_attr_save(struct fs *fs, const struct stat *st);
void fs_root_attr_load(struct fs *fs);
/* Close the cache files of every handle still open (at unmount, before
 * cache_free(): the kernel sends no release for them then). */
void fs_cache_detach_all(struct fs *fs);

/*
 * Renames in flight (fs/moves.c): a rename registers (from, to) while it
 * runs, so that a recovery meanwhile finds a file it may have moved.
 * fs_move_translate() gives the path `rel` has after the rename of one
 * in flight that covers it (0), or -ENOENT.
 */
struct fs_move *fs_move_begin(struct fs *fs, const char *from, const char *to);
void fs_move_end(struct fs *fs, struct fs_move *mv);
int fs_move_translate(struct fs *fs, const char *rel, char *out, size_t len);

/* Backend fds closed off the request path (fs/closer.c): started after
 * the engine supervisor, stopped (after closing everything queued) before
 * it.  Without a closer, fs_closer_push() closes at once. */
int fs_closer_start(struct fs *fs);
void fs_closer_push(struct fs *fs, int fd);
void fs_closer_stop(struct fs *fs);

/* The Prometheus textfile of a mount (fs/prom.c): written at once, then
 * every few seconds to `path` by a thread of its own, removed by
 * fs_prom_free().  fs_prom_write() writes it now. */
int fs_prom_new(struct fs_prom **out, struct fs *fs, const char *path);
int fs_prom_write(struct fs_prom *p);
void fs_prom_free(struct fs_prom *p);

#endif
