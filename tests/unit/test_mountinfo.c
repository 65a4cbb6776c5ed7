/*
 * Unit tests for the mountinfo parser (fs/mountinfo.c): fields, optional
 * fields before the separator, octal escapes (a mount point with a space,
 * a tab, a backslash), malformed lines, and fs_mountinfo_each() over a
 * file with stacked mounts, where the last one is the top.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/fs.h"

static void test_plain_line(void **state)
{
	char line[] = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n";
	struct fs_mountinfo mi;

	assert_int_equal(fs_mountinfo_parse(line, &mi), 0);
	assert_int_equal(mi.major, 98);
	assert_int_equal(mi.minor, 0);
	assert_string_equal(mi.root, "/mnt1");
	assert_string_equal(mi.mnt, "/mnt2");
	assert_string_equal(mi.fstype, "ext3");
	assert_string_equal(mi.source, "/dev/root");
}

static void test_no_optional_fields(void **state)
{
	char line[] = "120 25 0:52 / /run/x rw,nosuid - fuse.lazarusfs /src rw,user_id=0";
	struct fs_mountinfo mi;

	assert_int_equal(fs_mountinfo_parse(line, &mi), 0);
	assert_int_equal(mi.major, 0);
	assert_int_equal(mi.minor, 52);
	assert_string_equal(mi.mnt, "/run/x");
	assert_string_equal(mi.fstype, "fuse.lazarusfs");
}

static void test_escapes(void **state)
{
	char line[] = "121 25 0:53 / /tmp/with\\040space/and\\011tab\\134x rw shared:7 master:3 - "
		      "fuse.bindfs /src\\040dir rw\n";
	struct fs_mountinfo mi;

	assert_int_equal(fs_mountinfo_parse(line, &mi), 0);
	assert_string_equal(mi.mnt, "/tmp/with space/and\ttab\\x");
	assert_string_equal(mi.fstype, "fuse.bindfs");
	assert_string_equal(mi.source, "/src dir");
}

static void test_malformed(void **state)
{
	char a[] = "36 35 98:0 /mnt1 /mnt2 rw master:1 ext3 /dev/root rw";   /* no " - " */
	char b[] = "36 35 nodev /mnt1 /mnt2 rw - ext3 /dev/root rw";
	char c[] = "36 35";
	char d[] = "";
	struct fs_mountinfo mi;

	assert_int_equal(fs_mountinfo_parse(a, &mi), -EINVAL);
	assert_int_equal(fs_mountinfo_parse(b, &mi), -EINVAL);
	assert_int_equal(fs_mountinfo_parse(c, &mi), -EINVAL);
	assert_int_equal(fs_mountinfo_parse(d, &mi), -EINVAL);
}

struct last {
	char mnt[64];
	unsigned minor;
	int lines;
};

static int remember(const struct fs_mountinfo *mi, void *arg)
{
	struct last *l = arg;

	l->lines++;
	if (!strcmp(mi->mnt, "/a b")) {
		snprintf(l->mnt, sizeof(l->mnt), "%s", mi->mnt);
		l->minor = mi->minor;
	}
	return 0;
}

static int stop_at_second(const struct fs_mountinfo *mi, void *arg)
{
	return ++*(int *)arg == 2 ? 42 : 0;
}

static void test_each_file(void **state)
{
	char path[] = "/tmp/test_mountinfo.XXXXXX";
	int fd = mkstemp(path);
	struct last l = { .lines = 0 };
	FILE *f;
	int n = 0;

	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fputs("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
	      "garbage line\n"
	      "2 1 0:40 / /a\\040b rw - fuse.bindfs src rw\n"
	      "3 2 0:41 / /a\\040b rw - fuse.lazarusfs src rw\n", f);
	fclose(f);
	assert_int_equal(fs_mountinfo_each(path, remember, &l), 0);
	assert_int_equal(l.lines, 3);           /* the garbage line is skipped */
	assert_string_equal(l.mnt, "/a b");
	assert_int_equal(l.minor, 41);          /* the top of the stack last */
	assert_int_equal(fs_mountinfo_each(path, stop_at_second, &n), 42);
	assert_int_equal(n, 2);
	unlink(path);
	assert_int_equal(fs_mountinfo_each(path, remember, &l), -ENOENT);
}

static void test_find_in_proc(void **state)
{
	struct fs_mountinfo_dev dev;

	/* the root file system is always mounted; a made-up path never is */
	assert_int_equal(fs_mountinfo_find("/", NULL, &dev), 1);
	assert_int_equal(fs_mountinfo_find("/no/such/mount point", NULL, NULL), 0);
	assert_int_equal(fs_mountinfo_find("/", "no-such-fstype", NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_line),
		cmocka_unit_test(test_no_optional_fields),
		cmocka_unit_test(test_escapes),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_each_file),
		cmocka_unit_test(test_find_in_proc),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
