/*
 * fs/fs.h - the lazarusfs proxy core: public interface of the fs/ module.
 *
 * The module builds libfs.la, which src/lazarusfs.c, src/lazarusctl.c and
 * tests/unit link.  Everything here returns 0 (or a count) on success and a
 * negative errno on failure unless a comment says otherwise.  Nothing here
 * prints to stdout; errors meant for users go through fs_log() or an err
 * buffer the caller supplies.
 *
 * Sub-parts and who owns what:
 *   options   struct fs_opts: filled by fs_opts_parse(), released by
 *             fs_opts_release(); strings inside are owned by the struct.
 *   profiles  fs_profile_argv(): engine profile + template -> argv (caller
 *             frees with fs_strv_free()).
 *   inodes    struct fs_inode_table: FUSE node ids -> (parent, name); the
 *             backend identity of every inode is its path, re-resolved after
 *             an engine restart.  Internally locked.
 *   journal   struct fs_journal: per-handle log of writes since the last
 *             successful flush/fsync.  Not locked; the owner serialises.
 *   mount     struct fs: one mounted proxy (fs_new/fs_run/fs_free).
 *   control   fs_ctl_*: the root-only unix socket behind lazarusctl.
 */
#ifndef LAZARUSFS_FS_H
#define LAZARUSFS_FS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "cache/cache.h"

/* ------------------------------------------------------------------ log */

enum fs_log_level { FS_LOG_ERR, FS_LOG_WARN, FS_LOG_INFO, FS_LOG_DEBUG };

/*
 * Log sinks: stderr for levels up to `stderr_max` (-1: none), syslog when
 * `to_syslog`, and the file `path` when not NULL (opened O_APPEND).  Debug
 * messages only with `debug`.  Safe to call from any thread.
 */
int fs_log_init(int stderr_max, bool to_syslog, const char *path, bool debug);
void fs_log_release(void);
void fs_log(enum fs_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Copy `src` to `dst` with the password of any URL userinfo
 * ("scheme://user:secret@host") replaced by "****".  Always terminates dst.
 */
void fs_mask_secret(const char *src, char *dst, size_t dstlen);

/* -------------------------------------------------------------- options */

enum fs_engine_profile {
	FS_PROFILE_COMMAND,
	FS_PROFILE_JUICEFS,
	FS_PROFILE_ALLUXIO,
	FS_PROFILE_SSHFS,
	FS_PROFILE_BINDFS,
	FS_PROFILE_S3FS,
};

struct fs_opts {
	char *source;           /* SOURCE as given (may hold a secret) */
	char *mountpoint;       /* canonical absolute path */
	enum fs_engine_profile profile;
	char *engine_cmd;       /* template for FS_PROFILE_COMMAND */
	char *engine_env;       /* KEY=VALUE file for the engine, or NULL */
	char *engine_opts;      /* extra engine options appended by profiles */
	char *state_dir;
	double start_timeout;   /* seconds */
	double idle_timeout;    /* seconds, 0 = never */
	double hang_timeout;    /* seconds */
	double recovery_timeout;/* seconds, 0 = wait forever */
	double attr_timeout;
	double entry_timeout;
	double negative_timeout;
	size_t journal_mem;     /* bytes of journal kept in memory per handle */
	size_t journal_max;     /* bytes per handle before a checkpoint fsync */
	struct cache_config cache; /* tiered block cache (cache/cache.h); no
				    * tier configured = no cache */
	bool foreground;
	bool debug;
};

/*
 * Parse lazarusfs's own options out of `argv` (the rest is left for libfuse
 * in fuse_argc and fuse_argv, which the caller frees with fs_strv_free()).
 * -o keys that are not lazarusfs's own go to cache_config_set() first
 * (tierN=..., block_size=, prefetch=, config=FILE, ...); only keys it does
 * not know either reach libfuse.  A config=FILE may also hold lazarusfs's
 * own options (engine=, hang_timeout=, ...).
 * On error writes a one-line message to err and returns -EINVAL.
 * Returns 1 when -h/--help or -V/--version was handled (nothing to mount).
 */
int fs_opts_parse(struct fs_opts *o, int argc, char **argv,
		  int *fuse_argc, char ***fuse_argv, char *err, size_t errlen);
void fs_opts_init(struct fs_opts *o);
void fs_opts_release(struct fs_opts *o);
const char *fs_profile_name(enum fs_engine_profile p);
int fs_profile_parse(const char *name, enum fs_engine_profile *out);
void fs_usage(const char *prog);

/* ------------------------------------------------------------- profiles */

/*
 * Split a command template into words the way a POSIX shell would split a
 * simple command (single quotes, double quotes, backslash), then replace
 * {source}, {mnt} and {id} inside every word.  No shell runs, so no
 * globbing, no variables and no command substitution.  *out is a NULL
 * terminated vector owned by the caller.  -EINVAL on unbalanced quotes,
 * an unknown {placeholder} or an empty command.
 */
int fs_template_expand(const char *tmpl, const char *source, const char *mnt,
		       const char *id, char ***out, char *err, size_t errlen);

/*
 * The engine's foreground command line for a profile.  For juicefs the
 * password inside a meta URL is moved out of argv into *env_extra as
 * META_PASSWORD=..., so it never shows up in `ps`.  *env_extra may be NULL
 * on return.
 */
int fs_profile_argv(const struct fs_opts *o, const char *mnt, const char *id,
		    char ***argv, char ***env_extra, char *err, size_t errlen);

/*
 * Read a KEY=VALUE file (blank lines and # comments ignored, optional
 * "export ", optional quotes around the value).  Errors name the line,
 * never the value.
 */
int fs_envfile_read(const char *path, char ***out, char *err, size_t errlen);

void fs_strv_free(char **v);
size_t fs_strv_len(char *const *v);

/* --------------------------------------------------------- inode table */

/*
 * FUSE node ids are ours, allocated from 2 upwards (1 is the root) and never
 * reused during a mount.  An inode is identified by (parent, name); its
 * backend identity is the path from the root, so it survives an engine
 * restart that changes the backend's inode numbers.
 *
 * Counts: nlookup is the kernel's lookup count (passthrough_hp semantics),
 * nopen the number of open handles, nchild the number of inodes naming it
 * as parent.  An inode is freed when all three reach zero.  A count going
 * negative is a bug and aborts.
 *
 * Locking: one rwlock inside the table; every function takes it itself.
 */
#define FS_ROOT_INO 1

struct fs_inode_table;

int fs_inode_table_new(struct fs_inode_table **out);
void fs_inode_table_free(struct fs_inode_table *t);

/*
 * Find or create the inode for (parent, name) and add `nlookup` to its
 * lookup count.  When an existing inode has another file type (the backend
 * file was replaced), a fresh inode takes the name and the old one becomes
 * unreachable.  Returns the node id, or 0 with errno-style *err.
 */
uint64_t fs_inode_lookup(struct fs_inode_table *t, uint64_t parent,
			 const char *name, mode_t type, uint64_t nlookup,
			 int *err);
/* Node id for (parent, name) if known, else 0.  No count changes. */
uint64_t fs_inode_find(struct fs_inode_table *t, uint64_t parent,
		       const char *name);
/* Drop n lookups (FUSE forget); may free the inode. */
void fs_inode_forget(struct fs_inode_table *t, uint64_t ino, uint64_t n);
/* Open-count bookkeeping for handles.  fs_inode_open fails with -ESTALE
 * for an unknown inode. */
int fs_inode_open(struct fs_inode_table *t, uint64_t ino);
/* Returns the remaining open count, or -ESTALE. */
int fs_inode_close(struct fs_inode_table *t, uint64_t ino);
int fs_inode_nopen(struct fs_inode_table *t, uint64_t ino);

/*
 * Write the path of `ino` relative to the backend root into buf ("." for
 * the root, "a/b" otherwise; with `name`, the path of that child).
 * -ESTALE for an unknown or unlinked inode, -ENAMETOOLONG if it won't fit.
 */
int fs_inode_path(struct fs_inode_table *t, uint64_t ino, const char *name,
		  char *buf, size_t len);

/* The inode named (parent, name) now lives at (newparent, newname); an
 * inode already at the target is unlinked from the table. */
void fs_inode_rename(struct fs_inode_table *t, uint64_t parent,
		     const char *name, uint64_t newparent, const char *newname);
/* Swap two names (RENAME_EXCHANGE). */
void fs_inode_exchange(struct fs_inode_table *t, uint64_t parent,
		       const char *name, uint64_t newparent,
		       const char *newname);
/* The name is gone from the backend; the inode (if any) keeps its counts
 * but has no path any more. */
void fs_inode_unlink(struct fs_inode_table *t, uint64_t parent,
		     const char *name);
/*
 * Silly renames without races against release: fs_inode_make_silly() moves
 * (parent, name) to (newparent, newname), marks it silly and returns its
 * open count, all under one lock; 0 means the last release slipped in and
 * the caller must remove the file itself.  fs_inode_close_silly() drops an
 * open count and returns 1 with the silly path in buf when that was the
 * last open of a silly file (which the caller then removes), else 0, or
 * -ESTALE.
 */
int fs_inode_make_silly(struct fs_inode_table *t, uint64_t parent,
			const char *name, uint64_t newparent,
			const char *newname);
int fs_inode_close_silly(struct fs_inode_table *t, uint64_t ino, char *buf,
			 size_t len);
/* Forget the name of `ino` (its backend file is gone). */
void fs_inode_drop_name(struct fs_inode_table *t, uint64_t ino);
/* Mark/query the silly-renamed state (unlinked while open, see ops.c). */
void fs_inode_set_silly(struct fs_inode_table *t, uint64_t ino, bool silly);
bool fs_inode_is_silly(struct fs_inode_table *t, uint64_t ino);
size_t fs_inode_count(struct fs_inode_table *t);
/*
 * Last attributes seen for `ino` (kept only when set, i.e. with the block
 * cache on): served while the engine is down.  attr_get returns 0, or
 * -ENOENT when none were recorded or the inode has no name any more.
 */
void fs_inode_attr_set(struct fs_inode_table *t, uint64_t ino, const struct stat *st);
int fs_inode_attr_get(struct fs_inode_table *t, uint64_t ino, struct stat *st);

/* Names used for silly renames; hidden from readdir and lookup. */
#define FS_SILLY_PREFIX ".lazarusfs-silly-"
bool fs_is_silly_name(const char *name);

/* -------------------------------------------------------------- journal */

/*
 * Write journal of one handle: every write acknowledged to the application
 * since the last successful flush/fsync, in order, so that it can be
 * replayed after the engine lost it.  Data lives in memory up to
 * `mem_limit` bytes and spills to an unlinked file in `spill_dir` beyond.
 * Entries carry a sequence number so that a flush drops exactly the writes
 * it covered even when more arrive meanwhile.
 *
 * Not thread safe: the owner (a handle) serialises calls.
 */
struct fs_journal;

struct fs_journal *fs_journal_new(const char *spill_dir, size_t mem_limit);
void fs_journal_free(struct fs_journal *j);
/* Record a write or a truncate.  -errno when the spill file fails. */
int fs_journal_write(struct fs_journal *j, const void *buf, size_t len,
		     off_t off);
int fs_journal_truncate(struct fs_journal *j, off_t size);
/* Sequence number of the newest entry (0 when empty and never used). */
uint64_t fs_journal_seq(const struct fs_journal *j);
/* Drop every entry with seq <= upto. */
void fs_journal_drop(struct fs_journal *j, uint64_t upto);
size_t fs_journal_bytes(const struct fs_journal *j);
size_t fs_journal_entries(const struct fs_journal *j);
/*
 * Re-apply all entries in order to `fd` (pwrite / ftruncate).  Stops at the
 * first failure and returns its -errno.
 */
int fs_journal_replay(struct fs_journal *j, int fd);

/* --------------------------------------------------------------- mount */

struct fs;

/* Mount id: 16 hex digits of XXH3-64 over the canonical mount path. */
void fs_mount_id(const char *mountpoint, char id[17]);

/*
 * Create the proxy for parsed options: creates <state_dir>/<id>/, opens
 * the log, checks the engine profile.  Does not mount.
 */
int fs_new(struct fs **out, struct fs_opts *o, char *err, size_t errlen);
/*
 * Mount at o->mountpoint with the remaining libfuse args, daemonize unless
 * foreground, serve until unmounted or signalled, then stop the engine
 * cleanly.  Returns 0 or -errno.  fs_free() afterwards.
 */
int fs_run(struct fs *fs, int fuse_argc, char **fuse_argv);
void fs_free(struct fs *fs);

/* ------------------------------------------------------------ control */

/* "<state_dir>/<id>/ctl.sock" for a mount point (canonicalised here). */
int fs_ctl_path(const char *state_dir, const char *mountpoint, char *buf,
		size_t len);
/*
 * Client side: send one command line, read the whole answer into *out
 * (malloc'd, NUL terminated).  Times out after `timeout_ms`.
 */
int fs_ctl_request(const char *sock_path, const char *cmd, char **out,
		   int timeout_ms);

#endif
