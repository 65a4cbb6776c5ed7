/*
 * fs/fs_int.h - private to fs/: the engine supervisor, the handle table and
 * the mount object shared by ops.c, engine.c, handle.c and ctl.c.
 *
 * Lock order (outer to inner):
 *   fs_handle.cflock  ->  fs_handle.lock  ->  fs_engine.lock  ->
 *   fs_handle.jlock, fs_handle_table.lock, fs_inode_table.lock, log lock
 *   (leaves; cache/ takes its own internal locks under any of these, see
 *   cache/cache.h)
 * cflock is outermost because a cache read that misses fetches from the
 * engine through handle_enter() while it holds cflock for reading.
 * No thread does backend I/O or waits for an engine restart while holding
 * fs_engine.lock or a table lock; waiting in fs_engine_enter() happens on a
 * condition variable with no other lock held.
 */
#ifndef LAZARUSFS_FS_INT_H
#define LAZARUSFS_FS_INT_H

#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fs/fs.h"

/* ------------------------------------------------------------- engine */

enum fs_engine_state {
	FS_ENGINE_STOPPED,
	FS_ENGINE_STARTING,
	FS_ENGINE_RUNNING,
	FS_ENGINE_RECOVERING,
	FS_ENGINE_FAILED,
};

/*
 * One mounted generation of the engine.  rootfd is an O_PATH fd on the
 * backend mount's root: every backend call resolves paths relative to it, so
 * a call that races with a restart hits the dead mount (ENOTCONN) and never
 * the empty directory underneath.  Reference counted under fs_engine.lock;
 * the fd is closed when the generation is retired and the last user left.
 */
struct fs_backend {
	int rootfd;
	uint64_t gen;
	unsigned refs;          /* protected by fs_engine.lock */
	bool retired;           /* protected by fs_engine.lock */
};

struct fs_engine;

/*
 * Called by the supervisor after a restart, before requests resume, to
 * reopen every open handle against `b` and replay journals.  Returns the
 * number of handles reopened, or -errno; an engine-loss errno makes the
 * supervisor start over.
 */
typedef int (*fs_recover_fn)(void *arg, struct fs_backend *b);

int fs_engine_new(struct fs_engine **out, const struct fs_opts *o,
		  const char *id, const char *dir, fs_recover_fn recover,
		  void *arg);
/* Start the supervisor and watchdog threads (after daemonizing). */
int fs_engine_start_threads(struct fs_engine *e);
/* Stop the engine cleanly (SIGTERM, unmount, SIGKILL after a grace period)
 * and join the threads.  Waiters in fs_engine_enter() get -EIO. */
void fs_engine_shutdown(struct fs_engine *e);
void fs_engine_free(struct fs_engine *e);

/*
 * Enter the backend: wait until the engine runs (starting it on first use)
 * and take a reference on the current generation.  Returns 0 or -EIO when
 * the start failed, recovery_timeout passed or we are shutting down.  The
 * calling thread is watched for hangs until fs_engine_leave().
 */
int fs_engine_enter(struct fs_engine *e, struct fs_backend **b);
void fs_engine_leave(struct fs_engine *e, struct fs_backend *b);
/*
 * A backend call under `b` failed with errno `err`.  Returns true when that
 * means the engine was lost (ENOTCONN, ECONNABORTED, a dead engine, or a
 * generation that changed meanwhile); recovery is then under way and the
 * caller should leave and retry.
 */
bool fs_engine_lost(struct fs_engine *e, struct fs_backend *b, int err);
bool fs_engine_running(struct fs_engine *e);
/* True while the engine is lost or failed to start: restarting, backing
 * off, or given up on (not when stopped for idleness). */
bool fs_engine_offline(struct fs_engine *e);
/* Raise the readahead of the FUSE mount at path to 1 MiB (best effort). */
void fs_tune_readahead(const char *path);
/* Watch the calling thread for hangs (a backend call outside enter/leave,
 * such as closing a backend fd) until fs_engine_watch_end(). */
void fs_engine_watch_begin(struct fs_engine *e);
void fs_engine_watch_end(struct fs_engine *e);
void fs_engine_count_handle(struct fs_engine *e, int delta);
/* "key: value" lines for lazarusctl status (malloc'd). */
char *fs_engine_status(struct fs_engine *e);

/* -------------------------------------------------------------- handles */

struct fs_dirent {
	char *name;
	ino_t ino;
	unsigned char type;
};

struct fs_handle {
	pthread_rwlock_t lock;  /* readers use fd; a writer replaces it */
	uint64_t ino;           /* immutable */
	int flags;              /* immutable: open flags as the app gave them */
	bool dir;               /* immutable */
	int fd;                 /* protected by lock */
	uint64_t gen;           /* protected by lock: generation fd belongs to */
	int broken;             /* protected by lock: -EIO once reopen failed */
	struct fs_dirent *ents; /* protected by lock: directory snapshot */
	size_t nents;           /* protected by lock */
	bool listed;            /* protected by lock: snapshot served once */
	pthread_mutex_t jlock;
	struct fs_journal *journal;     /* protected by jlock */
	unsigned refs;          /* protected by fs_handle_table.lock */
	/*
	 * Block cache (ops.c): users of cf hold cflock for reading; release,
	 * and a rename or unlink that changes the file's path (its cache key),
	 * detach cf holding it for writing.  cflock is initialised by
	 * open_common() for regular files only (fs_handle_alloc zeroes it).
	 */
	pthread_rwlock_t cflock;
	struct cache_file *cf;  /* protected by cflock: NULL = no cache */
	char *ckey;             /* protected by cflock: cf's key (path) */
	atomic_bool wrote;      /* written through: record attrs at release */
};

/*
 * Handles are addressed by a stable index (the FUSE fh), never by pointer.
 * fs_handle_get() returns a referenced pointer that stays valid until
 * fs_handle_put(), even if the handle is released meanwhile.
 */
struct fs_handle_table;

int fs_handle_table_new(struct fs_handle_table **out);
void fs_handle_table_free(struct fs_handle_table *t);
struct fs_handle *fs_handle_alloc(uint64_t ino, int flags, bool dir,
				  const char *spill_dir, size_t journal_mem);
/* Insert; returns the index or -ENOMEM.  The table owns one reference. */
int64_t fs_handle_add(struct fs_handle_table *t, struct fs_handle *h);
struct fs_handle *fs_handle_get(struct fs_handle_table *t, uint64_t idx);
void fs_handle_put(struct fs_handle_table *t, struct fs_handle *h);
/* Remove from the table (drops the table's reference). */
void fs_handle_remove(struct fs_handle_table *t, uint64_t idx);
/* Referenced snapshot of all handles (optionally of one inode); free the
 * array with fs_handle_put_all(). */
size_t fs_handle_all(struct fs_handle_table *t, uint64_t ino,
		     struct fs_handle ***out);
void fs_handle_put_all(struct fs_handle_table *t, struct fs_handle **v,
		       size_t n);
size_t fs_handle_count(struct fs_handle_table *t);

/* ---------------------------------------------------------------- ctl */

typedef int (*fs_ctl_fn)(void *arg, const char *cmd, char **reply);
struct fs_ctl;

/* Listen on `path` (mode 0600), replacing any socket file there. */
int fs_ctl_new(struct fs_ctl **out, const char *path, fs_ctl_fn fn, void *arg);
void fs_ctl_free(struct fs_ctl *c);

/* ---------------------------------------------------------------- mount */

struct fs {
	struct fs_opts *o;
	char id[17];
	char *dir;              /* <state_dir>/<id> */
	char *journal_dir;      /* <dir>/journal */
	struct fs_inode_table *inodes;
	struct fs_handle_table *handles;
	struct fs_engine *engine;
	struct fs_ctl *ctl;
	struct fuse_session *se;
	pthread_mutex_t root_lock;
	struct stat root_stat;          /* protected by root_lock */
	struct statvfs root_statvfs;    /* protected by root_lock */
	bool have_statvfs;              /* protected by root_lock */
	atomic_uint_fast64_t silly_seq;
	atomic_bool readahead_tuned;
	struct cache *cache;    /* NULL = no cache configured; immutable while
				 * requests run */
	/* Prometheus textfile writer (mount.c) */
	pthread_t prom_thread;
	bool prom_started;
	pthread_mutex_t prom_lock;
	pthread_cond_t prom_cv;
	bool prom_stop;         /* protected by prom_lock */
	char *prom_path;        /* <state_dir>/lazarusfs_cache_<id>.prom */
};

const struct fuse_lowlevel_ops *fs_ops(void);
void fs_root_attr_save(struct fs *fs, const struct stat *st);
void fs_root_attr_load(struct fs *fs);
int fs_recover_handles(void *arg, struct fs_backend *b);
/* Close the cache files of every handle still open (at unmount, before
 * cache_free(): the kernel sends no release for them then). */
void fs_cache_detach_all(struct fs *fs);

#endif
