/*
 * Unit tests for the takeover state (fs/statelog.c, fs/inode_log.c and the
 * handle log in fs/handle_table.c): records survive in the memfd, a
 * snapshot replaces the log atomically, a broken log is never replayed,
 * and an inode table and a handle table rebuilt from a log equal the ones
 * that wrote it: same node ids, counts, paths, fh numbers and tags, and
 * new ids after the restore continue where the old table stopped.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/fs.h"
#include "fs/handle.h"
#include "fs/takeover.h"

struct seen {
	int n;
	uint32_t types[64];
	char text[64][32];
};

static int collect(void *arg, uint32_t type, const void *p, size_t len)
{
	struct seen *s = arg;

	if (s->n >= 64)
		return -E2BIG;
	s->types[s->n] = type;
	snprintf(s->text[s->n], sizeof(s->text[0]), "%.*s", (int)len, (const char *)p);
	s->n++;
	return 0;
}

static void test_append_snapshot(void **state)
{
	struct fs_statelog *l, *again;
	struct seen s = { 0 };
	int fd;

	(void)state;
	assert_int_equal(fs_statelog_open(&l, -1, "test"), 0);
	assert_int_equal(fs_statelog_append(l, 1, "one", 3), 0);
	assert_int_equal(fs_statelog_append(l, 2, "two", 3), 0);
	assert_int_equal(fs_statelog_each(l, collect, &s), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.text[1], "two");
	/* a snapshot not committed changes nothing */
	fs_statelog_snap_begin(l);
	assert_int_equal(fs_statelog_snap_add(l, 9, "snap", 4), 0);
	memset(&s, 0, sizeof(s));
	assert_int_equal(fs_statelog_each(l, collect, &s), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(fs_statelog_snap_commit(l), 0);
	assert_int_equal(fs_statelog_append(l, 3, "after", 5), 0);
	/* another process (a successor) opens the same memfd */
	fd = dup(fs_statelog_fd(l));
	assert_true(fd >= 0);
	assert_int_equal(fs_statelog_open(&again, fd, NULL), 0);
	memset(&s, 0, sizeof(s));
	assert_int_equal(fs_statelog_each(again, collect, &s), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.types[0], 9);
	assert_string_equal(s.text[0], "snap");
	assert_string_equal(s.text[1], "after");
	fs_statelog_free(again);
	fs_statelog_free(l);
}

static void test_bad_memfd(void **state)
{
	struct fs_statelog *l;
	int fd = memfd_create("junk", MFD_CLOEXEC);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 8192), 0);
	assert_int_equal(write(fd, "garbage!", 8), 8);
	/* not a state log: refused, not replayed */
	assert_int_equal(fs_statelog_open(&l, fd, NULL), -EUCLEAN);
}

/* Every inode's count and path, as text, to compare two tables. */
static void dump(struct fs_inode_table *t, uint64_t upto, char *out, size_t len)
{
	size_t at = 0;

	out[0] = 0;
	for (uint64_t ino = 1; ino <= upto && at < len; ino++) {
		char path[PATH_MAX] = "-";
		int r = fs_inode_path(t, ino, NULL, path, sizeof(path));

		at += (size_t)snprintf(out + at, len - at, "%llu:%d:%s:%d:%d\n",
				       (unsigned long long)ino, r, r ? "-" : path,
				       fs_inode_nopen(t, ino), fs_inode_is_silly(t, ino));
	}
}

static void test_inode_restore(void **state)
{
	struct fs_inode_table *a, *b;
	struct fs_statelog *l, *l2;
	static char da[1 << 16], db[1 << 16];
	uint64_t d, f, g, h, next_a, next_b;
	struct stat st = { .st_mode = S_IFREG | 0644, .st_nlink = 2, .st_dev = 7, .st_ino = 99 };
	int err;

	(void)state;
	assert_int_equal(fs_inode_table_new(&a), 0);
	assert_int_equal(fs_statelog_open(&l, -1, "inodes"), 0);
	assert_int_equal(fs_inode_table_log(a, l, false), 0);
	d = fs_inode_lookup(a, FS_ROOT_INO, "dir", S_IFDIR, 1, &err);
	f = fs_inode_lookup(a, d, "file", S_IFREG, 3, &err);
	g = fs_inode_lookup_st(a, d, "linked", &st, 5, 1, &err);
	h = fs_inode_lookup_st(a, FS_ROOT_INO, "other-name", &st, 5, 1, &err);
	assert_int_equal(g, h);         /* one node: same identity, same generation */
	fs_inode_forget(a, f, 1);
	assert_int_equal(fs_inode_open(a, f), 0);
	fs_inode_rename(a, d, "file", FS_ROOT_INO, "moved");
	assert_int_equal(fs_inode_make_silly(a, FS_ROOT_INO, "moved", FS_ROOT_INO,
					     FS_SILLY_PREFIX "1"), 1);
	fs_inode_unlink(a, d, "linked");
	/* the same memfd, as a successor sees it: a new table from the log */
	assert_int_equal(fs_statelog_open(&l2, dup(fs_statelog_fd(l)), NULL), 0);
	assert_int_equal(fs_inode_table_new(&b), 0);
	assert_int_equal(fs_inode_table_log(b, l2, true), 0);
	dump(a, 10, da, sizeof(da));
	dump(b, 10, db, sizeof(db));
	assert_string_equal(da, db);
	next_a = fs_inode_lookup(a, FS_ROOT_INO, "new", S_IFREG, 1, &err);
	next_b = fs_inode_lookup(b, FS_ROOT_INO, "new", S_IFREG, 1, &err);
	assert_int_equal(next_a, next_b);       /* ids go on, never reused */
	assert_true(next_b > h);
	/* b's log was rewritten as a snapshot: a third table from it agrees */
	{
		struct fs_inode_table *c;
		struct fs_statelog *l3;

		assert_int_equal(fs_statelog_open(&l3, dup(fs_statelog_fd(l2)), NULL), 0);
		assert_int_equal(fs_inode_table_new(&c), 0);
		assert_int_equal(fs_inode_table_log(c, l3, true), 0);
		dump(b, 12, da, sizeof(da));
		dump(c, 12, db, sizeof(db));
		assert_string_equal(da, db);
		fs_inode_table_free(c);
		fs_statelog_free(l3);
	}
	fs_inode_table_free(a);
	fs_inode_table_free(b);
	fs_statelog_free(l);
	fs_statelog_free(l2);
}

static void test_handle_restore(void **state)
{
	char dir[] = "/tmp/test_takeover.XXXXXX";
	struct fs_handle_table *a, *b;
	struct fs_statelog *l, *l2;
	struct fs_handle *h1, *h2, *h3, *r;
	int64_t i1, i2, i3;

	(void)state;
	assert_non_null(mkdtemp(dir));
	assert_int_equal(fs_handle_table_new(&a, dir, true), 0);
	assert_int_equal(fs_statelog_open(&l, -1, "handles"), 0);
	assert_int_equal(fs_handle_table_log(a, l, false), 0);
	h1 = fs_handle_alloc(5, O_RDWR, false);
	h2 = fs_handle_alloc(6, O_RDONLY, false);
	h3 = fs_handle_alloc(7, O_RDONLY | O_DIRECTORY, true);
	i1 = fs_handle_add(a, h1);
	i2 = fs_handle_add(a, h2);
	i3 = fs_handle_add(a, h3);
	assert_true(i1 >= 0 && i2 >= 0 && i3 >= 0);
	/* an acknowledged write, in the journal file a successor loads */
	pthread_mutex_lock(&h1->file->lock);
	assert_int_equal(fs_journal_write(h1->file->journal, h1->tag, "abc", 3, 10), 0);
	pthread_mutex_unlock(&h1->file->lock);
	fs_handle_remove(a, (uint64_t)i2);
	/* the dead worker's table is not freed: its journal file stays */
	assert_int_equal(fs_statelog_open(&l2, dup(fs_statelog_fd(l)), NULL), 0);
	assert_int_equal(fs_handle_table_new(&b, dir, true), 0);
	assert_int_equal(fs_handle_table_log(b, l2, true), 0);
	assert_int_equal(fs_handle_count(b), 2);
	assert_null(fs_handle_get(b, (uint64_t)i2));
	r = fs_handle_get(b, (uint64_t)i1);
	assert_non_null(r);
	assert_int_equal(r->ino, 5);
	assert_int_equal(r->flags, O_RDWR);
	assert_int_equal(r->tag, h1->tag);
	assert_int_equal(r->fd, -1);    /* reopened on first use */
	assert_int_equal(fs_journal_entries(r->file->journal), 1);
	assert_true(fs_journal_has_tag(r->file->journal, h1->tag));
	fs_handle_put(b, r);
	r = fs_handle_get(b, (uint64_t)i3);
	assert_non_null(r);
	assert_true(r->dir);
	fs_handle_put(b, r);
	/* a new handle takes a free fh and a new tag */
	h2 = fs_handle_alloc(8, O_RDONLY, false);
	i2 = fs_handle_add(b, h2);
	assert_true(i2 >= 0 && (uint64_t)i2 != (uint64_t)i1 && (uint64_t)i2 != (uint64_t)i3);
	assert_true(h2->tag > h3->tag);
	fs_handle_table_free(b);        /* removes the journal files */
	fs_statelog_free(l2);
	fs_statelog_free(l);
	fs_handle_table_free(a);        /* the dead one's: freed only now */
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_snapshot),
		cmocka_unit_test(test_bad_memfd),
		cmocka_unit_test(test_inode_restore),
		cmocka_unit_test(test_handle_restore),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
