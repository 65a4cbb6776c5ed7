/*
 * Unit tests for the plain copies of cache/whole.c (cache_passthrough_fd):
 * what the fd holds, when a copy is made and reused, what it charges to
 * the tier, that it goes with its first block (write, evict, rebuild) or
 * once the file changes, on a checksum mismatch (of the copy, or of a
 * block it is made from), and copies of files of several blocks.
 * Block size 64 KiB, as in test_cache.c.
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

#include "cache/cache.h"

#define BS 65536u

static char root[64], dir0[128], dir1[128];

static int setup(void **state)
{
	(void)state;
	snprintf(root, sizeof(root), "/tmp/test_whole.XXXXXX");
	assert_non_null(mkdtemp(root));
	snprintf(dir0, sizeof(dir0), "%s/t0", root);
	snprintf(dir1, sizeof(dir1), "%s/t1", root);
	mkdir(dir0, 0700);
	mkdir(dir1, 0700);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	return system(cmd) == 0 ? 0 : -1;
}

/* The engine: a buffer, and a count of reads. */
struct backend {
	char *data;
	size_t size;
	unsigned calls;
};

static ssize_t be_fetch(void *arg, void *buf, size_t len, off_t off)
{
	struct backend *b = arg;
	size_t n;

	b->calls++;
	if ((size_t)off >= b->size)
		return 0;
	n = len < b->size - (size_t)off ? len : b->size - (size_t)off;
	memcpy(buf, b->data + off, n);
	return (ssize_t)n;
}

static void be_init(struct backend *b, size_t size, unsigned seed)
{
	memset(b, 0, sizeof(*b));
	b->size = size;
	b->data = malloc(size ? size : 1);
	for (size_t i = 0; i < size; i++)
		b->data[i] = (char)((i * 131 + seed * 7 + i / 4096) & 0xff);
}

/* tier0 NULL: a 10 MiB SSD tier in dir0 */
static struct cache *mkcache(const char *tier0, const char *tier1)
{
	struct cache_config cfg;
	struct cache *c = NULL;
	char err[512] = "", def[256];

	snprintf(def, sizeof(def), "SSD:%s:10M", dir0);
	if (!tier0)
		tier0 = def;

	cache_config_init(&cfg);
	assert_int_equal(cache_config_set(&cfg, "block_size", "64K", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "prefetch", "0", err, sizeof(err)), 0);
	if (cache_config_set(&cfg, "tier0", tier0, err, sizeof(err)) ||
	    (tier1 && cache_config_set(&cfg, "tier1", tier1, err, sizeof(err))))
		fail_msg("tier: %s", err);
	if (cache_new(&c, &cfg, root, err, sizeof(err)) != 0)
		fail_msg("cache_new: %s", err);
	cache_config_release(&cfg);
	return c;
}

/* Cache key's file whole with one handle (mtime 1). */
static void fill(struct cache *c, const char *key, struct backend *b)
{
	struct cache_file *cf;
	char *buf = malloc(b->size + 1);
	int keep;

	assert_int_equal(cache_file_open(c, key, b->size, 1, NULL, &cf, &keep), 0);
	assert_int_equal(cache_read(cf, buf, b->size, 0, be_fetch, b), (ssize_t)b->size);
	assert_memory_equal(buf, b->data, b->size);
	cache_file_close(cf);
	free(buf);
}

/* The fd holds exactly the file. */
static void fd_check(int fd, const struct backend *b)
{
	char *buf = malloc(b->size + 16);
	struct stat st;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, b->size);
	assert_int_equal(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
	assert_int_equal(pread(fd, buf, b->size + 16, 0), (ssize_t)b->size);
	assert_memory_equal(buf, b->data, b->size);
	free(buf);
}

/* Files under a tier directory whose name ends in sfx ("" = block files). */
static unsigned count_files(const char *dir, const char *sfx, char *last, size_t len)
{
	unsigned n = 0;

	for (unsigned x = 0; x < 256; x++) {
		char sub[256];
		struct dirent *de;
		DIR *d;

		snprintf(sub, sizeof(sub), "%s/%02x", dir, x);
		if (!(d = opendir(sub)))
			continue;
		while ((de = readdir(d))) {
			size_t nl = strlen(de->d_name), sl = strlen(sfx);

			if (de->d_name[0] == '.' || nl != 33 + sl || strcmp(de->d_name + 33, sfx))
				continue;
			n++;
			if (last)
				snprintf(last, len, "%s/%s", sub, de->d_name);
		}
		closedir(d);
	}
	return n;
}

static uint64_t used(struct cache *c, size_t tier)
{
	struct cache_stats st;

	cache_get_stats(c, &st);
	return st.tier[tier].used;
}

/* A first call makes the copy (charged to the tier, next to the block),
 * later calls open it again; a file not wholly cached with these
 * attributes, or empty, gets none. */
static void test_copy_made_once(void **state)
{
	struct cache *c = mkcache(NULL, NULL);
	struct cache_stats st;
	struct backend b, big;
	uint64_t before;
	int fd;

	(void)state;
	be_init(&b, 10000, 1);
	be_init(&big, BS + 1, 2);
	assert_int_equal(cache_passthrough_fd(c, "f", b.size, 1), -ENODATA);
	fill(c, "f", &b);
	fill(c, "big", &big);
	before = used(c, 0);
	assert_int_equal(cache_passthrough_fd(c, "f", b.size, 2), -ENODATA);   /* mtime */
	assert_int_equal(cache_passthrough_fd(c, "f", b.size + 1, 1), -ENODATA);  /* size */
	assert_int_equal(cache_passthrough_fd(c, "nothing", 0, 1), -ENODATA);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);

	fd = cache_passthrough_fd(c, "f", b.size, 1);
	fd_check(fd, &b);
	close(fd);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 1);
	assert_int_equal(used(c, 0), before + b.size);
	fd = cache_passthrough_fd(c, "f", b.size, 1);
	fd_check(fd, &b);
	close(fd);
	/* two blocks: one copy of both, after the first block */
	before = used(c, 0);
	fd = cache_passthrough_fd(c, "big", big.size, 1);
	fd_check(fd, &big);
	close(fd);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 2);
	assert_int_equal(used(c, 0), before + big.size);
	cache_get_stats(c, &st);
	assert_int_equal(st.copies_written, 2);
	assert_int_equal(st.copies_opened, 3);
	assert_int_equal(st.checksum_failures, 0);
	assert_int_equal(b.calls, 1);            /* never the engine */
	assert_int_equal(big.calls, 2);
	cache_free(c);
	free(b.data);
	free(big.data);
}

/* A file of several blocks: none while a block is missing; the copy holds
 * them all; a write to a later block makes the copy stale, and the next
 * call drops it with the first block; a bad later block is caught when
 * the copy is made, and only that block goes. */
static void test_copy_blocks(void **state)
{
	struct cache *c = mkcache(NULL, NULL);
	struct cache_file *cf;
	struct cache_stats st;
	struct backend b;
	char *buf, path[600], bad;
	int fd, keep;

	(void)state;
	be_init(&b, 3 * BS + BS / 2, 9);
	buf = malloc(b.size);
	/* blocks 0, 1 and 3 only */
	assert_int_equal(cache_file_open(c, "m", b.size, 1, NULL, &cf, &keep), 0);
	assert_int_equal(cache_read(cf, buf, 2 * BS, 0, be_fetch, &b), 2 * BS);
	assert_int_equal(cache_read(cf, buf, BS / 2, 3 * BS, be_fetch, &b), BS / 2);
	cache_file_close(cf);
	assert_int_equal(count_files(dir0, "", NULL, 0), 3);
	assert_int_equal(cache_passthrough_fd(c, "m", b.size, 1), -ENODATA);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);

	fill(c, "m", &b);
	fd = cache_passthrough_fd(c, "m", b.size, 1);
	fd_check(fd, &b);
	close(fd);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 1);

	/* a write to block 2 (the engine took it too) */
	assert_int_equal(cache_file_open(c, "m", b.size, 1, NULL, &cf, &keep), 0);
	assert_int_equal(keep, 1);
	memset(buf, 'y', 100);
	cache_write(cf, buf, 100, 2 * BS + 7);
	memcpy(b.data + 2 * BS + 7, buf, 100);
	cache_file_close(cf);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 1);
	assert_int_equal(cache_passthrough_fd(c, "m", b.size, 1), -ENODATA);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(count_files(dir0, "", NULL, 0), 3);       /* block 0 went too */
	fill(c, "m", &b);
	fd = cache_passthrough_fd(c, "m", b.size, 1);
	fd_check(fd, &b);                        /* the new bytes */
	close(fd);

	/* a bad byte in block 1, caught while a new copy is made */
	assert_true(cache_evict(c, "m") >= 4);
	fill(c, "m", &b);
	assert_int_equal(count_files(dir0, "", NULL, 0), 4);
	for (unsigned x = 0, found = 0; x < 256 && !found; x++) {
		/* the block file whose data holds file offset BS + 5 */
		char sub[300];
		struct dirent *de;
		DIR *d;

		snprintf(sub, sizeof(sub), "%s/%02x", dir0, x);
		if (!(d = opendir(sub)))
			continue;
		while (!found && (de = readdir(d))) {
			char one;

			if (de->d_name[0] == '.' || strlen(de->d_name) != 33)
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, de->d_name);
			fd = open(path, O_RDWR);
			assert_true(fd >= 0);
			assert_int_equal(pread(fd, &one, 1, 5), 1);
			if (one == b.data[BS + 5] && one != b.data[5] && one != b.data[2 * BS + 5] &&
			    one != b.data[3 * BS + 5]) {
				bad = (char)(one ^ 0x20);
				assert_int_equal(pwrite(fd, &bad, 1, 5), 1);
				found = 1;
			}
			close(fd);
		}
		closedir(d);
		assert_true(x < 255 || found);
	}
	assert_int_equal(cache_passthrough_fd(c, "m", b.size, 1), -EBADMSG);
	cache_get_stats(c, &st);
	assert_int_equal(st.checksum_failures, 1);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(count_files(dir0, "", NULL, 0), 3);
	assert_int_equal(cache_passthrough_fd(c, "m", b.size, 1), -ENODATA);
	fill(c, "m", &b);                        /* block 1 from the engine */
	fd = cache_passthrough_fd(c, "m", b.size, 1);
	fd_check(fd, &b);
	close(fd);
	cache_free(c);
	free(buf);
	free(b.data);
}

/* A write through the cache and an eviction drop the copy with the block
 * (and its charge); an fd handed out before still reads the old file. */
static void test_copy_goes_with_block(void **state)
{
	struct cache *c = mkcache(NULL, NULL);
	struct cache_file *cf;
	struct backend b;
	uint64_t before;
	char buf[100];
	int fd, keep;

	(void)state;
	be_init(&b, 5000, 3);
	fill(c, "w", &b);
	before = used(c, 0);
	fd = cache_passthrough_fd(c, "w", b.size, 1);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(used(c, 0), before + b.size);

	assert_int_equal(cache_file_open(c, "w", b.size, 1, NULL, &cf, &keep), 0);
	assert_int_equal(keep, 1);
	memset(buf, 'x', sizeof(buf));
	cache_write(cf, buf, sizeof(buf), 10);   /* the engine took it */
	memcpy(b.data + 10, buf, sizeof(buf));
	cache_file_close(cf);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(used(c, 0), before);    /* the block, rewritten */
	/* with the new attributes recorded, a new copy has the new bytes */
	fd = cache_passthrough_fd(c, "w", b.size, 1);
	fd_check(fd, &b);

	assert_true(cache_evict(c, "w") >= 1);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(count_files(dir0, "", NULL, 0), 0);
	assert_int_equal(used(c, 0), 0);
	fd_check(fd, &b);                        /* unlinked, still readable */
	close(fd);
	assert_int_equal(cache_passthrough_fd(c, "w", b.size, 1), -ENODATA);
	cache_free(c);
	free(b.data);
}

/* A bad byte in the copy is caught by the next open: the block goes too
 * (a checksum failure), and the file is fetched again.  A bad byte in the
 * block is caught when the copy is made from it. */
static void test_copy_checksum(void **state)
{
	struct cache *c = mkcache(NULL, NULL);
	struct cache_stats st;
	struct backend b;
	char path[600], bad;
	int fd;

	(void)state;
	be_init(&b, 40000, 4);
	fill(c, "k", &b);
	fd = cache_passthrough_fd(c, "k", b.size, 1);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(count_files(dir0, ".whole", path, sizeof(path)), 1);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &bad, 1, 33333), 1);
	bad ^= 0x10;
	assert_int_equal(pwrite(fd, &bad, 1, 33333), 1);
	close(fd);
	assert_int_equal(cache_passthrough_fd(c, "k", b.size, 1), -EBADMSG);
	cache_get_stats(c, &st);
	assert_int_equal(st.checksum_failures, 1);
	assert_int_equal(st.tier[0].checksum_failures, 1);
	assert_int_equal(count_files(dir0, "", NULL, 0), 0);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(used(c, 0), 0);

	fill(c, "k", &b);                        /* from the engine again */
	assert_int_equal(b.calls, 2);
	assert_int_equal(count_files(dir0, "", path, sizeof(path)), 1);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, &bad, 1, 20000), 1);   /* not what was there */
	close(fd);
	assert_int_equal(cache_passthrough_fd(c, "k", b.size, 1), -EBADMSG);
	cache_get_stats(c, &st);
	assert_int_equal(st.checksum_failures, 2);
	assert_int_equal(st.copies_written, 1);
	assert_int_equal(count_files(dir0, "", NULL, 0), 0);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(used(c, 0), 0);
	cache_free(c);
	free(b.data);
}

/* No room in the tier for the copy: none is made, the block stays. */
static void test_copy_quota(void **state)
{
	char t0[256];
	struct cache *c;
	struct backend b;

	(void)state;
	/* the smallest quota accepted holds one full block, not its copy too */
	snprintf(t0, sizeof(t0), "SSD:%s:%u", dir0,
		 (unsigned)tier_block_bytes(BS, TIER_KEY_MAX));
	c = mkcache(t0, NULL);
	be_init(&b, BS, 5);
	fill(c, "q", &b);
	assert_int_equal(cache_passthrough_fd(c, "q", b.size, 1), -ENOSPC);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(count_files(dir0, "", NULL, 0), 1);
	assert_int_equal(used(c, 0), tier_block_bytes(BS, 1));
	cache_free(c);
	free(b.data);
}

/* Copies do not outlive their process: the scan at the next start deletes
 * them (their checksum was in memory), and the next call makes one again. */
static void test_copy_rebuild(void **state)
{
	struct cache *c = mkcache(NULL, NULL);
	struct cache_stats st;
	struct backend b;
	int fd;

	(void)state;
	be_init(&b, 3000, 6);
	fill(c, "r", &b);
	fd = cache_passthrough_fd(c, "r", b.size, 1);
	assert_true(fd >= 0);
	close(fd);
	cache_free(c);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 1);
	c = mkcache(NULL, NULL);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_int_equal(used(c, 0), tier_block_bytes(3000, 1));
	fd = cache_passthrough_fd(c, "r", b.size, 1);
	fd_check(fd, &b);
	close(fd);
	cache_get_stats(c, &st);
	assert_int_equal(st.copies_written, 1);
	assert_int_equal(st.torn_discarded, 0);
	cache_free(c);
	free(b.data);
}

/* Demotion moves the block, not its copy: the copy goes from the upper
 * tier and the next call makes one next to the block's new home. */
static void test_copy_demoted(void **state)
{
	char t0[256], t1[256];
	struct cache *c;
	struct backend a, b;
	int fd;

	(void)state;
	/* "a" with its copy and one full block pass tier0's high watermark
	 * (95%) without filling its quota: the mover demotes down to 80% */
	snprintf(t0, sizeof(t0), "MEM:%s:75000", dir0);
	snprintf(t1, sizeof(t1), "SSD:%s:10M", dir1);
	c = mkcache(t0, t1);
	be_init(&a, 4096, 7);
	be_init(&b, BS, 8);
	fill(c, "a", &a);
	fd = cache_passthrough_fd(c, "a", a.size, 1);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 1);
	fill(c, "b", &b);
	cache_quiesce(c);
	/* "a" was the least recently used: demoted, without its copy */
	assert_int_equal(count_files(dir0, ".whole", NULL, 0), 0);
	assert_true(count_files(dir1, "", NULL, 0) >= 1);
	assert_true(used(c, 0) <= 60000);
	fd = cache_passthrough_fd(c, "a", a.size, 1);
	fd_check(fd, &a);
	close(fd);
	assert_int_equal(count_files(dir1, ".whole", NULL, 0), 1);
	assert_int_equal(a.calls, 1);
	cache_free(c);
	free(a.data);
	free(b.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_copy_made_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_goes_with_block, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_blocks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_checksum, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_quota, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_rebuild, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_demoted, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
