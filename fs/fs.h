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
 *   journal   struct fs_journal: per-file log of the changes acknowledged
 *             since they were last made durable.  Not locked; the owner
 *             (struct fs_file, fs/handle.h) serialises.
 *   mount     struct fs: one mounted proxy (fs_new/fs_run/fs_free).
 *   control   fs_ctl_*: the root-only unix socket behind lazarusctl.
 *   mounts    fs_mountinfo_*: the one parser of /proc/self/mountinfo.
 *
 * Libraries: libfsclient.la holds what lazarusctl needs (log, mount ids,
 * the control client, mountinfo); libfs.la adds the daemon and includes
 * libfsclient.la.  The private headers of the daemon are fs/fs_int.h,
 * fs/engine.h, fs/handle.h and fs/ops_int.h.
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

enum fs_journal_mode { FS_JOURNAL_AUTO, FS_JOURNAL_ON, FS_JOURNAL_OFF };

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
	enum fs_journal_mode journal;   /* see fs_opts_journals() */
	size_t journal_mem;     /* obsolete, parsed and ignored */
	size_t journal_max;     /* unretired bytes per file before an fsync */
	double journal_age;     /* seconds an unretired change may wait */
	double meta_ttl;        /* metadata cache: seconds, INFINITY, 0 = off
				 * (-1 until fs_opts_resolve_meta) */
	size_t meta_max;        /* bytes of metadata cache */
	bool immutable;         /* the dataset changes only through us */
	bool readonly;          /* mounted ro */
	unsigned set_timeouts;  /* given: 1 attr, 2 entry, 4 negative */
	struct cache_config cache; /* tiered block cache (cache/cache.h); no
				    * tier configured = no cache */
	bool foreground;
	bool no_takeover;               /* takeover=off */
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
/*
 * Are acknowledged changes journaled?  journal=auto journals for every
 * profile but bindfs, which writes through to a local file system before
 * it answers and so loses nothing acknowledged when it dies.
 */
bool fs_opts_journals(const struct fs_opts *o);
/* Settle meta_ttl and the kernel cache timeouts that depend on it (done
 * by fs_opts_parse). */
void fs_opts_resolve_meta(struct fs_opts *o);
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
 * reused during a mount.  An inode is identified by its names (parent,
 * name), one for most files, all the names of a hard-linked one; its
 * backend identity is the path from the root (through its first name), so
 * it survives an engine restart that changes the backend's inode numbers.
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
/*
 * The same for a name whose backend attributes `st` were seen in engine
 * generation `gen`: a new name of a file with links (st_nlink > 1) whose
 * (st_dev, st_ino) a node already has in that generation joins that node,
 * so every name of a hard-linked file is one node for the kernel.
 */
uint64_t fs_inode_lookup_st(struct fs_inode_table *t, uint64_t parent,
			    const char *name, const struct stat *st, uint64_t gen,
			    uint64_t nlookup, int *err);
/* `ino` got the new name (newparent, newname) (our link()); `st` of the
 * new link, seen in `gen`, records the identity.  0 or -ESTALE. */
int fs_inode_link(struct fs_inode_table *t, uint64_t ino, uint64_t newparent,
		  const char *newname, const struct stat *st, uint64_t gen);
/* How many names `ino` has (0 when unlinked or unknown). */
int fs_inode_nnames(struct fs_inode_table *t, uint64_t ino);
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

/* The path of `ino` through a name other than (parent, name), for a file
 * that is about to lose that name: -ENOENT when it has no other. */
int fs_inode_path_except(struct fs_inode_table *t, uint64_t ino,
			 uint64_t parent, const char *name, char *buf, size_t len);
/* Call fn with the path of every name of `ino` (under the table lock:
 * fn must not call back into the table).  Returns how many. */
int fs_inode_each_path(struct fs_inode_table *t, uint64_t ino,
		       void (*fn)(const char *rel, void *arg), void *arg);
/* Is (parent, name) the name fs_inode_path() goes through? */
bool fs_inode_is_first_name(struct fs_inode_table *t, uint64_t ino,
			    uint64_t parent, const char *name);
/* The name (parent, name) is now (newparent, newname); the name already
 * at the target is forgotten (its inode keeps its other names).  Between
 * two names of one inode nothing changes, as in rename(2). */
void fs_inode_rename(struct fs_inode_table *t, uint64_t parent,
		     const char *name, uint64_t newparent, const char *newname);
/* Swap two names (RENAME_EXCHANGE). */
void fs_inode_exchange(struct fs_inode_table *t, uint64_t parent,
		       const char *name, uint64_t newparent,
		       const char *newname);
/* The name is gone from the backend; the inode (if any) keeps its counts
 * and its other names, if it has any. */
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
/* Forget every name of `ino` (its backend file is gone). */
void fs_inode_drop_name(struct fs_inode_table *t, uint64_t ino);
/* Mark/query the silly-renamed state (unlinked while open, see ops.c). */
void fs_inode_set_silly(struct fs_inode_table *t, uint64_t ino, bool silly);
bool fs_inode_is_silly(struct fs_inode_table *t, uint64_t ino);
size_t fs_inode_count(struct fs_inode_table *t);
/*
 * Takeover (fs/inode_log.c, fs/takeover.h): from now on log every change
 * of the table to `l` before returning; with `restore`, first rebuild the
 * table from what `l` holds (a dead worker's table).  `l` NULL: stop
 * logging.  0 or -errno.
 */
struct fs_statelog;
int fs_inode_table_log(struct fs_inode_table *t, struct fs_statelog *l, bool restore);
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
 * Write journal of one file (fs/journal.c): every change lazarusfs
 * acknowledged to the application (write, truncate, fallocate), through
 * any descriptor, in the order the engine applied it, until a flush or
 * fsync made it durable; replayed in that order after the engine lost it.
 * Each entry carries a tag (the handle it came through) and a sequence
 * number, so a sync retires exactly what was acknowledged before it began.
 * Entries are kept in a log file in `spill_dir` that describes the whole
 * journal (fs_journal_load).
 *
 * Not thread safe: the owner (struct fs_file) serialises calls.
 */
struct fs_journal;

/* NULL when out of memory.  Without spill_dir every append is -ENOSPC. */
struct fs_journal *fs_journal_new(const char *spill_dir);
void fs_journal_free(struct fs_journal *j);
/* Record a change; 0 or -errno (the log file failed: nothing recorded). */
int fs_journal_write(struct fs_journal *j, uint64_t tag, const void *buf,
		     size_t len, off_t off);
int fs_journal_truncate(struct fs_journal *j, uint64_t tag, off_t size);
int fs_journal_fallocate(struct fs_journal *j, uint64_t tag, int mode,
			 off_t off, off_t len);
/* Sequence number of the newest entry (0 when never used). */
uint64_t fs_journal_seq(const struct fs_journal *j);
/*
 * Everything up to seq `upto` (of tag `tag` only, unless it is 0) is
 * durable.  Entries are dropped once they and every older entry are
 * durable; until then a replay re-applies them to keep the order.
 */
void fs_journal_retire(struct fs_journal *j, uint64_t upto, uint64_t tag);
/* Live entries (not yet dropped) and the data bytes they hold. */
size_t fs_journal_entries(const struct fs_journal *j);
size_t fs_journal_bytes(const struct fs_journal *j);
/* Does a live entry of `tag` still wait for a sync? */
bool fs_journal_has_tag(const struct fs_journal *j, uint64_t tag);
/* Seconds since the oldest live entry was recorded (0 when empty). */
double fs_journal_age(const struct fs_journal *j);
/* The file's size as the journal knows it: the largest size seen with
 * fs_journal_set_size(), then moved by the changes recorded. */
void fs_journal_set_size(struct fs_journal *j, off_t size);
off_t fs_journal_size(const struct fs_journal *j);
/*
 * Re-apply every live entry in order to `fd` (pwrite, ftruncate,
 * fallocate).  Idempotent: after a failure it can simply run again.
 * Returns 0 or the first failure's -errno.
 */
int fs_journal_replay(struct fs_journal *j, int fd);
/* Rebuild an empty journal from a log file written by another one (which
 * owns it no more); the journal takes over `fd`.  -EINVAL: not a journal. */
int fs_journal_load(struct fs_journal *j, int fd);
/* The log file, or -1 before the first entry. */
int fs_journal_fd(const struct fs_journal *j);
/*
 * Keep the log file under `name` in the spill directory (takeover: a
 * successor finds it there) instead of an unlinked one; it is removed by
 * fs_journal_free().  With `load`, first rebuild the journal from a file
 * of that name a dead worker left (none: an empty journal).  Before the
 * first entry only.  0 or -errno.
 */
int fs_journal_set_name(struct fs_journal *j, const char *name, bool load);
/* fs_journal_free() leaves the named file for a successor (an upgrade). */
void fs_journal_keep_file(struct fs_journal *j);

/* ----------------------------------------------------------------- I/O */

/* pread until `len` bytes or EOF: bytes read, or -errno. */
ssize_t fs_pread_all(int fd, void *buf, size_t len, off_t off);
/* pwrite all of `len` bytes: 0 or -errno (-EIO if the file takes none). */
int fs_pwrite_all(int fd, const void *buf, size_t len, off_t off);
/* Seconds on the monotonic clock. */
double fs_now(void);
/* mkdir -p: the parents get 0755, the last one `mode`.  0 or -errno. */
int fs_mkdir_p(const char *path, mode_t mode);

/* --------------------------------------------------------------- mounts */

/*
 * One line of /proc/self/mountinfo.  The strings point into the line that
 * was parsed, with the kernel's octal escapes (\040 for a space) undone.
 */
struct fs_mountinfo {
	unsigned major, minor;
	char *root;             /* the mounted subtree of its file system */
	char *mnt;              /* mount point */
	char *fstype;           /* "fuse.lazarusfs", "ext4", ... */
	char *source;
};

struct fs_mountinfo_dev {
	unsigned major, minor;
};

/* Parse one line in place: 0, or -EINVAL for a malformed one. */
int fs_mountinfo_parse(char *line, struct fs_mountinfo *mi);
/*
 * Call fn for every well-formed line of the mountinfo file at `path`
 * (NULL: /proc/self/mountinfo) until it returns non-zero; returns that
 * value, 0 at the end, or -errno when the file cannot be read.
 */
int fs_mountinfo_each(const char *path,
		      int (*fn)(const struct fs_mountinfo *mi, void *arg),
		      void *arg);
/*
 * Is something (of type fstype, unless NULL) mounted at `mnt`?  1 or 0, or
 * -errno.  With `dev`, the device of the top such mount.
 */
int fs_mountinfo_find(const char *mnt, const char *fstype,
		      struct fs_mountinfo_dev *dev);

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

struct sockaddr_un;

/*
 * The registry of mounts on this node: every proxy writes
 * <registry>/<mount id> (mountpoint=, state_dir=, socket=, pid= lines)
 * once it is ready and removes it at unmount, so lazarusctl finds any
 * mount whatever its state_dir.  The registry is $LAZARUSFS_REGISTRY, or
 * <default state dir>/mounts.
 */
struct fs_registry_entry {
	char mountpoint[4097];
	char state_dir[4097];
	char socket[4200];
	int pid;
};
const char *fs_registry_dir(void);
/* <registry>/<id of mountpoint> (mountpoint canonical already). */
int fs_registry_path(const char *mountpoint, char *buf, size_t len);
/* The entry of a mount point (canonicalised here): 0, -ENOENT. */
int fs_registry_lookup(const char *mountpoint, struct fs_registry_entry *out);

/* Fill a unix socket address for `path`: 0 or -ENAMETOOLONG. */
int fs_ctl_sockaddr(const char *path, struct sockaddr_un *sa);
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
