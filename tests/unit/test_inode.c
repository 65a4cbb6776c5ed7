/*
 * Unit tests for the fs/ inode table (fs_inode_*): node id allocation,
 * lookup counts, paths, forget/open/child lifetimes, rename/exchange/unlink,
 * silly names, table growth, concurrent use, and hard links as one node
 * (by backend identity within a generation, and by our own link()).  Counts going below zero
 * must abort; that is checked in forked children.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/fs.h"

static int setup(void **state)
{
	struct fs_inode_table *t = NULL;

	assert_int_equal(fs_inode_table_new(&t), 0);
	assert_non_null(t);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	fs_inode_table_free(*state);
	return 0;
}

/* lookup that must succeed */
static uint64_t look(struct fs_inode_table *t, uint64_t parent,
		     const char *name, mode_t type, uint64_t n)
{
	int err = 12345;
	uint64_t ino = fs_inode_lookup(t, parent, name, type, n, &err);

	assert_int_equal(err, 0);
	assert_true(ino != 0);
	return ino;
}

/* assert the path of ino (with optional child name) */
static void expect_path(struct fs_inode_table *t, uint64_t ino,
			const char *name, const char *want)
{
	char buf[4096];

	memset(buf, 'X', sizeof(buf));
	assert_int_equal(fs_inode_path(t, ino, name, buf, sizeof(buf)), 0);
	assert_string_equal(buf, want);
}

static int path_ret(struct fs_inode_table *t, uint64_t ino, const char *name)
{
	char buf[4096];

	return fs_inode_path(t, ino, name, buf, sizeof(buf));
}

/* ---------------------------------------------------------- basics */

static void test_root(void **state)
{
	struct fs_inode_table *t = *state;

	expect_path(t, FS_ROOT_INO, NULL, ".");
	expect_path(t, FS_ROOT_INO, "a", "a");
	assert_int_equal(fs_inode_count(t), 1);
	/* the root is never freed, not even by a forget of its lookup */
	fs_inode_forget(t, FS_ROOT_INO, 1);
	expect_path(t, FS_ROOT_INO, NULL, ".");
	assert_int_equal(fs_inode_count(t), 1);
	/* unknown ids */
	assert_int_equal(path_ret(t, 99, NULL), -ESTALE);
	assert_int_equal(path_ret(t, 99, "x"), -ESTALE);
	assert_int_equal(fs_inode_open(t, 99), -ESTALE);
	assert_int_equal(fs_inode_close(t, 99), -ESTALE);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "nope"), 0);
}

static void test_lookup_ids_and_counts(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t a, b, a2;

	a = look(t, FS_ROOT_INO, "a", S_IFREG | 0644, 1);
	b = look(t, FS_ROOT_INO, "b", S_IFDIR | 0755, 1);
	assert_int_equal(a, 2);
	assert_int_equal(b, 3);
	assert_int_equal(fs_inode_count(t), 3);

	/* same (parent, name, type) returns the same id and adds counts */
	a2 = look(t, FS_ROOT_INO, "a", S_IFREG, 2);
	assert_int_equal(a2, a);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), a);
	assert_int_equal(fs_inode_count(t), 3);

	/* 3 lookups in total: 2 forgotten, still there; the third frees it */
	fs_inode_forget(t, a, 2);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), a);
	expect_path(t, a, NULL, "a");
	fs_inode_forget(t, a, 1);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), 0);
	assert_int_equal(path_ret(t, a, NULL), -ESTALE);
	assert_int_equal(fs_inode_count(t), 2);

	/* ids are never reused */
	assert_int_equal(look(t, FS_ROOT_INO, "a", S_IFREG, 1), 4);

	/* a lookup with nlookup 0 (a probe) leaves nothing behind */
	assert_true(look(t, FS_ROOT_INO, "probe", S_IFREG, 0) > 4);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "probe"), 0);
	assert_int_equal(fs_inode_count(t), 3);

	/* the same name under another parent is another inode */
	assert_true(look(t, b, "a", S_IFREG, 1) != 4);
	assert_int_equal(fs_inode_count(t), 4);
}

static void test_lookup_stale_parent(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	int err = 0;

	assert_int_equal(fs_inode_lookup(t, 777, "x", S_IFREG, 1, &err), 0);
	assert_int_equal(err, -ESTALE);
	fs_inode_unlink(t, FS_ROOT_INO, "d");
	err = 0;
	assert_int_equal(fs_inode_lookup(t, d, "x", S_IFREG, 1, &err), 0);
	assert_int_equal(err, -ESTALE);
	fs_inode_forget(t, d, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_paths(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t a = look(t, FS_ROOT_INO, "a", S_IFDIR, 1);
	uint64_t b = look(t, a, "b", S_IFDIR, 1);
	uint64_t c = look(t, b, "c.txt", S_IFREG, 1);

	expect_path(t, a, NULL, "a");
	expect_path(t, b, NULL, "a/b");
	expect_path(t, c, NULL, "a/b/c.txt");
	expect_path(t, b, "new", "a/b/new");
	expect_path(t, FS_ROOT_INO, "top", "top");
}

static void test_path_too_long(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t a = look(t, FS_ROOT_INO, "abc", S_IFDIR, 1);
	uint64_t b = look(t, a, "de", S_IFREG, 1);
	char buf[16];

	/*
	 * "abc/de" needs 7 bytes.  KNOWN BUG (fs/inode.c:400): the last
	 * component is charged for a '/' it never gets, so a path that fits
	 * exactly is refused with -ENAMETOOLONG; this assertion fails until
	 * that is fixed.
	 */
	assert_int_equal(fs_inode_path(t, b, NULL, buf, 6), -ENAMETOOLONG);
	assert_int_equal(fs_inode_path(t, b, NULL, buf, 7), 0);
	assert_string_equal(buf, "abc/de");
	/* "abc/xyz" needs 8 */
	assert_int_equal(fs_inode_path(t, a, "xyz", buf, 7), -ENAMETOOLONG);
	assert_int_equal(fs_inode_path(t, a, "xyz", buf, 8), 0);
	assert_string_equal(buf, "abc/xyz");
	/* even "." needs 2 */
	assert_int_equal(fs_inode_path(t, FS_ROOT_INO, NULL, buf, 1), -ENAMETOOLONG);
	assert_int_equal(fs_inode_path(t, FS_ROOT_INO, NULL, buf, 0), -ENAMETOOLONG);
}

/* ------------------------------------------------------- lifetimes */

static void test_open_keeps_inode(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t f = look(t, FS_ROOT_INO, "f", S_IFREG, 1);

	assert_int_equal(fs_inode_open(t, f), 0);
	assert_int_equal(fs_inode_open(t, f), 0);
	assert_int_equal(fs_inode_nopen(t, f), 2);
	fs_inode_forget(t, f, 1);
	/* kernel forgot it, but handles are open: still findable */
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "f"), f);
	expect_path(t, f, NULL, "f");
	assert_int_equal(fs_inode_close(t, f), 1);
	expect_path(t, f, NULL, "f");
	assert_int_equal(fs_inode_close(t, f), 0);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "f"), 0);
	assert_int_equal(fs_inode_nopen(t, f), 0);
	assert_int_equal(fs_inode_open(t, f), -ESTALE);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_child_keeps_parent(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	uint64_t e = look(t, d, "e", S_IFDIR, 1);
	uint64_t f = look(t, e, "f", S_IFREG, 1);

	assert_int_equal(fs_inode_open(t, f), 0);
	/* the kernel forgets everything; only the open handle remains */
	fs_inode_forget(t, d, 1);
	fs_inode_forget(t, e, 1);
	fs_inode_forget(t, f, 1);
	assert_int_equal(fs_inode_count(t), 4);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "d"), d);
	expect_path(t, d, NULL, "d");
	expect_path(t, f, NULL, "d/e/f");

	/* closing the last handle frees the whole chain */
	assert_int_equal(fs_inode_close(t, f), 0);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "d"), 0);
	assert_int_equal(path_ret(t, e, NULL), -ESTALE);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_forget_parent_first_then_child(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	uint64_t f = look(t, d, "f", S_IFREG, 1);

	fs_inode_forget(t, d, 1);          /* kept by its child */
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "d"), d);
	fs_inode_forget(t, f, 1);          /* child gone: parent goes too */
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "d"), 0);
	assert_int_equal(fs_inode_count(t), 1);
}

/* Run fn(t) in a child; it must die of SIGABRT. */
static void expect_abort(struct fs_inode_table *t,
			 void (*fn)(struct fs_inode_table *))
{
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit nocore = { 0, 0 };
		int fd = open("/dev/null", O_WRONLY);

		setrlimit(RLIMIT_CORE, &nocore);
		if (fd >= 0)
			dup2(fd, STDERR_FILENO);   /* hide the expected message */
		fn(t);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
}

static void forget_too_many(struct fs_inode_table *t)
{
	fs_inode_forget(t, fs_inode_find(t, FS_ROOT_INO, "x"), 3);
}

static void close_unopened(struct fs_inode_table *t)
{
	fs_inode_close(t, fs_inode_find(t, FS_ROOT_INO, "x"));
}

static void test_count_below_zero_aborts(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t x = look(t, FS_ROOT_INO, "x", S_IFREG, 2);

	expect_abort(t, forget_too_many);
	expect_abort(t, close_unopened);
	/* the parent's table is untouched by what the children did */
	fs_inode_forget(t, x, 2);
	assert_int_equal(fs_inode_count(t), 1);
}

/* --------------------------------------------------- name changes */

static void test_rename_subtree(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t a = look(t, FS_ROOT_INO, "a", S_IFDIR, 1);
	uint64_t b = look(t, a, "b", S_IFDIR, 1);
	uint64_t c = look(t, b, "c", S_IFREG, 1);
	uint64_t z = look(t, FS_ROOT_INO, "z", S_IFDIR, 1);

	fs_inode_rename(t, FS_ROOT_INO, "a", z, "moved");
	expect_path(t, a, NULL, "z/moved");
	expect_path(t, b, NULL, "z/moved/b");
	expect_path(t, c, NULL, "z/moved/b/c");
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), 0);
	assert_int_equal(fs_inode_find(t, z, "moved"), a);
	assert_int_equal(fs_inode_find(t, b, "c"), c);

	/* rename within the same directory */
	fs_inode_rename(t, b, "c", b, "c2");
	expect_path(t, c, NULL, "z/moved/b/c2");
	assert_int_equal(fs_inode_find(t, b, "c"), 0);

	/* rename between two unknown names changes nothing */
	fs_inode_rename(t, FS_ROOT_INO, "ghost", FS_ROOT_INO, "ghost2");
	expect_path(t, z, NULL, "z");
	/* renaming a name onto itself changes nothing */
	fs_inode_rename(t, z, "moved", z, "moved");
	expect_path(t, c, NULL, "z/moved/b/c2");
	assert_int_equal(fs_inode_count(t), 5);

	/* counts moved with the rename: forgetting everything empties it */
	fs_inode_forget(t, c, 1);
	fs_inode_forget(t, b, 1);
	fs_inode_forget(t, a, 1);
	fs_inode_forget(t, z, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_rename_over_existing(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t src = look(t, FS_ROOT_INO, "src", S_IFREG, 1);
	uint64_t victim = look(t, FS_ROOT_INO, "dst", S_IFREG, 1);

	assert_int_equal(fs_inode_open(t, victim), 0);
	fs_inode_rename(t, FS_ROOT_INO, "src", FS_ROOT_INO, "dst");
	expect_path(t, src, NULL, "dst");
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "dst"), src);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "src"), 0);
	assert_int_equal(path_ret(t, victim, NULL), -ESTALE);
	/* the victim's id still works for its handle */
	assert_int_equal(fs_inode_nopen(t, victim), 1);
	assert_int_equal(fs_inode_close(t, victim), 0);
	fs_inode_forget(t, victim, 1);
	assert_int_equal(fs_inode_count(t), 2);
	fs_inode_forget(t, src, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_rename_to_unknown_parent_target_only(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	uint64_t v = look(t, d, "v", S_IFREG, 1);

	/* source not in the table: the victim at the target is still gone */
	fs_inode_rename(t, FS_ROOT_INO, "unknown", d, "v");
	assert_int_equal(fs_inode_find(t, d, "v"), 0);
	assert_int_equal(path_ret(t, v, NULL), -ESTALE);
	fs_inode_forget(t, v, 1);
	fs_inode_forget(t, d, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_exchange(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d1 = look(t, FS_ROOT_INO, "d1", S_IFDIR, 1);
	uint64_t d2 = look(t, FS_ROOT_INO, "d2", S_IFDIR, 1);
	uint64_t a = look(t, d1, "a", S_IFDIR, 1);
	uint64_t ac = look(t, a, "child", S_IFREG, 1);
	uint64_t b = look(t, d2, "b", S_IFREG, 1);

	fs_inode_exchange(t, d1, "a", d2, "b");
	expect_path(t, a, NULL, "d2/b");
	expect_path(t, ac, NULL, "d2/b/child");
	expect_path(t, b, NULL, "d1/a");
	assert_int_equal(fs_inode_find(t, d1, "a"), b);
	assert_int_equal(fs_inode_find(t, d2, "b"), a);

	/* exchange with only one side known behaves like a rename */
	fs_inode_exchange(t, d1, "a", d1, "other");
	expect_path(t, b, NULL, "d1/other");
	assert_int_equal(fs_inode_find(t, d1, "a"), 0);
	fs_inode_exchange(t, d1, "nothing", d1, "other");
	expect_path(t, b, NULL, "d1/nothing");

	/* parents' child counts stayed right: forget all, table empties */
	fs_inode_forget(t, d1, 1);
	fs_inode_forget(t, d2, 1);
	fs_inode_forget(t, ac, 1);
	fs_inode_forget(t, a, 1);
	fs_inode_forget(t, b, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_unlink(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t f = look(t, FS_ROOT_INO, "f", S_IFREG, 1);

	assert_int_equal(fs_inode_open(t, f), 0);
	fs_inode_unlink(t, FS_ROOT_INO, "f");
	assert_int_equal(path_ret(t, f, NULL), -ESTALE);
	assert_int_equal(path_ret(t, f, "x"), -ESTALE);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "f"), 0);
	/* the id is still valid for handles */
	assert_int_equal(fs_inode_open(t, f), 0);
	assert_int_equal(fs_inode_nopen(t, f), 2);
	assert_int_equal(fs_inode_close(t, f), 1);
	assert_int_equal(fs_inode_close(t, f), 0);
	/* a new file of the same name is a new inode */
	assert_true(look(t, FS_ROOT_INO, "f", S_IFREG, 1) != f);
	assert_int_equal(fs_inode_count(t), 3);
	fs_inode_forget(t, f, 1);
	assert_int_equal(fs_inode_count(t), 2);
	/* unlink of an unknown name is harmless */
	fs_inode_unlink(t, FS_ROOT_INO, "never");
	assert_int_equal(fs_inode_count(t), 2);
}

/* Last-seen attributes: kept per inode, follow renames, gone with the name
 * and freed with the inode (the sanitizer build checks the frees). */
static void test_attr(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	uint64_t f = look(t, d, "f", S_IFREG, 1);
	struct stat st = { .st_mode = S_IFREG | 0644, .st_size = 12345 }, got;

	assert_int_equal(fs_inode_attr_get(t, f, &got), -ENOENT);
	fs_inode_attr_set(t, f, &st);
	st.st_size = 777;
	fs_inode_attr_set(t, f, &st);            /* replaced, not leaked */
	memset(&got, 0, sizeof(got));
	assert_int_equal(fs_inode_attr_get(t, f, &got), 0);
	assert_int_equal(got.st_size, 777);
	assert_int_equal(got.st_mode, S_IFREG | 0644);
	assert_int_equal(fs_inode_attr_get(t, 999999, &got), -ENOENT);
	fs_inode_rename(t, d, "f", FS_ROOT_INO, "g");
	assert_int_equal(fs_inode_attr_get(t, f, &got), 0);
	assert_int_equal(fs_inode_open(t, f), 0);
	fs_inode_unlink(t, FS_ROOT_INO, "g");     /* no name: no attributes */
	assert_int_equal(fs_inode_attr_get(t, f, &got), -ENOENT);
	assert_int_equal(fs_inode_close(t, f), 0);
	fs_inode_forget(t, f, 1);                 /* freed with its attributes */
	fs_inode_attr_set(t, d, &st);             /* freed by the table */
}

static void test_type_change(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t old = look(t, FS_ROOT_INO, "n", S_IFREG | 0600, 1);
	uint64_t fresh;

	assert_int_equal(fs_inode_open(t, old), 0);
	/* the permission bits do not matter, only the file type */
	assert_int_equal(look(t, FS_ROOT_INO, "n", S_IFREG | 0755, 1), old);
	fresh = look(t, FS_ROOT_INO, "n", S_IFDIR | 0755, 1);
	assert_true(fresh != old);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "n"), fresh);
	expect_path(t, fresh, NULL, "n");
	assert_int_equal(path_ret(t, old, NULL), -ESTALE);
	assert_int_equal(fs_inode_close(t, old), 0);
	fs_inode_forget(t, old, 2);
	fs_inode_forget(t, fresh, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

/*
 * A directory the kernel forgot stays alive while a child is open; a lookup
 * under it that replaces that child (another file type) must not free the
 * directory halfway.  KNOWN BUG (fs/inode.c:259-280): detach() drops the
 * directory's last child reference and frees it, then p->nchild++ writes to
 * freed memory.  Run in a child so heap damage cannot take the suite down;
 * fails (and ASan reports heap-use-after-free) until fixed.
 */
static void test_type_change_under_forgotten_dir(void **state)
{
	struct fs_inode_table *t = *state;
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char buf[64];
		int err, ok;
		uint64_t d, c, n;

		d = fs_inode_lookup(t, FS_ROOT_INO, "d", S_IFDIR, 1, &err);
		c = fs_inode_lookup(t, d, "c", S_IFREG, 1, &err);
		fs_inode_open(t, c);
		fs_inode_forget(t, d, 1);  /* d lives on through its child */
		n = fs_inode_lookup(t, d, "c", S_IFDIR, 1, &err);
		ok = n && n != c && !err &&
		     !fs_inode_path(t, n, NULL, buf, sizeof(buf)) &&
		     !strcmp(buf, "d/c");
		fs_inode_close(t, c);
		fs_inode_forget(t, c, 1);
		fs_inode_forget(t, n, 1);
		ok = ok && fs_inode_count(t) == 1;
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_silly(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t f = look(t, FS_ROOT_INO, "f", S_IFREG, 1);

	assert_false(fs_inode_is_silly(t, f));
	fs_inode_set_silly(t, f, true);
	assert_true(fs_inode_is_silly(t, f));
	fs_inode_set_silly(t, f, false);
	assert_false(fs_inode_is_silly(t, f));
	assert_false(fs_inode_is_silly(t, 4242));

	assert_true(fs_is_silly_name(FS_SILLY_PREFIX "0000002a"));
	assert_true(fs_is_silly_name(".lazarusfs-silly-"));
	assert_false(fs_is_silly_name(".lazarusfs-sill"));
	assert_false(fs_is_silly_name("x.lazarusfs-silly-1"));
	assert_false(fs_is_silly_name(""));
	assert_false(fs_is_silly_name("file"));
}

static void test_drop_name(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	uint64_t f = look(t, d, FS_SILLY_PREFIX "1", S_IFREG, 1);

	assert_int_equal(fs_inode_open(t, f), 0);
	fs_inode_drop_name(t, f);
	assert_int_equal(path_ret(t, f, NULL), -ESTALE);
	assert_int_equal(fs_inode_find(t, d, FS_SILLY_PREFIX "1"), 0);
	/* the parent no longer counts f as a child: forgetting frees it */
	fs_inode_forget(t, d, 1);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "d"), 0);
	assert_int_equal(fs_inode_nopen(t, f), 1);
	assert_int_equal(fs_inode_close(t, f), 0);
	fs_inode_forget(t, f, 1);
	assert_int_equal(fs_inode_count(t), 1);
	fs_inode_drop_name(t, f);          /* unknown id: no effect */
}

/* --------------------------------------------------------- growth */

#define NGROW 5000

static void test_growth(void **state)
{
	struct fs_inode_table *t = *state;
	uint64_t *ids = calloc(NGROW, sizeof(*ids));
	uint64_t dirs[10];
	char name[32], want[64];

	assert_non_null(ids);
	for (int d = 0; d < 10; d++) {
		snprintf(name, sizeof(name), "dir%d", d);
		dirs[d] = look(t, FS_ROOT_INO, name, S_IFDIR, 1);
	}
	for (int i = 0; i < NGROW; i++) {
		snprintf(name, sizeof(name), "file%d", i);
		ids[i] = look(t, dirs[i % 10], name, S_IFREG, 1);
		assert_int_equal(ids[i], 12 + i);
	}
	assert_int_equal(fs_inode_count(t), 1 + 10 + NGROW);
	for (int i = 0; i < NGROW; i++) {
		snprintf(name, sizeof(name), "file%d", i);
		snprintf(want, sizeof(want), "dir%d/file%d", i % 10, i);
		expect_path(t, ids[i], NULL, want);
		assert_int_equal(fs_inode_find(t, dirs[i % 10], name), ids[i]);
	}
	/* renames and forgets keep working after the rehash */
	fs_inode_rename(t, FS_ROOT_INO, "dir3", FS_ROOT_INO, "three");
	expect_path(t, ids[4993], NULL, "three/file4993");
	for (int i = 0; i < NGROW; i++)
		fs_inode_forget(t, ids[i], 1);
	for (int d = 0; d < 10; d++)
		fs_inode_forget(t, dirs[d], 1);
	assert_int_equal(fs_inode_count(t), 1);
	free(ids);
}

/* ---------------------------------------------------- concurrency */

#define NWORKERS 4
#define ROUNDS 3000
#define NSHARED 8

struct worker {
	struct fs_inode_table *t;
	int id;
	uint64_t dir;
	unsigned errors;           /* read by the main thread after join */
};

static int stop_reader;            /* atomic */
static uint64_t newest_ino;        /* a hint for the reader (atomic) */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	unsigned seed = 1234u + w->id;
	char name[32], name2[32];

	for (int r = 0; r < ROUNDS; r++) {
		int err, k = rand_r(&seed) % NSHARED;
		uint64_t own, shared;

		/* a disjoint name in our own directory, renamed back and forth */
		snprintf(name, sizeof(name), "f%d", r % 16);
		snprintf(name2, sizeof(name2), "g%d", r % 16);
		own = fs_inode_lookup(w->t, w->dir, name, S_IFREG, 2, &err);
		if (!own || err)
			w->errors++;
		__atomic_store_n(&newest_ino, own, __ATOMIC_RELAXED);
		fs_inode_rename(w->t, w->dir, name, w->dir, name2);
		if (fs_inode_find(w->t, w->dir, name2) != own)
			w->errors++;
		fs_inode_rename(w->t, w->dir, name2, w->dir, name);

		/* a shared name under the root, sometimes renamed over another */
		snprintf(name, sizeof(name), "shared%d", k);
		snprintf(name2, sizeof(name2), "shared%d", (k + 1) % NSHARED);
		shared = fs_inode_lookup(w->t, FS_ROOT_INO, name, S_IFREG, 1, &err);
		if (!shared || err)
			w->errors++;
		if (fs_inode_open(w->t, shared))
			w->errors++;
		if (rand_r(&seed) % 4 == 0)
			fs_inode_rename(w->t, FS_ROOT_INO, name, FS_ROOT_INO, name2);
		if (fs_inode_close(w->t, shared) < 0)
			w->errors++;

		fs_inode_forget(w->t, shared, 1);
		fs_inode_forget(w->t, own, 1);
		fs_inode_forget(w->t, own, 1);
	}
	return NULL;
}

struct reader {
	struct fs_inode_table *t;
	uint64_t dirs[NWORKERS];
	unsigned errors;
};

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	unsigned seed = 99;
	char buf[4096], want[32];

	for (unsigned n = 0; !__atomic_load_n(&stop_reader, __ATOMIC_RELAXED); n++) {
		int i = rand_r(&seed) % NWORKERS, ret;
		uint64_t ino;

		if (n % 2 == 0) {
			/* worker directories are never renamed */
			snprintf(want, sizeof(want), "worker%d", i);
			if (fs_inode_path(rd->t, rd->dirs[i], NULL, buf, sizeof(buf)) ||
			    strcmp(buf, want))
				rd->errors++;
			continue;
		}
		ino = __atomic_load_n(&newest_ino, __ATOMIC_RELAXED);
		ino -= rand_r(&seed) % 8;
		if (ino <= rd->dirs[NWORKERS - 1])
			continue;       /* workers have not started yet */
		ret = fs_inode_path(rd->t, ino, NULL, buf, sizeof(buf));
		if (ret == 0) {
			/* "workerN/fM", "workerN/gM" or "sharedK" */
			if (strncmp(buf, "worker", 6) ? strncmp(buf, "shared", 6) :
			    !strchr(buf, '/') || strstr(buf, "//"))
				rd->errors++;
		} else if (ret != -ESTALE) {
			rd->errors++;
		}
	}
	return NULL;
}

static void test_concurrency(void **state)
{
	struct fs_inode_table *t = *state;
	struct worker w[NWORKERS];
	struct reader rd = { .t = t };
	pthread_t th[NWORKERS], reader;
	char name[32];

	for (int i = 0; i < NWORKERS; i++) {
		snprintf(name, sizeof(name), "worker%d", i);
		w[i] = (struct worker){ .t = t, .id = i,
					.dir = look(t, FS_ROOT_INO, name, S_IFDIR, 1) };
		rd.dirs[i] = w[i].dir;
	}
	newest_ino = w[0].dir;
	stop_reader = 0;
	assert_int_equal(pthread_create(&reader, NULL, reader_main, &rd), 0);
	for (int i = 0; i < NWORKERS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	for (int i = 0; i < NWORKERS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	__atomic_store_n(&stop_reader, 1, __ATOMIC_RELAXED);
	assert_int_equal(pthread_join(reader, NULL), 0);

	for (int i = 0; i < NWORKERS; i++)
		assert_int_equal(w[i].errors, 0);
	assert_int_equal(rd.errors, 0);
	/* everything the workers looked up they forgot: only their dirs left */
	assert_int_equal(fs_inode_count(t), 1 + NWORKERS);
	for (int i = 0; i < NWORKERS; i++) {
		snprintf(name, sizeof(name), "worker%d", i);
		expect_path(t, w[i].dir, NULL, name);
		fs_inode_forget(t, w[i].dir, 1);
	}
	assert_int_equal(fs_inode_count(t), 1);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "shared0"), 0);
}


/* ------------------------------------------------------- hard links */

static struct stat file_st(dev_t dev, ino_t ino, nlink_t nlink, mode_t type)
{
	struct stat st = { .st_dev = dev, .st_ino = ino, .st_nlink = nlink,
			   .st_mode = type | 0644 };

	return st;
}

static uint64_t look_st(struct fs_inode_table *t, uint64_t parent,
			const char *name, const struct stat *st, uint64_t gen)
{
	int err = 12345;
	uint64_t ino = fs_inode_lookup_st(t, parent, name, st, gen, 1, &err);

	assert_int_equal(err, 0);
	assert_true(ino != 0);
	return ino;
}

static void test_hardlinks_are_one_node(void **state)
{
	struct fs_inode_table *t = *state;
	struct stat st = file_st(5, 77, 2, S_IFREG);
	uint64_t d = look(t, FS_ROOT_INO, "d", S_IFDIR, 1);
	uint64_t a = look_st(t, FS_ROOT_INO, "a", &st, 1);
	uint64_t b = look_st(t, d, "b", &st, 1);

	/* another name of the same backend file, same generation: one node */
	assert_int_equal(b, a);
	assert_int_equal(fs_inode_nnames(t, a), 2);
	assert_int_equal(fs_inode_find(t, d, "b"), a);
	expect_path(t, a, NULL, "a");           /* the first name */
	/* the kernel looked it up twice, through two names */
	fs_inode_forget(t, a, 1);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), a);

	/* one name goes: the node lives on under the other */
	fs_inode_unlink(t, FS_ROOT_INO, "a");
	assert_int_equal(fs_inode_nnames(t, a), 1);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), 0);
	expect_path(t, a, NULL, "d/b");
	fs_inode_rename(t, d, "b", FS_ROOT_INO, "c");
	expect_path(t, a, NULL, "c");
	fs_inode_unlink(t, FS_ROOT_INO, "c");
	assert_int_equal(fs_inode_nnames(t, a), 0);
	fs_inode_forget(t, a, 1);
	fs_inode_forget(t, d, 1);
	assert_int_equal(fs_inode_count(t), 1);
}

static void test_hardlink_guards(void **state)
{
	struct fs_inode_table *t = *state;
	struct stat two = file_st(5, 88, 2, S_IFREG), one = file_st(5, 99, 1, S_IFREG);
	struct stat dir = file_st(5, 111, 3, S_IFDIR);
	uint64_t a, b;

	/* inode numbers mean nothing across an engine restart */
	a = look_st(t, FS_ROOT_INO, "g1", &two, 1);
	b = look_st(t, FS_ROOT_INO, "g2", &two, 2);
	assert_true(a != b);
	/* a file without links never joins another (numbers can be reused) */
	assert_true(look_st(t, FS_ROOT_INO, "n1", &one, 1) !=
		    look_st(t, FS_ROOT_INO, "n2", &one, 1));
	/* neither does a directory, nor a name seen without a generation */
	assert_true(look_st(t, FS_ROOT_INO, "d1", &dir, 1) !=
		    look_st(t, FS_ROOT_INO, "d2", &dir, 1));
	assert_true(look_st(t, FS_ROOT_INO, "z1", &two, 0) !=
		    look_st(t, FS_ROOT_INO, "z2", &two, 0));
	/* a known name stays with its node even if another now has its
	 * identity: two nodes the kernel knows cannot become one */
	one.st_ino = 88;
	one.st_nlink = 2;
	assert_int_equal(look_st(t, FS_ROOT_INO, "n1", &one, 2), fs_inode_find(t, FS_ROOT_INO, "n1"));
	assert_int_equal(look_st(t, FS_ROOT_INO, "g3", &two, 2), b);
	/* an unlinked node joins nothing */
	fs_inode_unlink(t, FS_ROOT_INO, "g2");
	fs_inode_unlink(t, FS_ROOT_INO, "g3");
	assert_true(look_st(t, FS_ROOT_INO, "g4", &two, 2) != b);
}

static void test_link_and_rename_between_links(void **state)
{
	struct fs_inode_table *t = *state;
	struct stat st = file_st(9, 5, 1, S_IFREG);
	uint64_t a = look_st(t, FS_ROOT_INO, "a", &st, 1), x;

	/* our own link(): the new name joins the node whatever the engine's
	 * inode numbers (sshfs makes them up per path) */
	st.st_nlink = 2;
	st.st_ino = 6;
	assert_int_equal(fs_inode_link(t, a, FS_ROOT_INO, "b", &st, 1), 0);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "b"), a);
	assert_int_equal(look_st(t, FS_ROOT_INO, "b", &st, 1), a);
	assert_int_equal(fs_inode_link(t, a, FS_ROOT_INO, "b", &st, 1), 0); /* again */
	assert_int_equal(fs_inode_nnames(t, a), 2);
	assert_int_equal(fs_inode_link(t, 4242, FS_ROOT_INO, "c", &st, 1), -ESTALE);

	/* rename between two names of one file does nothing (rename(2)) */
	fs_inode_rename(t, FS_ROOT_INO, "a", FS_ROOT_INO, "b");
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), a);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "b"), a);

	/* renaming another file over one name leaves the node its other */
	x = look(t, FS_ROOT_INO, "x", S_IFREG, 1);
	fs_inode_rename(t, FS_ROOT_INO, "x", FS_ROOT_INO, "a");
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), x);
	assert_int_equal(fs_inode_nnames(t, a), 1);
	expect_path(t, a, NULL, "b");

	/* exchange swaps which node each name belongs to */
	fs_inode_exchange(t, FS_ROOT_INO, "a", FS_ROOT_INO, "b");
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "a"), a);
	assert_int_equal(fs_inode_find(t, FS_ROOT_INO, "b"), x);
	expect_path(t, x, NULL, "b");
	expect_path(t, a, NULL, "a");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_root),
		T(test_lookup_ids_and_counts),
		T(test_lookup_stale_parent),
		T(test_paths),
		T(test_path_too_long),
		T(test_open_keeps_inode),
		T(test_child_keeps_parent),
		T(test_forget_parent_first_then_child),
		T(test_count_below_zero_aborts),
		T(test_rename_subtree),
		T(test_rename_over_existing),
		T(test_rename_to_unknown_parent_target_only),
		T(test_exchange),
		T(test_unlink),
		T(test_attr),
		T(test_type_change),
		T(test_type_change_under_forgotten_dir),
		T(test_silly),
		T(test_drop_name),
		T(test_growth),
		T(test_concurrency),
		T(test_hardlinks_are_one_node),
		T(test_hardlink_guards),
		T(test_link_and_rename_between_links),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
