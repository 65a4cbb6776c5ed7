/*
 * Unit tests for the metadata cache (fs/meta.c): attributes and missing
 * names by path, a complete listing answering "missing" for names not in
 * it, expiry and the stale answers of the offline service, dropping a
 * name, a changed name with its directory, a whole tree, the memory bound
 * (least recently used first), and save/load: the dataset tag, fresh
 * entries for an immutable dataset, expired ones otherwise, and a damaged
 * file.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/meta.h"

static struct stat st_of(off_t size, mode_t type)
{
	struct stat st = { .st_size = size, .st_mode = type | 0644, .st_nlink = 1 };

	return st;
}

static void test_attrs_and_missing(void **state)
{
	struct fs_meta *m;
	struct stat st = st_of(42, S_IFREG), got;

	assert_int_equal(fs_meta_new(&m, INFINITY, 1 << 20), 0);
	assert_int_equal(fs_meta_attr(m, "a/f", &got, false), -EAGAIN);
	fs_meta_set_attr(m, "a/f", &st);
	assert_int_equal(fs_meta_attr(m, "a/f", &got, false), 0);
	assert_int_equal(got.st_size, 42);
	fs_meta_set_missing(m, "a/g");
	assert_int_equal(fs_meta_attr(m, "a/g", &got, false), -ENOENT);
	/* a missing name that appears */
	fs_meta_set_attr(m, "a/g", &st);
	assert_int_equal(fs_meta_attr(m, "a/g", &got, false), 0);
	fs_meta_drop(m, "a/g");
	assert_int_equal(fs_meta_attr(m, "a/g", &got, false), -EAGAIN);
	/* without a cache nothing is known and nothing breaks */
	fs_meta_set_attr(NULL, "x", &st);
	assert_int_equal(fs_meta_attr(NULL, "x", &got, false), -EAGAIN);
	fs_meta_free(m);
}

static void test_listing(void **state)
{
	struct fs_dirent ents[] = { { "f", 5, 8 }, { "sub", 6, 4 } }, *v;
	struct fs_meta *m;
	struct stat got;
	size_t n;

	assert_int_equal(fs_meta_new(&m, INFINITY, 1 << 20), 0);
	assert_int_equal(fs_meta_listing(m, "d", &v, &n, false), -EAGAIN);
	fs_meta_set_listing(m, "d", ents, 2);
	assert_int_equal(fs_meta_listing(m, "d", &v, &n, false), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[1].name, "sub");
	assert_int_equal(v[1].ino, 6);
	assert_int_equal(v[1].type, 4);
	free(v[0].name);
	free(v[1].name);
	free(v);
	/* a name not in the complete listing is missing; one in it unknown */
	assert_int_equal(fs_meta_attr(m, "d/nope", &got, false), -ENOENT);
	assert_int_equal(fs_meta_attr(m, "d/f", &got, false), -EAGAIN);
	/* at the root ("." is its key) */
	fs_meta_set_listing(m, ".", ents, 1);
	assert_int_equal(fs_meta_attr(m, "sub", &got, false), -ENOENT);
	assert_int_equal(fs_meta_attr(m, "f", &got, false), -EAGAIN);
	/* creating d/new through us drops d's listing */
	fs_meta_changed(m, "d/new");
	assert_int_equal(fs_meta_attr(m, "d/new", &got, false), -EAGAIN);
	assert_int_equal(fs_meta_listing(m, "d", &v, &n, false), -EAGAIN);
	fs_meta_free(m);
}

static void test_expiry_and_stale(void **state)
{
	struct fs_dirent ents[] = { { "f", 5, 8 } }, *v;
	struct fs_meta *m;
	struct stat st = st_of(1, S_IFREG), got;
	size_t n;

	assert_int_equal(fs_meta_new(&m, 0.05, 1 << 20), 0);
	fs_meta_set_attr(m, "f", &st);
	fs_meta_set_listing(m, ".", ents, 1);
	assert_int_equal(fs_meta_attr(m, "f", &got, false), 0);
	usleep(80000);
	assert_int_equal(fs_meta_attr(m, "f", &got, false), -EAGAIN);
	assert_int_equal(fs_meta_attr(m, "other", &got, false), -EAGAIN);
	assert_int_equal(fs_meta_listing(m, ".", &v, &n, false), -EAGAIN);
	/* the offline service takes what it can get */
	assert_int_equal(fs_meta_attr(m, "f", &got, true), 0);
	assert_int_equal(fs_meta_attr(m, "other", &got, true), -ENOENT);
	assert_int_equal(fs_meta_listing(m, ".", &v, &n, true), 0);
	free(v[0].name);
	free(v);
	fs_meta_free(m);
}

static void test_drop_tree(void **state)
{
	struct fs_meta *m;
	struct stat st = st_of(1, S_IFREG), got;
	struct fs_meta_stats ms;

	assert_int_equal(fs_meta_new(&m, INFINITY, 1 << 20), 0);
	fs_meta_set_attr(m, "a", &st);
	fs_meta_set_attr(m, "a/b", &st);
	fs_meta_set_attr(m, "a/b/c", &st);
	fs_meta_set_attr(m, "ab", &st);         /* not below "a" */
	fs_meta_drop_tree(m, "a");
	assert_int_equal(fs_meta_attr(m, "a/b/c", &got, false), -EAGAIN);
	assert_int_equal(fs_meta_attr(m, "a", &got, false), -EAGAIN);
	assert_int_equal(fs_meta_attr(m, "ab", &got, false), 0);
	fs_meta_drop_tree(m, ".");
	fs_meta_get_stats(m, &ms);
	assert_int_equal(ms.entries, 0);
	assert_int_equal(ms.bytes, 0);
	fs_meta_free(m);
}

static void test_memory_bound(void **state)
{
	struct fs_meta *m;
	struct stat st = st_of(1, S_IFREG), got;
	struct fs_meta_stats ms;
	char key[32];

	assert_int_equal(fs_meta_new(&m, INFINITY, 64 << 10), 0);
	for (int i = 0; i < 5000; i++) {
		snprintf(key, sizeof(key), "dir/file%d", i);
		fs_meta_set_attr(m, key, &st);
		/* keep one entry in use: it must survive */
		assert_int_equal(fs_meta_attr(m, "dir/file0", &got, false), 0);
	}
	fs_meta_get_stats(m, &ms);
	assert_true(ms.bytes <= 64 << 10);
	assert_true(ms.entries < 5000);
	assert_true(ms.evictions > 0);
	assert_int_equal(ms.entries + ms.evictions, 5000);
	assert_int_equal(fs_meta_attr(m, "dir/file4999", &got, false), 0);
	assert_int_equal(fs_meta_attr(m, "dir/file1", &got, false), -EAGAIN);
	fs_meta_free(m);
}

static void test_save_load(void **state)
{
	struct fs_dirent ents[] = { { "f", 5, 8 }, { "g", 7, 8 } }, *v;
	char path[] = "/tmp/test_meta.XXXXXX";
	struct fs_meta *m, *k;
	struct stat st = st_of(77, S_IFREG), got;
	int fd = mkstemp(path);
	size_t n;

	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(fs_meta_new(&m, INFINITY, 1 << 20), 0);
	fs_meta_set_attr(m, "d/f", &st);
	fs_meta_set_missing(m, "d/x");
	fs_meta_set_listing(m, "d", ents, 2);
	assert_int_equal(fs_meta_save(m, path, 1234), 0);
	fs_meta_free(m);

	/* immutable: back as fresh */
	assert_int_equal(fs_meta_new(&k, INFINITY, 1 << 20), 0);
	assert_int_equal(fs_meta_load(k, path, 1234), 0);
	assert_int_equal(fs_meta_attr(k, "d/f", &got, false), 0);
	assert_int_equal(got.st_size, 77);
	assert_int_equal(fs_meta_attr(k, "d/x", &got, false), -ENOENT);
	assert_int_equal(fs_meta_attr(k, "d/y", &got, false), -ENOENT);   /* listing */
	assert_int_equal(fs_meta_listing(k, "d", &v, &n, false), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[1].name, "g");
	free(v[0].name);
	free(v[1].name);
	free(v);
	fs_meta_free(k);

	/* another dataset on the same mount point: nothing inherited */
	assert_int_equal(fs_meta_new(&k, INFINITY, 1 << 20), 0);
	assert_int_equal(fs_meta_load(k, path, 999), 0);
	assert_int_equal(fs_meta_attr(k, "d/f", &got, false), -EAGAIN);
	fs_meta_free(k);

	/* a finite ttl: only the offline service may use them */
	assert_int_equal(fs_meta_new(&k, 60, 1 << 20), 0);
	assert_int_equal(fs_meta_load(k, path, 1234), 0);
	assert_int_equal(fs_meta_attr(k, "d/f", &got, false), -EAGAIN);
	assert_int_equal(fs_meta_attr(k, "d/f", &got, true), 0);
	fs_meta_free(k);

	/* damaged: cut in the middle; no crash, an error, what came before kept */
	assert_int_equal(truncate(path, 60), 0);
	assert_int_equal(fs_meta_new(&k, INFINITY, 1 << 20), 0);
	assert_int_equal(fs_meta_load(k, path, 1234), -EINVAL);
	fs_meta_free(k);
	unlink(path);
	/* none at all is no error */
	assert_int_equal(fs_meta_new(&k, INFINITY, 1 << 20), 0);
	assert_int_equal(fs_meta_load(k, path, 1234), 0);
	fs_meta_free(k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attrs_and_missing),
		cmocka_unit_test(test_listing),
		cmocka_unit_test(test_expiry_and_stale),
		cmocka_unit_test(test_drop_tree),
		cmocka_unit_test(test_memory_bound),
		cmocka_unit_test(test_save_load),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
