/* Unit tests for tiers/: block format, verification, scan, directory errors. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <cmocka.h>

#include "tiers/tier.h"
#include "tiers/tier_int.h"   /* format and directory-health internals */

static char tmpdir[64];

static int setup(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_tier.XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	umount2(tmpdir, MNT_DETACH);   /* in case a test mounted over it */
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static struct tier_block mk(const char *fkey, uint64_t index, uint32_t len, uint64_t seq)
{
	return (struct tier_block){
		.key = tier_block_key(fkey, strlen(fkey), index), .seq = seq, .index = index,
		.len = len, .block_size = 65536, .file_size = 1000000, .file_mtime_ns = 42,
		.file_key = fkey, .file_key_len = (uint32_t)strlen(fkey),
	};
}

static void block_path(char *buf, size_t len, const char *dir, const struct tier_block *b, const char *sfx)
{
	snprintf(buf, len, "%s/%02x/%016llx-%016llx%s", dir, (unsigned)(b->key >> 56),
		 (unsigned long long)b->key, (unsigned long long)b->seq, sfx);
}

static void test_key(void **state)
{
	uint64_t a = tier_block_key("a/b", 3, 0), b = tier_block_key("a/b", 3, 1);

	assert_int_not_equal(a, b);
	assert_int_equal(a, tier_block_key("a/b", 3, 0));
	assert_int_not_equal(a, tier_block_key("a/c", 3, 0));
}

static void test_roundtrip_and_corruption(void **state)
{
	const char *dirs[] = { tmpdir };
	char err[256], path[256], *data = malloc(65536), *back = malloc(65536);
	struct tier *t;
	struct tier_block b = mk("dir/file", 3, 65536, 7);
	struct stat st;
	int fd;

	for (int i = 0; i < 65536; i++)
		data[i] = (char)(i * 7);
	assert_int_equal(tier_open(&t, TIER_SSD, dirs, 1, err, sizeof(err)), 0);
	assert_int_equal(tier_write(t, &b, data), 0);
	block_path(path, sizeof(path), tmpdir, &b, "");
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, tier_block_bytes(65536, 8));
	assert_int_equal(tier_read(t, &b, back, 1), 65536);
	assert_memory_equal(data, back, 65536);

	/* flip one data byte: verification catches it, unverified read does not */
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	char bad = (char)(data[1000] ^ 0x5a);
	assert_int_equal(pwrite(fd, &bad, 1, 1000), 1);
	close(fd);
	assert_int_equal(tier_read(t, &b, back, 1), -EBADMSG);
	assert_int_equal(tier_read(t, &b, back, 0), 65536);

	/* identity mismatch (other file key) is refused even without verify */
	struct tier_block other = b;
	other.file_key = "dir/fild";
	assert_int_equal(tier_read(t, &other, back, 0), -EBADMSG);

	assert_int_equal(tier_remove(t, &b), 0);
	assert_int_equal(tier_read(t, &b, back, 1), -ENOENT);
	tier_close(t);
	free(data);
	free(back);
}

struct seen {
	int n;
	uint64_t keys[16];
};

static int scan_cb(void *arg, const struct tier_block *b)
{
	struct seen *s = arg;

	assert_true(s->n < 16);
	assert_int_equal(b->file_key_len, strlen(b->file_key));
	assert_int_equal(b->key, tier_block_key(b->file_key, b->file_key_len, b->index));
	assert_int_equal(b->file_mtime_ns, 42);
	s->keys[s->n++] = b->key;
	return 0;
}

#define CH TIER_CHUNK

static char *pattern(size_t len, unsigned seed)
{
	char *p = malloc(len);

	for (size_t i = 0; i < len; i++)
		p[i] = (char)((i * 131 + seed + i / 977) & 0xff);
	return p;
}

static void flip(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	char c;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &c, 1, off), 1);
	c ^= 0x10;
	assert_int_equal(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

/* Read [off, off+len) with tier_read_range and check the bytes and that
 * nothing past them was written. */
static void range_ok(struct tier *t, const struct tier_block *b, const char *data,
		     uint32_t off, uint32_t len, int verify)
{
	uint32_t want = off + len > b->len ? b->len - off : len;
	char *buf = malloc((size_t)len + 16);
	int r;

	memset(buf, 0xee, (size_t)len + 16);
	r = tier_read_range(t, b, off, len, buf, verify);
	if (r != (int)want)
		fail_msg("range %u+%u verify %d: %d, want %u", off, len, verify, r, want);
	assert_memory_equal(buf, data + off, want);
	for (size_t i = want; i < (size_t)len + 16; i++)
		assert_int_equal((unsigned char)buf[i], 0xee);
	free(buf);
}

static void test_range(void **state)
{
	const char *dirs[] = { tmpdir };
	const uint32_t len = 5 * CH + 1000;       /* short last chunk */
	char err[256], path[256], *data = pattern(len, 1);
	struct tier *t;
	struct tier_block b = mk("range/file", 0, len, 1);
	struct stat st;

	assert_int_equal(tier_open(&t, TIER_SSD, dirs, 1, err, sizeof(err)), 0);
	assert_int_equal(tier_write(t, &b, data), 0);
	block_path(path, sizeof(path), tmpdir, &b, "");
	assert_int_equal(stat(path, &st), 0);
	/* data, 6 chunk checksums, file key, footer */
	assert_int_equal(st.st_size, len + 6 * 8 + 10 + 80);
	assert_int_equal(tier_block_bytes(len, 10), len + 6 * 8 + 10 + 80);
	assert_int_equal(tier_block_bytes(CH, 10), CH + 8 + 10 + 80);
	assert_int_equal(tier_block_bytes(CH + 1, 10), CH + 1 + 16 + 10 + 80);
	assert_int_equal(tier_block_bytes(0, 10), 10 + 80);

	for (int verify = 0; verify < 2; verify++) {
		range_ok(t, &b, data, 0, 4096, verify);             /* aligned */
		range_ok(t, &b, data, CH, CH, verify);              /* one whole chunk */
		range_ok(t, &b, data, 100, 5000, verify);           /* unaligned */
		range_ok(t, &b, data, CH - 10, 20, verify);         /* chunk boundary */
		range_ok(t, &b, data, CH - 1, 2 * CH + 2, verify);  /* four chunks */
		range_ok(t, &b, data, 0, len, verify);              /* everything */
		range_ok(t, &b, data, 5 * CH + 10, 900, verify);    /* inside the short chunk */
		range_ok(t, &b, data, 5 * CH - 7, 10000, verify);   /* clamped at the end */
		range_ok(t, &b, data, len - 1, 1, verify);
		range_ok(t, &b, data, len, 4096, verify);           /* at the end: 0 */
		assert_int_equal(tier_read_range(t, &b, len + 1, 1, data, verify), -EINVAL);
	}

	/* identity is checked on ranged reads too */
	struct tier_block other = b;
	other.index = 1;
	assert_int_equal(tier_read_range(t, &other, 0, 10, data, 0), -EBADMSG);
	other = b;
	other.len = len - 1;     /* a caller with a stale length */
	assert_int_equal(tier_read_range(t, &other, 0, 10, data, 0), -EBADMSG);

	assert_int_equal(tier_remove(t, &b), 0);
	assert_int_equal(tier_read_range(t, &b, 0, 10, data, 1), -ENOENT);
	tier_close(t);
	free(data);
}

static void test_range_corruption(void **state)
{
	const char *dirs[] = { tmpdir };
	const uint32_t len = 5 * CH + 1000;
	char err[256], path[256], *data = pattern(len, 2), *buf = malloc(len);
	struct tier *t;
	struct tier_block b = mk("range/bad", 0, len, 2);

	assert_int_equal(tier_open(&t, TIER_SSD, dirs, 1, err, sizeof(err)), 0);
	assert_int_equal(tier_write(t, &b, data), 0);
	block_path(path, sizeof(path), tmpdir, &b, "");

	/* a bad byte in chunk 3 */
	flip(path, 3 * CH + 17);
	assert_int_equal(tier_read_range(t, &b, 3 * CH, 4096, buf, 1), -EBADMSG);
	assert_int_equal(tier_read_range(t, &b, 3 * CH + 10, 20, buf, 1), -EBADMSG);
	assert_int_equal(tier_read_range(t, &b, 3 * CH + CH / 2, 10, buf, 1), -EBADMSG); /* same chunk */
	assert_int_equal(tier_read_range(t, &b, 2 * CH, 2 * CH, buf, 1), -EBADMSG);
	/* other chunks are fine: only the chunks read are verified */
	range_ok(t, &b, data, 0, 3 * CH, 1);
	range_ok(t, &b, data, 4 * CH, CH + 1000, 1);
	range_ok(t, &b, data, 3 * CH - 100, 100, 1);
	/* unverified reads do not notice; whole reads do */
	assert_int_equal(tier_read_range(t, &b, 3 * CH, 100, buf, 0), 100);
	assert_int_equal((unsigned char)buf[17], (unsigned char)(data[3 * CH + 17] ^ 0x10));
	assert_int_equal(tier_read(t, &b, buf, 1), -EBADMSG);
	assert_int_equal(tier_read(t, &b, buf, 0), (int)len);
	flip(path, 3 * CH + 17);                 /* repaired */
	assert_int_equal(tier_read(t, &b, buf, 1), (int)len);
	assert_memory_equal(buf, data, len);

	/* a bad chunk table entry: refused on every read, verified or not,
	 * whichever chunk is read */
	flip(path, len + 8 * 4 + 3);              /* entry of chunk 4 */
	assert_int_equal(tier_read_range(t, &b, 0, 10, buf, 0), -EBADMSG);
	assert_int_equal(tier_read_range(t, &b, 0, 10, buf, 1), -EBADMSG);
	assert_int_equal(tier_read(t, &b, buf, 0), -EBADMSG);
	assert_int_equal(tier_read(t, &b, buf, 1), -EBADMSG);
	/* and discarded at scan */
	{
		struct seen s = { 0 };
		unsigned disc = 0;

		assert_int_equal(tier_scan(t, scan_cb, &s, &disc), 0);
		assert_int_equal(s.n, 0);
		assert_int_equal(disc, 1);
		assert_int_equal(access(path, F_OK), -1);
	}
	tier_close(t);
	free(data);
	free(buf);
}

static void test_scan_discards_torn(void **state)
{
	const char *dirs[] = { tmpdir };
	char err[256], path[256], tmp[256], foreign[256];
	char *data = calloc(1, 65536);
	struct tier *t;
	struct tier_block b[4];
	struct seen s = { 0 };
	unsigned disc = 0;
	int fd;

	assert_int_equal(tier_open(&t, TIER_HDD, dirs, 1, err, sizeof(err)), 0);
	for (int i = 0; i < 4; i++) {
		b[i] = mk("f", (uint64_t)i, i == 3 ? 100 : 65536, 100 + (uint64_t)i);
		assert_int_equal(tier_write(t, &b[i], data), 0);
	}
	/* torn: truncated in the middle of the data */
	block_path(path, sizeof(path), tmpdir, &b[1], "");
	assert_int_equal(truncate(path, 30000), 0);
	/* torn: right length, footer zeroed (data written, footer lost) */
	block_path(path, sizeof(path), tmpdir, &b[2], "");
	fd = open(path, O_WRONLY);
	assert_int_equal(pwrite(fd, data, 80, (off_t)tier_block_bytes(65536, 1) - 80), 80);
	close(fd);
	/* interrupted write left a temp file */
	block_path(tmp, sizeof(tmp), tmpdir, &(struct tier_block){ .key = b[0].key, .seq = 999 }, ".tmp");
	fd = open(tmp, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	/* a file that is not ours stays */
	snprintf(foreign, sizeof(foreign), "%s/00/README", tmpdir);
	fd = open(foreign, O_WRONLY | O_CREAT, 0600);
	close(fd);

	assert_int_equal(tier_scan(t, scan_cb, &s, &disc), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(disc, 3);
	assert_true((s.keys[0] == b[0].key && s.keys[1] == b[3].key) ||
		    (s.keys[1] == b[0].key && s.keys[0] == b[3].key));
	block_path(path, sizeof(path), tmpdir, &b[1], "");
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(access(tmp, F_OK), -1);
	assert_int_equal(access(foreign, F_OK), 0);
	tier_close(t);
	free(data);
}

/* The version 1 footer, to forge a block file of the old format. */
struct footer_v1 {
	uint64_t magic;
	uint32_t version, len;
	uint64_t key, seq, index, file_size;
	int64_t file_mtime_ns;
	uint64_t checksum;
	uint32_t key_len, block_size;
	uint64_t footer_sum;
};

static void write_file(const char *path, const void *a, size_t alen, const void *b, size_t blen,
		       const void *c, size_t clen)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, a, alen), (ssize_t)alen);
	assert_int_equal(write(fd, b, blen), (ssize_t)blen);
	assert_int_equal(write(fd, c, clen), (ssize_t)clen);
	close(fd);
}

/* Files of the old format (no chunk table) and garbage of the right size are
 * discarded at scan; the cache refills them. */
static void test_scan_discards_old_format(void **state)
{
	const char *dirs[] = { tmpdir };
	char err[256], path[256], footer[80];
	char *data = pattern(3 * CH + 5, 3);
	struct tier *t;
	struct tier_block good = mk("f", 0, 3 * CH + 5, 300), v1 = mk("f", 1, 1000, 301);
	struct tier_block stripped = mk("f", 2, 2 * CH, 302), junk = mk("f", 3, 1000, 303);
	struct footer_v1 f;
	struct seen s = { 0 };
	unsigned disc = 0;
	int fd;

	assert_int_equal(sizeof(f), 80);
	assert_int_equal(tier_open(&t, TIER_SSD, dirs, 1, err, sizeof(err)), 0);
	assert_int_equal(tier_write(t, &good, data), 0);

	/* a genuine version 1 block: [data][file key][footer v1] */
	f = (struct footer_v1){
		.magic = 0x314b4c4253525a4cULL, .version = 1, .len = v1.len, .key = v1.key,
		.seq = v1.seq, .index = v1.index, .file_size = v1.file_size,
		.file_mtime_ns = v1.file_mtime_ns, .checksum = XXH3_64bits(data, v1.len),
		.key_len = 1, .block_size = v1.block_size,
	};
	f.footer_sum = XXH3_64bits(&f, offsetof(struct footer_v1, footer_sum));
	block_path(path, sizeof(path), tmpdir, &v1, "");
	write_file(path, data, v1.len, "f", 1, &f, sizeof(f));

	/* a version 2 footer on a v1-sized file (chunk table missing) */
	assert_int_equal(tier_write(t, &stripped, data), 0);
	block_path(path, sizeof(path), tmpdir, &stripped, "");
	fd = open(path, O_RDONLY);
	assert_int_equal(pread(fd, footer, 80, (off_t)tier_block_bytes(2 * CH, 1) - 80), 80);
	close(fd);
	write_file(path, data, 2 * CH, "f", 1, footer, 80);

	/* garbage of exactly the v2 size */
	block_path(path, sizeof(path), tmpdir, &junk, "");
	write_file(path, data, 1000, data + 1000, 8 + 1, data + 2000, 80);

	assert_int_equal(tier_scan(t, scan_cb, &s, &disc), 0);
	assert_int_equal(s.n, 1);
	assert_int_equal(s.keys[0], good.key);
	assert_int_equal(disc, 3);
	block_path(path, sizeof(path), tmpdir, &v1, "");
	assert_int_equal(access(path, F_OK), -1);
	block_path(path, sizeof(path), tmpdir, &good, "");
	assert_int_equal(access(path, F_OK), 0);
	tier_close(t);
	free(data);
}

static void test_open_errors(void **state)
{
	char err[256] = "", missing[128], file[128];
	const char *d1[] = { missing }, *d2[] = { file }, *d3[] = { tmpdir };
	struct tier *t, *t2;
	int fd;

	snprintf(missing, sizeof(missing), "%s/nope", tmpdir);
	assert_int_equal(tier_open(&t, TIER_SSD, d1, 1, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "cache directory missing"));
	assert_null(t);

	snprintf(file, sizeof(file), "%s/plain", tmpdir);
	fd = open(file, O_WRONLY | O_CREAT, 0600);
	close(fd);
	assert_int_equal(tier_open(&t, TIER_SSD, d2, 1, err, sizeof(err)), -ENOTDIR);

	/* one directory, one cache */
	assert_int_equal(tier_open(&t, TIER_SSD, d3, 1, err, sizeof(err)), 0);
	assert_int_not_equal(tier_open(&t2, TIER_HDD, d3, 1, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "in use"));
	tier_close(t);
	assert_int_equal(tier_open(&t2, TIER_HDD, d3, 1, err, sizeof(err)), 0);
	tier_close(t2);

	assert_int_equal(tier_medium_parse("ssd", &(enum tier_medium){ 0 }), 0);
	assert_int_equal(tier_medium_parse("tape", &(enum tier_medium){ 0 }), -EINVAL);
}

/* A read-only mount is "unwritable" even for root. */
static void test_open_readonly(void **state)
{
	char err[256] = "", ro[128];
	const char *d[] = { ro };
	struct tier *t;

	snprintf(ro, sizeof(ro), "%s/ro", tmpdir);
	mkdir(ro, 0700);
	if (geteuid() != 0 || mount("tmpfs", ro, "tmpfs", MS_RDONLY, "size=64k") < 0) {
		print_message("skipped: read-only tmpfs needs root (mount failed: %s)\n", strerror(errno));
		skip();
	}
	assert_int_equal(tier_open(&t, TIER_SSD, d, 1, err, sizeof(err)), -EROFS);
	assert_non_null(strstr(err, "not writable"));
	umount2(ro, MNT_DETACH);
}

/* Full disk: the directory is marked failed, the tier reports unusable, and
 * a second directory takes over. */
static void test_full_dir(void **state)
{
	char err[256], small[128], big[128];
	const char *d[] = { small, big };
	char *data = calloc(1, 65536);
	struct tier *t;
	int ret = 0, n;

	snprintf(small, sizeof(small), "%s/small", tmpdir);
	snprintf(big, sizeof(big), "%s/big", tmpdir);
	mkdir(small, 0700);
	mkdir(big, 0700);
	if (geteuid() != 0 || mount("tmpfs", small, "tmpfs", 0, "size=256k") < 0) {
		print_message("skipped: tiny tmpfs needs root (mount failed: %s)\n", strerror(errno));
		free(data);
		skip();
	}
	assert_int_equal(tier_open(&t, TIER_SSD, d, 2, err, sizeof(err)), 0);
	/* only the small dir first: write until it is full */
	for (n = 0; n < 20 && ret == 0; n++) {
		struct tier_block b = mk("full", (uint64_t)n, 65536, (uint64_t)n + 1);

		b.key &= ~1ULL;   /* key % 2 == 0: prefer dirs[0] */
		ret = tier_write(t, &b, data);
		if (ret == 0 && b.dir != 0)
			break;
	}
	assert_int_equal(ret, -ENOSPC);
	assert_true(tier_usable(t));      /* the big dir still works */
	{
		struct tier_block b = mk("full", 100, 65536, 1000);

		b.key &= ~1ULL;
		assert_int_equal(tier_write(t, &b, data), 0);
		assert_int_equal(b.dir, 1);   /* skipped the failed dir */
	}
	tier_close(t);
	umount2(small, MNT_DETACH);
	free(data);
}

/* Block names: what tier_write names a file, the scan parses back, and the
 * scan leaves alone anything that is not exactly such a name. */
static void test_block_names(void **state)
{
	char name[BLOCK_NAME_MAX];
	uint64_t key = 0xab00000000000012ull, seq = 0x0123456789abcdefull, k, q;

	(void)state;
	block_name(name, sizeof(name), key, seq, "");
	assert_string_equal(name, "ab/ab00000000000012-0123456789abcdef");
	assert_int_equal(block_name_parse(name + 3, &k, &q), 0);
	assert_true(k == key && q == seq);
	block_name(name, sizeof(name), key, seq, ".tmp");
	assert_int_equal(block_name_parse(name + 3, &k, &q), -1);   /* temp file */
	assert_int_equal(block_name_parse("AB00000000000012-0123456789abcdef", &k, &q), -1);
	assert_int_equal(block_name_parse("ab00000000000012-0123456789abcde", &k, &q), -1);
	assert_int_equal(block_name_parse("ab00000000000012_0123456789abcdef", &k, &q), -1);
	assert_int_equal(block_name_parse(".lazarus.lock", &k, &q), -1);
}

/* The chunk check over data spread across segments, with chunks that
 * straddle two of them (as the ranged read's bounce buffers do): it checks
 * exactly the chunks of [start, end). */
static void test_chunks_check(void **state)
{
	enum { LEN = 2 * TIER_CHUNK + 7000 };   /* 3 chunks, the last one short */
	char *data = malloc(LEN);
	uint64_t table[3];
	struct iovec seg[3];

	(void)state;
	for (int i = 0; i < LEN; i++)
		data[i] = (char)(i * 13 + 1);
	table_fill(table, data, LEN);
	assert_int_equal(table_bytes(LEN), sizeof(table));
	seg[0] = (struct iovec){ data, 100 };
	seg[1] = (struct iovec){ data + 100, TIER_CHUNK + 5000 };
	seg[2] = (struct iovec){ data + 100 + TIER_CHUNK + 5000, LEN - 100 - TIER_CHUNK - 5000 };
	assert_int_equal(chunks_check((const char *)table, 0, LEN, seg), 0);

	data[TIER_CHUNK + 3] ^= 1;   /* in chunk 1, inside seg[1] */
	assert_int_equal(chunks_check((const char *)table, 0, LEN, seg), -EBADMSG);
	data[TIER_CHUNK + 3] ^= 1;
	data[2 * TIER_CHUNK + 1] ^= 1;   /* in chunk 2, which straddles seg[1] and seg[2] */
	assert_int_equal(chunks_check((const char *)table, 0, LEN, seg), -EBADMSG);
	/* chunks 0 and 1 alone: the bad chunk 2 is not looked at */
	assert_int_equal(chunks_check((const char *)table, 0, 2 * TIER_CHUNK, seg), 0);
	/* chunk 2 alone, from its own segments */
	seg[0] = (struct iovec){ data + 2 * TIER_CHUNK, 3 };
	seg[1] = (struct iovec){ data + 2 * TIER_CHUNK + 3, LEN - 2 * TIER_CHUNK - 3 };
	assert_int_equal(chunks_check((const char *)table, 2 * TIER_CHUNK, LEN, seg), -EBADMSG);
	data[2 * TIER_CHUNK + 1] ^= 1;
	assert_int_equal(chunks_check((const char *)table, 2 * TIER_CHUNK, LEN, seg), 0);
	free(data);
}

static int retried_msgs;

static void count_retried(enum tier_log_level level, const char *msg)
{
	if (level == TIER_LOG_INFO && strstr(msg, "cache directory retried: "))
		retried_msgs++;
}

/* Directory health: a failed directory is skipped until its retry time;
 * tier_usable() only looks (it may run under cache.lock, where nothing may
 * log), and the write that picks a retried directory clears it and logs
 * that once. */
static void test_dir_health(void **state)
{
	char err[256], a[128], b[128];
	const char *d[] = { a, b };
	struct tier *t;

	snprintf(a, sizeof(a), "%s/a", tmpdir);
	snprintf(b, sizeof(b), "%s/b", tmpdir);
	assert_int_equal(mkdir(a, 0700), 0);
	assert_int_equal(mkdir(b, 0700), 0);
	assert_int_equal(tier_open(&t, TIER_SSD, d, 2, err, sizeof(err)), 0);
	tier_set_log(count_retried);
	retried_msgs = 0;

	assert_int_equal(dir_pick(t, 0), 0);   /* key % 2 == 0 prefers a */
	dir_fail(t, 0, -EIO, "write");
	assert_int_equal(dir_pick(t, 0), 1);
	assert_true(tier_usable(t));
	dir_fail(t, 1, -EIO, "write");
	assert_false(tier_usable(t));
	assert_int_equal(dir_pick(t, 0), 2);   /* none */

	tier_set_retry(t, 0);
	dir_fail(t, 1, -EIO, "write");         /* may be retried at once */
	assert_true(tier_usable(t));
	assert_true(tier_usable(t));
	assert_int_equal(retried_msgs, 0);     /* looking does not retry */
	assert_int_equal(dir_pick(t, 0), 1);
	assert_int_equal(retried_msgs, 1);
	assert_int_equal(dir_pick(t, 0), 1);   /* healthy again: no second message */
	assert_int_equal(retried_msgs, 1);

	tier_set_log(NULL);
	tier_close(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key),
		cmocka_unit_test_setup_teardown(test_roundtrip_and_corruption, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_discards_torn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_range, setup, teardown),
		cmocka_unit_test_setup_teardown(test_range_corruption, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_discards_old_format, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_readonly, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_dir, setup, teardown),
		cmocka_unit_test(test_block_names),
		cmocka_unit_test(test_chunks_check),
		cmocka_unit_test_setup_teardown(test_dir_health, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
