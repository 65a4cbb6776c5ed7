/*
 * Unit tests for the handle lifecycle (fs/handle.c) against a real engine,
 * tests/bufengine, which keeps acknowledged writes in memory until a flush
 * or fsync, as JuiceFS does: only the journal can bring them back after a
 * kill -9.  A struct fs is built without a FUSE session; its supervisor
 * starts and restarts bufengine as it would in a mount.
 *
 *  - writes through a handle, a kill -9, then a read through the same
 *    handle: the supervisor reopened it and replayed the journal, and an
 *    fsync makes the data reach the engine's storage;
 *  - a file removed behind our back during the outage: only that handle
 *    breaks (EIO), the others carry on;
 *  - a flush retires the journal.
 * Skips when /dev/fuse is absent.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
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
#include <unistd.h>
#include <cmocka.h>

#include "fs/engine_int.h"
#include "fs/fs_int.h"

#ifndef TEST_BUILDDIR
#define TEST_BUILDDIR "."
#endif

static char root[64], src[96], mnt[96], state_dir[96], cmd[300];

struct env {
	struct fs_opts o;
	struct fs *fs;
};

static int setup(void **state)
{
	struct env *v;
	char err[256] = "";

	if (access("/dev/fuse", R_OK | W_OK)) {
		print_message("skip: /dev/fuse is absent\n");
		*state = NULL;
		return 0;
	}
	v = calloc(1, sizeof(*v));
	snprintf(root, sizeof(root), "/tmp/test_handle.XXXXXX");
	assert_non_null(mkdtemp(root));
	snprintf(src, sizeof(src), "%s/src", root);
	snprintf(mnt, sizeof(mnt), "%s/mnt", root);
	snprintf(state_dir, sizeof(state_dir), "%s/state", root);
	assert_int_equal(mkdir(src, 0755), 0);
	assert_int_equal(mkdir(mnt, 0755), 0);
	snprintf(cmd, sizeof(cmd), "%s/tests/bufengine -f {source} {mnt}", TEST_BUILDDIR);
	fs_opts_init(&v->o);
	v->o.profile = FS_PROFILE_COMMAND;
	v->o.engine_cmd = strdup(cmd);
	v->o.source = strdup(src);
	v->o.mountpoint = strdup(mnt);
	free(v->o.state_dir);
	v->o.state_dir = strdup(state_dir);
	v->o.foreground = true;
	v->o.start_timeout = 10;
	v->o.hang_timeout = 5;
	assert_int_equal(fs_new(&v->fs, &v->o, err, sizeof(err)), 0);
	assert_int_equal(fs_engine_start_threads(v->fs->engine), 0);
	*state = v;
	return 0;
}

static int teardown(void **state)
{
	struct env *v = *state;
	char rm[200];

	if (!v)
		return 0;
	fs_engine_shutdown(v->fs->engine);
	fs_free(v->fs);
	fs_opts_release(&v->o);
	free(v);
	snprintf(rm, sizeof(rm), "rm -rf '%s'", root);
	return system(rm) ? -1 : 0;
}

/* Open (creating) `name` through the engine as a handle, as op_create
 * would; returns the handle (its index in *fh). */
static struct fs_handle *open_handle(struct fs *fs, const char *name, int flags,
				     uint64_t *fh)
{
	struct fs_call c = FS_CALL_INIT(fs->engine);
	struct fs_handle *h;
	uint64_t ino;
	int64_t idx;
	int err, fd;

	ino = fs_inode_lookup(fs->inodes, FS_ROOT_INO, name, S_IFREG, 1, &err);
	assert_true(ino > 1);
	assert_int_equal(fs_call_enter(&c), 0);
	fd = openat(c.b->rootfd, name, flags | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	h = fs_handle_alloc(ino, flags, false);
	assert_non_null(h);
	h->fd = fd;
	h->gen = c.b->gen;
	assert_false(fs_call_again(&c, 0));
	assert_int_equal(fs_inode_open(fs->inodes, ino), 0);
	idx = fs_handle_add(fs->handles, h);
	assert_true(idx >= 0);
	*fh = (uint64_t)idx;
	return h;
}

static void close_handle(struct fs *fs, struct fs_handle *h, uint64_t fh)
{
	assert_int_equal(fs_inode_close(fs->inodes, h->ino), 0);
	fs_handle_remove(fs->handles, fh);
}

static off_t src_size(const char *name)
{
	char p[200];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", src, name);
	return stat(p, &st) ? -1 : st.st_size;
}

static void kill_engine(struct fs *fs)
{
	pid_t pid;

	pthread_mutex_lock(&fs->engine->lock);
	pid = fs->engine->pid;
	pthread_mutex_unlock(&fs->engine->lock);
	assert_true(pid > 0);
	assert_int_equal(kill(-pid, SIGKILL), 0);
	/* wait until the supervisor noticed, so the next call meets the
	 * recovery rather than racing it */
	for (int i = 0; i < 500 && fs_engine_state_get(fs->engine) == FS_ENGINE_RUNNING; i++)
		usleep(10000);
}

static void fill(char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)('a' + (i * 7 + seed) % 26);
}

static void test_replay_after_kill(void **state)
{
	struct env *v = *state;
	static char data[3 << 20], back[3 << 20];
	struct fs_handle *h;
	uint64_t fh;

	if (!v)
		skip();
	h = open_handle(v->fs, "replayed", O_RDWR, &fh);
	fill(data, sizeof(data), 1);
	for (size_t off = 0; off < sizeof(data); off += 1 << 20)
		assert_int_equal(fs_handle_write(v->fs, h, data + off, 1 << 20, off), 0);
	assert_true(fs_handle_dirty(v->fs, h, false));
	/* acknowledged, but only in bufengine's memory */
	assert_int_equal(src_size("replayed"), 0);

	kill_engine(v->fs);
	/* the same handle reads on: reopened and replayed by the supervisor */
	assert_int_equal(fs_handle_pread(v->fs, h, back, sizeof(back), 0), sizeof(back));
	assert_memory_equal(back, data, sizeof(data));
	assert_int_equal(fs_handle_sync(v->fs, h, FS_SYNC_FSYNC), 0);
	assert_false(fs_handle_dirty(v->fs, h, false));
	assert_int_equal(src_size("replayed"), sizeof(data));
	close_handle(v->fs, h, fh);
}

static void test_flush_retires(void **state)
{
	struct env *v = *state;
	struct fs_handle *h;
	uint64_t fh;

	if (!v)
		skip();
	h = open_handle(v->fs, "flushed", O_WRONLY, &fh);
	assert_int_equal(fs_handle_write(v->fs, h, "12345678", 8, 0), 0);
	assert_true(fs_handle_dirty(v->fs, h, false));
	assert_int_equal(fs_handle_sync(v->fs, h, FS_SYNC_FLUSH), 0);
	assert_false(fs_handle_dirty(v->fs, h, false));
	assert_int_equal(src_size("flushed"), 8);
	close_handle(v->fs, h, fh);
}

static void test_gone_file_breaks_one_handle(void **state)
{
	struct env *v = *state;
	struct fs_handle *a, *b;
	char p[200], buf[8];
	uint64_t fa, fb;

	if (!v)
		skip();
	a = open_handle(v->fs, "stays", O_RDWR, &fa);
	b = open_handle(v->fs, "goes", O_RDWR, &fb);
	assert_int_equal(fs_handle_write(v->fs, a, "aaaa", 4, 0), 0);
	assert_int_equal(fs_handle_sync(v->fs, a, FS_SYNC_FSYNC), 0);
	kill_engine(v->fs);
	/* removed behind our back while the engine is down */
	snprintf(p, sizeof(p), "%s/goes", src);
	unlink(p);
	assert_int_equal(fs_handle_pread(v->fs, b, buf, 4, 0), -EIO);
	assert_int_equal(fs_handle_pread(v->fs, a, buf, 4, 0), 4);
	assert_memory_equal(buf, "aaaa", 4);
	close_handle(v->fs, a, fa);
	close_handle(v->fs, b, fb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_replay_after_kill, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_retires, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gone_file_breaks_one_handle, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
