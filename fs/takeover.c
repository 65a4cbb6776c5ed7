/*
 * fs/takeover.c - the holder process, and a worker's start as the first or
 * as a successor (fs/takeover.h).
 *
 * Why a holder.  The kernel ends a FUSE connection when the last reference
 * to its /dev/fuse file goes (fs/fuse/dev.c, fuse_dev_release), and there
 * is no way to attach to a connection again afterwards.  So the process
 * that `mount` leaves behind keeps a reference and does nothing else: it
 * forks the worker (the proxy proper), makes itself the subreaper of
 * everything below it (PR_SET_CHILD_SUBREAPER: the engine becomes its
 * child when a worker dies, instead of init's), and waits.  It has no
 * threads, takes no requests, allocates nothing in its loop and opts out
 * of the OOM killer, so that what kills a proxy (a bug, an OOM kill, an
 * upgrade) does not reach it.
 *
 * When a worker dies.  Whatever the cause (a signal, an abort, an exit
 * code other than the two below), the holder starts the next worker:
 * fexecve() of the binary it was started from (kept open, so a package
 * upgrade that replaces the file does not matter) as `lazarusfs
 * --takeover MOUNTPOINT`, with the /dev/fuse fd and the three memfds
 * inherited and their numbers in LAZARUSFS_TAKEOVER.  The real command
 * line comes from the shared page, not argv, so that no secret source
 * shows in `ps`.  Exit 0 means the mount is gone (unmounted): the holder
 * exits too.  Exit FS_TKO_EXIT_UPGRADE means the worker drained at a
 * request boundary on `lazarusctl upgrade`: the holder starts the binary
 * named in the shared page; if that one dies within 10 s it falls back to
 * its own.  Five proxies in a row that die before they serve (a successor
 * that cannot take over, a crash at every start): the holder gives up and
 * exits, which ends the connection (the mount is lost, as before this
 * existed) rather than looping forever.  A proxy that served, however
 * briefly, resets the count; so does an upgrade.
 *
 * What a successor inherits and how it uses it:
 *   - the /dev/fuse fd: its session reads it through fs/session_io.c,
 *     which replays the saved INIT (libfuse answers everything with EIO
 *     until it saw one) and then asks the kernel to resend the requests
 *     the dead worker had read but not answered (FUSE_NOTIFY_RESEND);
 *   - the inode log and the handle log: the same node ids with the same
 *     counts and paths, the same fh numbers with their flags and journal
 *     tags (fs/inode_log.c, fs/handle_table.c); journals are files named
 *     after their inode under the journal directory;
 *   - the engine: its pid, start time, generation and backend mount in the
 *     shared page; adopted (fs_engine_adopt) when the same process still
 *     runs and its mount is there, else started again.  Handles get new
 *     backend fds (the dead worker's went with it), after a replay of
 *     their file's journal, exactly as after an engine restart.
 *
 * Signals to the holder: SIGTERM, SIGINT and SIGHUP are passed on to the
 * worker, whose clean shutdown unmounts; the holder then sees exit 0.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_int.h"
#include "fs/takeover.h"

#define TKO_ENV "LAZARUSFS_TAKEOVER"
#define GIVE_UP_STARTS 5         /* proxies in a row that died before serving */
#define UPGRADE_PROBATION 10.0

static char *saved_argv;        /* NUL separated */
static size_t saved_len;
static bool successor;
static char successor_mnt[PATH_MAX];
static char **successor_argv;   /* main's argv from then on */

const char *fs_tko_mountpoint(void)
{
	return successor ? successor_mnt : NULL;
}

void fs_tko_save_argv(int argc, char **argv)
{
	size_t len = 0;

	for (int i = 0; i < argc; i++)
		len += strlen(argv[i]) + 1;
	if (len > FS_TKO_ARGV_MAX || !(saved_argv = malloc(len ? len : 1)))
		return;
	for (int i = 0; i < argc; i++) {
		size_t l = strlen(argv[i]) + 1;

		memcpy(saved_argv + saved_len, argv[i], l);
		saved_len += l;
	}
}

void fs_tko_release_argv(void)
{
	free(successor_argv);
	successor_argv = NULL;
	free(saved_argv);
	saved_argv = NULL;
	saved_len = 0;
}

bool fs_tko_is_successor(void)
{
	return successor;
}

/* The fds a holder handed down: fuse, shared page, inode log, handle log. */
static int env_fds(int fds[4])
{
	const char *v = getenv(TKO_ENV);

	return v && sscanf(v, "%d,%d,%d,%d", &fds[0], &fds[1], &fds[2], &fds[3]) == 4 ? 0 : -EINVAL;
}

static struct fs_tko_shared *map_shared(int fd)
{
	void *p = mmap(NULL, sizeof(struct fs_tko_shared), PROT_READ | PROT_WRITE, MAP_SHARED,
		       fd, 0);

	return p == MAP_FAILED ? NULL : p;
}

int fs_tko_successor_argv(int *argc, char ***argv, char *err, size_t errlen)
{
	struct fs_tko_shared *sh;
	int fds[4], n = 0;
	char **v;

	if (*argc < 2 || strcmp((*argv)[1], "--takeover"))
		return 0;
	if (env_fds(fds) || !(sh = map_shared(fds[1])) || sh->magic != FS_TKO_MAGIC) {
		snprintf(err, errlen, "--takeover: not started by a lazarusfs holder (%s unset or wrong)",
			 TKO_ENV);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < sh->argv_len; i++)
		n += !sh->argv[i];
	v = calloc((size_t)n + 1, sizeof(*v));
	if (!v || !(saved_argv = malloc(sh->argv_len ? sh->argv_len : 1)))
		return -ENOMEM;
	memcpy(saved_argv, sh->argv, sh->argv_len);
	snprintf(successor_mnt, sizeof(successor_mnt), "%s", sh->mountpoint);
	saved_len = sh->argv_len;
	for (size_t at = 0, i = 0; at < saved_len; at += strlen(saved_argv + at) + 1)
		v[i++] = saved_argv + at;
	munmap(sh, sizeof(*sh));
	*argc = n;
	*argv = successor_argv = v;
	successor = true;
	return 0;
}

unsigned long long fs_tko_proc_start(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long start = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	/* after the command name, which may hold spaces: field 22 */
	if (!(p = strrchr(buf, ')')))
		return 0;
	p++;
	for (int field = 3; p && field < 22; field++)
		p = strchr(p + 1, ' ');
	if (p)
		sscanf(p, " %llu", &start);
	return start;
}

void fs_tko_set_engine(struct fs_tko *t, pid_t pid, unsigned long long gen,
		       const char *backend)
{
	if (!t)
		return;
	atomic_store(&t->sh->engine_pid, 0);
	if (pid <= 0)
		return;
	t->sh->engine_start = fs_tko_proc_start(pid);
	t->sh->engine_gen = gen;
	snprintf(t->sh->backend, sizeof(t->sh->backend), "%s", backend);
	atomic_store(&t->sh->engine_pid, (int)pid);
}

void fs_tko_save_counters(struct fs_tko *t, struct fs_engine *e)
{
	struct fs_engine_metrics m;

	if (!t)
		return;
	fs_engine_get_metrics(e, &m);
	atomic_store(&t->sh->eng_starts, m.starts);
	atomic_store(&t->sh->eng_restarts, m.restarts);
	atomic_store(&t->sh->eng_recoveries, m.recoveries);
	atomic_store(&t->sh->eng_hang_kills, m.hang_kills);
	atomic_store(&t->sh->eng_start_failures, m.start_failures);
}

void fs_tko_load_counters(struct fs_tko *t, struct fs_engine *e)
{
	fs_engine_add_counters(e, atomic_load(&t->sh->eng_starts),
			       atomic_load(&t->sh->eng_restarts),
			       atomic_load(&t->sh->eng_recoveries),
			       atomic_load(&t->sh->eng_hang_kills),
			       atomic_load(&t->sh->eng_start_failures));
}

/* ---------------------------------------------------------- holder */

static volatile sig_atomic_t hold_sig;

static void hold_handler(int sig)
{
	hold_sig = sig;
}

/*
 * Has the kernel ended the connection (unmounted, aborted)?  Then no
 * successor could serve it.  A lazily unmounted mount that files still
 * hold open is still connected, and worth a successor.
 */
static bool conn_ended(int fusefd)
{
	struct pollfd p = { .fd = fusefd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP | POLLNVAL));
}

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Start a successor: fexecve(exe) or execv(binary).  Its pid, or -errno. */
static pid_t spawn_worker(int exefd, const char *binary, const int fds[4],
			  const char *mountpoint)
{
	char env[64];
	pid_t pid = fork();

	if (pid)
		return pid < 0 ? -errno : pid;
	/* the child: only async-signal-safe calls from here */
	for (int i = 0; i < 4; i++)
		fcntl(fds[i], F_SETFD, 0);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	snprintf(env, sizeof(env), "%d,%d,%d,%d", fds[0], fds[1], fds[2], fds[3]);
	setenv(TKO_ENV, env, 1);
	{
		char *argv[] = { "lazarusfs", "--takeover", (char *)mountpoint, NULL };

		if (binary && binary[0])
			execv(binary, argv);
		else
			fexecve(exefd, argv, environ);
	}
	_exit(127);
}

static void holder_main(struct fs *fs, pid_t worker, const int fds[4])
{
	struct fs_tko_shared *sh = fs->tko->sh;
	struct sigaction sa = { .sa_handler = hold_handler };
	int exefd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC), oom;
	double started = mono();
	unsigned young = 0;     /* proxies in a row that died before serving */
	bool trial = false;     /* the worker runs a new binary on probation */

	prctl(PR_SET_NAME, "lazarusfs-hold");
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if ((oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)) >= 0) {
		(void)!write(oom, "-1000", 5);
		close(oom);
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, 0);
		const char *binary = NULL;
		double now;

		if (pid < 0 && errno == EINTR) {
			if (hold_sig && worker > 0)
				kill(worker, hold_sig);
			hold_sig = 0;
			continue;
		}
		if (pid < 0 && errno == ECHILD)
			break;          /* cannot happen while a worker lives */
		if (pid != worker)
			continue;       /* an adopted engine, or one of its children */
		now = mono();
		if (WIFEXITED(status) && WEXITSTATUS(status) == FS_TKO_EXIT_GONE)
			break;
		if (conn_ended(fds[0])) {
			fs_log(FS_LOG_INFO, "proxy pid %d exited after the mount went; so do we",
			       (int)worker);
			break;
		}
		/* the flag, not only the status: a sanitizer may change that */
		if (atomic_exchange(&sh->handover, false) ||
		    (WIFEXITED(status) && WEXITSTATUS(status) == FS_TKO_EXIT_UPGRADE)) {
			binary = sh->next_binary;
			atomic_fetch_add(&sh->upgrades, 1);
			atomic_store(&sh->reason, FS_TKO_UPGRADE);
			fs_log(FS_LOG_WARN, "proxy pid %d upgrading to %s", (int)worker,
			       binary[0] ? binary : "the same binary");
			trial = binary[0] != 0;
		} else {
			if (trial && now - started < UPGRADE_PROBATION) {
				fs_log(FS_LOG_ERR, "the upgraded proxy died at once; going back to the previous binary");
				sh->next_binary[0] = 0;
			}
			trial = false;
			atomic_fetch_add(&sh->crashes, 1);
			atomic_store(&sh->reason, FS_TKO_CRASH);
			if (WIFSIGNALED(status))
				fs_log(FS_LOG_ERR, "proxy pid %d killed by signal %d; a new proxy takes over",
				       (int)worker, WTERMSIG(status));
			else
				fs_log(FS_LOG_ERR, "proxy pid %d exited with status %d; a new proxy takes over",
				       (int)worker, WEXITSTATUS(status));
		}
		if (atomic_load(&sh->broken)) {
			fs_log(FS_LOG_ERR, "the takeover state is incomplete; the mount %s is lost",
			       fs->o->mountpoint);
			break;
		}
		if (binary || atomic_exchange(&sh->serving, false))
			young = 0;
		else if (++young >= GIVE_UP_STARTS) {
			fs_log(FS_LOG_ERR, "%d proxies in a row died before they could serve; giving up the mount %s",
			       GIVE_UP_STARTS, fs->o->mountpoint);
			break;
		}
		started = now;
		worker = spawn_worker(exefd, binary, fds, fs->o->mountpoint);
		if (worker < 0) {
			fs_log(FS_LOG_ERR, "cannot start a new proxy: %s", strerror((int)-worker));
			break;
		}
		atomic_store(&sh->worker_pid, (int)worker);
	}
	/* closing our fds ends the connection if nobody else holds it */
	_exit(0);
}

static int make_shared(struct fs_tko *t, struct fs *fs)
{
	t->shfd = memfd_create("lazarusfs-takeover", MFD_CLOEXEC);
	if (t->shfd < 0)
		return -errno;
	if (ftruncate(t->shfd, sizeof(struct fs_tko_shared)) || !(t->sh = map_shared(t->shfd)))
		return -errno;
	t->sh->magic = FS_TKO_MAGIC;
	t->sh->version = 1;
	if (saved_len > sizeof(t->sh->argv))
		return -E2BIG;
	memcpy(t->sh->argv, saved_argv, saved_len);
	t->sh->argv_len = (uint32_t)saved_len;
	snprintf(t->sh->mountpoint, sizeof(t->sh->mountpoint), "%s", fs->o->mountpoint);
	{
		struct fs_mountinfo_dev dev = { 0, 0 };

		fs_mountinfo_find(fs->o->mountpoint, "fuse.lazarusfs", &dev);
		t->sh->mnt_major = dev.major;
		t->sh->mnt_minor = dev.minor;
	}
	return 0;
}

int fs_tko_start(struct fs *fs, int fusefd, int ready_fd, struct fs_tko **out)
{
	struct fs_tko *t = calloc(1, sizeof(*t));
	struct fs_statelog *il = NULL, *hl = NULL;
	int ret, fds[4];
	pid_t pid;

	if (!t)
		return -ENOMEM;
	t->shfd = t->fusefd = -1;
	if (successor) {
		if ((ret = env_fds(fds)))
			goto out_free;
		unsetenv(TKO_ENV);
		for (int i = 0; i < 4; i++)
			fcntl(fds[i], F_SETFD, FD_CLOEXEC);
		t->fusefd = fds[0];
		t->shfd = fds[1];
		t->successor = true;
		if (!(t->sh = map_shared(t->shfd))) {
			ret = -errno;
			goto out_free;
		}
		if ((ret = fs_statelog_open(&t->ilog, fds[2], NULL)) ||
		    (ret = fs_statelog_open(&t->hlog, fds[3], NULL)))
			goto out_free;
		fs_statelog_set_alarm(t->ilog, &t->sh->broken);
		fs_statelog_set_alarm(t->hlog, &t->sh->broken);
		atomic_store(&t->sh->worker_pid, (int)getpid());
		*out = t;
		return 0;
	}
	if (!saved_argv) {
		ret = -E2BIG;
		goto out_free;
	}
	if ((ret = make_shared(t, fs)) ||
	    (ret = fs_statelog_open(&il, -1, "lazarusfs-inodes")) ||
	    (ret = fs_statelog_open(&hl, -1, "lazarusfs-handles")))
		goto out_free;
	t->fusefd = fusefd;
	t->sh->holder_pid = getpid();
	fds[0] = fusefd;
	fds[1] = t->shfd;
	fds[2] = fs_statelog_fd(il);
	fds[3] = fs_statelog_fd(hl);
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		goto out_free;
	}
	if (pid > 0) {
		if (ready_fd >= 0)
			close(ready_fd);        /* the worker reports readiness */
		fs->tko = t;
		atomic_store(&t->sh->worker_pid, (int)pid);
		holder_main(fs, pid, fds);      /* never returns */
	}
	t->ilog = il;
	t->hlog = hl;
	fs_statelog_set_alarm(il, &t->sh->broken);
	fs_statelog_set_alarm(hl, &t->sh->broken);
	*out = t;
	return 0;
out_free:
	fs_statelog_free(il);
	fs_statelog_free(hl);
	fs_tko_free(t);
	return ret;
}

void fs_tko_free(struct fs_tko *t)
{
	if (!t)
		return;
	if (t->sh)
		munmap(t->sh, sizeof(*t->sh));
	if (t->shfd >= 0)
		close(t->shfd);
	fs_statelog_free(t->ilog);
	fs_statelog_free(t->hlog);
	free(t);
}
