/*
 * fs/engine.c - the engine supervisor: lazy start, crash and hang detection,
 * restart with backoff, idle stop, clean shutdown (fs/engine.h).
 *
 * The engine is a real FUSE filesystem (JuiceFS, Alluxio, bindfs, sshfs...)
 * that we run as our child, in its own session, mounted on a private
 * backend directory.  Request threads never start, stop or restart it
 * themselves; they only ever wait on e->cond.  All blocking work (spawning,
 * waiting for the mount, killing, unmounting, reopening handles) is done by
 * one supervisor thread with no lock held.
 *
 * States:
 *   STOPPED    -> STARTING      first real access (fs_engine_enter)
 *   STARTING   -> RUNNING       the backend answered a stat of its root
 *   STARTING   -> FAILED        spawn error, early exit, start_timeout;
 *                               waiters get EIO, the next access after the
 *                               backoff tries again
 *   RUNNING    -> RECOVERING    pidfd says the child exited, a backend call
 *                               returned ENOTCONN/ECONNABORTED, or the
 *                               watchdog found a call stuck > hang_timeout
 *   RECOVERING -> RUNNING       restarted and every open handle reopened;
 *                               failed restarts back off 0,1,2,4..30 s and
 *                               waiters wait (recovery_timeout bounds the
 *                               wait); an engine that dies again during
 *                               the reopen and replay is a new crash and
 *                               restarts at once (up to 3 times in a row)
 *   RUNNING    -> STOPPED       idle_timeout with no handles and no calls
 *
 * Generations: each successful start creates a struct fs_backend with a new
 * gen and an O_PATH fd on the backend root.  A request enters with a
 * reference on the current generation; an error under a generation that is
 * no longer current is an engine loss by definition, so racing requests
 * simply retry.
 *
 * Hang watch (engine_watch.c): every thread that is inside the backend
 * owns a slot holding a deadline; the watchdog kills an engine whose call
 * is overdue and aborts its FUSE connection.  The engine process itself
 * (spawn, mount wait, teardown) is handled in engine_proc.c.
 *
 * Logging: nothing is logged under the engine lock (a stalled syslog would
 * stall every request entering the engine); lines are queued with
 * fs_engine_log_locked() and written by fs_engine_unlock().
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/engine_int.h"

/* how long an EIO waits to see whether the engine is dying */
#define EIO_GRACE_MS 200

const double fs_engine_rec_bounds[FS_ENGINE_REC_BUCKETS - 1] = {
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

const char *fs_engine_state_name(enum fs_engine_state s)
{
	static const char *const n[] = { "stopped", "starting", "running",
					 "recovering", "failed" };
	return n[s];
}

#define state_name fs_engine_state_name

void fs_engine_get_metrics(struct fs_engine *e, struct fs_engine_metrics *m)
{
	pthread_mutex_lock(&e->lock);
	m->state = e->state;
	m->pid = e->pid;
	m->gen = e->gen;
	m->starts = e->starts;
	m->restarts = e->restarts;
	m->recoveries = e->recoveries;
	m->hang_kills = e->hang_kills;
	m->start_failures = e->start_failures;
	m->handles = e->handles;
	m->inflight = e->inflight;
	m->waiting = e->waiting;
	memcpy(m->rec_buckets, e->rec_buckets, sizeof(m->rec_buckets));
	m->rec_sum = e->rec_sum;
	fs_engine_unlock(e);
}

static void wake(struct fs_engine *e)
{
	uint64_t one = 1;

	(void)!write(e->evfd, &one, sizeof(one));
}

void fs_engine_log_locked(struct fs_engine *e, enum fs_log_level level,
			  const char *fmt, ...)
{
	struct fs_engine_msg *m;
	va_list ap;

	if (e->nmsgs == FS_ENGINE_MSGS) {
		m = &e->msgs[FS_ENGINE_MSGS - 1];
		snprintf(m->text, sizeof(m->text), "(engine log lines dropped)");
		return;
	}
	m = &e->msgs[e->nmsgs++];
	m->level = level;
	va_start(ap, fmt);
	vsnprintf(m->text, sizeof(m->text), fmt, ap);
	va_end(ap);
}

void fs_engine_unlock(struct fs_engine *e)
{
	struct fs_engine_msg msgs[FS_ENGINE_MSGS];
	unsigned n = e->nmsgs;

	memcpy(msgs, e->msgs, n * sizeof(msgs[0]));
	e->nmsgs = 0;
	pthread_mutex_unlock(&e->lock);
	for (unsigned i = 0; i < n; i++)
		fs_log(msgs[i].level, "%s", msgs[i].text);
}

void fs_engine_set_error_locked(struct fs_engine *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e->last_error, sizeof(e->last_error), fmt, ap);
	va_end(ap);
}

/* Caller holds e->lock. */
static void set_state(struct fs_engine *e, enum fs_engine_state s)
{
	if (e->state != s)
		fs_engine_log_locked(e, FS_LOG_DEBUG, "engine state %s -> %s",
				     state_name(e->state), state_name(s));
	e->state = s;
	pthread_cond_broadcast(&e->cond);
}

static void backend_put(struct fs_backend *b)
{
	if (b->retired && !b->refs) {
		close(b->rootfd);
		free(b);
	}
}

void fs_engine_retire_locked(struct fs_engine *e)
{
	struct fs_backend *b = e->cur;

	e->cur = NULL;
	if (b) {
		b->retired = true;
		backend_put(b);
	}
}

void fs_engine_declare_lost_locked(struct fs_engine *e, uint64_t gen,
				   const char *why, double since)
{
	if (e->state != FS_ENGINE_RUNNING || e->gen != gen)
		return;
	snprintf(e->reason, sizeof(e->reason), "%s", why);
	fs_engine_set_error_locked(e, "%s", why);
	e->lost_at = since > 0 ? since : fs_engine_now();
	e->attempts = 0;
	e->next_try = 0;
	set_state(e, FS_ENGINE_RECOVERING);
	wake(e);
}

enum fs_engine_state fs_engine_state_get(struct fs_engine *e)
{
	enum fs_engine_state s;

	pthread_mutex_lock(&e->lock);
	s = e->state;
	fs_engine_unlock(e);
	return s;
}

const char *fs_engine_backend(const struct fs_engine *e)
{
	return e->backend;
}

int fs_engine_enter(struct fs_engine *e, struct fs_backend **out)
{
	bool waited = false;
	int ret = 0;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		if (e->shutdown) {
			ret = -EIO;
			break;
		}
		if (e->state == FS_ENGINE_RUNNING) {
			e->cur->refs++;
			e->inflight++;
			e->last_activity = fs_engine_now();
			*out = e->cur;
			break;
		}
		if (e->state == FS_ENGINE_STOPPED ||
		    (e->state == FS_ENGINE_FAILED && !waited && fs_engine_now() >= e->next_try)) {
			set_state(e, FS_ENGINE_STARTING);
			wake(e);
		} else if (e->state == FS_ENGINE_FAILED) {
			/* the start we waited for failed, or the backoff holds */
			ret = -EIO;
			break;
		}
		waited = true;
		if (e->state == FS_ENGINE_RECOVERING && e->o->recovery_timeout > 0) {
			/* the bound runs from the loss, not from each request, so an
			 * application whose syscall needs several requests gets EIO
			 * once, at recovery_timeout */
			double left = e->lost_at + e->o->recovery_timeout - fs_engine_now();
			struct timespec deadline;

			if (left <= 0) {
				ret = -EIO;
				break;
			}
			clock_gettime(CLOCK_REALTIME, &deadline);
			deadline.tv_sec += (time_t)left;
			deadline.tv_nsec += (long)((left - (time_t)left) * 1e9);
			if (deadline.tv_nsec >= 1000000000L) {
				deadline.tv_sec++;
				deadline.tv_nsec -= 1000000000L;
			}
			e->waiting++;
			pthread_cond_timedwait(&e->cond, &e->lock, &deadline);
			e->waiting--;
		} else {
			e->waiting++;
			pthread_cond_wait(&e->cond, &e->lock);
			e->waiting--;
		}
	}
	fs_engine_unlock(e);
	if (!ret)
		fs_engine_slot_begin(e, e->o->hang_timeout);
	return ret;
}

void fs_engine_leave(struct fs_engine *e, struct fs_backend *b)
{
	fs_engine_slot_end(e);
	pthread_mutex_lock(&e->lock);
	b->refs--;
	e->inflight--;
	e->last_activity = fs_engine_now();
	backend_put(b);
	fs_engine_unlock(e);
}

static bool child_exited(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	return pidfd >= 0 && poll(&p, 1, 0) == 1;
}

bool fs_engine_lost(struct fs_engine *e, struct fs_backend *b, int err)
{
	bool lost = err == ENOTCONN || err == ECONNABORTED;

	pthread_mutex_lock(&e->lock);
	if (!lost && err == EIO) {
		/*
		 * A dying engine may fail what it has in flight with EIO before
		 * it exits (sshfs, once its ssh is gone): give the supervisor a
		 * moment to see it go before calling the error real.
		 */
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += EIO_GRACE_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (b->gen == e->gen && e->state == FS_ENGINE_RUNNING &&
		       !child_exited(e->pidfd) &&
		       pthread_cond_timedwait(&e->cond, &e->lock, &ts) != ETIMEDOUT)
			;
	}
	if (b->gen != e->gen || e->state != FS_ENGINE_RUNNING) {
		lost = true;    /* the engine changed under this call */
	} else if (!lost && (err == EIO || err == ENOENT) && child_exited(e->pidfd)) {
		lost = true;
	}
	if (lost) {
		char why[128];

		snprintf(why, sizeof(why), "%s from the backend", strerror(err));
		fs_engine_declare_lost_locked(e, b->gen, why, 0);
	}
	fs_engine_unlock(e);
	return lost;
}

bool fs_engine_running(struct fs_engine *e)
{
	bool r;

	pthread_mutex_lock(&e->lock);
	r = e->state == FS_ENGINE_RUNNING;
	fs_engine_unlock(e);
	return r;
}

bool fs_engine_offline(struct fs_engine *e)
{
	bool r;

	pthread_mutex_lock(&e->lock);
	r = e->state == FS_ENGINE_RECOVERING || e->state == FS_ENGINE_FAILED;
	fs_engine_unlock(e);
	return r;
}

void fs_engine_count_handle(struct fs_engine *e, int delta)
{
	pthread_mutex_lock(&e->lock);
	e->handles += delta;
	e->last_activity = fs_engine_now();
	fs_engine_unlock(e);
}

char *fs_engine_status(struct fs_engine *e)
{
	char *s = NULL;
	double up;

	pthread_mutex_lock(&e->lock);
	up = e->state == FS_ENGINE_RUNNING ? fs_engine_now() - e->started_at : 0;
	if (asprintf(&s,
		     "state: %s\n"
		     "pid: %d\n"
		     "uptime: %.1f\n"
		     "starts: %lu\n"
		     "restarts: %lu\n"
		     "recoveries: %lu\n"
		     "open_handles: %u\n"
		     "inflight: %u\n"
		     "generation: %llu\n"
		     "last_error: %s\n"
		     "last_recovery: %s\n"
		     "engine: %s\n"
		     "mountpoint: %s\n"
		     "backend: %s\n"
		     "engine_log: %s\n",
		     state_name(e->state), (int)e->pid, up, e->starts, e->restarts,
		     e->recoveries, e->handles, e->inflight,
		     (unsigned long long)e->gen,
		     e->last_error[0] ? e->last_error : "none",
		     e->last_recovery[0] ? e->last_recovery : "none",
		     fs_profile_name(e->o->profile), e->o->mountpoint, e->backend,
		     e->log_path) < 0)
		s = NULL;
	fs_engine_unlock(e);
	return s;
}

double fs_engine_backoff(unsigned attempts)
{
	double d;

	if (attempts == 0)
		return 0;
	d = (double)(1u << (attempts - 1 > 5 ? 5 : attempts - 1));
	return d > FS_ENGINE_BACKOFF_MAX_S ? FS_ENGINE_BACKOFF_MAX_S : d;
}

/* STARTING: first start (or a retry after FAILED).  No lock held. */
static void do_start(struct fs_engine *e)
{
	char err[256] = "";
	int ret = fs_engine_proc_start(e, err, sizeof(err));

	pthread_mutex_lock(&e->lock);
	if (!ret) {
		e->attempts = 0;
		set_state(e, FS_ENGINE_RUNNING);
	} else {
		double delay = fs_engine_backoff(++e->attempts);

		e->start_failures++;

		e->next_try = fs_engine_now() + delay;
		fs_engine_set_error_locked(e, "%s", err);
		fs_engine_log_locked(e, FS_LOG_ERR, "engine start failed: %s; next access retries after %g s",
		       err, delay);
		set_state(e, FS_ENGINE_FAILED);
	}
	fs_engine_unlock(e);
}

/* RECOVERING: restart and reopen everything.  Called with e->lock held;
 * drops it for the work. */
static void do_recover(struct fs_engine *e)
{
	char err[256] = "", reason[256];
	double t0 = e->lost_at ? e->lost_at : fs_engine_now();
	unsigned attempt = e->attempts + 1;
	bool lost_again = false;
	int ret, n = 0;

	snprintf(reason, sizeof(reason), "%s", e->reason);
	e->restarts++;
	fs_engine_unlock(e);

	fs_log(FS_LOG_WARN, "engine lost: %s; restarting (attempt %u)", reason, attempt);
	fs_engine_proc_teardown(e, false);
	ret = fs_engine_proc_start(e, err, sizeof(err));
	if (!ret) {
		struct fs_backend *b;

		pthread_mutex_lock(&e->lock);
		b = e->cur;
		b->refs++;
		fs_engine_unlock(e);
		n = e->recover(e->recover_arg, b);
		pthread_mutex_lock(&e->lock);
		b->refs--;
		backend_put(b);
		fs_engine_unlock(e);
		if (n < 0) {
			ret = n;
			snprintf(err, sizeof(err), "%s while reopening handles", strerror(-n));
			/* the new engine died under the replay: a new crash */
			lost_again = n == -ENOTCONN || n == -ECONNABORTED || n == -EIO;
		}
	}

	pthread_mutex_lock(&e->lock);
	if (!ret) {
		double took = fs_engine_now() - t0;

		e->attempts = 0;
		e->replay_losses = 0;
		e->recoveries++;
		e->lost_at = 0;
		{
			size_t i = 0;

			while (i < FS_ENGINE_REC_BUCKETS - 1 && took > fs_engine_rec_bounds[i])
				i++;
			e->rec_buckets[i]++;
			e->rec_sum += took;
		}
		snprintf(e->last_recovery, sizeof(e->last_recovery),
			 "%.3f s, %d handles reopened, after: %s", took, n, reason);
		fs_engine_log_locked(e, FS_LOG_WARN, "engine recovered in %.3f s: %d handles reopened (%s)",
		       took, n, reason);
		set_state(e, FS_ENGINE_RUNNING);
	} else if (lost_again && e->replay_losses < FS_ENGINE_REPLAY_LOSSES) {
		/*
		 * The engine started and died again while its handles were
		 * reopened (a kill during the replay): restart at once, the
		 * replay starts over (it is idempotent).  The backoff is for
		 * engines that fail to start, and takes over if this repeats.
		 */
		e->replay_losses++;
		e->next_try = 0;
		fs_engine_log_locked(e, FS_LOG_WARN, "engine lost again: %s; restarting at once", err);
		if (e->cur) {
			fs_engine_unlock(e);
			fs_engine_proc_teardown(e, false);
			pthread_mutex_lock(&e->lock);
		}
	} else {
		double delay = fs_engine_backoff(++e->attempts);

		e->start_failures++;

		e->replay_losses = 0;
		e->next_try = fs_engine_now() + delay;
		fs_engine_set_error_locked(e, "restart failed: %s", err);
		fs_engine_log_locked(e, FS_LOG_ERR, "engine restart failed: %s; retrying in %g s",
				     err, delay);
		if (e->cur) {
			/* reopen hit a dead engine again: throw this one away */
			fs_engine_unlock(e);
			fs_engine_proc_teardown(e, false);
			pthread_mutex_lock(&e->lock);
		}
	}
}

static void *supervisor_main(void *arg)
{
	struct fs_engine *e = arg;

	pthread_mutex_lock(&e->lock);
	while (!e->shutdown) {
		/* e->pid and e->pidfd change only in this thread */
		pid_t pid = e->pid;
		struct pollfd p[2] = { { .fd = e->evfd, .events = POLLIN },
				       { .fd = e->pidfd, .events = POLLIN } };
		int timeout = 1000, status;
		double now = fs_engine_now();
		char why[256];

		if (e->state == FS_ENGINE_STARTING) {
			fs_engine_unlock(e);
			do_start(e);
			pthread_mutex_lock(&e->lock);
			continue;
		}
		if (e->state == FS_ENGINE_RECOVERING) {
			if (now >= e->next_try) {
				do_recover(e);
				continue;
			}
			timeout = (int)((e->next_try - now) * 1000) + 1;
		}
		if (e->state == FS_ENGINE_RUNNING && e->o->idle_timeout > 0 &&
		    !e->inflight && !e->handles &&
		    now - e->last_activity >= e->o->idle_timeout) {
			fs_engine_log_locked(e, FS_LOG_INFO, "engine idle for %g s, stopping it",
			       e->o->idle_timeout);
			set_state(e, FS_ENGINE_STOPPED);
			fs_engine_unlock(e);
			fs_engine_proc_teardown(e, true);
			pthread_mutex_lock(&e->lock);
			continue;
		}
		fs_engine_unlock(e);
		poll(p, pid > 0 ? 2 : 1, timeout);
		if (p[0].revents & POLLIN) {
			uint64_t v;

			(void)!read(e->evfd, &v, sizeof(v));
		}
		if (pid > 0 && fs_engine_proc_reap(pid, p[1].fd, 0, &status)) {
			/* reads the engine log: not under the lock */
			fs_engine_proc_describe(e, pid, status, why, sizeof(why));
		} else {
			pid = 0;
		}
		pthread_mutex_lock(&e->lock);
		if (pid > 0) {
			close(e->pidfd);
			e->pid = 0;
			e->pidfd = -1;
			if (e->state == FS_ENGINE_RUNNING)
				fs_engine_declare_lost_locked(e, e->gen, why, 0);
			else
				fs_engine_set_error_locked(e, "%s", why);
		}
	}
	fs_engine_unlock(e);
	return NULL;
}

int fs_engine_new(struct fs_engine **out, const struct fs_opts *o,
		  const char *id, const char *dir, fs_recover_fn recover,
		  void *arg)
{
	struct fs_engine *e = calloc(1, sizeof(*e));

	if (!e)
		return -ENOMEM;
	e->o = o;
	e->recover = recover;
	e->recover_arg = arg;
	e->pidfd = -1;
	e->conn = -1;
	e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	e->id = strdup(id);
	e->dir = strdup(dir);
	if (asprintf(&e->log_path, "%s/engine.log", dir) < 0)
		e->log_path = NULL;
	if (e->evfd < 0 || !e->id || !e->dir || !e->log_path) {
		fs_engine_free(e);
		return -ENOMEM;
	}
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	e->last_activity = fs_engine_now();
	*out = e;
	return 0;
}

/*
 * Backend mounts left by proxies that died (their pid is gone).  A proxy
 * that is still shutting down keeps its own: each one owns
 * backend.<pid>, so a new proxy on the same mount point never races an old
 * one's unmount.
 */
static void clean_stale_backends(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		char path[PATH_MAX];
		long pid;

		if (sscanf(de->d_name, FS_BACKEND_PREFIX "%ld", &pid) != 1 ||
		    (pid > 0 && kill((pid_t)pid, 0) == 0) || errno != ESRCH)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		fs_engine_detach_all(path);
		if (!rmdir(path))
			fs_log(FS_LOG_INFO, "removed stale backend mount: %s", path);
	}
	closedir(d);
}

void fs_engine_add_counters(struct fs_engine *e, unsigned long starts,
			    unsigned long restarts, unsigned long recoveries,
			    unsigned long hang_kills, unsigned long start_failures)
{
	pthread_mutex_lock(&e->lock);
	e->starts += starts;
	e->restarts += restarts;
	e->recoveries += recoveries;
	e->hang_kills += hang_kills;
	e->start_failures += start_failures;
	pthread_mutex_unlock(&e->lock);
}

void fs_engine_keep(struct fs_engine *e)
{
	e->keep = true;
}

void fs_engine_set_tko(struct fs_engine *e, struct fs_tko *t, pid_t owner)
{
	e->tko = t;
	e->owner = owner;
}

int fs_engine_adopt(struct fs_engine *e, pid_t pid, unsigned long long start,
		    uint64_t gen, const char *backend, char *err, size_t errlen)
{
	struct fs_mountinfo_dev dev;
	struct fs_backend *b;
	int pidfd, rootfd;

	if (!start || fs_tko_proc_start(pid) != start) {
		snprintf(err, errlen, "engine pid %d is gone", (int)pid);
		return -ESRCH;
	}
	if (fs_mountinfo_find(backend, NULL, &dev) <= 0) {
		snprintf(err, errlen, "engine pid %d runs but nothing is mounted at %s", (int)pid,
			 backend);
		return -ENOENT;
	}
	if ((pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0) {
		snprintf(err, errlen, "cannot watch engine pid %d: %s", (int)pid, strerror(errno));
		return -errno;
	}
	/* O_PATH asks the engine nothing: a hung engine cannot stall the
	 * takeover here, the watchdog deals with it once requests run */
	rootfd = open(backend, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0 || !(b = calloc(1, sizeof(*b)))) {
		snprintf(err, errlen, "engine pid %d does not answer at %s: %s", (int)pid, backend,
			 strerror(errno));
		if (rootfd >= 0)
			close(rootfd);
		close(pidfd);
		return -EIO;
	}
	free(e->backend);
	if (!(e->backend = strdup(backend))) {
		free(b);
		close(rootfd);
		close(pidfd);
		return -ENOMEM;
	}
	b->rootfd = rootfd;
	b->gen = gen;
	pthread_mutex_lock(&e->lock);
	e->gen = gen;
	e->cur = b;
	e->pid = pid;
	e->pidfd = pidfd;
	e->conn = dev.major == 0 ? (int)dev.minor : -1;
	e->started_at = fs_engine_now();
	e->state = FS_ENGINE_RUNNING;
	pthread_mutex_unlock(&e->lock);
	fs_tko_set_engine(e->tko, pid, gen, e->backend);
	return 0;
}

int fs_engine_start_threads(struct fs_engine *e)
{
	int ret;

	/* after daemonizing: the backend is named after the holder (or the
	 * serving process), so that a worker taking over finds it */
	if (!e->backend && asprintf(&e->backend, "%s/" FS_BACKEND_PREFIX "%d", e->dir,
				    (int)(e->owner ? e->owner : getpid())) < 0) {
		e->backend = NULL;
		return -ENOMEM;
	}
	clean_stale_backends(e->dir);
	ret = pthread_create(&e->supervisor, NULL, supervisor_main, e);
	if (ret)
		return -ret;
	ret = pthread_create(&e->watchdog, NULL, fs_engine_watchdog_main, e);
	if (ret) {
		pthread_mutex_lock(&e->lock);
		e->shutdown = true;
		fs_engine_unlock(e);
		wake(e);
		pthread_join(e->supervisor, NULL);
		return -ret;
	}
	e->threads = true;
	return 0;
}

void fs_engine_shutdown(struct fs_engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->shutdown = true;
	pthread_cond_broadcast(&e->cond);
	fs_engine_unlock(e);
	wake(e);
	if (e->threads) {
		pthread_join(e->supervisor, NULL);
		pthread_join(e->watchdog, NULL);
		e->threads = false;
	}
	if (e->keep) {
		fs_log(FS_LOG_INFO, "leaving engine pid %d to the next proxy", (int)e->pid);
		return;
	}
	if (e->pid > 0)
		fs_log(FS_LOG_INFO, "stopping engine pid %d", (int)e->pid);
	if (e->backend) {
		fs_engine_proc_teardown(e, true);
		rmdir(e->backend);
	}
}

void fs_engine_free(struct fs_engine *e)
{
	if (!e)
		return;
	/* left running for a successor (fs_engine_keep): ours to free only */
	if (e->cur) {
		close(e->cur->rootfd);
		free(e->cur);
	}
	if (e->evfd >= 0)
		close(e->evfd);
	free(e->id);
	free(e->dir);
	free(e->backend);
	free(e->log_path);
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->cond);
	free(e);
}
