/*
 * fs/handle.h - open handles (fs/handle_table.c) and their lifecycle
 * across engine restarts (fs/handle.c), private to fs/.
 *
 * A handle is one open file or directory of the application.  Its FUSE fh
 * is a stable index into the handle table, never a pointer.  A file handle
 * keeps one backend fd, valid for one engine generation; when the engine
 * was restarted, the journal of its file is replayed and made durable
 * first, then the handle is reopened by its inode's current path with the
 * original flags (minus O_CREAT, O_EXCL, O_TRUNC, O_APPEND).
 *
 * Lock order in fs/ (outer to inner):
 *
 *   fs_handle.cflock -> fs_handle.lock -> fs_file.lock -> engine lock ->
 *   handle table lock, inode table lock, root_lock, log lock (leaves)
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
 * only the locks of file handles (h->lock for writing) and files
 * (fs_file.lock), never cflock, and skips directory handles; the other
 * takers of these locks (release, a rename detaching moved handles,
 * another readdir) are requests, which may wait for a recovery but are
 * never waited for by one.  h->lock and fs_file.lock are never held while
 * waiting: fs_handle_enter() enters the engine first and takes h->lock
 * afterwards, and fs_file.lock is taken inside it.  fs_file.lock may be
 * held across a backend call (that is its point: the engine must apply a
 * file's changes in the order they are journaled); a hung call is ended by
 * the watchdog, whose kill makes it fail.
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
#include "fs/meta.h"

struct fs;

/*
 * One backend file with open file handles (one node: every name of a hard
 * linked file).  Its journal holds the changes acknowledged through any of
 * its handles, or by path, that are not yet durable (fs/journal.c).  The
 * file lock is held across each journaled change, from the backend call to
 * the journal record, so that the journal's order is the order the engine
 * applied them in; and across a replay.
 */
struct fs_file {
	uint64_t ino;           /* immutable */
	unsigned refs;          /* protected by the handle table lock */
	struct fs_file *next;   /* protected by the handle table lock */
	pthread_mutex_t lock;
	struct fs_journal *journal;     /* protected by lock; NULL: not journaled */
	uint64_t replayed_gen;  /* protected by lock: generation the journal
				 * was last replayed onto */
	bool lost;              /* protected by lock: a replay failed for good */
	/* the file as it was opened, to create it again for a replay when
	 * the engine lost even its creation (s3fs uploads a new file only
	 * at its first flush) */
	bool have_attrs;        /* protected by lock */
	mode_t mode;            /* protected by lock */
	uid_t uid;              /* protected by lock */
	gid_t gid;              /* protected by lock */
};

struct fs_handle {
	pthread_rwlock_t lock;  /* readers use fd; a writer replaces it */
	uint64_t ino;           /* immutable once added to the table */
	uint64_t tag;           /* immutable: unique, names our journal entries */
	int flags;              /* immutable: open flags as the app gave them */
	bool dir;               /* immutable */
	struct fs_file *file;   /* immutable once added (file handles) */
	int fd;                 /* protected by lock */
	uint64_t gen;           /* protected by lock: generation fd belongs to */
	int broken;             /* protected by lock: -EIO once reopen failed */
	struct fs_dirent *ents; /* protected by lock: directory snapshot */
	size_t nents;           /* protected by lock */
	bool listed;            /* protected by lock: snapshot served once */
	atomic_bool unflushed;  /* changed through this handle since its last
				 * successful flush or fsync */
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

/* File handles get a struct fs_file with a journal spilling to
 * `spill_dir`, or none when `journal` is false. */
int fs_handle_table_new(struct fs_handle_table **out, const char *spill_dir,
			bool journal);
void fs_handle_table_free(struct fs_handle_table *t);
/* A new handle with fd -1, generation 0, every lock initialised.  NULL:
 * no memory. */
struct fs_handle *fs_handle_alloc(uint64_t ino, int flags, bool dir);
/* Insert; returns the index or -ENOMEM.  The table owns one reference.
 * A file handle gets the struct fs_file of h->ino (made on first use). */
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
/*
 * Takeover (fs/takeover.h): log every insert and removal to `l` from now
 * on; with `restore`, first rebuild the handles a dead worker had (same fh
 * numbers, flags and tags; no backend fd: they reopen on first use, after
 * a replay of their file's journal, which is loaded from its named file).
 * 0 or -errno.
 */
struct fs_statelog;
int fs_handle_table_log(struct fs_handle_table *t, struct fs_statelog *l, bool restore);
/* An upgrade: stop logging (freeing the table is not the handles'
 * release) and leave every journal file for the successor. */
void fs_handle_table_hand_over(struct fs_handle_table *t);
/* Data bytes and entries of every file's journal, for metrics. */
void fs_journal_totals(struct fs *fs, size_t *bytes, size_t *entries);
/* Remember the mode and owner of h's file (from the open's fstat). */
void fs_file_set_attrs(struct fs_file *f, const struct stat *st);
/* The file of `ino` if a handle has it open (referenced), else NULL. */
struct fs_file *fs_file_find(struct fs_handle_table *t, uint64_t ino);
void fs_file_put(struct fs_handle_table *t, struct fs_file *f);
/* Referenced snapshot of every file; free with fs_file_put_all(). */
size_t fs_file_all(struct fs_handle_table *t, struct fs_file ***out);
void fs_file_put_all(struct fs_handle_table *t, struct fs_file **v, size_t n);

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
/*
 * Write through h and journal it.  When the file's unretired journal
 * passed journal_max, twice the file's size (plus 1 MiB) or journal_age,
 * an fsync through h makes it durable first (a checkpoint).  0 or -errno;
 * nothing is partly acknowledged.
 */
int fs_handle_write(struct fs *fs, struct fs_handle *h, const char *buf,
		    size_t size, off_t off);
/* ftruncate through h and journal it (for setattr; caller is inside
 * fs_handle_call, so h->fd is current). */
int fs_handle_truncate_fd(struct fs *fs, struct fs_handle *h, off_t size);
/* Truncate `rel` by path (c entered) and journal it in the file of
 * `ino`, if a handle has it open. */
int fs_handle_truncate_path(struct fs *fs, const struct fs_call *c,
			    uint64_t ino, const char *rel, off_t size);
/* fallocate through h and journal it. */
int fs_handle_fallocate(struct fs *fs, struct fs_handle *h, int mode,
			off_t off, off_t len);

enum fs_sync_kind { FS_SYNC_FLUSH, FS_SYNC_FSYNC, FS_SYNC_FDATASYNC };
/*
 * Flush or fsync the backend.  On success an fsync retires every journal
 * entry of the file acknowledged before it began, a flush those that came
 * through h (the engines flush per descriptor; entries of other
 * descriptors may still be in flight inside them).  A flush of a handle
 * that never wrote anything does nothing.
 */
int fs_handle_sync(struct fs *fs, struct fs_handle *h, enum fs_sync_kind kind);
/* Has h changes a flush or fsync has not covered yet?  For `release`,
 * changes made to its file by path count too. */
bool fs_handle_dirty(struct fs *fs, struct fs_handle *h, bool release);

/*
 * The age bound of the journals: a thread that fsyncs every file whose
 * oldest unretired change is older than journal_age, through one of its
 * writable handles.  Started after the engine supervisor, stopped before
 * it.
 */
int fs_checkpointer_start(struct fs *fs);
void fs_checkpointer_stop(struct fs *fs);

/*
 * The name the handles of `ino` were opened through is about to go, while
 * the file keeps another: reopen them through `rel` (that other name), so
 * that no backend fd holds a name the engine removes (a libfuse high-level
 * engine such as bindfs would keep such a file linked as .fuse_hidden*
 * until it is closed).  c is entered.  Best effort: a handle that cannot be
 * reopened keeps its fd.
 */
void fs_handle_rebind(struct fs *fs, const struct fs_call *c, uint64_t ino,
		      const char *rel);

/* fs_recover_fn for the supervisor: replay every file's journal onto `b`,
 * make it durable there (fsync), then reopen every file handle.  `arg` is
 * the struct fs. */
int fs_recover_handles(void *arg, struct fs_backend *b);

#endif
