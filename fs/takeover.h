/*
 * fs/takeover.h - the proxy survives its own death (fs/takeover.c,
 * fs/statelog.c, fs/session_io.c), private to fs/.  The design essay is at
 * the top of fs/takeover.c.
 *
 * Three processes per mount when takeover is on (the default):
 *   holder   the process `mount` leaves behind: single threaded, it holds
 *            a duplicate of the /dev/fuse fd (so the kernel never aborts
 *            the connection) and the memfds of the state below, reaps, and
 *            starts a worker again when one dies or asks for an upgrade;
 *   worker   the proxy proper (threads, requests, engine supervisor): the
 *            process `lazarusctl status` calls proxy_pid;
 *   engine   the worker's child; after a worker's death the holder's
 *            (PR_SET_CHILD_SUBREAPER), adopted by the next worker.
 *
 * Everything the kernel holds that must still mean the same to the next
 * worker lives in memfds the holder keeps: the shared page (struct
 * fs_tko_shared: the saved INIT, the engine to adopt, counters), the
 * inode log and the handle log (struct fs_statelog).  Journals are files
 * named after their inode in the journal directory.
 */
#ifndef LAZARUSFS_TAKEOVER_H
#define LAZARUSFS_TAKEOVER_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct fs;

/* ------------------------------------------------------------- statelog */

/*
 * An append-only record log in a memfd that outlives the process: a
 * header page (mmapped, shared) and two regions, of which one is live.
 * Appends go to the live region; a snapshot is written into the other one
 * and made live by one store, so that a death at any point leaves either
 * the old log or the complete snapshot.  A record is (u32 len, u32 type,
 * payload); it counts only once the header's length covers it, and that
 * is stored after the payload is written.
 *
 * Not locked: the owner (the inode table, the handle table) calls it under
 * its own lock.  The log is memory only (no I/O), so that lock stays a
 * leaf that does no I/O.  A failed append (out of memory) marks the log
 * broken: a broken log is never replayed, and takeover is off.
 */
struct fs_statelog;

/* On the memfd `fd` (ours from now on; -1: create one).  0 or -errno. */
int fs_statelog_open(struct fs_statelog **out, int fd, const char *name);
void fs_statelog_free(struct fs_statelog *l);
int fs_statelog_fd(const struct fs_statelog *l);
/* Set *alarm too when the log breaks (the shared page's `broken`). */
void fs_statelog_set_alarm(struct fs_statelog *l, atomic_bool *alarm);
/* Append one record to the live region: 0, or -errno (log now broken). */
int fs_statelog_append(struct fs_statelog *l, uint32_t type, const void *p,
		       size_t len);
/* Bytes in the live region: the owner snapshots when it grew large. */
size_t fs_statelog_size(const struct fs_statelog *l);
/* A snapshot: begin, add every record, commit (which makes it live). */
void fs_statelog_snap_begin(struct fs_statelog *l);
int fs_statelog_snap_add(struct fs_statelog *l, uint32_t type, const void *p,
			 size_t len);
int fs_statelog_snap_commit(struct fs_statelog *l);
/* Call fn on every record of the live region in order; stops at fn's
 * first non-zero return, which it returns.  -EUCLEAN for a broken log. */
int fs_statelog_each(struct fs_statelog *l,
		     int (*fn)(void *arg, uint32_t type, const void *p, size_t len),
		     void *arg);

/* ------------------------------------------------------- shared page */

#define FS_TKO_MAGIC 0x314f4b54u        /* "TKO1" */
#define FS_TKO_INIT_MAX 512
#define FS_TKO_ARGV_MAX 32768

/* Why the holder starts a worker (fs_tko_shared.reason). */
enum fs_tko_reason { FS_TKO_FIRST = 0, FS_TKO_CRASH, FS_TKO_UPGRADE };

/* Worker exit codes the holder understands. */
#define FS_TKO_EXIT_UPGRADE 75  /* drained: start the next binary */
#define FS_TKO_EXIT_GONE 0      /* unmounted: the holder exits too */

/*
 * The page the holder and every worker map.  Fields written by a worker
 * are read by the next one; the holder reads only what it needs.  Plain
 * fields are written while nothing else reads them (before the worker
 * serves, or by the one supervisor thread); the atomics are counters.
 */
struct fs_tko_shared {
	uint32_t magic;
	uint32_t version;
	pid_t holder_pid;
	atomic_int worker_pid;
	atomic_int reason;              /* enum fs_tko_reason of this worker */
	atomic_ulong crashes;           /* workers that died */
	atomic_ulong upgrades;          /* workers replaced on request */
	atomic_bool broken;             /* a state log failed: no takeover */
	atomic_bool handover;           /* the worker drained for an upgrade */
	atomic_bool serving;            /* the worker took over and serves */
	/* the INIT the kernel sent and the reply the first worker gave */
	uint32_t init_in_len, init_out_len;
	unsigned char init_in[FS_TKO_INIT_MAX];
	unsigned char init_out[FS_TKO_INIT_MAX];
	/* the engine to adopt: written by the supervisor when one mounted
	 * (engine_pid 0: none) */
	atomic_int engine_pid;
	unsigned long long engine_start;        /* /proc/PID/stat starttime */
	unsigned long long engine_gen;
	char backend[PATH_MAX];
	char mountpoint[PATH_MAX];      /* resolved by the first worker */
	unsigned mnt_major, mnt_minor;  /* its device: ours, not a later mount */
	/* the engine's counters as the last worker published them (every
	 * textfile write and at an upgrade), so they go on after a takeover */
	atomic_ulong eng_starts, eng_restarts, eng_recoveries, eng_hang_kills,
		     eng_start_failures;
	/* the binary of the next worker (upgrade), empty: the same */
	char next_binary[PATH_MAX];
	/* the original command line, NUL separated (secrets included: this
	 * page is mode 0600 memory of root's processes, never argv) */
	uint32_t argv_len;
	char argv[FS_TKO_ARGV_MAX];
};

/* --------------------------------------------------------- the holder */

/*
 * State of this process as a worker.  NULL members when takeover is off.
 */
struct fs_tko {
	struct fs_tko_shared *sh;       /* mapped shared page */
	int shfd, fusefd;
	struct fs_statelog *ilog, *hlog;        /* owned */
	bool successor;                 /* started by a holder after a worker */
};

/*
 * Remember the command line (before main hides secrets in argv) for the
 * holder to start workers with.  Call first thing in main().
 */
void fs_tko_save_argv(int argc, char **argv);
/*
 * "--takeover" as argv[1]: we are a successor worker.  Replace *argc and
 * *argv with the saved command line.  0 (not a successor, or replaced) or
 * -errno with a message in err.
 */
int fs_tko_successor_argv(int *argc, char ***argv, char *err, size_t errlen);
/* Free what the two calls above keep (at the end of main). */
void fs_tko_release_argv(void);
/* True when this process is a successor worker. */
bool fs_tko_is_successor(void);
/* A successor's mountpoint as the first worker resolved it, else NULL. */
const char *fs_tko_mountpoint(void);

/*
 * In the daemon, right after the FUSE mount: create the memfds and fork.
 * The parent becomes the holder and never returns (it exits with the
 * mount); the child returns 0 as the first worker.  In a successor worker
 * (fs_tko_is_successor), maps what the holder handed down.  *out is set.
 * `ready_fd` (the pipe `mount` waits on, or -1) is closed in the holder.
 */
int fs_tko_start(struct fs *fs, int fusefd, int ready_fd, struct fs_tko **out);
void fs_tko_free(struct fs_tko *t);
/* The engine mounted (pid > 0) or went (0): what the next worker adopts. */
void fs_tko_set_engine(struct fs_tko *t, pid_t pid, unsigned long long gen,
		       const char *backend);
/* Publish the engine's counters for a successor / take them over. */
struct fs_engine;
void fs_tko_save_counters(struct fs_tko *t, struct fs_engine *e);
void fs_tko_load_counters(struct fs_tko *t, struct fs_engine *e);
/* /proc/PID/stat starttime, 0 when unknown. */
unsigned long long fs_tko_proc_start(pid_t pid);

/* ------------------------------------------------------- session io */

/*
 * Our read and writev on the session fd (fs/session_io.c): the first
 * worker saves INIT and its reply in the shared page; a successor feeds
 * the saved INIT to libfuse, swallows libfuse's reply after checking it
 * negotiates what the first did, and then asks the kernel to resend what
 * the dead worker had read but not answered.  A resent request is marked
 * for its thread (fs_tko_resent()): the handlers then treat it as a retry
 * that may find its own result (EEXIST of a mkdir it made).
 */
/* Install it on fd when takeover is on (fs->tko) or passthrough may be
 * negotiated; else leave libfuse's own.  0 or -errno. */
int fs_session_io_install(struct fs *fs, int fd);
/* After libfuse processed the replayed INIT: FUSE_NOTIFY_RESEND.  0 or
 * -errno (the kernel is older than 6.9: requests the dead worker had read
 * stay unanswered). */
int fs_session_io_resend(struct fs *fs);
/* Did a successor's libfuse negotiate otherwise than the first worker? */
bool fs_session_io_mismatch(void);
/* Was the request this thread is serving resent by the kernel? */
bool fs_tko_resent(void);

#endif
