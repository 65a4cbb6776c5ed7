/*
 * Unit tests for the engine supervisor (fs/engine*.c).
 *
 * Pure parts: the restart backoff, the hang-slot deadline scan, the hang
 * slots of the calling thread.  Then the state machine against a real
 * engine, tests/bufengine (a FUSE file system), started by the supervisor
 * as it would start JuiceFS: lazy start on the first enter, a kill -9
 * found through the pidfd and recovered into a new generation with the
 * recovery callback run first, an error under an old generation counted as
 * a loss, a kill during the recovery callback restarting at once (no
 * backoff), a hung engine killed by the watchdog, and a start that fails
 * (EIO, last_error, the backoff holding further tries).  Those skip when
 * /dev/fuse is absent.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/engine_int.h"

#ifndef TEST_BUILDDIR
#define TEST_BUILDDIR "."
#endif

/* ------------------------------------------------------------ pure */

static void test_backoff(void **state)
{
	static const double want[] = { 0, 1, 2, 4, 8, 16, 30, 30, 30 };

	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		assert_true(fs_engine_backoff(i) == want[i]);
	assert_true(fs_engine_backoff(1000) == FS_ENGINE_BACKOFF_MAX_S);
}

static void test_overdue(void **state)
{
	atomic_int_fast64_t s[4];

	for (int i = 0; i < 4; i++)
		atomic_init(&s[i], 0);
	assert_int_equal(fs_engine_overdue(s, 4, 1000), 0);     /* all idle */
	atomic_store(&s[1], 2000);
	assert_int_equal(fs_engine_overdue(s, 4, 1000), 0);     /* not yet due */
	assert_int_equal(fs_engine_overdue(s, 4, 2000), 0);     /* due, not past */
	assert_int_equal(fs_engine_overdue(s, 4, 2500), 500);
	atomic_store(&s[3], 1000);
	assert_int_equal(fs_engine_overdue(s, 4, 2500), 1500);  /* the worst */
	atomic_store(&s[3], INT64_MAX);                          /* no limit */
	assert_int_equal(fs_engine_overdue(s, 4, 2500), 500);
}

static struct fs_opts opts;

static void test_slots(void **state)
{
	struct fs_engine *e;
	int64_t now;

	fs_opts_init(&opts);
	assert_int_equal(fs_engine_new(&e, &opts, "0123456789abcdef", "/tmp", NULL, NULL), 0);
	now = (int64_t)(fs_engine_now() * 1000);
	fs_engine_slot_begin(e, 2.0);
	/* this thread's slot is due in about 2 s: overdue only after that */
	assert_int_equal(fs_engine_overdue(e->slots, FS_ENGINE_MAX_SLOTS, now + 1000), 0);
	assert_true(fs_engine_overdue(e->slots, FS_ENGINE_MAX_SLOTS, now + 3000) > 0);
	fs_engine_slot_end(e);
	assert_int_equal(fs_engine_overdue(e->slots, FS_ENGINE_MAX_SLOTS, now + 3000), 0);
	fs_engine_slot_begin(e, 0);     /* watched without a deadline */
	assert_int_equal(fs_engine_overdue(e->slots, FS_ENGINE_MAX_SLOTS, INT64_MAX - 1), 0);
	fs_engine_slot_end(e);
	fs_engine_free(e);
	fs_opts_release(&opts);
}

/* ---------------------------------------------------- real engines */

static char root[64], src[96], dir[96];

struct recover_log {
	int calls;
	uint64_t last_gen;
	int fail_next;          /* return this once (an engine loss) */
	pid_t kill_pid;         /* with fail_next: kill this engine first */
};

static struct recover_log rlog;

static int recover_cb(void *arg, struct fs_backend *b)
{
	struct recover_log *l = arg;
	int ret;

	l->calls++;
	l->last_gen = b->gen;
	if (l->fail_next) {
		ret = l->fail_next;
		l->fail_next = 0;
		return ret;
	}
	return 7;       /* "handles reopened" */
}

static int setup_dirs(void **state)
{
	if (access("/dev/fuse", R_OK | W_OK)) {
		print_message("skip: /dev/fuse is absent\n");
		return 0;
	}
	snprintf(root, sizeof(root), "/tmp/test_engine.XXXXXX");
	assert_non_null(mkdtemp(root));
	snprintf(src, sizeof(src), "%s/src", root);
	snprintf(dir, sizeof(dir), "%s/state", root);
	assert_int_equal(mkdir(src, 0755), 0);
	assert_int_equal(mkdir(dir, 0700), 0);
	return 0;
}

static int teardown_dirs(void **state)
{
	char cmd[200];

	if (!root[0])
		return 0;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	return system(cmd) ? -1 : 0;
}

static struct fs_engine *engine_for(const char *cmd, double hang)
{
	struct fs_engine *e;

	fs_opts_init(&opts);
	opts.profile = FS_PROFILE_COMMAND;
	opts.engine_cmd = strdup(cmd);
	opts.source = strdup(src);
	opts.mountpoint = strdup("/nonexistent-mountpoint");
	opts.start_timeout = 10;
	opts.hang_timeout = hang;
	opts.recovery_timeout = 0;
	memset(&rlog, 0, sizeof(rlog));
	assert_int_equal(fs_engine_new(&e, &opts, "0123456789abcdef", dir, recover_cb, &rlog), 0);
	assert_int_equal(fs_engine_start_threads(e), 0);
	return e;
}

static void engine_done(struct fs_engine *e)
{
	fs_engine_shutdown(e);
	fs_engine_free(e);
	fs_opts_release(&opts);
}

static pid_t engine_pid(struct fs_engine *e)
{
	pid_t pid;

	pthread_mutex_lock(&e->lock);
	pid = e->pid;
	pthread_mutex_unlock(&e->lock);
	return pid;
}

static uint64_t engine_gen(struct fs_engine *e)
{
	uint64_t g;

	pthread_mutex_lock(&e->lock);
	g = e->gen;
	pthread_mutex_unlock(&e->lock);
	return g;
}

/* Wait up to 10 s for the state (and, if gen, that generation). */
static void wait_state(struct fs_engine *e, enum fs_engine_state s, uint64_t gen)
{
	for (int i = 0; i < 1000; i++) {
		if (fs_engine_state_get(e) == s && (!gen || engine_gen(e) == gen))
			return;
		usleep(10000);
	}
	fail_msg("engine did not reach state %d generation %llu (state %d, generation %llu)",
		 s, (unsigned long long)gen, fs_engine_state_get(e),
		 (unsigned long long)engine_gen(e));
}

static const char *bufengine_cmd(void)
{
	static char cmd[300];

	snprintf(cmd, sizeof(cmd), "%s/tests/bufengine -f {source} {mnt}", TEST_BUILDDIR);
	return cmd;
}

static void test_lazy_start_crash_and_recovery(void **state)
{
	struct fs_backend *b, *old;
	struct fs_engine *e;
	struct stat st;
	char *status;
	pid_t pid;

	if (!root[0])
		skip();
	e = engine_for(bufengine_cmd(), 5);
	/* nothing runs until the first enter */
	assert_int_equal(fs_engine_state_get(e), FS_ENGINE_STOPPED);
	assert_false(fs_engine_running(e));
	assert_false(fs_engine_offline(e));
	assert_int_equal(engine_pid(e), 0);

	assert_int_equal(fs_engine_enter(e, &b), 0);
	assert_int_equal(b->gen, 1);
	assert_int_equal(fs_engine_state_get(e), FS_ENGINE_RUNNING);
	assert_int_equal(fstat(b->rootfd, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(rlog.calls, 0);        /* a first start recovers nothing */
	pid = engine_pid(e);
	assert_true(pid > 0);
	old = b;

	/* kill -9 while we are inside generation 1: the pidfd reports it */
	assert_int_equal(kill(-pid, SIGKILL), 0);
	wait_state(e, FS_ENGINE_RUNNING, 2);
	assert_int_equal(rlog.calls, 1);
	assert_int_equal(rlog.last_gen, 2);
	assert_true(engine_pid(e) != pid);
	/* an error under the old generation is a loss, whatever the errno */
	assert_true(fs_engine_lost(e, old, EACCES));
	fs_engine_leave(e, old);
	assert_int_equal(fs_engine_state_get(e), FS_ENGINE_RUNNING);

	assert_int_equal(fs_engine_enter(e, &b), 0);
	assert_int_equal(b->gen, 2);
	assert_false(fs_engine_lost(e, b, ENOENT));     /* engine alive: real */
	assert_true(fs_engine_lost(e, b, ENOTCONN));    /* always a loss */
	fs_engine_leave(e, b);
	wait_state(e, FS_ENGINE_RUNNING, 3);

	status = fs_engine_status(e);
	assert_non_null(status);
	assert_non_null(strstr(status, "state: running\n"));
	assert_non_null(strstr(status, "restarts: 2\n"));
	assert_non_null(strstr(status, "recoveries: 2\n"));
	assert_non_null(strstr(status, "7 handles reopened"));
	free(status);
	engine_done(e);
}

static void test_kill_during_recovery_restarts_at_once(void **state)
{
	struct fs_backend *b;
	struct fs_engine *e;
	double t0;

	if (!root[0])
		skip();
	e = engine_for(bufengine_cmd(), 5);
	assert_int_equal(fs_engine_enter(e, &b), 0);
	fs_engine_leave(e, b);
	/* the replay after the next crash meets a dead engine again */
	rlog.fail_next = -ENOTCONN;
	t0 = fs_engine_now();
	assert_int_equal(kill(-engine_pid(e), SIGKILL), 0);
	wait_state(e, FS_ENGINE_RUNNING, 3);
	/* a new crash, not a failed start: no 1 s backoff before the retry */
	assert_int_equal(rlog.calls, 2);
	assert_true(fs_engine_now() - t0 < 0.9);
	engine_done(e);
}

/*
 * kill() returns before a group stop is complete: one thread takes the
 * SIGSTOP and only then wakes the others, so a thread of the engine can
 * still answer a request sent right after kill().  Wait until every
 * thread of pid is stopped.
 */
static void wait_stopped(pid_t pid)
{
	char path[64], buf[512], *p;
	struct dirent *d;
	int stopped, fd;
	ssize_t n;
	DIR *dp;

	for (int i = 0; i < 2000; i++) {
		snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
		dp = opendir(path);
		assert_non_null(dp);
		stopped = 1;
		while (stopped && (d = readdir(dp))) {
			if (d->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid, d->d_name);
			fd = open(path, O_RDONLY);
			if (fd < 0)
				continue;       /* the thread just exited */
			n = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			buf[n > 0 ? n : 0] = 0;
			/* the state follows the ")" that ends the command name */
			p = strrchr(buf, ')');
			stopped = p && p[1] == ' ' && p[2] == 'T';
		}
		closedir(dp);
		if (stopped)
			return;
		usleep(1000);
	}
	fail_msg("engine pid %d did not stop", (int)pid);
}

static void test_hang_killed_by_watchdog(void **state)
{
	struct fs_backend *b;
	struct fs_engine *e;
	struct stat st;
	double t0;
	pid_t pid;
	int ret;

	if (!root[0])
		skip();
	e = engine_for(bufengine_cmd(), 1);
	assert_int_equal(fs_engine_enter(e, &b), 0);
	pid = engine_pid(e);
	assert_int_equal(kill(-pid, SIGSTOP), 0);
	wait_stopped(pid);
	t0 = fs_engine_now();
	/* stuck until the watchdog kills the engine and aborts its connection */
	ret = fstatat(b->rootfd, "nothing-here", &st, 0) ? errno : 0;
	assert_true(ret == ENOTCONN || ret == ECONNABORTED);
	assert_true(fs_engine_now() - t0 >= 0.9);
	assert_true(fs_engine_lost(e, b, ret));
	fs_engine_leave(e, b);
	wait_state(e, FS_ENGINE_RUNNING, 2);
	assert_true(engine_pid(e) != pid);
	engine_done(e);
}

static void test_failed_start_backs_off(void **state)
{
	struct fs_backend *b;
	struct fs_engine *e;
	char *status;

	if (!root[0])
		skip();
	e = engine_for("/nonexistent/engine {source} {mnt}", 5);
	assert_int_equal(fs_engine_enter(e, &b), -EIO);
	assert_int_equal(fs_engine_state_get(e), FS_ENGINE_FAILED);
	assert_true(fs_engine_offline(e));
	/* within the backoff, the next access fails at once without a start */
	assert_int_equal(fs_engine_enter(e, &b), -EIO);
	status = fs_engine_status(e);
	assert_non_null(strstr(status, "starts: 0\n"));
	assert_non_null(strstr(status, "last_error: engine binary not found: /nonexistent/engine"));
	free(status);
	engine_done(e);
}

int main(void)
{
	const struct CMUnitTest pure[] = {
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_overdue),
		cmocka_unit_test(test_slots),
	};
	const struct CMUnitTest real[] = {
		cmocka_unit_test(test_lazy_start_crash_and_recovery),
		cmocka_unit_test(test_kill_during_recovery_restarts_at_once),
		cmocka_unit_test(test_hang_killed_by_watchdog),
		cmocka_unit_test(test_failed_start_backs_off),
	};
	int failed = cmocka_run_group_tests(pure, NULL, NULL);

	return failed | cmocka_run_group_tests(real, setup_dirs, teardown_dirs);
}
