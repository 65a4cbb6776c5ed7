/*
 * Unit tests for the fs/ write journal (fs_journal_*): in-order replay of
 * writes and truncates onto a real file, sequence numbers and accounting,
 * partial drops, spilling to an unlinked file (small and multi-MiB
 * entries), and -ENOSPC without a spill directory.  Every replay is
 * compared with a model that applies the same operations in memory.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include "fs/fs.h"

static char root[64], spill[96], target[96];

static int setup(void **state)
{
	snprintf(root, sizeof(root), "/tmp/test_journal.XXXXXX");
	assert_non_null(mkdtemp(root));
	snprintf(spill, sizeof(spill), "%s/spill", root);
	snprintf(target, sizeof(target), "%s/target", root);
	assert_int_equal(mkdir(spill, 0700), 0);
	return 0;
}

static int teardown(void **state)
{
	unlink(target);
	return rmdir(spill) || rmdir(root) ? -1 : 0;
}

/* ------------------------------------------------------------ model */

/* The expected file content, built by applying the same operations. */
struct model {
	unsigned char *buf;
	size_t size, cap;
};

static void model_reserve(struct model *m, size_t size)
{
	if (size > m->cap) {
		m->buf = realloc(m->buf, size);
		assert_non_null(m->buf);
		memset(m->buf + m->cap, 0, size - m->cap);
		m->cap = size;
	}
}

static void model_write(struct model *m, const void *data, size_t len, off_t off)
{
	if (!len)
		return;         /* a zero-length write changes nothing */
	model_reserve(m, off + len);
	memcpy(m->buf + off, data, len);
	if ((size_t)off + len > m->size)
		m->size = off + len;
}

static void model_truncate(struct model *m, off_t size)
{
	model_reserve(m, size);
	if ((size_t)size < m->size)
		memset(m->buf + size, 0, m->size - size);
	m->size = size;
}

/* Journal a write and apply it to the model. */
static void jwrite(struct fs_journal *j, struct model *m, const void *data,
		   size_t len, off_t off)
{
	assert_int_equal(fs_journal_write(j, data, len, off), 0);
	if (m)
		model_write(m, data, len, off);
}

static void jtrunc(struct fs_journal *j, struct model *m, off_t size)
{
	assert_int_equal(fs_journal_truncate(j, size), 0);
	if (m)
		model_truncate(m, size);
}

/* A target file with `size` bytes of `fill`; the model starts the same. */
static int make_target(struct model *m, size_t size, int fill)
{
	int fd = open(target, O_RDWR | O_CREAT | O_TRUNC, 0600);
	unsigned char *b = malloc(size ? size : 1);

	assert_true(fd >= 0);
	assert_non_null(b);
	memset(b, fill, size);
	assert_int_equal(pwrite(fd, b, size, 0), (ssize_t)size);
	*m = (struct model){ 0 };
	model_write(m, b, size, 0);
	free(b);
	return fd;
}

/* Replay j onto fd and compare the whole file with the model. */
static void replay_and_check(struct fs_journal *j, int fd, const struct model *m)
{
	struct stat st;
	unsigned char *got;

	assert_int_equal(fs_journal_replay(j, fd), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, m->size);
	got = malloc(m->size ? m->size : 1);
	assert_non_null(got);
	assert_int_equal(pread(fd, got, m->size, 0), (ssize_t)m->size);
	assert_memory_equal(got, m->buf, m->size);
	free(got);
}

static void fill_random(unsigned char *b, size_t len, uint64_t seed)
{
	uint64_t x = seed | 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (unsigned char)x;
	}
}

/* ------------------------------------------------------------ tests */

static void test_replay_order(void **state)
{
	struct fs_journal *j = fs_journal_new(NULL, 1 << 20);
	struct model m;
	int fd = make_target(&m, 0, 0);

	assert_non_null(j);
	jwrite(j, &m, "hello world", 11, 0);
	jwrite(j, &m, "HELLO", 5, 0);          /* overlaps: later wins */
	jwrite(j, &m, "XY", 2, 9);             /* straddles the end */
	jwrite(j, &m, "tail", 4, 30);          /* leaves a hole */
	jwrite(j, &m, "w", 1, 3);
	replay_and_check(j, fd, &m);
	assert_memory_equal(m.buf, "HELwO worXY", 11);

	/* replaying twice is idempotent */
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

static void test_truncate_replay(void **state)
{
	struct fs_journal *j = fs_journal_new(NULL, 1 << 20);
	unsigned char a[100];
	struct model m;
	/* the backend file after a crash: stale and longer */
	int fd = make_target(&m, 4096, 'q');

	assert_non_null(j);
	memset(a, 'a', sizeof(a));
	jwrite(j, &m, a, sizeof(a), 0);
	jtrunc(j, &m, 10);
	jwrite(j, &m, "zz", 2, 20);
	replay_and_check(j, fd, &m);
	assert_int_equal(m.size, 22);
	assert_memory_equal(m.buf + 10, "\0\0\0\0\0\0\0\0\0\0zz", 12);

	/* truncate up then write: the gap reads as zeros */
	jtrunc(j, &m, 64);
	jwrite(j, &m, "end", 3, 60);
	replay_and_check(j, fd, &m);
	assert_int_equal(m.size, 64);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

static void test_seq_and_accounting(void **state)
{
	struct fs_journal *j = fs_journal_new(NULL, 1 << 20);
	struct model m;
	int fd;

	assert_non_null(j);
	assert_int_equal(fs_journal_seq(j), 0);
	assert_int_equal(fs_journal_entries(j), 0);
	assert_int_equal(fs_journal_bytes(j), 0);

	jwrite(j, NULL, "12345", 5, 0);
	assert_int_equal(fs_journal_seq(j), 1);
	jtrunc(j, NULL, 2);
	assert_int_equal(fs_journal_seq(j), 2);
	assert_int_equal(fs_journal_bytes(j), 5);      /* truncates carry no data */
	jwrite(j, NULL, "", 0, 7);
	assert_int_equal(fs_journal_seq(j), 3);
	jwrite(j, NULL, "abcdefghij", 10, 100);
	assert_int_equal(fs_journal_seq(j), 4);
	assert_int_equal(fs_journal_entries(j), 4);
	assert_int_equal(fs_journal_bytes(j), 15);

	/* drop(0) drops nothing, drop(2) exactly the first two */
	fs_journal_drop(j, 0);
	assert_int_equal(fs_journal_entries(j), 4);
	fs_journal_drop(j, 2);
	assert_int_equal(fs_journal_entries(j), 2);
	assert_int_equal(fs_journal_bytes(j), 10);
	assert_int_equal(fs_journal_seq(j), 4);

	/* only what is left replays */
	fd = make_target(&m, 0, 0);
	model_write(&m, "abcdefghij", 10, 100);
	replay_and_check(j, fd, &m);
	free(m.buf);

	/* everything dropped: empty, but sequence numbers keep counting */
	fs_journal_drop(j, 4);
	assert_int_equal(fs_journal_entries(j), 0);
	assert_int_equal(fs_journal_bytes(j), 0);
	assert_int_equal(fs_journal_seq(j), 4);
	jwrite(j, NULL, "x", 1, 0);
	assert_int_equal(fs_journal_seq(j), 5);
	fs_journal_drop(j, UINT64_MAX);
	assert_int_equal(fs_journal_entries(j), 0);
	close(fd);
	fs_journal_free(j);
	fs_journal_free(NULL);
}

/* Many entries with partial drops in between (the entry ring wraps). */
static void test_partial_drops(void **state)
{
	struct fs_journal *j = fs_journal_new(spill, 300);
	unsigned char chunk[16];
	struct model m;
	uint64_t upto = 0;
	int fd = make_target(&m, 0, 0);

	assert_non_null(j);
	for (int i = 0; i < 200; i++) {
		memset(chunk, 'A' + i % 26, sizeof(chunk));
		/* overlapping writes, 8 bytes apart: order matters */
		assert_int_equal(fs_journal_write(j, chunk, sizeof(chunk), i * 8), 0);
		if (i % 37 == 36) {
			upto = fs_journal_seq(j) - 5;
			fs_journal_drop(j, upto);
			assert_int_equal(fs_journal_entries(j), 5);
		}
	}
	assert_int_equal(upto, 180);
	assert_int_equal(fs_journal_entries(j), 200 - 180);
	assert_int_equal(fs_journal_bytes(j), 20 * sizeof(chunk));
	/* the model: entries 181..200 (i = 180..199) onto an empty file */
	for (int i = 180; i < 200; i++) {
		memset(chunk, 'A' + i % 26, sizeof(chunk));
		model_write(&m, chunk, sizeof(chunk), i * 8);
	}
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

static size_t dir_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	size_t n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void test_spill_small(void **state)
{
	struct fs_journal *j = fs_journal_new(spill, 10);
	unsigned char big[50];
	struct model m;
	int fd = make_target(&m, 8, 'o');

	assert_non_null(j);
	memset(big, 'S', sizeof(big));
	jwrite(j, &m, "mem1", 4, 0);               /* in memory */
	jwrite(j, &m, "spilled-twenty-bytes", 20, 2);  /* over the limit */
	jwrite(j, &m, "m2!", 3, 40);               /* fits again: 7 <= 10 */
	jwrite(j, &m, big, sizeof(big), 5);
	jtrunc(j, &m, 30);
	jwrite(j, &m, "after", 5, 28);
	assert_int_equal(fs_journal_bytes(j), 4 + 20 + 3 + 50 + 5);
	assert_int_equal(fs_journal_entries(j), 6);
	/* the spill file is unlinked: nothing visible in the directory */
	assert_int_equal(dir_entries(spill), 0);
	replay_and_check(j, fd, &m);

	/* drop the first two: the later (partly spilled) ones still replay */
	fs_journal_drop(j, 2);
	free(m.buf);
	close(fd);
	fd = make_target(&m, 0, 0);
	model_write(&m, "m2!", 3, 40);
	model_write(&m, big, sizeof(big), 5);
	model_truncate(&m, 30);
	model_write(&m, "after", 5, 28);
	replay_and_check(j, fd, &m);

	/* drop everything, then spill again: the spill file is reused */
	fs_journal_drop(j, fs_journal_seq(j));
	assert_int_equal(fs_journal_entries(j), 0);
	assert_int_equal(fs_journal_bytes(j), 0);
	free(m.buf);
	close(fd);
	fd = make_target(&m, 0, 0);
	jwrite(j, &m, "0123456789abcdef", 16, 3);
	jwrite(j, &m, "XYZ", 3, 0);
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
	assert_int_equal(dir_entries(spill), 0);
}

static void test_spill_large(void **state)
{
	const size_t big = 3u << 20;            /* more than one replay chunk */
	struct fs_journal *j = fs_journal_new(spill, 1 << 20);
	unsigned char *data = malloc(big), *data2 = malloc(big / 2 + 7);
	struct model m;
	int fd = make_target(&m, 100, 'x');

	assert_non_null(j);
	assert_non_null(data);
	assert_non_null(data2);
	fill_random(data, big, 42);
	fill_random(data2, big / 2 + 7, 7);
	jwrite(j, &m, data, big, 12345);
	jwrite(j, &m, "in-the-middle", 13, 12345 + (1 << 20) - 5);
	jwrite(j, &m, data2, big / 2 + 7, 999999);
	assert_int_equal(fs_journal_bytes(j), big + 13 + big / 2 + 7);
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	free(data);
	free(data2);
	fs_journal_free(j);
}

static void test_no_spill_dir(void **state)
{
	struct fs_journal *j = fs_journal_new(NULL, 10);
	char missing[128];
	struct model m;
	int fd;

	assert_non_null(j);
	assert_int_equal(fs_journal_write(j, "12345678", 8, 0), 0);
	assert_int_equal(fs_journal_write(j, "12345678", 8, 8), -ENOSPC);
	/* the failed write left no trace */
	assert_int_equal(fs_journal_entries(j), 1);
	assert_int_equal(fs_journal_bytes(j), 8);
	assert_int_equal(fs_journal_seq(j), 1);
	fd = make_target(&m, 0, 0);
	model_write(&m, "12345678", 8, 0);
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	fs_journal_free(j);

	/* a spill directory that does not exist fails the same way, -ENOENT */
	snprintf(missing, sizeof(missing), "%s/nope", root);
	j = fs_journal_new(missing, 0);
	assert_non_null(j);
	assert_int_equal(fs_journal_write(j, "a", 1, 0), -ENOENT);
	assert_int_equal(fs_journal_entries(j), 0);
	fs_journal_free(j);
}

static void test_replay_error(void **state)
{
	struct fs_journal *j = fs_journal_new(NULL, 1 << 20);
	struct model m;
	int fd = make_target(&m, 0, 0), ro;

	assert_non_null(j);
	jwrite(j, &m, "data", 4, 0);
	ro = open(target, O_RDONLY);
	assert_true(ro >= 0);
	assert_int_equal(fs_journal_replay(j, ro), -EBADF);
	close(ro);
	/* the journal is intact after a failed replay */
	assert_int_equal(fs_journal_entries(j), 1);
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_replay_order),
		T(test_truncate_replay),
		T(test_seq_and_accounting),
		T(test_partial_drops),
		T(test_spill_small),
		T(test_spill_large),
		T(test_no_spill_dir),
		T(test_replay_error),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
