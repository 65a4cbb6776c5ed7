/*
 * fs/engine.h - the engine supervisor (fs/engine*.c), private to fs/.
 *
 * The engine is the real FUSE file system (JuiceFS, Alluxio, sshfs, ...)
 * that lazarusfs runs as its child on a private backend directory,
 * <state_dir>/<id>/backend.<pid of the serving proxy>.  Request threads
 * never start, stop or restart it: they enter it (fs_engine_enter), which
 * waits while it starts or recovers, do their backend call relative to the
 * generation's root fd, and leave.  One supervisor thread does all the
 * blocking work; a watchdog thread kills an engine whose calls hang.
 *
 * Locking: struct fs_engine has one mutex (the "engine lock"), internal to
 * engine*.c.  It is never held across I/O, a wait other than its own
 * condition variable, or logging.  Callers hold no global lock (table
 * locks, cache locks, the log lock) when they call fs_engine_enter(); they
 * may hold locks of their own handle (see fs/handle.h for why that is
 * safe).  Every function here is thread safe and returns 0 or -errno unless
 * its comment says otherwise.
 */
#ifndef LAZARUSFS_ENGINE_H
#define LAZARUSFS_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "fs/fs.h"

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
 * the empty directory underneath.  Reference counted under the engine lock;
 * the fd is closed when the generation is retired and the last user left.
 * rootfd and gen are immutable while a reference is held.
 */
struct fs_backend {
	int rootfd;
	uint64_t gen;
	unsigned refs;          /* protected by the engine lock */
	bool retired;           /* protected by the engine lock */
};

struct fs_engine;

/*
 * Called by the supervisor after a restart, before requests resume, to
 * reopen every open handle against `b` and replay journals.  Returns the
 * number of handles reopened, or -errno; an engine-loss errno (the engine
 * died again during the replay) makes the supervisor restart at once,
 * without backoff, and call it again.
 */
typedef int (*fs_recover_fn)(void *arg, struct fs_backend *b);

/* The supervisor keeps `o` (not copied); `id` and `dir` are copied. */
int fs_engine_new(struct fs_engine **out, const struct fs_opts *o,
		  const char *id, const char *dir, fs_recover_fn recover,
		  void *arg);
/* Start the supervisor and watchdog threads (after daemonizing: the
 * backend directory is named after the holder, or the calling process). */
int fs_engine_start_threads(struct fs_engine *e);
/*
 * Takeover (fs/takeover.h), before start_threads: record every engine
 * start and stop in `t` for a successor, and name the backend after
 * `owner` (the holder's pid; 0: ours).
 */
struct fs_tko;
void fs_engine_set_tko(struct fs_engine *e, struct fs_tko *t, pid_t owner);
/*
 * Before start_threads: adopt the engine a dead worker left running (same
 * pid and start time, its mount still at `backend`) as generation `gen`,
 * RUNNING.  0, or -errno with a reason in err (start a new one then).
 */
int fs_engine_adopt(struct fs_engine *e, pid_t pid, unsigned long long start,
		    uint64_t gen, const char *backend, char *err, size_t errlen);
/* A successor goes on counting from the dead proxy's figures. */
void fs_engine_add_counters(struct fs_engine *e, unsigned long starts,
			    unsigned long restarts, unsigned long recoveries,
			    unsigned long hang_kills, unsigned long start_failures);
/* At shutdown, leave the engine running for a successor (an upgrade). */
void fs_engine_keep(struct fs_engine *e);
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
 * caller should leave and retry.  An EIO waits up to 200 ms (on the
 * engine's condition variable) for the engine to turn out dead.
 */
bool fs_engine_lost(struct fs_engine *e, struct fs_backend *b, int err);
bool fs_engine_running(struct fs_engine *e);
/* True while the engine is lost or failed to start: restarting, backing
 * off, or given up on (not when stopped for idleness). */
bool fs_engine_offline(struct fs_engine *e);
/* The backend mount point (valid after fs_engine_start_threads()). */
const char *fs_engine_backend(const struct fs_engine *e);
/* Raise the readahead of the FUSE mount at path to 1 MiB (best effort). */
void fs_tune_readahead(const char *path);
/* Watch the calling thread for hangs (a backend call outside enter/leave,
 * such as closing a backend fd) until fs_engine_watch_end(). */
void fs_engine_watch_begin(struct fs_engine *e);
void fs_engine_watch_end(struct fs_engine *e);
void fs_engine_count_handle(struct fs_engine *e, int delta);
/* "key: value" lines for lazarusctl status (malloc'd). */
char *fs_engine_status(struct fs_engine *e);

/* Upper bounds (seconds) of the recovery-duration histogram buckets; the
 * last bucket is +Inf. */
#define FS_ENGINE_REC_BUCKETS 10
extern const double fs_engine_rec_bounds[FS_ENGINE_REC_BUCKETS - 1];

/* A consistent snapshot of the supervisor's figures, for metrics. */
struct fs_engine_metrics {
	enum fs_engine_state state;
	pid_t pid;
	uint64_t gen;
	unsigned long starts, restarts, recoveries, hang_kills, start_failures;
	unsigned handles, inflight, waiting;
	/* recoveries by duration: count per bucket (not cumulative), sum */
	unsigned long rec_buckets[FS_ENGINE_REC_BUCKETS];
	double rec_sum;
};
void fs_engine_get_metrics(struct fs_engine *e, struct fs_engine_metrics *m);
const char *fs_engine_state_name(enum fs_engine_state s);

/*
 * One backend call with crash transparency.  Every operation that touches
 * the backend runs inside
 *
 *	struct fs_call c = FS_CALL_INIT(engine);
 *	do {
 *		if ((ret = fs_call_enter(&c)))
 *			break;
 *		ret = <backend work relative to c.b->rootfd>;
 *	} while (fs_call_again(&c, ret));
 *
 * fs_call_again() leaves the backend and reports whether `ret` meant
 * "engine lost", in which case the supervisor is already restarting the
 * engine and the work simply runs again.  c.attempt counts those retries,
 * for operations that are not idempotent (a retried mkdir finding EEXIST
 * most likely made it the first time).
 */
struct fs_call {
	struct fs_engine *e;
	struct fs_backend *b;   /* the entered generation, or NULL */
	int attempt;
};

/* A request the kernel resent to a worker that took over from a dead one
 * starts as a retry: the dead one may have carried it out (fs/takeover.h). */
bool fs_tko_resent(void);
#define FS_CALL_INIT(engine) { .e = (engine), .b = NULL, .attempt = fs_tko_resent() }

static inline int fs_call_enter(struct fs_call *c)
{
	return fs_engine_enter(c->e, &c->b);
}

static inline bool fs_call_again(struct fs_call *c, int ret)
{
	bool lost;

	if (!c->b)
		return false;
	lost = ret < 0 && fs_engine_lost(c->e, c->b, -ret);
	fs_engine_leave(c->e, c->b);
	c->b = NULL;
	if (lost)
		c->attempt++;
	return lost;
}

#endif
