/*
 * Unit tests for the per-file write journal (fs_journal_*): in-order replay
 * of writes, truncates and every fallocate mode FUSE passes on, onto a
 * real file; one order across descriptors (tags); retirement by an fsync
 * through another descriptor, and by a flush of one descriptor that keeps
 * older entries of others in front; sequence numbers and accounting; the
 * size and age the checkpoint bounds use; a replay cut short and run
 * again; multi-MiB entries; the log file rebuilt into a new journal
 * (fs_journal_load), punched prefix included; and a randomized check that
 * replaying onto any state an engine crash can leave gives the file every
 * acknowledged change made.  Every replay is compared with a model that
 * applies the same changes in memory.
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/fs.h"

#define A 1     /* tags: two descriptors of one file */
#define B 2

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

/* The expected file content, built by applying the same changes. */
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

static void model_falloc(struct model *m, int mode, off_t off, off_t len)
{
	size_t end = off + len;

	model_reserve(m, end);
	/* bytes past the end are zeros in the model anyway */
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
		memset(m->buf + off, 0, len);
	if (!(mode & FALLOC_FL_KEEP_SIZE) && end > m->size)
		m->size = end;
}

/* Journal a change and apply it to the model. */
static void jwrite(struct fs_journal *j, struct model *m, uint64_t tag,
		   const void *data, size_t len, off_t off)
{
	assert_int_equal(fs_journal_write(j, tag, data, len, off), 0);
	if (m)
		model_write(m, data, len, off);
}

static void jtrunc(struct fs_journal *j, struct model *m, uint64_t tag, off_t size)
{
	assert_int_equal(fs_journal_truncate(j, tag, size), 0);
	if (m)
		model_truncate(m, size);
}

static void jfalloc(struct fs_journal *j, struct model *m, uint64_t tag, int mode,
		    off_t off, off_t len)
{
	assert_int_equal(fs_journal_fallocate(j, tag, mode, off, len), 0);
	if (m)
		model_falloc(m, mode, off, len);
}

/* A target file holding the model's content. */
static int make_target_from(const struct model *m)
{
	int fd = open(target, O_RDWR | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, m->buf, m->size, 0), (ssize_t)m->size);
	assert_int_equal(ftruncate(fd, m->size), 0);
	return fd;
}

/* A target file with `size` bytes of `fill`; the model starts the same. */
static int make_target(struct model *m, size_t size, int fill)
{
	unsigned char *b = malloc(size ? size : 1);

	assert_non_null(b);
	memset(b, fill, size);
	*m = (struct model){ 0 };
	model_write(m, b, size, 0);
	m->size = size;
	free(b);
	return make_target_from(m);
}

static void check_file(int fd, const struct model *m)
{
	struct stat st;
	unsigned char *got;

	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, m->size);
	got = malloc(m->size ? m->size : 1);
	assert_non_null(got);
	assert_int_equal(pread(fd, got, m->size, 0), (ssize_t)m->size);
	assert_memory_equal(got, m->buf, m->size);
	free(got);
}

/* Replay j onto fd and compare the whole file with the model. */
static void replay_and_check(struct fs_journal *j, int fd, const struct model *m)
{
	assert_int_equal(fs_journal_replay(j, fd), 0);
	check_file(fd, m);
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

/* ------------------------------------------------------------ tests */

static void test_replay_order(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	struct model m;
	int fd = make_target(&m, 0, 0);

	assert_non_null(j);
	jwrite(j, &m, A, "hello world", 11, 0);
	jwrite(j, &m, A, "HELLO", 5, 0);          /* overlaps: later wins */
	jwrite(j, &m, A, "XY", 2, 9);             /* straddles the end */
	jwrite(j, &m, A, "tail", 4, 30);          /* leaves a hole */
	jwrite(j, &m, A, "w", 1, 3);
	replay_and_check(j, fd, &m);
	assert_memory_equal(m.buf, "HELwO worXY", 11);

	/* replaying twice is idempotent */
	replay_and_check(j, fd, &m);
	/* the log file is unlinked: nothing visible in the directory */
	assert_int_equal(dir_entries(spill), 0);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

static void test_truncate_replay(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	unsigned char a[100];
	struct model m;
	/* the backend file after a crash: stale and longer */
	int fd = make_target(&m, 4096, 'q');

	assert_non_null(j);
	memset(a, 'a', sizeof(a));
	jwrite(j, &m, A, a, sizeof(a), 0);
	jtrunc(j, &m, A, 10);
	jwrite(j, &m, A, "zz", 2, 20);
	replay_and_check(j, fd, &m);
	assert_int_equal(m.size, 22);
	assert_memory_equal(m.buf + 10, "\0\0\0\0\0\0\0\0\0\0zz", 12);

	/* truncate up then write: the gap reads as zeros */
	jtrunc(j, &m, A, 64);
	jwrite(j, &m, A, "end", 3, 60);
	replay_and_check(j, fd, &m);
	assert_int_equal(m.size, 64);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

/* Every fallocate mode FUSE passes on, after a write, in order. */
static void test_fallocate_replay(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	unsigned char data[64 << 10];
	struct model m;
	int fd = make_target(&m, 0, 0);

	assert_non_null(j);
	fill_random(data, sizeof(data), 3);
	jwrite(j, &m, A, data, sizeof(data), 0);
	jfalloc(j, &m, A, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192);
	jfalloc(j, &m, A, FALLOC_FL_ZERO_RANGE, 20000, 5000);
	jfalloc(j, &m, A, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 60000, 100000);
	jfalloc(j, &m, A, 0, 0, 200000);              /* extends the file */
	jfalloc(j, &m, A, FALLOC_FL_KEEP_SIZE, 0, 400000);      /* does not */
	jwrite(j, &m, A, "after", 5, 6000);             /* inside the hole */
	assert_int_equal(fs_journal_size(j), 200000);
	assert_int_equal(m.size, 200000);
	replay_and_check(j, fd, &m);
	/* onto a stale, longer file too */
	close(fd);
	{
		struct model stale;

		fd = make_target(&stale, 300000, 's');
		free(stale.buf);
	}
	/* the stale bytes beyond 64 KiB survive, as they would on the engine:
	 * the journal only knows what it changed */
	assert_int_equal(fs_journal_replay(j, fd), 0);
	{
		unsigned char got[5];

		assert_int_equal(pread(fd, got, 5, 6000), 5);
		assert_memory_equal(got, "after", 5);
		assert_int_equal(pread(fd, got, 1, 4096), 1);
		assert_int_equal(got[0], 0);            /* punched */
	}
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

static void test_seq_and_accounting(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	struct model m;
	int fd;

	assert_non_null(j);
	assert_int_equal(fs_journal_seq(j), 0);
	assert_int_equal(fs_journal_entries(j), 0);
	assert_int_equal(fs_journal_bytes(j), 0);
	assert_int_equal(fs_journal_fd(j), -1);         /* no file until needed */

	jwrite(j, NULL, A, "12345", 5, 0);
	assert_int_equal(fs_journal_seq(j), 1);
	assert_true(fs_journal_fd(j) >= 0);
	jtrunc(j, NULL, A, 2);
	assert_int_equal(fs_journal_seq(j), 2);
	assert_int_equal(fs_journal_bytes(j), 5);      /* truncates carry no data */
	jwrite(j, NULL, A, "", 0, 7);
	assert_int_equal(fs_journal_seq(j), 3);
	jwrite(j, NULL, A, "abcdefghij", 10, 100);
	assert_int_equal(fs_journal_seq(j), 4);
	assert_int_equal(fs_journal_entries(j), 4);
	assert_int_equal(fs_journal_bytes(j), 15);

	/* retire(0) retires nothing, retire(2) exactly the first two */
	fs_journal_retire(j, 0, 0);
	assert_int_equal(fs_journal_entries(j), 4);
	fs_journal_retire(j, 2, 0);
	assert_int_equal(fs_journal_entries(j), 2);
	assert_int_equal(fs_journal_bytes(j), 10);
	assert_int_equal(fs_journal_seq(j), 4);

	/* only what is left replays */
	fd = make_target(&m, 0, 0);
	model_write(&m, "abcdefghij", 10, 100);
	replay_and_check(j, fd, &m);
	free(m.buf);

	/* everything retired: empty, but sequence numbers keep counting */
	fs_journal_retire(j, 4, 0);
	assert_int_equal(fs_journal_entries(j), 0);
	assert_int_equal(fs_journal_bytes(j), 0);
	assert_int_equal(fs_journal_seq(j), 4);
	assert_true(fs_journal_age(j) == 0);
	{
		struct stat st;

		assert_int_equal(fstat(fs_journal_fd(j), &st), 0);
		assert_int_equal(st.st_size, 0);        /* the space is given back */
	}
	jwrite(j, NULL, A, "x", 1, 0);
	assert_int_equal(fs_journal_seq(j), 5);
	fs_journal_retire(j, UINT64_MAX, 0);
	assert_int_equal(fs_journal_entries(j), 0);
	close(fd);
	fs_journal_free(j);
	fs_journal_free(NULL);
}

/*
 * The first scenario of the issue: 8 KiB of O through descriptor A (not
 * flushed), then 8 KiB of N through B at the same offset.  Whatever B does
 * next, a replay must leave N.
 */
static void test_two_descriptors(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	unsigned char o[8192], n[8192];
	struct model m;
	int fd = make_target(&m, 0, 0);
	uint64_t seq;

	assert_non_null(j);
	memset(o, 'O', sizeof(o));
	memset(n, 'N', sizeof(n));
	jwrite(j, &m, A, o, sizeof(o), 0);
	jwrite(j, &m, B, n, sizeof(n), 0);
	seq = fs_journal_seq(j);

	/* close(B): B's flush retires B's entry only (A's may still be in
	 * flight inside the engine), but A's older entry stays in front of
	 * it, so both replay, in order */
	fs_journal_retire(j, seq, B);
	assert_true(fs_journal_has_tag(j, A));
	assert_false(fs_journal_has_tag(j, B));
	assert_int_equal(fs_journal_entries(j), 2);
	replay_and_check(j, fd, &m);
	assert_int_equal(m.buf[0], 'N');

	/* fsync(B) instead: everything acknowledged before it is durable */
	fs_journal_retire(j, seq, 0);
	assert_int_equal(fs_journal_entries(j), 0);
	assert_false(fs_journal_has_tag(j, A));
	/* a replay then writes nothing: the engine's N stays */
	close(fd);
	memset(m.buf, 'N', 8192);
	fd = make_target_from(&m);
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

/* A flush of A retires A's entries; only the prefix where everything is
 * retired is dropped, the rest keeps its order. */
static void test_flush_keeps_order(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	struct model m;
	int fd = make_target(&m, 0, 0);

	assert_non_null(j);
	jwrite(j, &m, A, "a1", 2, 0);           /* 1 */
	jwrite(j, &m, B, "b2", 2, 0);           /* 2 */
	jwrite(j, &m, A, "a3", 2, 4);           /* 3 */
	fs_journal_retire(j, 3, A);             /* 1 and 3 durable, 2 not */
	assert_int_equal(fs_journal_entries(j), 2);     /* 1 dropped */
	assert_false(fs_journal_has_tag(j, A));
	assert_true(fs_journal_has_tag(j, B));
	replay_and_check(j, fd, &m);
	fs_journal_retire(j, 2, B);             /* now all durable */
	assert_int_equal(fs_journal_entries(j), 0);
	close(fd);
	free(m.buf);
	fs_journal_free(j);
}

static void test_size_and_age(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	double age;

	assert_non_null(j);
	assert_int_equal(fs_journal_size(j), 0);
	fs_journal_set_size(j, 1000);           /* the file as opened */
	jwrite(j, NULL, A, "x", 1, 10);
	assert_int_equal(fs_journal_size(j), 1000);
	usleep(100000);                         /* entry 1 is 0.1 s older */
	jwrite(j, NULL, A, "x", 1, 4999);
	assert_int_equal(fs_journal_size(j), 5000);
	jtrunc(j, NULL, A, 100);
	assert_int_equal(fs_journal_size(j), 100);
	jfalloc(j, NULL, A, FALLOC_FL_KEEP_SIZE, 0, 9000);
	assert_int_equal(fs_journal_size(j), 100);
	jfalloc(j, NULL, A, 0, 0, 9000);
	assert_int_equal(fs_journal_size(j), 9000);
	fs_journal_set_size(j, 10);             /* never shrinks it */
	assert_int_equal(fs_journal_size(j), 9000);

	/* the age is that of the oldest entry left */
	age = fs_journal_age(j);
	assert_true(age >= 0.1 && age < 5);
	fs_journal_retire(j, 1, 0);
	assert_true(fs_journal_age(j) < 0.09);
	fs_journal_retire(j, fs_journal_seq(j), 0);
	assert_true(fs_journal_age(j) == 0);
	fs_journal_free(j);
}

/* Many entries with partial retirements in between (the entry ring wraps,
 * the durable prefix of the log file is punched out). */
static void test_partial_retires(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	unsigned char chunk[1000];
	struct model m;
	uint64_t upto = 0;
	int fd = make_target(&m, 0, 0);
	struct stat st;

	assert_non_null(j);
	for (int i = 0; i < 200; i++) {
		memset(chunk, 'A' + i % 26, sizeof(chunk));
		/* overlapping writes, 8 bytes apart: order matters */
		assert_int_equal(fs_journal_write(j, A, chunk, sizeof(chunk), i * 8), 0);
		if (i % 37 == 36) {
			upto = fs_journal_seq(j) - 5;
			fs_journal_retire(j, upto, 0);
			assert_int_equal(fs_journal_entries(j), 5);
		}
	}
	assert_int_equal(upto, 180);
	assert_int_equal(fs_journal_entries(j), 200 - 180);
	assert_int_equal(fs_journal_bytes(j), 20 * sizeof(chunk));
	/* the space of retired entries went back to the file system */
	assert_int_equal(fstat(fs_journal_fd(j), &st), 0);
	assert_true((size_t)st.st_blocks * 512 < 40 * sizeof(chunk) + 3 * 4096);
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

static void test_large_entries(void **state)
{
	const size_t big = 3u << 20;            /* more than one replay chunk */
	struct fs_journal *j = fs_journal_new(spill);
	unsigned char *data = malloc(big), *data2 = malloc(big / 2 + 7);
	struct model m;
	int fd = make_target(&m, 100, 'x');

	assert_non_null(j);
	assert_non_null(data);
	assert_non_null(data2);
	fill_random(data, big, 42);
	fill_random(data2, big / 2 + 7, 7);
	jwrite(j, &m, A, data, big, 12345);
	jwrite(j, &m, B, "in-the-middle", 13, 12345 + (1 << 20) - 5);
	jwrite(j, &m, A, data2, big / 2 + 7, 999999);
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
	struct fs_journal *j = fs_journal_new(NULL);
	char missing[128];

	assert_non_null(j);
	assert_int_equal(fs_journal_write(j, A, "12345678", 8, 0), -ENOSPC);
	/* the failed write left no trace */
	assert_int_equal(fs_journal_entries(j), 0);
	assert_int_equal(fs_journal_bytes(j), 0);
	assert_int_equal(fs_journal_seq(j), 0);
	fs_journal_free(j);

	/* a spill directory that does not exist fails the same way, -ENOENT */
	snprintf(missing, sizeof(missing), "%s/nope", root);
	j = fs_journal_new(missing);
	assert_non_null(j);
	assert_int_equal(fs_journal_write(j, A, "a", 1, 0), -ENOENT);
	assert_int_equal(fs_journal_entries(j), 0);
	fs_journal_free(j);
}

/* A replay cut short (the engine died under it) just runs again. */
static void test_resumed_replay(void **state)
{
	struct fs_journal *j = fs_journal_new(spill);
	unsigned char *data = malloc(1 << 20);
	struct rlimit lim, old;
	struct model m;
	int fd = make_target(&m, 0, 0), ro;

	assert_non_null(j);
	fill_random(data, 1 << 20, 9);
	jwrite(j, &m, A, data, 1 << 20, 0);
	jtrunc(j, &m, A, 1000);
	jwrite(j, &m, B, data, 300000, 500000);
	jfalloc(j, &m, A, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 600000, 4096);
	jwrite(j, &m, A, "end", 3, 900000);

	/* a descriptor the engine refuses: nothing written, journal intact */
	ro = open(target, O_RDONLY);
	assert_true(ro >= 0);
	assert_int_equal(fs_journal_replay(j, ro), -EBADF);
	close(ro);
	assert_int_equal(fs_journal_entries(j), 5);

	/* a replay that stops halfway: the file cannot grow past 512 KiB */
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 512 << 10;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	assert_int_equal(fs_journal_replay(j, fd), -EFBIG);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	/* ... and again, whole this time */
	replay_and_check(j, fd, &m);
	close(fd);
	free(m.buf);
	free(data);
	fs_journal_free(j);
}

/* The log file alone describes the journal: a new one loads it. */
static void test_load(void **state)
{
	struct fs_journal *j = fs_journal_new(spill), *k;
	struct model live = { 0 }, eng = { 0 };
	unsigned char chunk[3000];
	int fd, copy;

	assert_non_null(j);
	for (int i = 0; i < 60; i++) {
		uint64_t tag = i % 2 ? A : B;

		memset(chunk, 'a' + i % 26, sizeof(chunk));
		jwrite(j, &live, tag, chunk, sizeof(chunk), i * 1000);
		/* durable below: seq 1..40, and B's up to 50 */
		if (i < 40 || (i < 50 && tag == B))
			model_write(&eng, chunk, sizeof(chunk), i * 1000);
	}
	/* the first 40 durable (the log's first pages are punched), then B's
	 * flush marks more, then a truncate and a fallocate */
	fs_journal_retire(j, 40, 0);
	fs_journal_retire(j, 50, B);
	jtrunc(j, &live, A, 55000);
	jfalloc(j, &live, A, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 50000, 2000);

	copy = dup(fs_journal_fd(j));
	assert_true(copy >= 0);
	k = fs_journal_new(spill);
	assert_non_null(k);
	assert_int_equal(fs_journal_load(k, copy), 0);
	assert_int_equal(fs_journal_seq(k), fs_journal_seq(j));
	assert_int_equal(fs_journal_entries(k), fs_journal_entries(j));
	assert_int_equal(fs_journal_bytes(k), fs_journal_bytes(j));
	assert_true(fs_journal_has_tag(k, A));
	assert_true(fs_journal_has_tag(k, B));       /* i = 50, 52 ... */
	/* onto the engine's file after a crash: only the durable changes */
	fd = make_target_from(&eng);
	replay_and_check(k, fd, &live);
	/* it goes on from there like the original */
	jwrite(k, &live, A, "more", 4, 7);
	replay_and_check(k, fd, &live);
	assert_int_equal(fs_journal_load(k, copy), -EBUSY);
	fs_journal_free(j);
	fs_journal_free(k);

	/* not a journal */
	k = fs_journal_new(spill);
	assert_int_equal(fs_journal_load(k, fd), -EINVAL);
	fs_journal_free(k);     /* took fd over */
	free(live.buf);
	free(eng.buf);
}

/*
 * Randomized: changes through three descriptors, flushes and fsyncs in
 * between; at random points an "engine crash" leaves the engine's file
 * with every durable change and any subset of the others applied, in
 * order.  Replaying onto that must give the file every change made.
 */
static void test_random_crashes(void **state)
{
	enum { OPS = 3000, MAXOFF = 200000 };
	struct fs_journal *j = fs_journal_new(spill);
	struct op { int kind, tag, mode; off_t off, len; unsigned seed; bool durable; } *ops;
	unsigned char *data = malloc(65536);
	struct model live = { 0 };
	uint64_t x = 12345;
	int crashes = 0;

	assert_non_null(j);
	assert_non_null(data);
	ops = calloc(OPS, sizeof(*ops));
	assert_non_null(ops);
#define RND() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
	for (int i = 0; i < OPS; i++) {
		struct op *o = &ops[i];
		int r = RND() % 100;

		o->tag = 1 + RND() % 3;
		if (r < 60) {
			o->kind = 0;
			o->off = RND() % MAXOFF;
			o->len = 1 + RND() % 65536;
			o->seed = (unsigned)RND();
			fill_random(data, o->len, o->seed);
			jwrite(j, &live, o->tag, data, o->len, o->off);
		} else if (r < 70) {
			o->kind = 1;
			o->off = RND() % MAXOFF;
			jtrunc(j, &live, o->tag, o->off);
		} else if (r < 80) {
			static const int modes[] = {
				0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
			};
			o->kind = 2;
			o->mode = modes[RND() % 5];
			o->off = RND() % MAXOFF;
			o->len = 1 + RND() % 30000;
			jfalloc(j, &live, o->tag, o->mode, o->off, o->len);
		} else {
			/* a flush of one descriptor, or an fsync (tag 0) */
			uint64_t tag = r < 95 ? 1 + RND() % 3 : 0;

			o->kind = 3;
			fs_journal_retire(j, fs_journal_seq(j), tag);
			for (int k = 0; k < i; k++)
				if (ops[k].kind != 3 && (!tag || ops[k].tag == (int)tag))
					ops[k].durable = true;
		}
		if (i % 97 == 96) {
			/* crash: the engine's file is the durable changes, plus a
			 * random subset of the rest, applied in order */
			struct model eng = { 0 };
			int fd;

			for (int k = 0; k <= i; k++) {
				struct op *p = &ops[k];

				if (p->kind == 3 || (!p->durable && RND() % 2))
					continue;
				if (p->kind == 0) {
					fill_random(data, p->len, p->seed);
					model_write(&eng, data, p->len, p->off);
				} else if (p->kind == 1) {
					model_truncate(&eng, p->off);
				} else {
					model_falloc(&eng, p->mode, p->off, p->len);
				}
			}
			fd = make_target_from(&eng);
			replay_and_check(j, fd, &live);
			close(fd);
			free(eng.buf);
			crashes++;
		}
	}
#undef RND
	assert_int_equal(crashes, OPS / 97);
	free(live.buf);
	free(ops);
	free(data);
	fs_journal_free(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_replay_order),
		T(test_truncate_replay),
		T(test_fallocate_replay),
		T(test_seq_and_accounting),
		T(test_two_descriptors),
		T(test_flush_keeps_order),
		T(test_size_and_age),
		T(test_partial_retires),
		T(test_large_entries),
		T(test_no_spill_dir),
		T(test_resumed_replay),
		T(test_load),
		T(test_random_crashes),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
