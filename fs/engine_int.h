/*
 * fs/engine_int.h - private to the engine supervisor: engine.c (states,
 * enter/leave, the supervisor thread), engine_proc.c (the engine process
 * and its mount) and engine_watch.c (hang slots and the watchdog), and to
 * its unit test.
 */
#ifndef LAZARUSFS_ENGINE_INT_H
#define LAZARUSFS_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "fs/engine.h"
#include "fs/takeover.h"

#define FS_ENGINE_MAX_SLOTS 512
#define FS_ENGINE_GRACE_MS 5000
#define FS_ENGINE_BACKOFF_MAX_S 30
/* engine losses in a row during the replay after a restart that restart
 * at once, before the start backoff applies */
#define FS_ENGINE_REPLAY_LOSSES 3
/* the backend directory of the proxy with pid P is <dir>/backend.P */
#define FS_BACKEND_PREFIX "backend."

/* A log line written while the engine lock was held, sent after unlock. */
struct fs_engine_msg {
	enum fs_log_level level;
	char text[320];
};

#define FS_ENGINE_MSGS 4

struct fs_engine {
	/* immutable after fs_engine_new (backend: after start_threads) */
	const struct fs_opts *o;
	char *id;
	char *dir;              /* <state_dir>/<id> */
	char *backend;          /* backend mountpoint: <dir>/backend.<our pid> */
	char *log_path;         /* engine stdout/stderr */
	fs_recover_fn recover;
	void *recover_arg;
	int evfd;               /* wakes the supervisor */
	struct fs_tko *tko;     /* takeover: where starts are recorded, or NULL */
	pid_t owner;            /* names the backend: the holder, or us */
	bool keep;              /* shutdown leaves the engine (upgrade) */

	/*
	 * The engine lock.  Taken after a handle's locks and before the
	 * leaves (fs/handle.h).  Never held across I/O, a wait other than
	 * pthread_cond_wait on cond, or logging: messages are queued in msgs
	 * and written by fs_engine_unlock() after the unlock.
	 */
	pthread_mutex_t lock;
	pthread_cond_t cond;    /* broadcast on every state change */
	enum fs_engine_state state;     /* protected by lock */
	struct fs_backend *cur; /* protected by lock: NULL unless mounted */
	uint64_t gen;           /* protected by lock */
	pid_t pid;              /* protected by lock: 0 when none; written
				 * only by the supervisor thread */
	int pidfd;              /* protected by lock */
	int conn;               /* protected by lock: fuse connection or -1 */
	pid_t killed_pid;       /* protected by lock: watchdog fired for it */
	bool shutdown;          /* protected by lock */
	unsigned inflight;      /* protected by lock */
	unsigned handles;       /* protected by lock */
	unsigned attempts;      /* protected by lock: failed tries in a row */
	unsigned replay_losses; /* protected by lock: losses during the replay
				 * in a row (restarted without backoff) */
	double next_try;        /* protected by lock: monotonic seconds */
	double started_at;      /* protected by lock */
	double last_activity;   /* protected by lock */
	double lost_at;         /* protected by lock */
	unsigned long starts, restarts, recoveries;     /* protected by lock */
	unsigned long hang_kills, start_failures;       /* protected by lock */
	unsigned waiting;       /* protected by lock: threads waiting to enter */
	unsigned long rec_buckets[FS_ENGINE_REC_BUCKETS];  /* protected by lock */
	double rec_sum;         /* protected by lock */
	char last_error[256];   /* protected by lock */
	char last_recovery[256];/* protected by lock */
	char reason[256];       /* protected by lock: why RECOVERING */
	struct fs_engine_msg msgs[FS_ENGINE_MSGS];      /* protected by lock */
	unsigned nmsgs;         /* protected by lock */

	pthread_t supervisor, watchdog;
	bool threads;

	/* hang slots: deadline in ms, 0 = idle (engine_watch.c) */
	atomic_int_fast64_t slots[FS_ENGINE_MAX_SLOTS];
};

static inline double fs_engine_now(void)
{
	return fs_now();
}

/* ---- engine.c */

/* Queue a log line; the caller holds e->lock.  Lines beyond
 * FS_ENGINE_MSGS before the next unlock are dropped (counted in the
 * last one). */
void fs_engine_log_locked(struct fs_engine *e, enum fs_log_level level,
			  const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Unlock e->lock, then write the queued log lines. */
void fs_engine_unlock(struct fs_engine *e);
/* Caller holds e->lock. */
void fs_engine_set_error_locked(struct fs_engine *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Start loss handling for generation `gen`, lost since `since` (monotonic
 * seconds; 0: now; recovery_timeout counts from it).  Caller holds
 * e->lock. */
void fs_engine_declare_lost_locked(struct fs_engine *e, uint64_t gen,
				   const char *why, double since);
/* Retire the current generation.  Caller holds e->lock. */
void fs_engine_retire_locked(struct fs_engine *e);
/* Delay before try number attempts+1: 0, 1, 2, 4, ... capped at 30 s. */
double fs_engine_backoff(unsigned attempts);
enum fs_engine_state fs_engine_state_get(struct fs_engine *e);

/* ---- engine_proc.c (no lock held by callers) */

/* Spawn the engine and wait until its mount answers, within
 * start_timeout: 0 with a new generation in e->cur, or -errno with a
 * one-line reason in err and nothing left behind. */
int fs_engine_proc_start(struct fs_engine *e, char *err, size_t errlen);
/* Kill the engine's process group and detach its mount; `graceful`:
 * SIGTERM and a normal unmount first, SIGKILL after the grace period. */
void fs_engine_proc_teardown(struct fs_engine *e, bool graceful);
/* Reap the child behind pidfd if it exited within ms: true with *status
 * (exit status, or 128 + signal). */
bool fs_engine_proc_reap(pid_t pid, int pidfd, int ms, int *status);
/* "engine pid N killed by signal 9: <last line of its log>" */
void fs_engine_proc_describe(struct fs_engine *e, pid_t pid, int status,
			     char *buf, size_t len);
/* Detach whatever is mounted at path (stacked mounts too). */
void fs_engine_detach_all(const char *path);
/* Abort FUSE connection `conn` (its minor number), if it still exists. */
void fs_engine_abort_conn(int conn);

/* ---- engine_watch.c */

/* Register the calling thread as inside the backend for `timeout`
 * seconds (0: forever) until fs_engine_slot_end(). */
void fs_engine_slot_begin(struct fs_engine *e, double timeout);
void fs_engine_slot_end(struct fs_engine *e);
/* How far (ms) the most overdue of n slots is past its deadline at
 * `now_ms`; 0 when none is. */
int64_t fs_engine_overdue(const atomic_int_fast64_t *slots, size_t n,
			  int64_t now_ms);
void *fs_engine_watchdog_main(void *arg);

#endif
