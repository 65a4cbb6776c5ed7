/*
 * fs/handle.h - open handles (fs/handle_table.c) and their lifecycle
 * across engine restarts (fs/handle.c), private to fs/.
 *
 * A handle is one open file or directory of the application.  Its FUSE fh
 * is a stable index into the handle table, never a pointer.  A file handle
 * keeps one backend fd, valid for one engine generation; when the engine
 * was restarted, the handle is reopened by its inode's current path with
 * the original flags (minus O_CREAT, O_EXCL, O_TRUNC, O_APPEND) and its
 * write journal is replayed before anything else uses the new fd.
 *
 * Lock order in fs/ (outer to inner):
 *
 *   fs_handle.cflock -> fs_handle.lock -> engine lock ->
 *   fs_handle.jlock, handle table lock, inode table lock, root_lock,
 *   log lock (leaves)
 *
 * cache/ takes its own locks under any of these (cache/cache.h).
 *
 * Waiting for the engine: a thread waits in fs_engine_enter() holding no
 * global lock (engine lock, table locks, cache locks, log lock), but it may
 * hold locks of the handle it works for:
 *   - cflock for reading: a cache miss in op_read fetches blocks through
 *     fs_handle_pread(), which may wait for a restart;
 *   - a directory handle's lock: readdir refreshes the snapshot and stats
 *     entries under it, so that concurrent readdirs of one handle see one
 *     consistent snapshot.
 * That is safe because the supervisor's recovery (fs_recover_handles) takes
 * only the locks of file handles (h->lock for writing, jlock), never
 * cflock, and skips directory handles; the other takers of these locks
 * (release, a rename detaching moved handles, another readdir) are
 * requests, which may wait for a recovery but are never waited for by one.
 * h->lock is never held while waiting: fs_handle_enter() enters the engine
 * first and takes h->lock afterwards.
 */
#ifndef LAZARUSFS_HANDLE_H
#define LAZARUSFS_HANDLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "fs/engine.h"
#include "fs/fs.h"

struct fs;

struct fs_dirent {
	char *name;
	ino_t ino;
	unsigned char type;
};

struct fs_handle {
	pthread_rwlock_t lock;  /* readers use fd; a writer replaces it */
	uint64_t ino;           /* immutable once added to the table */
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
	unsigned refs;          /* protected by the handle table lock */
	/*
	 * Block cache (fs/cache_link.c): users of cf hold cflock for reading;
	 * release, and a rename or unlink that changes the file's path (its
	 * cache key), detach cf holding it for writing.
	 */
	pthread_rwlock_t cflock;
	struct cache_file *cf;  /* protected by cflock: NULL = no cache */
	char *ckey;             /* protected by cflock: cf's key (path) */
	atomic_bool wrote;      /* written through: record attrs at release */
};

/* ------------------------------------------------------------- table */

/*
 * Handles are reference counted: the table holds one reference until
 * fs_handle_remove(), and fs_handle_get() returns a referenced pointer that
 * stays valid until fs_handle_put(), even if the handle is released
 * meanwhile.  The table lock is a leaf.
 */
struct fs_handle_table;

int fs_handle_table_new(struct fs_handle_table **out);
void fs_handle_table_free(struct fs_handle_table *t);
/* A new handle with fd -1, generation 0, every lock initialised; file
 * handles get an empty journal spilling to `spill_dir`.  NULL: no memory. */
struct fs_handle *fs_handle_alloc(uint64_t ino, int flags, bool dir,
				  const char *spill_dir, size_t journal_mem);
/* Insert; returns the index or -ENOMEM.  The table owns one reference. */
int64_t fs_handle_add(struct fs_handle_table *t, struct fs_handle *h);
struct fs_handle *fs_handle_get(struct fs_handle_table *t, uint64_t idx);
void fs_handle_put(struct fs_handle_table *t, struct fs_handle *h);
/* Remove from the table (drops the table's reference). */
void fs_handle_remove(struct fs_handle_table *t, uint64_t idx);
/* Referenced snapshot of all handles (of one inode, unless ino is 0); free
 * the array with fs_handle_put_all(). */
size_t fs_handle_all(struct fs_handle_table *t, uint64_t ino,
		     struct fs_handle ***out);
void fs_handle_put_all(struct fs_handle_table *t, struct fs_handle **v,
		       size_t n);
size_t fs_handle_count(struct fs_handle_table *t);

/* --------------------------------------------------------- lifecycle */

/*
 * Enter the backend for `h`: fs_call_enter(c), then h->lock for reading
 * with an fd of the entered generation (reopening and replaying first when
 * the fd is older).  On 0 the caller uses h->fd, unlocks h->lock, then
 * calls fs_call_again(c, ret).  On error h->lock is not held (but c may
 * still be entered: always finish with fs_call_again()).
 */
int fs_handle_enter(struct fs *fs, struct fs_call *c, struct fs_handle *h);

/*
 * Run fn on h->fd inside fs_handle_enter() (c is the entered call, for
 * path work relative to c->b->rootfd), again after every engine loss,
 * until it returns something that is not a loss.  fn returns 0 or -errno
 * and must not wait for anything but its backend calls.
 */
typedef int (*fs_handle_fn)(struct fs *fs, struct fs_call *c,
			    struct fs_handle *h, void *arg);
int fs_handle_call(struct fs *fs, struct fs_handle *h, fs_handle_fn fn,
		   void *arg);

/* Read from the engine through h (short only at EOF): bytes or -errno. */
ssize_t fs_handle_pread(struct fs *fs, struct fs_handle *h, char *buf,
			size_t size, off_t off);
/* Write through h and journal it, checkpointing (fsync) when the journal
 * passed journal_max.  0 or -errno; nothing is partly acknowledged. */
int fs_handle_write(struct fs *fs, struct fs_handle *h, const char *buf,
		    size_t size, off_t off);

enum fs_sync_kind { FS_SYNC_FLUSH, FS_SYNC_FSYNC, FS_SYNC_FDATASYNC };
/* Flush or fsync the backend; on success the journal up to the start of
 * the call is retired. */
int fs_handle_sync(struct fs *fs, struct fs_handle *h, enum fs_sync_kind kind);
/* Does h's journal hold unretired writes? */
bool fs_handle_dirty(struct fs_handle *h);
/* Record a truncate to `size` done by path in the journals of every handle
 * open on `ino` that journals writes. */
void fs_handle_journal_truncate(struct fs *fs, uint64_t ino, off_t size);

/* fs_recover_fn for the supervisor: reopen every file handle against `b`.
 * `arg` is the struct fs. */
int fs_recover_handles(void *arg, struct fs_backend *b);

#endif
