/*
 * Unit tests for fs/passthrough.c against the real kernel: the test is the
 * daemon of a FUSE mount of its own (nothing opens files on it), so that
 * INIT goes through our session io and hooks and the backing ids are real.
 *  - negotiation: the kernel's INIT offers passthrough, the reply we write
 *    asks for it (and a hook given an INIT that does not offer it, or a
 *    reply with writeback cache, leaves it off);
 *  - the counting rules: a wholly cached file passes through, further
 *    opens share its backing id (O_DIRECT too), an open for writing is
 *    refused, the id is closed with the last one; a file open normally
 *    stays normal (a fallback), and passes through again once closed.
 * Skips without /dev/fuse or root.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/fs_int.h"
#include "fs/passthrough.h"
#include "fs/takeover.h"

#define BS 65536u
#define BACKING_CLOSE _IOW(229, 2, uint32_t)

static char root[64], mnt[96], tdir[96];

struct env {
	struct fs_opts o;
	struct fs fs;
	char data[3 * BS];
};

static ssize_t fetch(void *arg, void *buf, size_t len, off_t off)
{
	struct env *v = arg;
	size_t n = (size_t)off >= sizeof(v->data) ? 0 : sizeof(v->data) - (size_t)off;

	n = len < n ? len : n;
	memcpy(buf, v->data + off, n);
	return (ssize_t)n;
}

static int setup(void **state)
{
	static const struct fuse_lowlevel_ops ops;
	char *argv[] = { "test_passthrough", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(1, argv);
	struct fuse_buf buf = { 0 };
	struct cache_file *cf;
	struct env *v;
	char err[512] = "", tier[200];
	int keep;

	if (access("/dev/fuse", R_OK | W_OK) || geteuid()) {
		print_message("skip: needs /dev/fuse and root\n");
		*state = NULL;
		return 0;
	}
	v = calloc(1, sizeof(*v));
	snprintf(root, sizeof(root), "/tmp/test_pt.XXXXXX");
	assert_non_null(mkdtemp(root));
	snprintf(mnt, sizeof(mnt), "%s/mnt", root);
	snprintf(tdir, sizeof(tdir), "%s/t0", root);
	assert_int_equal(mkdir(mnt, 0755), 0);
	assert_int_equal(mkdir(tdir, 0700), 0);

	fs_opts_init(&v->o);
	v->o.readonly = true;
	snprintf(tier, sizeof(tier), "SSD:%s:10M", tdir);
	assert_int_equal(cache_config_set(&v->o.cache, "block_size", "64K", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&v->o.cache, "prefetch", "0", err, sizeof(err)), 0);
	assert_int_equal(cache_config_set(&v->o.cache, "tier0", tier, err, sizeof(err)), 0);
	v->fs.o = &v->o;
	assert_int_equal(cache_new(&v->fs.cache, &v->o.cache, root, err, sizeof(err)), 0);
	assert_int_equal(fs_pt_new(&v->fs.pt), 0);
	for (size_t i = 0; i < sizeof(v->data); i++)
		v->data[i] = (char)(i * 7 + i / 1000);
	/* "f", three blocks, wholly cached with mtime 1 */
	assert_int_equal(cache_file_open(v->fs.cache, "f", sizeof(v->data), 1, NULL, &cf, &keep), 0);
	assert_int_equal(cache_read(cf, err, 1, 0, fetch, v), 1);
	assert_int_equal(cache_read(cf, err, 1, BS, fetch, v), 1);
	assert_int_equal(cache_read(cf, err, 1, 2 * BS, fetch, v), 1);
	cache_file_close(cf);
	assert_true(cache_holds_file(v->fs.cache, "f", sizeof(v->data), 1));

	/* our own mount: INIT through the session io (no takeover) */
	v->fs.se = fuse_session_new(&args, &ops, sizeof(ops), &v->fs);
	fuse_opt_free_args(&args);
	assert_non_null(v->fs.se);
	assert_int_equal(fuse_session_mount(v->fs.se, mnt), 0);
	assert_int_equal(fs_session_io_install(&v->fs, fuse_session_fd(v->fs.se)), 0);
	assert_true(fuse_session_receive_buf(v->fs.se, &buf) > 0);
	fuse_session_process_buf(v->fs.se, &buf);
	free(buf.mem);
	*state = v;
	return 0;
}

static int teardown(void **state)
{
	struct env *v = *state;
	char rm[200];

	if (!v)
		return 0;
	umount2(mnt, MNT_DETACH);
	fuse_session_unmount(v->fs.se);
	fuse_session_destroy(v->fs.se);
	fs_pt_free(v->fs.pt);
	cache_free(v->fs.cache);
	fs_opts_release(&v->o);
	free(v);
	snprintf(rm, sizeof(rm), "rm -rf '%s'", root);
	return system(rm) ? -1 : 0;
}

static struct stat file_st(off_t size, long mtime_s)
{
	struct stat st = { .st_mode = S_IFREG | 0644, .st_size = size };

	st.st_mtim.tv_sec = mtime_s;
	return st;
}

/* The kernel of this machine (6.18) offers passthrough, and we take it. */
static void test_negotiated(void **state)
{
	struct env *v = *state;
	struct fs_pt_stats ps;

	if (!v)
		skip();
	assert_true(atomic_load(&v->fs.passthrough));
	fs_pt_get_stats(&v->fs, &ps);
	assert_string_equal(ps.state, "on");
	assert_null(ps.why);
}

/* The hooks alone: an INIT without the offer, or a reply with writeback
 * cache, leave the INIT reply as libfuse wrote it. */
static void test_hooks_decline(void **state)
{
	struct {
		struct fuse_in_header h;
		struct fuse_init_in a;
	} in = {
		.h = { .opcode = FUSE_INIT, .unique = 2 },
		.a = { .major = FUSE_KERNEL_VERSION, .minor = 38, .flags = FUSE_INIT_EXT },
	};
	struct fuse_out_header oh = { .unique = 2 };
	struct fuse_init_out out = { .major = FUSE_KERNEL_VERSION, .minor = 38,
				     .flags = FUSE_INIT_EXT };
	struct iovec iov[2] = { { &oh, sizeof(oh) }, { &out, sizeof(out) } };
	struct fs_pt_stats ps;
	struct fs_opts o;
	struct fs fs = { .o = &o };

	(void)state;
	fs_opts_init(&o);
	assert_int_equal(fs_pt_new(&fs.pt), 0);
	fs.cache = (struct cache *)1;   /* only looked at, never used */
	fs_pt_init_seen(&fs, &in, sizeof(in));
	fs_pt_init_reply(&fs, iov, 2);
	assert_ptr_equal(iov[1].iov_base, &out);
	assert_false(atomic_load(&fs.passthrough));
	fs_pt_get_stats(&fs, &ps);
	assert_string_equal(ps.state, "off");
	assert_string_equal(ps.why, "the kernel does not offer it");

	in.a.flags2 = 1u << 5;          /* FUSE_PASSTHROUGH >> 32 */
	out.flags |= FUSE_WRITEBACK_CACHE;
	fs_pt_init_seen(&fs, &in, sizeof(in));
	fs_pt_init_reply(&fs, iov, 2);
	assert_ptr_equal(iov[1].iov_base, &out);
	assert_false(atomic_load(&fs.passthrough));

	out.flags &= ~FUSE_WRITEBACK_CACHE;
	fs_pt_init_seen(&fs, &in, sizeof(in));
	fs_pt_init_reply(&fs, iov, 2);
	assert_true(atomic_load(&fs.passthrough));
	assert_int_equal(((struct fuse_init_out *)iov[1].iov_base)->flags2 & (1u << 5), 1u << 5);
	assert_int_equal(((uint32_t *)((struct fuse_init_out *)iov[1].iov_base)->unused)[0], 1);
	assert_int_equal(out.flags2, 0);        /* libfuse's copy untouched */
	fs_pt_free(fs.pt);
	fs_opts_release(&o);
}

/* ioctl(BACKING_CLOSE) of an id: 0 while registered. */
static int backing_close(struct env *v, int id)
{
	uint32_t u = (uint32_t)id;

	return ioctl(fuse_session_fd(v->fs.se), BACKING_CLOSE, &u) ? -errno : 0;
}

static void test_counting(void **state)
{
	struct env *v = *state;
	struct stat f = file_st(sizeof(v->data), 0), g = file_st(1000, 0);
	struct fs_pt_stats ps;
	int id = 0, id2 = 0, id3 = 0, m;

	if (!v)
		skip();
	f.st_mtim.tv_nsec = 1;          /* mtime 1 ns, as cached */
	/* not cached: normal, and no fallback */
	assert_int_equal(fs_pt_open(&v->fs, 2, "g", &g, O_RDONLY, &id), FS_PT_OTHER);
	fs_pt_end(&v->fs, 2, FS_PT_OTHER);
	/* other attributes than cached: normal */
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &g, O_RDONLY, &id), FS_PT_OTHER);
	fs_pt_end(&v->fs, 3, FS_PT_OTHER);

	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY, &id), FS_PT_PASS);
	assert_true(id > 0);
	/* more opens while it is open: the same backing file, O_DIRECT too */
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY, &id2), FS_PT_PASS);
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY | O_DIRECT, &id3), FS_PT_PASS);
	assert_int_equal(id2, id);
	assert_int_equal(id3, id);
	/* an open for writing cannot share it (none reaches a ro mount) */
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDWR, &id2), -EROFS);
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY | O_TRUNC, &id2), -EROFS);
	fs_pt_end(&v->fs, 3, FS_PT_PASS);
	fs_pt_end(&v->fs, 3, FS_PT_PASS);
	fs_pt_end(&v->fs, 3, FS_PT_PASS);
	/* closed with the last: closing it again fails */
	assert_int_equal(backing_close(v, id), -ENOENT);

	/* open normally first (O_DIRECT): further opens stay normal */
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY | O_DIRECT, &id), FS_PT_OTHER);
	assert_int_equal(fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY, &id), FS_PT_OTHER);
	fs_pt_end(&v->fs, 3, FS_PT_OTHER);
	fs_pt_end(&v->fs, 3, FS_PT_OTHER);
	/* and once closed, it passes through again (a copy made once) */
	m = fs_pt_open(&v->fs, 3, "f", &f, O_RDONLY, &id);
	assert_int_equal(m, FS_PT_PASS);
	assert_int_equal(backing_close(v, id), 0);      /* it was registered */
	fs_pt_end(&v->fs, 3, FS_PT_PASS);               /* logs a failed close */

	fs_pt_get_stats(&v->fs, &ps);
	assert_int_equal(ps.opens, 4);
	assert_int_equal(ps.shared, 2);
	assert_int_equal(ps.fallbacks, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_negotiated, setup, teardown),
		cmocka_unit_test(test_hooks_decline),
		cmocka_unit_test_setup_teardown(test_counting, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
