/*
 * Unit tests for cache/: config, index, LRU and watermarks, placement and
 * demotion/promotion over 3 tiers, checksums, rebuild (torn blocks), quota
 * under concurrency, full tier, close-to-open, write-through, truncate,
 * prefetch, stats. Block size 64 KiB keeps everything small and fast.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "cache/cache.h"
#include "cache/cache_int.h"   /* struct htable, for test_htable */

#define BS 65536u

static char root[64], dir0[128], dir1[128], dir2[128], bedir[128];

static int setup(void **state)
{
	snprintf(root, sizeof(root), "/tmp/test_cache.XXXXXX");
	assert_non_null(mkdtemp(root));
	snprintf(dir0, sizeof(dir0), "%s/t0", root);
	snprintf(dir1, sizeof(dir1), "%s/t1", root);
	snprintf(dir2, sizeof(dir2), "%s/t2", root);
	snprintf(bedir, sizeof(bedir), "%s/backend", root);
	mkdir(dir0, 0700);
	mkdir(dir1, 0700);
	mkdir(dir2, 0700);
	mkdir(bedir, 0700);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	umount2(dir0, MNT_DETACH);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- fake engine --------------------------------------------------------- */

struct backend {
	char *data;
	size_t size;
	unsigned calls;       /* atomic */
	unsigned delay_us;
	int fd;               /* when >= 0, read this file instead of data */
};

static ssize_t be_fetch(void *arg, void *buf, size_t len, off_t off)
{
	struct backend *b = arg;
	size_t n;

	__atomic_add_fetch(&b->calls, 1, __ATOMIC_RELAXED);
	if (b->delay_us)
		usleep(b->delay_us);
	if (b->fd >= 0) {
		ssize_t r = pread(b->fd, buf, len, off);
		return r < 0 ? -errno : r;
	}
	if ((size_t)off >= b->size)
		return 0;
	n = len < b->size - (size_t)off ? len : b->size - (size_t)off;
	memcpy(buf, b->data + off, n);
	return (ssize_t)n;
}

static void be_init(struct backend *b, size_t size, unsigned seed)
{
	memset(b, 0, sizeof(*b));
	b->fd = -1;
	b->size = size;
	b->data = malloc(size ? size : 1);
	for (size_t i = 0; i < size; i++)
		b->data[i] = (char)((i * 131 + seed * 7 + i / 4096) & 0xff);
}

static unsigned calls(struct backend *b)
{
	return __atomic_load_n(&b->calls, __ATOMIC_RELAXED);
}

/* ---- helpers ------------------------------------------------------------- */

/* Block file size for a file key of keylen bytes. */
static uint64_t B(size_t keylen)
{
	return tier_block_bytes(BS, (uint32_t)keylen);
}

static struct cache *mkcache(const char *const *opts)
{
	struct cache_config cfg;
	struct cache *c = NULL;
	char err[512] = "";

	cache_config_init(&cfg);
	assert_int_equal(cache_config_set(&cfg, "block_size", "64K", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "prefetch", "0", err, sizeof(err)), 0);
	for (; opts && *opts; opts++) {
		char key[64];
		const char *eq = strchr(*opts, '=');

		assert_non_null(eq);
		snprintf(key, sizeof(key), "%.*s", (int)(eq - *opts), *opts);
		if (cache_config_set(&cfg, key, eq + 1, err, sizeof(err)) != 0)
			fail_msg("option %s: %s", *opts, err);
	}
	if (cache_new(&c, &cfg, root, err, sizeof(err)) != 0)
		fail_msg("cache_new: %s", err);
	cache_config_release(&cfg);
	return c;
}

static struct cache_file *fopen_(struct cache *c, const char *key, struct backend *b,
				 int64_t mtime, int *keep)
{
	struct cache_file *cf;
	int k;

	assert_int_equal(cache_file_open(c, key, b->size, mtime, NULL, &cf, keep ? keep : &k), 0);
	return cf;
}

/* Read the whole file through cf in chunks and compare with the backend. */
static void read_check(struct cache_file *cf, struct backend *b, size_t chunk)
{
	char *buf = malloc(chunk);
	size_t off = 0;

	while (off < b->size) {
		ssize_t r = cache_read(cf, buf, chunk, (off_t)off, be_fetch, b);

		assert_true(r > 0);
		assert_true(off + (size_t)r <= b->size);
		assert_memory_equal(buf, b->data + off, (size_t)r);
		off += (size_t)r;
	}
	assert_int_equal(off, b->size);
	free(buf);
}

/* Read a file once with a fresh handle. */
static void read_once(struct cache *c, const char *key, struct backend *b)
{
	struct cache_file *cf = fopen_(c, key, b, 1, NULL);

	read_check(cf, b, 32768);
	cache_file_close(cf);
}

/* Block files (count, bytes) under a tier directory. */
static void disk_usage(const char *dir, uint64_t *n, uint64_t *bytes)
{
	*n = *bytes = 0;
	for (unsigned x = 0; x < 256; x++) {
		char sub[256];
		struct dirent *de;
		DIR *d;

		snprintf(sub, sizeof(sub), "%s/%02x", dir, x);
		d = opendir(sub);
		if (!d)
			continue;
		while ((de = readdir(d))) {
			char p[600];
			struct stat st;

			if (de->d_name[0] == '.')
				continue;
			snprintf(p, sizeof(p), "%s/%s", sub, de->d_name);
			if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
				(*n)++;
				*bytes += (uint64_t)st.st_size;
			}
		}
		closedir(d);
	}
}

/* Path of the block file of (key, index) in dir; 0 if found. */
static int find_block(const char *dir, const char *key, uint64_t index, char *out, size_t len)
{
	uint64_t k = tier_block_key(key, strlen(key), index);
	char sub[256], prefix[20];
	struct dirent *de;
	DIR *d;
	int ret = -1;

	snprintf(sub, sizeof(sub), "%s/%02x", dir, (unsigned)(k >> 56));
	snprintf(prefix, sizeof(prefix), "%016llx-", (unsigned long long)k);
	d = opendir(sub);
	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, prefix, 17) && strlen(de->d_name) == 33) {
			snprintf(out, len, "%s/%s", sub, de->d_name);
			ret = 0;
		}
	closedir(d);
	return ret;
}

static char optbuf[16][256];

static const char *opt(int i, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *opt(int i, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(optbuf[i], sizeof(optbuf[i]), fmt, ap);
	va_end(ap);
	return optbuf[i];
}

/* ---- config ------------------------------------------------------------- */

static void test_config(void **state)
{
	struct cache_config cfg;
	char err[512] = "", path[256];
	FILE *f;

	cache_config_init(&cfg);
	assert_int_equal(cache_config_ntiers(&cfg), 0);
	assert_int_equal(cfg.block_size, 4u << 20);
	assert_int_equal(cache_config_set(&cfg, "tier0", "MEM:/dev/shm/x|/tmp/a:b:1G", err, sizeof(err)), 0);
	assert_int_equal(cfg.tiers[0].medium, TIER_MEM);
	assert_int_equal(cfg.tiers[0].npaths, 2);
	assert_string_equal(cfg.tiers[0].paths[1], "/tmp/a:b");
	assert_int_equal(cfg.tiers[0].quota, 1ULL << 30);
	assert_int_equal(cache_config_set(&cfg, "tier1_medium", "hdd", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "tier1_path", "/var/c", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "tier1_quota", "20GiB", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "tier1_high", "90%", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "tier1_low", "0.5", err, sizeof(err)), 0);
	assert_int_equal(cache_config_ntiers(&cfg), 2);
	assert_int_equal(cfg.tiers[1].quota, 20ULL << 30);
	assert_true(cfg.tiers[1].high > 0.89 && cfg.tiers[1].high < 0.91);
	assert_int_equal(cache_config_set(&cfg, "block_size", "1M", err, sizeof(err)), 0);
	assert_int_equal(cfg.block_size, 1u << 20);
	assert_int_equal(cache_config_set(&cfg, "prefetch", "8", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&cfg, "verify_mem", "yes", err, sizeof(err)), 0);
	assert_int_equal(cfg.verify_mem, 1);
	assert_int_equal(cache_config_check(&cfg, err, sizeof(err)), 0);

	/* errors */
	assert_int_equal(cache_config_set(&cfg, "engine", "bindfs", err, sizeof(err)), -ENOENT);
	assert_int_equal(cache_config_set(&cfg, "block_size", "3M", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "block_size"));
	assert_int_equal(cache_config_set(&cfg, "tier0", "TAPE:/x:1G", err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "medium"));
	assert_int_equal(cache_config_set(&cfg, "tier0", "MEM:relative:1G", err, sizeof(err)), -EINVAL);
	assert_int_equal(cache_config_set(&cfg, "tier0_quota", "lots", err, sizeof(err)), -EINVAL);
	assert_int_equal(cache_config_set(&cfg, "tier0_high", "1.5", err, sizeof(err)), -EINVAL);
	assert_int_equal(cache_config_set(&cfg, "tier8", "MEM:/x:1G", err, sizeof(err)), -EINVAL);
	assert_int_equal(cache_config_set(&cfg, "tier1_low", "0.95", err, sizeof(err)), 0);
	assert_int_equal(cache_config_check(&cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "tier1_low"));
	cache_config_release(&cfg);

	/* a gap in the tier list */
	cache_config_init(&cfg);
	assert_int_equal(cache_config_set(&cfg, "tier1", "SSD:/x:1G", err, sizeof(err)), 0);
	assert_int_equal(cache_config_check(&cfg, err, sizeof(err)), -EINVAL);
	cache_config_release(&cfg);

	/* config file */
	snprintf(path, sizeof(path), "%s/lazarusfs.conf", root);
	f = fopen(path, "w");
	fprintf(f, "# cache\n[cache]\nblock_size = 2M\nprefetch = 6\n\n[tier0]\nmedium = SSD\n"
		   "path = /a\npath = \"/b\"\nquota = 10G\nhigh = 0.9 \n; end\n");
	fclose(f);
	cache_config_init(&cfg);
	assert_int_equal(cache_config_set(&cfg, "config", path, err, sizeof(err)), 0);
	assert_int_equal(cfg.block_size, 2u << 20);
	assert_int_equal(cfg.prefetch, 6);
	assert_int_equal(cfg.tiers[0].medium, TIER_SSD);
	assert_int_equal(cfg.tiers[0].npaths, 2);
	assert_string_equal(cfg.tiers[0].paths[1], "/b");
	assert_int_equal(cfg.tiers[0].quota, 10ULL << 30);
	cache_config_release(&cfg);

	f = fopen(path, "w");
	fprintf(f, "[tier0]\nmedium = SSD\nbogus = 1\n");
	fclose(f);
	cache_config_init(&cfg);
	assert_int_equal(cache_config_load(&cfg, path, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, ":3: unknown key: bogus"));
	cache_config_release(&cfg);
}

static void test_missing_dir(void **state)
{
	struct cache_config cfg;
	struct cache *c = NULL;
	char err[512] = "", spec[256];

	cache_config_init(&cfg);
	snprintf(spec, sizeof(spec), "SSD:%s/does-not-exist:1G", root);
	assert_int_equal(cache_config_set(&cfg, "tier0", spec, err, sizeof(err)), 0);
	assert_int_equal(cache_new(&c, &cfg, NULL, err, sizeof(err)), -ENOENT);
	assert_null(c);
	assert_non_null(strstr(err, "does-not-exist"));
	cache_config_release(&cfg);
}

/* ---- index, hits and misses -------------------------------------------- */

static void test_read_hit_miss(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:10M", dir0), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf;
	struct cache_stats st;
	char buf[200];
	int keep;

	be_init(&b, 4 * BS + 37856, 1);
	cf = fopen_(c, "dir/file1", &b, 100, &keep);
	assert_int_equal(keep, 0);
	read_check(cf, &b, 32768);
	assert_int_equal(calls(&b), 5);          /* whole blocks, once each */
	assert_int_equal(cache_read(cf, buf, 100, (off_t)b.size, be_fetch, &b), 0);
	assert_int_equal(cache_read(cf, buf, 100, (off_t)b.size - 10, be_fetch, &b), 10);
	assert_memory_equal(buf, b.data + b.size - 10, 10);
	cache_file_close(cf);

	cf = fopen_(c, "dir/file1", &b, 100, &keep);
	assert_int_equal(keep, 1);
	read_check(cf, &b, 100000);               /* reads spanning blocks */
	assert_int_equal(calls(&b), 5);
	cache_file_close(cf);
	assert_int_equal(cache_contains(c, "dir/file1", 0, 0), 1);
	assert_int_equal(cache_contains(c, "dir/file1", BS, 10), 1);
	assert_int_equal(cache_contains(c, "dir/other", 0, 0), 0);

	cache_get_stats(c, &st);
	assert_int_equal(st.misses, 5);
	/* hits do not fill the handle's slot: each tier read counts, and the
	 * 100000-byte reads touch blocks 0 1 | 1 2 3 | 3 4 */
	assert_int_equal(st.tier[0].hits, 7);
	assert_int_equal(st.tier[0].blocks, 5);
	assert_int_equal(st.tier[0].used, 4 * B(9) + tier_block_bytes(37856, 9));
	cache_free(c);
	free(b.data);
}

/* Concurrent misses of one block share a single engine fetch. */
struct shared_arg {
	struct cache *c;
	struct backend *b;
	int ok;
};

static void *shared_reader(void *p)
{
	struct shared_arg *a = p;
	struct cache_file *cf;
	char buf[1000];
	int keep;

	if (cache_file_open(a->c, "shared", a->b->size, 1, NULL, &cf, &keep) == 0) {
		a->ok = cache_read(cf, buf, sizeof(buf), 5000, be_fetch, a->b) == (ssize_t)sizeof(buf) &&
			!memcmp(buf, a->b->data + 5000, sizeof(buf));
		cache_file_close(cf);
	}
	return NULL;
}

static void test_shared_fetch(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:10M", dir0), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf;
	pthread_t th[4];
	struct shared_arg a[4];

	be_init(&b, 2 * BS, 2);
	cf = fopen_(c, "shared", &b, 1, NULL);   /* record attrs first */
	b.delay_us = 100000;
	for (int i = 0; i < 4; i++) {
		a[i] = (struct shared_arg){ c, &b, 0 };
		pthread_create(&th[i], NULL, shared_reader, &a[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_true(a[i].ok);
	}
	assert_int_equal(calls(&b), 1);
	cache_file_close(cf);
	cache_free(c);
	free(b.data);
}

/* ---- LRU and watermarks ------------------------------------------------- */

static void test_lru_watermarks(void **state)
{
	/* room for 10 blocks; drain above 8 down to 5 */
	const char *o[] = { opt(0, "tier0=MEM:%s:%llu", dir0, (unsigned long long)(10 * B(1))),
			    "tier0_high=0.8", "tier0_low=0.5", NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_stats st;
	const char *keys = "abcdefghi";
	char key[2] = "";

	be_init(&b, BS, 3);
	for (int i = 0; i < 8; i++) {
		key[0] = keys[i];
		read_once(c, key, &b);
		cache_quiesce(c);
	}
	cache_get_stats(c, &st);
	assert_int_equal(st.tier[0].blocks, 8);     /* at the high watermark, not above */
	assert_int_equal(st.tier[0].evictions, 0);
	read_once(c, "a", &b);                        /* hit: a becomes most recent */
	assert_int_equal(calls(&b), 8);
	read_once(c, "i", &b);                        /* 9 blocks > high: drain to 5 */
	cache_quiesce(c);
	cache_get_stats(c, &st);
	assert_int_equal(st.tier[0].blocks, 5);
	assert_int_equal(st.tier[0].evictions, 4);
	assert_int_equal(st.tier[0].used, 5 * B(1));
	for (int i = 0; i < 9; i++) {
		key[0] = keys[i];
		/* LRU order: b c d e were least recently used */
		assert_int_equal(cache_contains(c, key, 0, 0), !(i >= 1 && i <= 4));
	}
	cache_free(c);
	free(b.data);
}

/* ---- placement, demotion, promotion ------------------------------------ */

static void test_three_tiers(void **state)
{
	const char *o[] = {
		opt(0, "tier0=MEM:%s:%llu", dir0, (unsigned long long)(4 * B(2))),
		opt(1, "tier1=SSD:%s:%llu", dir1, (unsigned long long)(4 * B(2))),
		opt(2, "tier2=HDD:%s:%llu", dir2, (unsigned long long)(4 * B(2))),
		"tier0_high=0.75", "tier0_low=0.5", "tier1_high=0.75", "tier1_low=0.5",
		"tier2_high=0.75", "tier2_low=0.5", NULL };
	struct cache *c = mkcache(o);
	struct backend b[10];
	struct cache_stats st, st2;
	char key[16];
	uint64_t total = 0;
	int found = -1;

	for (int i = 0; i < 10; i++) {
		be_init(&b[i], BS, 10 + (unsigned)i);
		snprintf(key, sizeof(key), "f%d", i);
		read_once(c, key, &b[i]);
		cache_quiesce(c);
		cache_get_stats(c, &st);
		for (int t = 0; t < 3; t++)
			assert_true(st.tier[t].used <= st.tier[t].quota);
		assert_true(st.tier[0].blocks >= 1);     /* new blocks land on top */
	}
	cache_get_stats(c, &st);
	for (int t = 0; t < 3; t++) {
		uint64_t n, bytes;

		assert_true(st.tier[t].blocks <= 3);
		total += st.tier[t].blocks;
		disk_usage(t == 0 ? dir0 : t == 1 ? dir1 : dir2, &n, &bytes);
		assert_int_equal(n, st.tier[t].blocks);
		assert_int_equal(bytes, st.tier[t].used);
	}
	assert_true(st.tier[0].demotions > 0);
	assert_true(st.tier[1].demotions > 0);
	assert_true(st.tier[2].evictions > 0);
	assert_int_equal(total + st.tier[2].evictions, 10);

	/* the oldest surviving block lives in the bottom tier; a hit there
	 * promotes it to the top */
	for (int i = 0; i < 10 && found < 0; i++) {
		snprintf(key, sizeof(key), "f%d", i);
		if (!cache_contains(c, key, 0, 0))
			continue;
		cache_get_stats(c, &st);
		read_once(c, key, &b[i]);
		cache_get_stats(c, &st2);
		if (st2.tier[2].hits > st.tier[2].hits)
			found = i;
	}
	assert_true(found >= 0);
	cache_quiesce(c);
	cache_get_stats(c, &st);
	assert_int_equal(st.tier[2].promotions, 1);
	snprintf(key, sizeof(key), "f%d", found);
	read_once(c, key, &b[found]);
	cache_get_stats(c, &st2);
	assert_int_equal(st2.tier[0].hits, st.tier[0].hits + 2);   /* two 32 KiB reads */
	for (int i = 0; i < 10; i++)   /* every read was served right */
		assert_true(calls(&b[i]) >= 1);
	cache_free(c);
	for (int i = 0; i < 10; i++)
		free(b[i].data);
}

/* ---- checksums ---------------------------------------------------------- */

static void checksum_case(const char *const *o, const char *dir)
{
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_stats st;
	char path[600], bad;
	int fd;

	be_init(&b, 2 * BS, 4);
	read_once(c, "ck", &b);
	cache_quiesce(c);
	assert_int_equal(calls(&b), 2);
	assert_int_equal(find_block(dir, "ck", 0, path, sizeof(path)), 0);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &bad, 1, 100), 1);
	bad ^= 0x01;
	assert_int_equal(pwrite(fd, &bad, 1, 100), 1);
	close(fd);

	read_once(c, "ck", &b);                 /* correct bytes anyway */
	cache_get_stats(c, &st);
	assert_int_equal(st.checksum_failures, 1);
	assert_int_equal(st.tier[0].checksum_failures, 1);
	assert_int_equal(calls(&b), 3);          /* block 0 fetched again */
	assert_int_not_equal(access(path, F_OK), 0);   /* the bad file is gone */
	read_once(c, "ck", &b);                 /* and the block was stored again */
	assert_int_equal(calls(&b), 3);
	cache_free(c);
	free(b.data);
}

static void test_checksum_ssd(void **state)
{
	const char *o[] = { opt(0, "tier0=SSD:%s:10M", dir1), NULL };

	checksum_case(o, dir1);
}

static void test_checksum_mem_verify(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:10M", dir0), "verify_mem=1", NULL };

	checksum_case(o, dir0);
}

/* A small read of a cached block reads and verifies only the chunks it
 * covers: a bad byte in chunk 10 of a 1 MiB block goes unnoticed by a read
 * in chunk 0, and a read in chunk 10 drops the block and refetches. */
static void test_checksum_range(void **state)
{
	const char *o[] = { opt(0, "tier0=SSD:%s:10M", dir1), "block_size=1M", NULL };
	struct cache *c = mkcache(o);
	const off_t at = 10 * TIER_CHUNK + 1000;
	struct backend b;
	struct cache_file *cf;
	struct cache_stats st;
	char path[600], buf[4096], bad;
	int fd;

	be_init(&b, 1 << 20, 14);
	read_once(c, "big", &b);
	cache_quiesce(c);
	assert_int_equal(calls(&b), 1);
	assert_int_equal(find_block(dir1, "big", 0, path, sizeof(path)), 0);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &bad, 1, at), 1);
	bad ^= 0x01;
	assert_int_equal(pwrite(fd, &bad, 1, at), 1);
	close(fd);

	cf = fopen_(c, "big", &b, 1, NULL);
	assert_int_equal(cache_read(cf, buf, 4096, 8192, be_fetch, &b), 4096);
	assert_memory_equal(buf, b.data + 8192, 4096);
	cache_get_stats(c, &st);
	assert_int_equal(st.checksum_failures, 0);
	assert_int_equal(st.tier[0].hits, 1);
	assert_int_equal(calls(&b), 1);

	/* same handle: the hit above left nothing in its slot */
	assert_int_equal(cache_read(cf, buf, 4096, at - 100, be_fetch, &b), 4096);
	assert_memory_equal(buf, b.data + at - 100, 4096);
	cache_get_stats(c, &st);
	assert_int_equal(st.checksum_failures, 1);
	assert_int_equal(st.tier[0].checksum_failures, 1);
	assert_int_equal(calls(&b), 2);          /* refetched from the engine */
	assert_int_not_equal(access(path, F_OK), 0);
	cache_file_close(cf);
	cache_free(c);
	free(b.data);
}

/* ---- rebuild ------------------------------------------------------------ */

static void test_rebuild(void **state)
{
	const char *o[] = {
		opt(0, "tier0=MEM:%s:%llu", dir0, (unsigned long long)(4 * B(2))),
		"tier0_high=0.75", "tier0_low=0.5",
		opt(1, "tier1=SSD:%s:10M", dir1), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_stats st;
	struct cache_file *cf;
	char path[600], tmp[600];
	uint64_t before;
	int keep, fd;

	be_init(&b, 6 * BS - 500, 5);
	read_once(c, "rb", &b);
	cache_quiesce(c);
	cache_get_stats(c, &st);
	before = st.tier[0].blocks + st.tier[1].blocks;
	assert_int_equal(before, 6);
	assert_true(st.tier[1].blocks > 0);
	cache_free(c);

	/* a torn block (truncated write) and a stray temp file */
	assert_int_equal(find_block(dir1, "rb", 0, path, sizeof(path)), 0);
	assert_int_equal(truncate(path, 1000), 0);
	snprintf(tmp, sizeof(tmp), "%s/00/0011223344556677-0000000000000001.tmp", dir0);
	fd = open(tmp, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "partial", 7), 7);
	close(fd);

	c = mkcache(o);
	cache_get_stats(c, &st);
	assert_int_equal(st.torn_discarded, 2);
	assert_int_equal(st.tier[0].blocks + st.tier[1].blocks, before - 1);
	assert_int_not_equal(access(tmp, F_OK), 0);
	assert_int_not_equal(access(path, F_OK), 0);
	for (int t = 0; t < 2; t++) {
		uint64_t n, bytes;

		disk_usage(t ? dir1 : dir0, &n, &bytes);
		assert_int_equal(n, st.tier[t].blocks);
		assert_int_equal(bytes, st.tier[t].used);
	}
	cf = fopen_(c, "rb", &b, 1, &keep);
	assert_int_equal(keep, 1);                 /* attributes survived the restart */
	b.calls = 0;
	read_check(cf, &b, 32768);
	assert_int_equal(calls(&b), 1);            /* only the torn block */
	cache_file_close(cf);
	cache_free(c);
	free(b.data);
}

/* ---- quota under concurrency ------------------------------------------- */

struct conc {
	struct cache *c;
	struct backend b;
	char key[8];
	int ok;
};

static volatile int sampling;
static int quota_violations;

static void *conc_reader(void *p)
{
	struct conc *a = p;
	unsigned seed = (unsigned)(uintptr_t)a;
	char *buf = malloc(BS);

	a->ok = 1;
	for (int round = 0; round < 3; round++) {
		struct cache_file *cf;
		int keep;

		if (cache_file_open(a->c, a->key, a->b.size, 1, NULL, &cf, &keep) != 0) {
			a->ok = 0;
			break;
		}
		for (int i = 0; i < 24; i++) {
			size_t off = (size_t)rand_r(&seed) % a->b.size;
			size_t len = 1 + (size_t)rand_r(&seed) % (BS - 1);
			ssize_t r = cache_read(cf, buf, len, (off_t)off, be_fetch, &a->b);

			if (off + len > a->b.size)
				len = a->b.size - off;
			if (r != (ssize_t)len || memcmp(buf, a->b.data + off, len))
				a->ok = 0;
		}
		cache_file_close(cf);
	}
	free(buf);
	return NULL;
}

static void *quota_sampler(void *p)
{
	struct cache *c = p;

	while (__atomic_load_n(&sampling, __ATOMIC_ACQUIRE)) {
		struct cache_stats st;

		cache_get_stats(c, &st);
		for (size_t t = 0; t < st.ntiers; t++)
			if (st.tier[t].used + st.tier[t].reserved > st.tier[t].quota)
				__atomic_add_fetch(&quota_violations, 1, __ATOMIC_RELAXED);
		usleep(200);
	}
	return NULL;
}

static void test_quota_concurrency(void **state)
{
	const char *o[] = {
		opt(0, "tier0=MEM:%s:%llu", dir0, (unsigned long long)(5 * B(2) + 100)),
		opt(1, "tier1=SSD:%s:%llu", dir1, (unsigned long long)(7 * B(2) + 100)),
		"tier0_high=0.9", "tier0_low=0.6", "tier1_high=0.9", "tier1_low=0.6", NULL };
	struct cache *c = mkcache(o);
	struct conc a[4];
	pthread_t th[4], sampler;
	struct cache_stats st;

	sampling = 1;
	quota_violations = 0;
	pthread_create(&sampler, NULL, quota_sampler, c);
	for (int i = 0; i < 4; i++) {
		a[i].c = c;
		be_init(&a[i].b, 8 * BS - 1234 * (size_t)i, 20 + (unsigned)i);
		snprintf(a[i].key, sizeof(a[i].key), "t%d", i);
		pthread_create(&th[i], NULL, conc_reader, &a[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	cache_quiesce(c);
	__atomic_store_n(&sampling, 0, __ATOMIC_RELEASE);
	pthread_join(sampler, NULL);
	assert_int_equal(quota_violations, 0);
	for (int i = 0; i < 4; i++)
		assert_true(a[i].ok);
	cache_get_stats(c, &st);
	for (int t = 0; t < 2; t++) {
		uint64_t n, bytes;

		disk_usage(t ? dir1 : dir0, &n, &bytes);
		assert_int_equal(st.tier[t].reserved, 0);
		assert_true(st.tier[t].used <= st.tier[t].quota);
		assert_int_equal(bytes, st.tier[t].used);   /* accounting == disk */
		assert_int_equal(n, st.tier[t].blocks);
	}
	assert_true(st.tier[1].evictions > 0);
	cache_free(c);
	for (int i = 0; i < 4; i++)
		free(a[i].b.data);
}

/* ---- full tier ---------------------------------------------------------- */

static void test_full_tier(void **state)
{
	const char *o[] = { opt(0, "tier0=SSD:%s:100M", dir0), opt(1, "tier1=HDD:%s:100M", dir1), NULL };
	struct cache *c;
	struct backend b;
	struct cache_stats st;

	if (geteuid() != 0 || mount("tmpfs", dir0, "tmpfs", 0, "size=256k") < 0) {
		print_message("skipped: a full tier needs a tiny tmpfs, which needs root (%s)\n",
			      strerror(errno));
		skip();
	}
	c = mkcache(o);
	be_init(&b, 8 * BS, 6);
	read_once(c, "full", &b);            /* the engine serves what does not fit */
	cache_quiesce(c);
	cache_get_stats(c, &st);
	assert_true(st.tier[0].write_errors >= 1);
	assert_true(st.tier[1].blocks >= 4);  /* the next tier took the rest */
	assert_int_equal(st.tier[0].blocks + st.tier[1].blocks, 8);
	b.calls = 0;
	read_once(c, "full", &b);
	assert_int_equal(calls(&b), 0);
	{
		char *text;

		assert_int_equal(cache_stats_format(c, 0, &text), 0);
		assert_non_null(strstr(text, "tier0.usable: no"));
		free(text);
	}
	cache_free(c);
	umount2(dir0, MNT_DETACH);
	free(b.data);
}

/* ---- consistency -------------------------------------------------------- */

static void test_close_to_open(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:10M", dir0), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf;
	struct cache_stats st;
	int keep;

	be_init(&b, 2 * BS, 7);
	cf = fopen_(c, "cto", &b, 1000, &keep);
	assert_int_equal(keep, 0);
	read_check(cf, &b, BS);
	cache_file_close(cf);
	cf = fopen_(c, "cto", &b, 1000, &keep);
	assert_int_equal(keep, 1);
	read_check(cf, &b, BS);
	assert_int_equal(calls(&b), 2);
	cache_file_close(cf);

	/* changed behind our back: new mtime -> blocks dropped, no keep_cache */
	for (size_t i = 0; i < b.size; i++)
		b.data[i] ^= 0x33;
	cf = fopen_(c, "cto", &b, 2000, &keep);
	assert_int_equal(keep, 0);
	assert_int_equal(cache_contains(c, "cto", 0, 0), 0);
	read_check(cf, &b, BS);
	assert_int_equal(calls(&b), 4);
	cache_file_close(cf);
	/* same size, same mtime again -> keep */
	cf = fopen_(c, "cto", &b, 2000, &keep);
	assert_int_equal(keep, 1);
	cache_file_close(cf);
	cache_get_stats(c, &st);
	assert_int_equal(st.invalidations, 1);
	cache_free(c);
	free(b.data);
}

/* Apply a write to the fake engine and to the cache, as the core does. */
static void do_write(struct cache_file *cf, struct backend *b, size_t off, size_t len, char fill)
{
	if (off + len > b->size) {
		b->data = realloc(b->data, off + len);
		memset(b->data + b->size, 0, off + len - b->size);
		b->size = off + len;
	}
	for (size_t i = 0; i < len; i++)
		b->data[off + i] = (char)(fill + (char)i);
	cache_write(cf, b->data + off, len, (off_t)off);
}

static void test_write_through(void **state)
{
	const char *o[] = { opt(0, "tier0=SSD:%s:10M", dir1), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf, *cf2;

	be_init(&b, 3 * BS - 1000, 8);
	cf = fopen_(c, "wr", &b, 1, NULL);
	cf2 = fopen_(c, "wr", &b, 1, NULL);
	read_check(cf, &b, 4096);      /* also fills cf's block slots */
	read_check(cf2, &b, 4096);
	assert_int_equal(calls(&b), 3);

	do_write(cf, &b, BS - 100, 300, 'A');      /* spans blocks 0 and 1 */
	read_check(cf, &b, 4096);
	read_check(cf2, &b, 4096);                 /* other handles see it too */
	assert_int_equal(calls(&b), 3);            /* updated in the cache */

	do_write(cf, &b, b.size, 5000, 'B');       /* append across a block boundary */
	read_check(cf2, &b, 50000);
	/* block 2 was updated in the cache; block 3, a new block only partly
	 * written, waits in cf's write assembly and is read from the engine */
	assert_int_equal(calls(&b), 4);

	do_write(cf, &b, 5 * BS + 10, 10, 'C');    /* past EOF: a hole, then data */
	read_check(cf, &b, BS);
	assert_int_equal(b.size, 5 * BS + 20);

	cache_file_close(cf);
	cache_file_close(cf2);
	/* without set_attr the next open drops the file (mtime changed) ... */
	cf = fopen_(c, "wr", &b, 2, NULL);
	assert_int_equal(cache_contains(c, "wr", 0, 0), 0);
	read_check(cf, &b, BS);
	/* ... with it, written blocks are kept */
	do_write(cf, &b, 10, 10, 'D');
	cache_file_set_attr(cf, b.size, 3);
	cache_file_close(cf);
	{
		int keep;
		unsigned before = calls(&b);

		cf = fopen_(c, "wr", &b, 3, &keep);
		assert_int_equal(keep, 1);
		read_check(cf, &b, BS);
		assert_int_equal(calls(&b), before);
		cache_file_close(cf);
	}
	cache_free(c);
	free(b.data);
}

/* A block written in pieces from its first byte is stored once, when whole;
 * the file's partly written last block at close. */
static void test_write_assembly(void **state)
{
	const char *o[] = { opt(0, "tier0=SSD:%s:10M", dir1), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf, *cf2;
	struct cache_stats st;
	int keep;

	be_init(&b, 0, 1);
	cf = fopen_(c, "asm", &b, 1, NULL);
	for (int i = 0; i < 10; i++) {              /* 2.5 blocks, BS/4 at a time */
		do_write(cf, &b, b.size, BS / 4, (char)('a' + i));
		/* (a range past the end counts as contained) */
		assert_int_equal(cache_contains(c, "asm", 0, 1), i >= 3);
		if (i >= 4)
			assert_int_equal(cache_contains(c, "asm", BS, 1), i >= 7);
		if (i >= 8)
			assert_int_equal(cache_contains(c, "asm", 2 * BS, 1), 0);
	}
	cache_get_stats(c, &st);
	assert_int_equal(st.tier[0].blocks, 2);
	cache_file_set_attr(cf, b.size, 2);
	cache_file_close(cf);                       /* stores the last half block */
	assert_int_equal(cache_contains(c, "asm", 0, 0), 1);
	cf = fopen_(c, "asm", &b, 2, &keep);
	assert_int_equal(keep, 1);
	read_check(cf, &b, 4096);
	assert_int_equal(calls(&b), 0);
	cache_file_close(cf);

	/* another handle writes into the block being assembled: the assembly
	 * lacks those bytes, so the block must not be stored from it */
	free(b.data);
	be_init(&b, 0, 2);
	cf = fopen_(c, "mix", &b, 1, NULL);
	cf2 = fopen_(c, "mix", &b, 1, NULL);
	do_write(cf, &b, 0, BS / 2, 'A');
	do_write(cf2, &b, BS / 4, 10, 'X');
	do_write(cf, &b, BS / 2, BS / 2, 'B');
	assert_int_equal(cache_contains(c, "mix", 0, BS), 0);
	read_check(cf2, &b, 4096);                  /* from the engine, with X */
	cache_file_close(cf);
	cache_file_close(cf2);

	/* a truncate during the assembly: nothing stored at close */
	free(b.data);
	be_init(&b, 0, 3);
	cf = fopen_(c, "tru", &b, 1, NULL);
	do_write(cf, &b, 0, BS / 2, 'T');
	b.size = 100;
	cache_truncate(cf, b.size);
	cache_file_close(cf);
	assert_int_equal(cache_contains(c, "tru", 0, 1), 0);

	/* a write that skips ahead ends the assembly: block 0 is not cached */
	free(b.data);
	be_init(&b, 0, 4);
	cf = fopen_(c, "gap", &b, 1, NULL);
	do_write(cf, &b, 0, BS / 2, 'G');
	do_write(cf, &b, BS / 2 + 1, BS / 2 - 1, 'H');
	cache_file_close(cf);
	assert_int_equal(cache_contains(c, "gap", 0, 1), 0);
	cache_free(c);
	free(b.data);
}

static void test_truncate(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:10M", dir0), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf;

	be_init(&b, 3 * BS, 9);
	cf = fopen_(c, "tr", &b, 1, NULL);
	read_check(cf, &b, BS);
	assert_int_equal(calls(&b), 3);

	b.size = BS + 10;                       /* engine truncated */
	cache_truncate(cf, b.size);
	assert_int_equal(cache_contains(c, "tr", 0, BS), 1);
	assert_int_equal(cache_contains(c, "tr", BS, 1), 0);
	read_check(cf, &b, 4096);
	assert_int_equal(calls(&b), 4);          /* block 1 fetched again, block 0 kept */

	b.data = realloc(b.data, 2 * BS);        /* grow: zeros */
	memset(b.data + b.size, 0, 2 * BS - b.size);
	b.size = 2 * BS;
	cache_truncate(cf, b.size);
	read_check(cf, &b, 4096);
	assert_int_equal(calls(&b), 5);
	cache_file_close(cf);
	cache_free(c);
	free(b.data);
}

/* ---- prefetch ----------------------------------------------------------- */

static void prefetch_case(const char *backend_path, int expect_used)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:20M", dir0), "prefetch=4", "prefetch_depth=4",
			    "prefetch_timeout=1", NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf;
	struct cache_stats st;
	uint64_t t0;
	int keep, fd;
	char path[256];

	be_init(&b, 16 * BS + 99, 11);
	snprintf(path, sizeof(path), "%s/data", bedir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(write(fd, b.data, b.size), (ssize_t)b.size);
	close(fd);
	b.delay_us = 20000;        /* a slow engine */
	assert_int_equal(cache_file_open(c, "pf", b.size, 1, backend_path ? backend_path : path,
					 &cf, &keep), 0);
	t0 = (uint64_t)time(NULL);
	read_check(cf, &b, BS);
	cache_file_close(cf);
	cache_quiesce(c);
	cache_get_stats(c, &st);
	assert_true(st.prefetch_issued > 0);
	if (expect_used) {
		assert_true(st.prefetch_done > 0);
		assert_true(st.prefetch_used > 0);
		assert_true(calls(&b) < 17);        /* the prefetcher did part of the work */
		assert_int_equal(st.tier[0].blocks, 17);
	} else {
		assert_true(st.prefetch_failed > 0);
		assert_int_equal(st.prefetch_done, 0);
		assert_true((uint64_t)time(NULL) - t0 < 10);   /* nobody hung */
	}
	cache_free(c);
	free(b.data);
}

static void test_prefetch(void **state)
{
	prefetch_case(NULL, 1);
}

static void test_prefetch_engine_gone(void **state)
{
	char p[256];

	snprintf(p, sizeof(p), "%s/missing", bedir);
	prefetch_case(p, 0);
}

/* A backend that never answers (a FIFO without writer): the link timeout
 * cancels the open and reads are served through the demand path. */
static void test_prefetch_engine_hung(void **state)
{
	char p[256];

	snprintf(p, sizeof(p), "%s/fifo", bedir);
	assert_int_equal(mkfifo(p, 0600), 0);
	prefetch_case(p, 0);
}

/* A small read outside a sequential run misses: only the range asked for
 * is read from the engine, and the prefetcher fills the block behind it. */
static void test_random_direct(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:20M", dir0), "prefetch=4", NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	struct cache_file *cf;
	struct cache_stats st;
	char path[256], buf[4096];
	int keep, fd;

	be_init(&b, 8 * BS, 21);
	snprintf(path, sizeof(path), "%s/random", bedir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_int_equal(write(fd, b.data, b.size), (ssize_t)b.size);
	close(fd);
	assert_int_equal(cache_file_open(c, "random", b.size, 1, path, &cf, &keep), 0);

	assert_int_equal(cache_read(cf, buf, sizeof(buf), 5 * BS + 100, be_fetch, &b), sizeof(buf));
	assert_memory_equal(buf, b.data + 5 * BS + 100, sizeof(buf));
	assert_int_equal(calls(&b), 1);
	cache_quiesce(c);
	cache_get_stats(c, &st);
	assert_int_equal(st.direct_reads, 1);
	assert_int_equal(st.engine_bytes, sizeof(buf) + BS);   /* the range, then the fill */
	assert_int_equal(cache_contains(c, "random", 5 * BS, BS), 1);

	/* the next small read of that block is a hit; a big one is not direct */
	assert_int_equal(cache_read(cf, buf, sizeof(buf), 5 * BS + 9000, be_fetch, &b), sizeof(buf));
	assert_memory_equal(buf, b.data + 5 * BS + 9000, sizeof(buf));
	assert_int_equal(calls(&b), 1);
	{
		char *big = malloc(BS);

		assert_int_equal(cache_read(cf, big, BS, 2 * BS, be_fetch, &b), BS);
		assert_memory_equal(big, b.data + 2 * BS, BS);
		free(big);
	}
	cache_get_stats(c, &st);
	assert_int_equal(st.direct_reads, 1);
	assert_true(st.hits >= 1);
	/* a small read at the end of the file is short, not an error */
	assert_int_equal(cache_read(cf, buf, sizeof(buf), 8 * BS - 10, be_fetch, &b), 10);
	cache_file_close(cf);

	/* a small read of a short last block fetches and stores it at once:
	 * whole, it costs no more than the range */
	{
		struct backend t;

		be_init(&t, 2 * BS + 100, 22);
		snprintf(path, sizeof(path), "%s/tail", bedir);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		assert_int_equal(write(fd, t.data, t.size), (ssize_t)t.size);
		close(fd);
		assert_int_equal(cache_file_open(c, "tail", t.size, 1, path, &cf, &keep), 0);
		cache_get_stats(c, &st);
		assert_int_equal(cache_read(cf, buf, sizeof(buf), 2 * BS, be_fetch, &t), 100);
		assert_memory_equal(buf, t.data + 2 * BS, 100);
		/* (a prefetch of it may be what stored it: the mover's turn) */
		cache_quiesce(c);
		assert_int_equal(cache_contains(c, "tail", 2 * BS, 100), 1);
		{
			struct cache_stats st2;

			cache_get_stats(c, &st2);
			assert_int_equal(st2.direct_reads, st.direct_reads);
			assert_int_equal(st2.engine_reads, st.engine_reads + 1);
		}
		cache_file_close(cf);
		free(t.data);
	}
	cache_free(c);
	free(b.data);
}

/* Readers waiting for a block another thread is fetching run the wait hooks
 * (lazarusfs's hang watch), once per wait, and never while not waiting. */
static unsigned hook_begin, hook_end;

static void hb(void *arg)
{
	assert_ptr_equal(arg, &hook_begin);
	__atomic_add_fetch(&hook_begin, 1, __ATOMIC_RELAXED);
}

static void he(void *arg)
{
	__atomic_add_fetch(&hook_end, 1, __ATOMIC_RELAXED);
}

struct reader {
	struct cache_file *cf;
	struct backend *b;
	ssize_t n;
	char buf[4096];
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	r->n = cache_read(r->cf, r->buf, sizeof(r->buf), BS, be_fetch, r->b);
	return NULL;
}

static void test_wait_hooks(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:20M", dir0), NULL };
	struct cache *c = mkcache(o);
	struct reader r1, r2;
	struct backend b;
	pthread_t t1, t2;

	cache_set_wait_hooks(c, hb, he, &hook_begin);
	be_init(&b, 4 * BS, 22);
	b.delay_us = 300000;       /* the first reader's fetch takes 300 ms */
	r1.cf = fopen_(c, "w", &b, 1, NULL);
	r2.cf = fopen_(c, "w", &b, 1, NULL);
	r1.b = r2.b = &b;
	assert_int_equal(pthread_create(&t1, NULL, reader_main, &r1), 0);
	usleep(100000);
	assert_int_equal(pthread_create(&t2, NULL, reader_main, &r2), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	assert_int_equal(r1.n, 4096);
	assert_int_equal(r2.n, 4096);
	assert_memory_equal(r2.buf, b.data + BS, 4096);
	assert_int_equal(calls(&b), 1);              /* one fetch, shared */
	assert_int_equal(hook_begin, 1);             /* the second reader waited */
	assert_int_equal(hook_end, 1);
	/* a hit waits for nobody */
	assert_int_equal(cache_read(r1.cf, r1.buf, 4096, BS, be_fetch, &b), 4096);
	assert_int_equal(hook_begin, 1);
	cache_file_close(r1.cf);
	cache_file_close(r2.cf);
	cache_free(c);
	free(b.data);
}

/* ---- stats, evict, pass-through ---------------------------------------- */

static void test_stats_evict(void **state)
{
	const char *o[] = { opt(0, "tier0=MEM:%s:10M", dir0), NULL };
	struct cache *c = mkcache(o);
	struct backend b;
	char *text, prom[256], buf[8192];
	FILE *f;
	size_t n;

	be_init(&b, BS, 12);
	read_once(c, "dir/a", &b);
	read_once(c, "dir/b/c", &b);
	read_once(c, "dirx", &b);
	read_once(c, "dir/a", &b);   /* two 32 KiB reads, two tier hits */
	cache_set_labels(c, "mount=\"/mnt/x\"");

	assert_int_equal(cache_stats_format(c, 0, &text), 0);
	assert_non_null(strstr(text, "tier0.medium: MEM\n"));
	assert_non_null(strstr(text, "tier0.hits: 2\n"));
	assert_non_null(strstr(text, "misses: 3\n"));
	assert_non_null(strstr(text, "tier0.blocks: 3\n"));
	free(text);
	assert_int_equal(cache_stats_format(c, 1, &text), 0);
	assert_true(text[0] == '{');
	assert_non_null(strstr(text, "\"tiers\":[{\"tier\":0,\"medium\":\"MEM\""));
	assert_non_null(strstr(text, "\"hits\":2,"));
	free(text);
	assert_int_equal(cache_write_textfile(c, NULL), 0);
	snprintf(prom, sizeof(prom), "%s/lazarusfs_cache.prom", root);
	f = fopen(prom, "r");
	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	assert_non_null(strstr(buf, "# TYPE lazarusfs_cache_tier_hits_total counter\n"));
	assert_non_null(strstr(buf, "lazarusfs_cache_tier_hits_total{mount=\"/mnt/x\",tier=\"0\",medium=\"MEM\"} 2\n"));
	assert_non_null(strstr(buf, "lazarusfs_cache_misses_total{mount=\"/mnt/x\"} 3\n"));

	assert_int_equal(cache_evict(c, "dir"), 2);
	assert_int_equal(cache_contains(c, "dir/a", 0, 0), 0);
	assert_int_equal(cache_contains(c, "dirx", 0, 0), 1);
	cache_file_rename(c, "dirx", "diry");
	assert_int_equal(cache_contains(c, "dirx", 0, 0), 0);
	read_once(c, "dir/a", &b);
	assert_int_equal(cache_evict(c, NULL), 1);
	cache_quiesce(c);
	{
		uint64_t nf, bytes;

		disk_usage(dir0, &nf, &bytes);
		assert_int_equal(nf, 0);
	}
	cache_free(c);
	free(b.data);
}

static void test_passthrough(void **state)
{
	struct cache_config cfg;
	struct cache *c;
	struct cache_file *cf;
	struct backend b;
	char err[256], buf[100];
	int keep;

	cache_config_init(&cfg);
	assert_int_equal(cache_new(&c, &cfg, NULL, err, sizeof(err)), 0);
	be_init(&b, 1000, 13);
	assert_int_equal(cache_file_open(c, "p", b.size, 1, NULL, &cf, &keep), 0);
	assert_int_equal(cache_read(cf, buf, 100, 950, be_fetch, &b), 50);
	assert_memory_equal(buf, b.data + 950, 50);
	assert_int_equal(cache_read(cf, buf, 100, 0, be_fetch, &b), 100);
	assert_int_equal(calls(&b), 2);
	cache_file_close(cf);
	cache_free(c);
	cache_config_release(&cfg);
	free(b.data);
}

struct hitem {
	uint64_t h;
	struct hnode hn;
};

static uint64_t hitem_hash(const struct hnode *n)
{
	return container_of(n, struct hitem, hn)->h;
}

static int htable_has(const struct htable *t, const struct hitem *it)
{
	for (struct hnode *n = htable_chain(t, it->h); n; n = n->next)
		if (n == &it->hn)
			return 1;
	return 0;
}

/* The one hash table of both indexes: it grows by doubling from a tiny
 * size, every node stays findable across each growth, equal hashes share a
 * chain, and deleting one node leaves the others of its chain. */
static void test_htable(void **state)
{
	enum { N = 3000 };
	struct hitem *it = calloc(N, sizeof(*it));
	struct htable t;

	(void)state;
	assert_non_null(it);
	assert_int_equal(htable_init(&t, 4, hitem_hash), 0);
	for (size_t i = 0; i < N; i++) {
		it[i].h = (uint64_t)(i / 2) * 0x9e3779b97f4a7c15ull;   /* pairs collide */
		htable_add(&t, &it[i].hn);
	}
	assert_int_equal(t.n, N);
	assert_true(t.size >= N && t.size <= 2 * N);
	assert_int_equal(t.size & (t.size - 1), 0);
	for (size_t i = 0; i < N; i++)
		assert_true(htable_has(&t, &it[i]));
	for (size_t i = 0; i < N; i += 2)
		htable_del(&t, &it[i].hn);
	assert_int_equal(t.n, N / 2);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(htable_has(&t, &it[i]), (int)(i % 2));
	htable_release(&t);
	free(it);
}

static void debug_log(enum tier_log_level level, const char *msg)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	fprintf(stderr, "%ld.%03ld <%d> %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000000, (int)level, msg);
}

int main(void)
{
	if (getenv("CACHE_TEST_DEBUG"))   /* show every log line, with times */
		cache_set_log(debug_log);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_config),
		T(test_missing_dir),
		T(test_read_hit_miss),
		T(test_shared_fetch),
		T(test_lru_watermarks),
		T(test_three_tiers),
		T(test_checksum_ssd),
		T(test_checksum_mem_verify),
		T(test_checksum_range),
		T(test_rebuild),
		T(test_quota_concurrency),
		T(test_full_tier),
		T(test_close_to_open),
		T(test_write_through),
		T(test_write_assembly),
		T(test_truncate),
		T(test_prefetch),
		T(test_prefetch_engine_gone),
		T(test_prefetch_engine_hung),
		T(test_random_direct),
		T(test_wait_hooks),
		T(test_stats_evict),
		T(test_passthrough),
		cmocka_unit_test(test_htable),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
