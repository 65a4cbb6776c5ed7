/*
 * fs/engine_proc.c - the engine process and its mount: spawn it in its own
 * session with its log as stdout/stderr and the environment of its
 * profile, wait until its mount answers, and tear it down (SIGTERM, a
 * normal unmount, SIGKILL of the whole process group after a grace period,
 * aborting its FUSE connection, detaching every mount left at the backend
 * directory).  Only the supervisor thread calls these, with no lock held;
 * they take the engine lock only to publish pid, pidfd and generation.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fs/engine_int.h"

extern char **environ;

/*
 * Raise the kernel readahead of the FUSE mount at `path` to 1 MiB (from the
 * 128 KiB default), so sequential reads arrive as 1 MiB requests, as large
 * as max_write.  4 MiB won in dd but lost in fio (seq 1 MiB reads of a
 * 1 GiB file over bindfs: 410-600 against 510-920 MiB/s uncached).
 * Best effort: a missing sysfs just keeps the default.
 */
void fs_tune_readahead(const char *path)
{
	struct fs_mountinfo_dev dev;
	char bdi[96];
	int fd;

	if (fs_mountinfo_find(path, NULL, &dev) <= 0)
		return;
	snprintf(bdi, sizeof(bdi), "/sys/class/bdi/%u:%u/read_ahead_kb", dev.major, dev.minor);
	fd = open(bdi, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, "1024", 4) != 4)
		fs_log(FS_LOG_DEBUG, "cannot raise readahead: %s: %s", path, strerror(errno));
	close(fd);
}

/* Detach whatever is mounted at the backend directory (stacked too). */
void fs_engine_detach_all(const char *path)
{
	for (int i = 0; i < 16 && fs_mountinfo_find(path, NULL, NULL) > 0; i++)
		if (umount2(path, MNT_DETACH) && errno != EINVAL) {
			fs_log(FS_LOG_WARN, "cannot detach: %s: %s", path, strerror(errno));
			break;
		}
}

void fs_engine_abort_conn(int conn)
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
bool fs_engine_proc_reap(pid_t pid, int pidfd, int ms, int *status)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	siginfo_t si = { 0 };

	if (pidfd >= 0 && poll(&p, 1, ms) != 1)
		return false;
	if (waitid(P_PID, pid, &si, WEXITED | WNOHANG)) {
		/* an adopted engine is the holder's child: it reaps it */
		if (errno != ECHILD || pidfd < 0)
			return false;
		*status = -1;
		return true;
	}
	if (si.si_pid != pid)
		return false;
	*status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
	return true;
}

static void describe_exit(int status, char *buf, size_t len)
{
	if (status < 0)
		snprintf(buf, len, "exited (adopted: its status went to the holder)");
	else if (status > 128)
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


void fs_engine_proc_describe(struct fs_engine *e, pid_t pid, int status,
			     char *buf, size_t len)
{
	char how[64], tail[160];

	describe_exit(status, how, sizeof(how));
	log_tail(e->log_path, tail, sizeof(tail));
	snprintf(buf, len, "engine pid %d %s%s%s", (int)pid, how, tail[0] ? ": " : "", tail);
}

/*
 * Kill the engine process group and detach its mount.  `graceful`: SIGTERM
 * and a normal unmount first, SIGKILL after FS_ENGINE_GRACE_MS.  No lock held.
 */
void fs_engine_proc_teardown(struct fs_engine *e, bool graceful)
{
	int status = 0, pidfd, conn;
	pid_t pid;
	bool gone = false;

	pthread_mutex_lock(&e->lock);
	pid = e->pid;
	pidfd = e->pidfd;
	conn = e->conn;
	fs_engine_retire_locked(e);
	pthread_mutex_unlock(&e->lock);
	fs_tko_set_engine(e->tko, 0, 0, NULL);  /* nothing to adopt any more */

	if (pid > 0) {
		if (graceful) {
			kill(-pid, SIGTERM);
			if (umount2(e->backend, 0) && errno == EBUSY)
				umount2(e->backend, MNT_DETACH);
			gone = fs_engine_proc_reap(pid, pidfd, FS_ENGINE_GRACE_MS, &status);
			if (!gone)
				fs_log(FS_LOG_WARN, "engine pid %d ignored SIGTERM for %d ms, killing it",
				       (int)pid, FS_ENGINE_GRACE_MS);
		}
		if (!gone) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			fs_engine_abort_conn(conn);
			gone = fs_engine_proc_reap(pid, pidfd, FS_ENGINE_GRACE_MS, &status);
			if (!gone)
				fs_log(FS_LOG_ERR, "engine pid %d did not exit after SIGKILL",
				       (int)pid);
		}
	}
	fs_engine_abort_conn(conn);
	fs_engine_detach_all(e->backend);

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
		snprintf(err, errlen, "cannot open engine log: %s: %s", e->log_path, strerror(-ret));
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
		snprintf(err, errlen, "cannot run engine: %s: %s", argv[0], strerror(-ret));
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
int fs_engine_proc_start(struct fs_engine *e, char *err, size_t errlen)
{
	double deadline = fs_engine_now() + e->o->start_timeout;
	struct fs_backend *b = NULL;
	int pidfd = -1, ret, status, rootfd = -1;
	struct stat st;
	pid_t pid;

	if (mkdir(e->backend, 0755) && errno != EEXIST) {
		ret = -errno;
		snprintf(err, errlen, "cannot create backend directory: %s: %s", e->backend, strerror(-ret));
		return ret;
	}
	fs_engine_detach_all(e->backend);
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

		if (fs_engine_proc_reap(pid, pidfd, 20, &status)) {
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
			fs_engine_detach_all(e->backend);
			return -EIO;
		}
		if (fs_mountinfo_find(e->backend, NULL, NULL) > 0)
			break;
		if (fs_engine_now() > deadline) {
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
	fs_engine_slot_begin(e, deadline - fs_engine_now() > 0.1 ? deadline - fs_engine_now() : 0.1);
	rootfd = open(e->backend, O_PATH | O_DIRECTORY | O_CLOEXEC);
	ret = rootfd < 0 || fstat(rootfd, &st) ? -errno : 0;
	fs_engine_slot_end(e);
	if (ret) {
		snprintf(err, errlen, "engine mounted but does not answer: %s",
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
	e->started_at = fs_engine_now();
	pthread_mutex_unlock(&e->lock);
	fs_tune_readahead(e->backend);
	fs_tko_set_engine(e->tko, pid, b->gen, e->backend);
	fs_log(FS_LOG_INFO, "engine pid %d mounted at %s (generation %llu)", (int)pid,
	       e->backend, (unsigned long long)b->gen);
	return 0;
out_kill:
	if (rootfd >= 0)
		close(rootfd);
	fs_engine_proc_teardown(e, false);
	return ret;
}

