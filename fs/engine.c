/*
 * fs/engine.c - the engine supervisor: lazy start, crash and hang detection,
 * restart with backoff, idle stop, clean shutdown.
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
 *                               restarts back off 0,1,2,4..30 s and waiters
 *                               wait (recovery_timeout bounds the wait)
 *   RUNNING    -> STOPPED       idle_timeout with no handles and no calls
 *
 * Generations: each successful start creates a struct fs_backend with a new
 * gen and an O_PATH fd on the backend root.  A request enters with a
 * reference on the current generation; an error under a generation that is
 * no longer current is an engine loss by definition, so racing requests
 * simply retry.
 *
 * Hang watch: every thread that is inside the backend owns a slot holding a
 * deadline.  The watchdog thread scans the slots twice a second; when one
 * is overdue it SIGKILLs the engine's process group and writes to
 * /sys/fs/fuse/connections/<minor>/abort, which fails every request stuck in
 * the dead connection, so no proxy thread stays blocked for good.
 *
 * One engine per process: the hang slots are indexed by a thread-local,
 * and a thread gives its slot back when it exits.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_int.h"

#define MAX_SLOTS 512
#define GRACE_MS 5000
#define BACKOFF_MAX_S 30

extern char **environ;

struct fs_engine {
	/* immutable after fs_engine_new */
	const struct fs_opts *o;
	char *id;
	char *dir;              /* <state_dir>/<id> */
	char *backend;          /* backend mountpoint: <dir>/backend.<our pid> */
	char *log_path;         /* engine stdout/stderr */
	fs_recover_fn recover;
	void *recover_arg;
	int evfd;               /* wakes the supervisor */

	/* Lock order: see fs_int.h.  Never held across I/O or a wait other
	 * than pthread_cond_wait on cond. */
	pthread_mutex_t lock;
	pthread_cond_t cond;    /* broadcast on every state change */
	enum fs_engine_state state;     /* protected by lock */
	struct fs_backend *cur; /* protected by lock: NULL unless mounted */
	uint64_t gen;           /* protected by lock */
	pid_t pid;              /* protected by lock: 0 when none */
	int pidfd;              /* protected by lock */
	int conn;               /* protected by lock: fuse connection or -1 */
	pid_t killed_pid;       /* protected by lock: watchdog fired for it */
	bool shutdown;          /* protected by lock */
	unsigned inflight;      /* protected by lock */
	unsigned handles;       /* protected by lock */
	unsigned attempts;      /* protected by lock: failed tries in a row */
	double next_try;        /* protected by lock: monotonic seconds */
	double started_at;      /* protected by lock */
	double last_activity;   /* protected by lock */
	double lost_at;         /* protected by lock */
	unsigned long starts, restarts, recoveries;     /* protected by lock */
	char last_error[256];   /* protected by lock */
	char last_recovery[256];/* protected by lock */
	char reason[256];       /* protected by lock: why RECOVERING */

	pthread_t supervisor, watchdog;
	bool threads;

	atomic_int_fast64_t slots[MAX_SLOTS];   /* deadline in ms, 0 = idle */
};

/* Which hang slot this thread owns; slots are given back at thread exit
 * (libfuse creates and retires worker threads all the time). */
static __thread int my_slot = -1;
static atomic_bool slot_used[MAX_SLOTS];
static pthread_key_t slot_key;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;

static void slot_release(void *p)
{
	atomic_store(&slot_used[(intptr_t)p - 1], false);
}

static void slot_key_init(void)
{
	pthread_key_create(&slot_key, slot_release);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_ms(void)
{
	return (int64_t)(now_s() * 1000);
}

static const char *state_name(enum fs_engine_state s)
{
	static const char *const n[] = { "stopped", "starting", "running",
					 "recovering", "failed" };
	return n[s];
}

static void wake(struct fs_engine *e)
{
	uint64_t one = 1;

	(void)!write(e->evfd, &one, sizeof(one));
}

/* Register this thread as inside the backend until slot_end(). */
static void slot_begin(struct fs_engine *e, double timeout)
{
	if (my_slot < 0) {
		pthread_once(&slot_once, slot_key_init);
		for (int i = 0; i < MAX_SLOTS; i++) {
			bool free_slot = false;

			if (atomic_compare_exchange_strong(&slot_used[i], &free_slot, true)) {
				my_slot = i;
				atomic_store(&e->slots[i], 0);
				pthread_setspecific(slot_key, (void *)(intptr_t)(i + 1));
				break;
			}
		}
		if (my_slot < 0)
			return;         /* untracked; the others still are */
	}
	atomic_store(&e->slots[my_slot],
		     timeout > 0 ? now_ms() + (int64_t)(timeout * 1000) : INT64_MAX);
}

static void slot_end(struct fs_engine *e)
{
	if (my_slot >= 0)
		atomic_store(&e->slots[my_slot], 0);
}

void fs_engine_watch_begin(struct fs_engine *e)
{
	slot_begin(e, e->o->hang_timeout);
}

void fs_engine_watch_end(struct fs_engine *e)
{
	slot_end(e);
}

static void set_error(struct fs_engine *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Caller holds e->lock. */
static void set_error(struct fs_engine *e, const char *fmt, ...)
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
		fs_log(FS_LOG_DEBUG, "engine state %s -> %s", state_name(e->state),
		       state_name(s));
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

/* Retire the current generation.  Caller holds e->lock. */
static void retire(struct fs_engine *e)
{
	struct fs_backend *b = e->cur;

	e->cur = NULL;
	if (b) {
		b->retired = true;
		backend_put(b);
	}
}

/* Caller holds e->lock.  Start loss handling for generation `gen`. */
static void declare_lost(struct fs_engine *e, uint64_t gen, const char *why)
{
	if (e->state != FS_ENGINE_RUNNING || e->gen != gen)
		return;
	snprintf(e->reason, sizeof(e->reason), "%s", why);
	set_error(e, "%s", why);
	e->lost_at = now_s();
	e->attempts = 0;
	e->next_try = 0;
	set_state(e, FS_ENGINE_RECOVERING);
	wake(e);
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
			e->last_activity = now_s();
			*out = e->cur;
			break;
		}
		if (e->state == FS_ENGINE_STOPPED ||
		    (e->state == FS_ENGINE_FAILED && !waited && now_s() >= e->next_try)) {
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
			double left = e->lost_at + e->o->recovery_timeout - now_s();
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
			pthread_cond_timedwait(&e->cond, &e->lock, &deadline);
		} else {
			pthread_cond_wait(&e->cond, &e->lock);
		}
	}
	pthread_mutex_unlock(&e->lock);
	if (!ret)
		slot_begin(e, e->o->hang_timeout);
	return ret;
}

void fs_engine_leave(struct fs_engine *e, struct fs_backend *b)
{
	slot_end(e);
	pthread_mutex_lock(&e->lock);
	b->refs--;
	e->inflight--;
	e->last_activity = now_s();
	backend_put(b);
	pthread_mutex_unlock(&e->lock);
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
	if (b->gen != e->gen || e->state != FS_ENGINE_RUNNING) {
		lost = true;    /* the engine changed under this call */
	} else if (!lost && (err == EIO || err == ENOENT) && child_exited(e->pidfd)) {
		lost = true;
	}
	if (lost) {
		char why[128];

		snprintf(why, sizeof(why), "%s from the backend", strerror(err));
		declare_lost(e, b->gen, why);
	}
	pthread_mutex_unlock(&e->lock);
	return lost;
}

bool fs_engine_running(struct fs_engine *e)
{
	bool r;

	pthread_mutex_lock(&e->lock);
	r = e->state == FS_ENGINE_RUNNING;
	pthread_mutex_unlock(&e->lock);
	return r;
}

bool fs_engine_offline(struct fs_engine *e)
{
	bool r;

	pthread_mutex_lock(&e->lock);
	r = e->state == FS_ENGINE_RECOVERING || e->state == FS_ENGINE_FAILED;
	pthread_mutex_unlock(&e->lock);
	return r;
}

void fs_engine_count_handle(struct fs_engine *e, int delta)
{
	pthread_mutex_lock(&e->lock);
	e->handles += delta;
	e->last_activity = now_s();
	pthread_mutex_unlock(&e->lock);
}

char *fs_engine_status(struct fs_engine *e)
{
	char *s = NULL;
	double up;

	pthread_mutex_lock(&e->lock);
	up = e->state == FS_ENGINE_RUNNING ? now_s() - e->started_at : 0;
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
	pthread_mutex_unlock(&e->lock);
	return s;
}

/* ---------------------------------------------------- mount inspection */

/* Undo the octal escapes of /proc/self/mountinfo in place. */
static void unescape(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] && s[3]) {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = 0;
}

/* Is something mounted at `path`?  1, 0 or -errno. */
static int is_mounted(const char *path)
{
	char *line = NULL;
	size_t cap = 0;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	int found = 0;

	if (!f)
		return -errno;
	while (!found && getline(&line, &cap, f) > 0) {
		char mnt[PATH_MAX + 1];

		if (sscanf(line, "%*s %*s %*s %*s %4096s", mnt) == 1) {
			unescape(mnt);
			found = !strcmp(mnt, path);
		}
	}
	free(line);
	fclose(f);
	return found;
}

/*
 * Raise the kernel readahead of the FUSE mount at `path` to 1 MiB (from the
 * 128 KiB default), so sequential reads arrive as 1 MiB requests, as large
 * as max_write.  4 MiB won in dd but lost in fio (seq 1 MiB reads of a
 * 1 GiB file over bindfs: 410-600 against 510-920 MiB/s uncached).
 * Best effort: a missing sysfs just keeps the default.
 */
void fs_tune_readahead(const char *path)
{
	char *line = NULL, bdi[96];
	size_t cap = 0;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	unsigned maj = 0, min = 0;
	bool found = false;
	int fd;

	if (!f)
		return;
	while (!found && getline(&line, &cap, f) > 0) {
		char mnt[PATH_MAX + 1];

		if (sscanf(line, "%*s %*s %u:%u %*s %4096s", &maj, &min, mnt) == 3) {
			unescape(mnt);
			found = !strcmp(mnt, path);
		}
	}
	free(line);
	fclose(f);
	if (!found)
		return;
	snprintf(bdi, sizeof(bdi), "/sys/class/bdi/%u:%u/read_ahead_kb", maj, min);
	fd = open(bdi, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, "1024", 4) != 4)
		fs_log(FS_LOG_DEBUG, "%s: cannot raise readahead of %s", strerror(errno), path);
	close(fd);
}

/* Detach whatever is mounted at the backend directory (stacked too). */
static void detach_all(const char *path)
{
	for (int i = 0; i < 16 && is_mounted(path) > 0; i++)
		if (umount2(path, MNT_DETACH) && errno != EINVAL) {
			fs_log(FS_LOG_WARN, "%s: cannot detach %s", strerror(errno), path);
			break;
		}
}

static void abort_conn(int conn)
{
	char p[64];
	int fd;

	if (conn < 0)
		return;
	snprintf(p, sizeof(p), "/sys/fs/fuse/connections/%d/abort", conn);
	fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;         /* connection already gone */
	(void)!write(fd, "1", 1);
	close(fd);
}

/* Wait up to ms for the child behind pidfd to exit, then reap it. */
static bool reap(pid_t pid, int pidfd, int ms, int *status)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	siginfo_t si = { 0 };

	if (pidfd >= 0 && poll(&p, 1, ms) != 1)
		return false;
	if (waitid(P_PID, pid, &si, WEXITED | WNOHANG) || si.si_pid != pid)
		return false;
	*status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
	return true;
}

static void describe_exit(int status, char *buf, size_t len)
{
	if (status > 128)
		snprintf(buf, len, "killed by signal %d", status - 128);
	else
		snprintf(buf, len, "exited with status %d", status);
}

/* Last non-empty line of the engine log, for one-line error reasons. */
static void log_tail(const char *path, char *buf, size_t len)
{
	char tail[1024];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t size;
	ssize_t n;
	char *end, *start;

	buf[0] = 0;
	if (fd < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	n = pread(fd, tail, sizeof(tail) - 1, size > (off_t)sizeof(tail) - 1 ?
		  size - (off_t)sizeof(tail) + 1 : 0);
	close(fd);
	if (n <= 0)
		return;
	tail[n] = 0;
	end = tail + n;
	while (end > tail && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		*--end = 0;
	start = strrchr(tail, '\n');
	start = start ? start + 1 : tail;
	snprintf(buf, len, "%s", start);
}

/* ------------------------------------------------------ start and stop */

/*
 * Kill the engine process group and detach its mount.  `graceful`: SIGTERM
 * and a normal unmount first, SIGKILL after GRACE_MS.  No lock held.
 */
static void teardown(struct fs_engine *e, bool graceful)
{
	int status = 0, pidfd, conn;
	pid_t pid;
	bool gone = false;

	pthread_mutex_lock(&e->lock);
	pid = e->pid;
	pidfd = e->pidfd;
	conn = e->conn;
	retire(e);
	pthread_mutex_unlock(&e->lock);

	if (pid > 0) {
		if (graceful) {
			kill(-pid, SIGTERM);
			if (umount2(e->backend, 0) && errno == EBUSY)
				umount2(e->backend, MNT_DETACH);
			gone = reap(pid, pidfd, GRACE_MS, &status);
			if (!gone)
				fs_log(FS_LOG_WARN, "engine pid %d ignored SIGTERM for %d ms, killing it",
				       (int)pid, GRACE_MS);
		}
		if (!gone) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			abort_conn(conn);
			gone = reap(pid, pidfd, GRACE_MS, &status);
			if (!gone)
				fs_log(FS_LOG_ERR, "engine pid %d did not exit after SIGKILL",
				       (int)pid);
		}
	}
	abort_conn(conn);
	detach_all(e->backend);

	pthread_mutex_lock(&e->lock);
	if (pidfd >= 0)
		close(pidfd);
	e->pid = 0;
	e->pidfd = -1;
	e->conn = -1;
	pthread_mutex_unlock(&e->lock);
}

static void mask_argv(char **argv, char *buf, size_t len)
{
	size_t pos = 0;

	buf[0] = 0;
	for (size_t i = 0; argv[i] && pos + 1 < len; i++) {
		char m[512];

		fs_mask_secret(argv[i], m, sizeof(m));
		pos += snprintf(buf + pos, len - pos, "%s%s", i ? " " : "", m);
	}
}

/* Build the engine's environment: ours, then the engine_env file, then the
 * profile's extras (META_PASSWORD). */
static int build_env(struct fs_engine *e, char **extra, char ***out, char *err,
		     size_t errlen)
{
	char **file = NULL, **env;
	size_t n = 0, nf, nx, ne = fs_strv_len(environ);
	int ret;

	if (e->o->engine_env &&
	    (ret = fs_envfile_read(e->o->engine_env, &file, err, errlen)))
		return ret;
	nf = fs_strv_len(file);
	nx = fs_strv_len(extra);
	env = calloc(ne + nf + nx + 1, sizeof(char *));
	if (!env) {
		fs_strv_free(file);
		return -ENOMEM;
	}
	for (size_t i = 0; i < ne; i++)
		if (!(env[n++] = strdup(environ[i])))
			goto nomem;
	for (size_t i = 0; i < nf; i++)
		env[n++] = file[i];
	free(file);
	file = NULL;
	for (size_t i = 0; i < nx; i++)
		if (!(env[n++] = strdup(extra[i])))
			goto nomem;
	*out = env;
	return 0;
nomem:
	fs_strv_free(file);
	fs_strv_free(env);
	return -ENOMEM;
}

static int spawn(struct fs_engine *e, pid_t *pid, char *err, size_t errlen)
{
	char **argv = NULL, **extra = NULL, **env = NULL, shown[1024];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, dflt;
	int logfd, ret;

	ret = fs_profile_argv(e->o, e->backend, e->id, &argv, &extra, err, errlen);
	if (ret)
		return ret;
	ret = build_env(e, extra, &env, err, errlen);
	if (ret)
		goto out_argv;
	logfd = open(e->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (logfd < 0) {
		ret = -errno;
		snprintf(err, errlen, "%s: engine log %s", strerror(-ret), e->log_path);
		goto out_env;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, logfd, 1);
	posix_spawn_file_actions_adddup2(&fa, logfd, 2);
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&dflt);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dflt);    /* libfuse ignores SIGPIPE */
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
				 POSIX_SPAWN_SETSIGDEF);
	mask_argv(argv, shown, sizeof(shown));
	fs_log(FS_LOG_INFO, "starting engine: %s", shown);
	ret = -posix_spawnp(pid, argv[0], &fa, &attr, argv, env);
	if (ret == -ENOENT)
		snprintf(err, errlen, "engine binary not found: %s", argv[0]);
	else if (ret)
		snprintf(err, errlen, "%s: cannot run engine %s", strerror(-ret), argv[0]);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	close(logfd);
out_env:
	fs_strv_free(env);
out_argv:
	fs_strv_free(argv);
	fs_strv_free(extra);
	return ret;
}

/*
 * Spawn the engine and wait until its mount answers, within start_timeout.
 * On success installs a new generation (e->cur) and returns 0; on failure
 * leaves nothing behind and returns -errno with a reason in err.
 */
static int start(struct fs_engine *e, char *err, size_t errlen)
{
	double deadline = now_s() + e->o->start_timeout;
	struct fs_backend *b = NULL;
	int pidfd = -1, ret, status, rootfd = -1;
	struct stat st;
	pid_t pid;

	if (mkdir(e->backend, 0755) && errno != EEXIST) {
		ret = -errno;
		snprintf(err, errlen, "%s: backend directory %s", strerror(-ret), e->backend);
		return ret;
	}
	detach_all(e->backend);
	ret = spawn(e, &pid, err, errlen);
	if (ret)
		return ret;
	pidfd = syscall(SYS_pidfd_open, pid, 0);
	pthread_mutex_lock(&e->lock);
	e->pid = pid;
	e->pidfd = pidfd;
	e->starts++;
	pthread_mutex_unlock(&e->lock);

	for (;;) {
		char tail[160];

		if (reap(pid, pidfd, 20, &status)) {
			char how[64];

			pthread_mutex_lock(&e->lock);
			if (e->pidfd >= 0)
				close(e->pidfd);
			e->pid = 0;
			e->pidfd = -1;
			pthread_mutex_unlock(&e->lock);
			log_tail(e->log_path, tail, sizeof(tail));
			describe_exit(status, how, sizeof(how));
			snprintf(err, errlen, "engine %s before mounting%s%s", how,
				 tail[0] ? ": " : "", tail);
			detach_all(e->backend);
			return -EIO;
		}
		if (is_mounted(e->backend) > 0)
			break;
		if (now_s() > deadline) {
			snprintf(err, errlen, "engine did not mount within %g s",
				 e->o->start_timeout);
			ret = -ETIMEDOUT;
			goto out_kill;
		}
	}
	/*
	 * The mount exists; a stat of its root proves the engine answers.
	 * The watchdog kills it if that takes longer than start_timeout.
	 */
	slot_begin(e, deadline - now_s() > 0.1 ? deadline - now_s() : 0.1);
	rootfd = open(e->backend, O_PATH | O_DIRECTORY | O_CLOEXEC);
	ret = rootfd < 0 || fstat(rootfd, &st) ? -errno : 0;
	slot_end(e);
	if (ret) {
		snprintf(err, errlen, "%s: engine mounted but does not answer",
			 strerror(-ret));
		goto out_kill;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out_kill;
	}
	b->rootfd = rootfd;
	pthread_mutex_lock(&e->lock);
	b->gen = ++e->gen;
	e->cur = b;
	e->conn = major(st.st_dev) == 0 ? (int)minor(st.st_dev) : -1;
	e->started_at = now_s();
	pthread_mutex_unlock(&e->lock);
	fs_tune_readahead(e->backend);
	fs_log(FS_LOG_INFO, "engine pid %d mounted at %s (generation %llu)", (int)pid,
	       e->backend, (unsigned long long)b->gen);
	return 0;
out_kill:
	if (rootfd >= 0)
		close(rootfd);
	teardown(e, false);
	return ret;
}

/* Delay before try number attempts+1: 0, 1, 2, 4, ... capped at 30 s. */
static double backoff(unsigned attempts)
{
	double d;

	if (attempts == 0)
		return 0;
	d = (double)(1u << (attempts - 1 > 5 ? 5 : attempts - 1));
	return d > BACKOFF_MAX_S ? BACKOFF_MAX_S : d;
}

/* STARTING: first start (or a retry after FAILED).  No lock held. */
static void do_start(struct fs_engine *e)
{
	char err[256] = "";
	int ret = start(e, err, sizeof(err));

	pthread_mutex_lock(&e->lock);
	if (!ret) {
		e->attempts = 0;
		set_state(e, FS_ENGINE_RUNNING);
	} else {
		double delay = backoff(++e->attempts);

		e->next_try = now_s() + delay;
		set_error(e, "%s", err);
		fs_log(FS_LOG_ERR, "engine start failed: %s; next access retries after %g s",
		       err, delay);
		set_state(e, FS_ENGINE_FAILED);
	}
	pthread_mutex_unlock(&e->lock);
}

/* RECOVERING: restart and reopen everything.  Called with e->lock held;
 * drops it for the work. */
static void do_recover(struct fs_engine *e)
{
	char err[256] = "", reason[256];
	double t0 = e->lost_at ? e->lost_at : now_s();
	unsigned attempt = e->attempts + 1;
	int ret, n = 0;

	snprintf(reason, sizeof(reason), "%s", e->reason);
	e->restarts++;
	pthread_mutex_unlock(&e->lock);

	fs_log(FS_LOG_WARN, "engine lost: %s; restarting (attempt %u)", reason, attempt);
	teardown(e, false);
	ret = start(e, err, sizeof(err));
	if (!ret) {
		struct fs_backend *b;

		pthread_mutex_lock(&e->lock);
		b = e->cur;
		b->refs++;
		pthread_mutex_unlock(&e->lock);
		n = e->recover(e->recover_arg, b);
		pthread_mutex_lock(&e->lock);
		b->refs--;
		backend_put(b);
		pthread_mutex_unlock(&e->lock);
		if (n < 0) {
			ret = n;
			snprintf(err, sizeof(err), "%s while reopening handles", strerror(-n));
		}
	}

	pthread_mutex_lock(&e->lock);
	if (!ret) {
		double took = now_s() - t0;

		e->attempts = 0;
		e->recoveries++;
		e->lost_at = 0;
		snprintf(e->last_recovery, sizeof(e->last_recovery),
			 "%.3f s, %d handles reopened, after: %s", took, n, reason);
		fs_log(FS_LOG_WARN, "engine recovered in %.3f s: %d handles reopened (%s)",
		       took, n, reason);
		set_state(e, FS_ENGINE_RUNNING);
	} else {
		double delay = backoff(++e->attempts);

		e->next_try = now_s() + delay;
		set_error(e, "restart failed: %s", err);
		fs_log(FS_LOG_ERR, "engine restart failed: %s; retrying in %g s", err, delay);
		if (e->cur) {
			/* reopen hit a dead engine again: throw this one away */
			pthread_mutex_unlock(&e->lock);
			teardown(e, false);
			pthread_mutex_lock(&e->lock);
		}
	}
}

static void *supervisor_main(void *arg)
{
	struct fs_engine *e = arg;

	pthread_mutex_lock(&e->lock);
	while (!e->shutdown) {
		struct pollfd p[2] = { { .fd = e->evfd, .events = POLLIN },
				       { .fd = e->pidfd, .events = POLLIN } };
		int timeout = 1000, status;
		double now = now_s();

		if (e->state == FS_ENGINE_STARTING) {
			pthread_mutex_unlock(&e->lock);
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
			fs_log(FS_LOG_INFO, "engine idle for %g s, stopping it",
			       e->o->idle_timeout);
			set_state(e, FS_ENGINE_STOPPED);
			pthread_mutex_unlock(&e->lock);
			teardown(e, true);
			pthread_mutex_lock(&e->lock);
			continue;
		}
		pthread_mutex_unlock(&e->lock);
		poll(p, e->pid > 0 ? 2 : 1, timeout);   /* e->pid only changes here */
		if (p[0].revents & POLLIN) {
			uint64_t v;

			(void)!read(e->evfd, &v, sizeof(v));
		}
		pthread_mutex_lock(&e->lock);
		if (e->pid > 0 && reap(e->pid, e->pidfd, 0, &status)) {
			char how[64], why[256], tail[160];

			describe_exit(status, how, sizeof(how));
			log_tail(e->log_path, tail, sizeof(tail));
			snprintf(why, sizeof(why), "engine pid %d %s%s%s", (int)e->pid, how,
				 tail[0] ? ": " : "", tail);
			close(e->pidfd);
			e->pid = 0;
			e->pidfd = -1;
			if (e->state == FS_ENGINE_RUNNING)
				declare_lost(e, e->gen, why);
			else
				set_error(e, "%s", why);
		}
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

static void *watchdog_main(void *arg)
{
	struct fs_engine *e = arg;

	for (;;) {
		int64_t now = now_ms(), worst = 0;
		int conn;
		pid_t pid;

		usleep(250000);
		for (int i = 0; i < MAX_SLOTS; i++) {
			int64_t d = atomic_load(&e->slots[i]);

			if (d && d < now && now - d > worst)
				worst = now - d;
		}
		pthread_mutex_lock(&e->lock);
		if (e->shutdown) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		if (!worst || !e->pid || e->killed_pid == e->pid) {
			pthread_mutex_unlock(&e->lock);
			continue;
		}
		e->killed_pid = e->pid;
		pid = e->pid;
		conn = e->conn;
		{
			char why[128];

			snprintf(why, sizeof(why), "engine hung: a backend call was stuck past hang_timeout (%g s)",
				 e->o->hang_timeout);
			fs_log(FS_LOG_ERR, "%s, killing pid %d", why, (int)pid);
			if (e->state == FS_ENGINE_RUNNING)
				declare_lost(e, e->gen, why);
			else
				set_error(e, "%s", why);
		}
		pthread_mutex_unlock(&e->lock);
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		abort_conn(conn);
	}
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
	e->last_activity = now_s();
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

		if (sscanf(de->d_name, "backend.%ld", &pid) != 1 ||
		    (pid > 0 && kill((pid_t)pid, 0) == 0) || errno != ESRCH)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		detach_all(path);
		if (!rmdir(path))
			fs_log(FS_LOG_INFO, "removed stale backend mount %s", path);
	}
	closedir(d);
}

int fs_engine_start_threads(struct fs_engine *e)
{
	int ret;

	/* after daemonizing: the backend is named after the serving process */
	if (asprintf(&e->backend, "%s/backend.%d", e->dir, (int)getpid()) < 0) {
		e->backend = NULL;
		return -ENOMEM;
	}
	clean_stale_backends(e->dir);
	ret = pthread_create(&e->supervisor, NULL, supervisor_main, e);
	if (ret)
		return -ret;
	ret = pthread_create(&e->watchdog, NULL, watchdog_main, e);
	if (ret) {
		pthread_mutex_lock(&e->lock);
		e->shutdown = true;
		pthread_mutex_unlock(&e->lock);
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
	pthread_mutex_unlock(&e->lock);
	wake(e);
	if (e->threads) {
		pthread_join(e->supervisor, NULL);
		pthread_join(e->watchdog, NULL);
		e->threads = false;
	}
	if (e->pid > 0)
		fs_log(FS_LOG_INFO, "stopping engine pid %d", (int)e->pid);
	if (e->backend) {
		teardown(e, true);
		rmdir(e->backend);
	}
}

void fs_engine_free(struct fs_engine *e)
{
	if (!e)
		return;
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
