/*
 * Unit tests for fs/ option parsing (fs_opts_parse) and fs_mask_secret:
 * good command lines, the libfuse argv they produce, every error with its
 * message, -h/-V, and password masking.
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
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fs/fs.h"

static char mnt[PATH_MAX];      /* a real directory, canonical */

/* One parse: the options, the libfuse argv and the error message. */
struct run {
	struct fs_opts o;
	int fargc;
	char **fargv;
	char err[512];
	int ret;
};

static int setup(void **state)
{
	char tmpl[] = "/tmp/test_opts.XXXXXX", *real;

	assert_non_null(mkdtemp(tmpl));
	real = realpath(tmpl, NULL);
	assert_non_null(real);
	snprintf(mnt, sizeof(mnt), "%s", real);
	free(real);
	return 0;
}

static int teardown(void **state)
{
	return rmdir(mnt);
}

static void run_free(struct run *r)
{
	fs_opts_release(&r->o);
	fs_strv_free(r->fargv);
	free(r);
}

/* Parse a NULL terminated argument list (argv[0] is added). */
static struct run *parse_v(const char *first, va_list ap)
{
	struct run *r = calloc(1, sizeof(*r));
	char *argv[32];
	int argc = 0;

	assert_non_null(r);
	argv[argc++] = "lazarusfs";
	for (const char *a = first; a; a = va_arg(ap, const char *)) {
		assert_true(argc < 31);
		argv[argc++] = (char *)a;
	}
	argv[argc] = NULL;
	fs_opts_init(&r->o);
	r->fargc = -1;
	r->fargv = (char **)&r->fargc;  /* poison: must be reset by the parser */
	r->ret = fs_opts_parse(&r->o, argc, argv, &r->fargc, &r->fargv, r->err,
			       sizeof(r->err));
	return r;
}

static struct run *parse(const char *first, ...)
{
	struct run *r;
	va_list ap;

	va_start(ap, first);
	r = parse_v(first, ap);
	va_end(ap);
	return r;
}

/* The parse must succeed. */
static struct run *parse_ok(const char *first, ...)
{
	struct run *r;
	va_list ap;

	va_start(ap, first);
	r = parse_v(first, ap);
	va_end(ap);
	if (r->ret)
		fail_msg("parse failed (%d): %s", r->ret, r->err);
	assert_int_equal(r->fargc, 3);
	assert_string_equal(r->fargv[0], "lazarusfs");
	assert_string_equal(r->fargv[1], "-o");
	assert_null(r->fargv[3]);
	return r;
}

/* The parse must fail with `ret` and a message containing `needle`. */
static void expect_error(int ret, const char *needle, const char *first, ...)
{
	struct run *r;
	va_list ap;

	va_start(ap, first);
	r = parse_v(first, ap);
	va_end(ap);
	if (r->ret != ret || !strstr(r->err, needle))
		fail_msg("want %d with '%s', got %d: '%s'", ret, needle, r->ret,
			 r->err);
	assert_int_equal(r->fargc, 0);
	assert_null(r->fargv);
	assert_null(strchr(r->err, '\n'));
	run_free(r);
}

/*
 * Is `opt` one of the comma separated options in the joined -o argument?
 * The joined string escapes ',' and '\' with a backslash.
 */
static bool has_fuse_opt(const struct run *r, const char *opt)
{
	const char *p = r->fargv[2];
	char one[1024];

	for (;;) {
		size_t n = 0;

		while (*p && *p != ',') {
			if (*p == '\\' && p[1])
				p++;
			assert_true(n < sizeof(one) - 1);
			one[n++] = *p++;
		}
		one[n] = 0;
		if (!strcmp(one, opt))
			return true;
		if (!*p)
			return false;
		p++;
	}
}

/* ------------------------------------------------------------- good */

static void test_minimal_profile(void **state)
{
	struct run *r = parse_ok("-o", "engine=bindfs", "/srv/data", mnt, NULL);

	assert_int_equal(r->o.profile, FS_PROFILE_BINDFS);
	assert_string_equal(r->o.source, "/srv/data");
	assert_string_equal(r->o.mountpoint, mnt);
	assert_string_equal(r->o.state_dir, LAZARUSFS_STATE_DIR);
	assert_null(r->o.engine_cmd);
	assert_null(r->o.engine_env);
	assert_false(r->o.foreground);
	assert_false(r->o.debug);
	/* documented defaults */
	assert_true(r->o.start_timeout == 30);
	assert_true(r->o.hang_timeout == 30);
	assert_true(r->o.idle_timeout == 0);
	assert_true(r->o.recovery_timeout == 0);
	assert_true(r->o.attr_timeout == 1);
	assert_true(r->o.entry_timeout == 1);
	assert_true(r->o.negative_timeout == 0);
	assert_int_equal(r->o.journal_mem, 8u << 20);
	assert_int_equal(r->o.journal_max, 64u << 20);
	assert_true(r->o.journal_age == 5);
	assert_int_equal(r->o.journal, FS_JOURNAL_AUTO);

	assert_true(has_fuse_opt(r, "fsname=/srv/data"));
	assert_true(has_fuse_opt(r, "subtype=lazarusfs"));
	assert_true(has_fuse_opt(r, "allow_other"));
	assert_true(has_fuse_opt(r, "default_permissions"));
	assert_false(has_fuse_opt(r, "debug"));
	/* our own options never reach libfuse */
	assert_null(strstr(r->fargv[2], "engine"));
	run_free(r);
}

/* The s3fs command line from the README: engine_opts holds s3fs's own -o
 * words, credentials sit in an engine_env file. */
static void test_s3fs_profile(void **state)
{
	struct run *r = parse_ok("-o", "engine=s3fs,engine_env=/etc/lazarusfs/s3.env,"
				 "engine_opts=-o url=http://127.0.0.1:9000 -o use_path_request_style",
				 "train-data:/imagenet", mnt, NULL);

	assert_int_equal(r->o.profile, FS_PROFILE_S3FS);
	assert_string_equal(r->o.source, "train-data:/imagenet");
	assert_string_equal(r->o.engine_env, "/etc/lazarusfs/s3.env");
	assert_string_equal(r->o.engine_opts,
			    "-o url=http://127.0.0.1:9000 -o use_path_request_style");
	assert_true(has_fuse_opt(r, "fsname=train-data:/imagenet"));
	assert_null(strstr(r->fargv[2], "engine"));
	assert_null(strstr(r->fargv[2], "url="));
	run_free(r);
}

static void test_mountpoint_canonical_and_order(void **state)
{
	char messy[PATH_MAX + 8];
	struct run *r;

	/* mount(8) style: options after the positionals; path not canonical */
	snprintf(messy, sizeof(messy), "%s/./", mnt);
	r = parse_ok("src", messy, "-o", "engine=sshfs", NULL);
	assert_string_equal(r->o.mountpoint, mnt);
	assert_string_equal(r->o.source, "src");
	assert_int_equal(r->o.profile, FS_PROFILE_SSHFS);
	run_free(r);
}

static void test_engine_cmd_escaped_commas(void **state)
{
	struct run *r = parse_ok(
		"-o", "engine_cmd=mycmd -o a\\,b\\,c {source} {mnt},state_dir=/var/x",
		"-o", "engine_env=/etc/env\\\\file,engine_opts=--x\\,y",
		"/data", mnt, NULL);

	assert_int_equal(r->o.profile, FS_PROFILE_COMMAND);
	assert_string_equal(r->o.engine_cmd, "mycmd -o a,b,c {source} {mnt}");
	assert_string_equal(r->o.state_dir, "/var/x");
	assert_string_equal(r->o.engine_env, "/etc/env\\file");
	assert_string_equal(r->o.engine_opts, "--x,y");
	run_free(r);

	/* engine=command together with engine_cmd is fine */
	r = parse_ok("-o", "engine=command,engine_cmd=x {mnt}", "/data", mnt, NULL);
	assert_int_equal(r->o.profile, FS_PROFILE_COMMAND);
	assert_string_equal(r->o.engine_cmd, "x {mnt}");
	run_free(r);
}

static void test_timeouts_and_sizes(void **state)
{
	struct run *r = parse_ok(
		"-ostart_timeout=5,idle_timeout=60,hang_timeout=10,recovery_timeout=120.5",
		"-o", "attr_timeout=0.5,entry_timeout=2,negative_timeout=1.25",
		"-ojournal_mem=64K,journal_max=1G,engine=alluxio",
		"/alluxio/path", mnt, NULL);

	assert_int_equal(r->o.profile, FS_PROFILE_ALLUXIO);
	assert_true(r->o.start_timeout == 5);
	assert_true(r->o.idle_timeout == 60);
	assert_true(r->o.hang_timeout == 10);
	assert_true(r->o.recovery_timeout == 120.5);
	assert_true(r->o.attr_timeout == 0.5);
	assert_true(r->o.entry_timeout == 2);
	assert_true(r->o.negative_timeout == 1.25);
	assert_int_equal(r->o.journal_mem, 64u << 10);
	assert_int_equal(r->o.journal_max, 1u << 30);
	run_free(r);

	r = parse_ok("-o", "engine=bindfs,journal_mem=3m,journal_max=4096", "s", mnt,
		     NULL);
	assert_int_equal(r->o.journal_mem, 3u << 20);
	assert_int_equal(r->o.journal_max, 4096);
	run_free(r);

	/* hang_timeout=0 (disabled) is allowed; the later value wins */
	r = parse_ok("-o", "engine=bindfs,hang_timeout=0,idle_timeout=5,idle_timeout=7",
		     "s", mnt, NULL);
	assert_true(r->o.hang_timeout == 0);
	assert_true(r->o.idle_timeout == 7);
	run_free(r);
}

static void test_flags(void **state)
{
	struct run *r = parse_ok("-f", "-o", "engine=bindfs", "s", mnt, NULL);

	assert_true(r->o.foreground);
	assert_false(r->o.debug);
	assert_false(has_fuse_opt(r, "debug"));
	run_free(r);

	r = parse_ok("-d", "-o", "engine=bindfs", "s", mnt, NULL);
	assert_true(r->o.foreground);
	assert_true(r->o.debug);
	assert_true(has_fuse_opt(r, "debug"));
	assert_true(r->o.passthrough);          /* auto by default */
	run_free(r);

	/* passthrough is ours, not the kernel's */
	r = parse_ok("-o", "engine=bindfs,passthrough=off", "s", mnt, NULL);
	assert_false(r->o.passthrough);
	assert_null(strstr(r->fargv[2], "passthrough"));
	run_free(r);
	r = parse_ok("-o", "engine=bindfs,passthrough=off,passthrough=auto", "s", mnt, NULL);
	assert_true(r->o.passthrough);
	run_free(r);
}

static void test_fuse_opts(void **state)
{
	struct run *r = parse_ok("-o", "ro,max_read=131072,engine=juicefs",
				 "-o", "noatime",
				 "redis://user:pass@host:6379/1", mnt, NULL);

	assert_int_equal(r->o.profile, FS_PROFILE_JUICEFS);
	/* the source keeps its secret; what libfuse (and df) sees does not */
	assert_string_equal(r->o.source, "redis://user:pass@host:6379/1");
	assert_true(has_fuse_opt(r, "fsname=redis://user:****@host:6379/1"));
	assert_null(strstr(r->fargv[2], "pass@"));
	assert_true(has_fuse_opt(r, "ro"));
	assert_true(has_fuse_opt(r, "max_read=131072"));
	assert_true(has_fuse_opt(r, "noatime"));
	assert_true(has_fuse_opt(r, "subtype=lazarusfs"));
	assert_true(has_fuse_opt(r, "allow_other"));
	assert_true(has_fuse_opt(r, "default_permissions"));
	run_free(r);

	/* a comma in the source is escaped for libfuse's -o splitting */
	r = parse_ok("-o", "engine=bindfs", "/srv/a,b", mnt, NULL);
	assert_non_null(strstr(r->fargv[2], "fsname=/srv/a\\,b"));
	assert_true(has_fuse_opt(r, "fsname=/srv/a,b"));
	run_free(r);
}

/* -------------------------------------------------------------- bad */

static void test_errors(void **state)
{
	char missing[PATH_MAX + 16];

	expect_error(-EINVAL, "unknown engine profile 'nfs' (want command, juicefs, alluxio, sshfs, bindfs or s3fs)",
		     "-o", "engine=nfs", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for start_timeout: 'abc'",
		     "-o", "engine=bindfs,start_timeout=abc", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for idle_timeout: '-1'",
		     "-o", "engine=bindfs,idle_timeout=-1", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for attr_timeout: '1s'",
		     "-o", "engine=bindfs,attr_timeout=1s", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for recovery_timeout: 'nan'",
		     "-o", "engine=bindfs,recovery_timeout=nan", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for journal_mem: '10KB'",
		     "-o", "engine=bindfs,journal_mem=10KB", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for journal_max: '-1'",
		     "-o", "engine=bindfs,journal_max=-1", "s", mnt, NULL);
	expect_error(-EINVAL, "invalid value for passthrough: '1' (want auto or off)",
		     "-o", "engine=bindfs,passthrough=1", "s", mnt, NULL);
	expect_error(-EINVAL, "option passthrough needs a value",
		     "-o", "engine=bindfs,passthrough", "s", mnt, NULL);
	expect_error(-EINVAL, "option start_timeout needs a value",
		     "-o", "engine=bindfs,start_timeout", "s", mnt, NULL);
	expect_error(-EINVAL, "option engine needs a value",
		     "-o", "engine", "s", mnt, NULL);
	expect_error(-EINVAL, "empty value for engine_cmd",
		     "-o", "engine_cmd=", "s", mnt, NULL);
	expect_error(-EINVAL, "-o needs an option list",
		     "s", mnt, "-o", NULL);
	expect_error(-EINVAL, "unknown flag '-x'",
		     "-x", "-o", "engine=bindfs", "s", mnt, NULL);
	expect_error(-EINVAL, "missing SOURCE",
		     "-o", "engine=bindfs", NULL);
	expect_error(-EINVAL, "missing MOUNTPOINT",
		     "-o", "engine=bindfs", "s", NULL);
	expect_error(-EINVAL, "unexpected argument 'extra'",
		     "-o", "engine=bindfs", "s", mnt, "extra", NULL);
	expect_error(-EINVAL, "engine_cmd is only for engine=command, not engine=juicefs",
		     "-o", "engine=juicefs,engine_cmd=juicefs mount {source} {mnt}",
		     "s", mnt, NULL);
	expect_error(-EINVAL, "no engine",
		     "s", mnt, NULL);
	expect_error(-EINVAL, "hang_timeout must be at least 1 second",
		     "-o", "engine=bindfs,hang_timeout=0.5", "s", mnt, NULL);
	expect_error(-EINVAL, "start_timeout must be more than 0",
		     "-o", "engine=bindfs,start_timeout=0", "s", mnt, NULL);

	snprintf(missing, sizeof(missing), "%s/does-not-exist", mnt);
	expect_error(-ENOENT, missing, "-o", "engine=bindfs", "s", missing, NULL);
}

/* ---------------------------------------------------- help, version */

/* Parse with stdout captured into buf. */
static int parse_captured(const char *flag, char *buf, size_t len)
{
	char tmpl[] = "/tmp/test_opts_out.XXXXXX";
	int fd = mkstemp(tmpl), saved, ret;
	struct run *r;
	ssize_t n;

	assert_true(fd >= 0);
	unlink(tmpl);
	fflush(stdout);
	saved = dup(STDOUT_FILENO);
	assert_true(saved >= 0);
	assert_true(dup2(fd, STDOUT_FILENO) >= 0);
	r = parse(flag, NULL);
	fflush(stdout);
	assert_true(dup2(saved, STDOUT_FILENO) >= 0);
	close(saved);
	n = pread(fd, buf, len - 1, 0);
	close(fd);
	assert_true(n >= 0);
	buf[n] = 0;
	ret = r->ret;
	assert_int_equal(r->fargc, 0);
	assert_null(r->fargv);
	run_free(r);
	return ret;
}

static void test_help_version(void **state)
{
	char out[4096];

	assert_int_equal(parse_captured("-h", out, sizeof(out)), 1);
	assert_non_null(strstr(out, "usage: lazarusfs"));
	assert_non_null(strstr(out, "engine_cmd="));
	assert_int_equal(parse_captured("--help", out, sizeof(out)), 1);
	assert_non_null(strstr(out, "usage: lazarusfs"));
	assert_int_equal(parse_captured("-V", out, sizeof(out)), 1);
	assert_string_equal(out, "lazarusfs " PACKAGE_VERSION "\n");
	assert_int_equal(parse_captured("--version", out, sizeof(out)), 1);
	assert_string_equal(out, "lazarusfs " PACKAGE_VERSION "\n");
}

static void test_profile_names(void **state)
{
	static const char *const names[] = {
		"command", "juicefs", "alluxio", "sshfs", "bindfs", "s3fs",
	};
	enum fs_engine_profile p;

	for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
		assert_int_equal(fs_profile_parse(names[i], &p), 0);
		assert_string_equal(fs_profile_name(p), names[i]);
	}
	assert_int_equal(fs_profile_parse("JuiceFS", &p), -EINVAL);
	assert_int_equal(fs_profile_parse("S3FS", &p), -EINVAL);
	assert_int_equal(fs_profile_parse("", &p), -EINVAL);
}

/* ------------------------------------------------------ mask secret */

static void expect_mask(const char *in, const char *want)
{
	char out[256];

	memset(out, 'X', sizeof(out));
	fs_mask_secret(in, out, sizeof(out));
	assert_string_equal(out, want);
}

static void test_mask_secret(void **state)
{
	char small[12];

	expect_mask("redis://user:pass@host:6379/1", "redis://user:****@host:6379/1");
	expect_mask("redis://:pass@host:6379/1", "redis://:****@host:6379/1");
	expect_mask("redis://user@host:6379/1", "redis://user@host:6379/1");
	expect_mask("redis://host:6379/1", "redis://host:6379/1");
	/* an '@' in the path is not userinfo */
	expect_mask("s3://bucket.host/dir/a@b:c", "s3://bucket.host/dir/a@b:c");
	expect_mask("redis://u:p@host/x@y", "redis://u:****@host/x@y");
	/* an '@' inside the password: userinfo ends at the last '@' */
	expect_mask("redis://u:p@ss@host/1", "redis://u:****@host/1");
	expect_mask("mysql://root:pw@(127.0.0.1:3306)/jfs",
		    "mysql://root:****@(127.0.0.1:3306)/jfs");
	/* no scheme: left alone */
	expect_mask("/srv/data", "/srv/data");
	expect_mask("user@host:/export", "user@host:/export");
	expect_mask("", "");

	/* truncation still terminates and never grows the secret back */
	memset(small, 'X', sizeof(small));
	fs_mask_secret("redis://user:pass@host", small, sizeof(small));
	assert_string_equal(small, "redis://use");
	fs_mask_secret("redis://user:pass@host", small, 1);
	assert_string_equal(small, "");
	small[0] = 'Z';
	fs_mask_secret("redis://user:pass@host", small, 0);
	assert_int_equal(small[0], 'Z');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal_profile),
		cmocka_unit_test(test_s3fs_profile),
		cmocka_unit_test(test_mountpoint_canonical_and_order),
		cmocka_unit_test(test_engine_cmd_escaped_commas),
		cmocka_unit_test(test_timeouts_and_sizes),
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_fuse_opts),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_help_version),
		cmocka_unit_test(test_profile_names),
		cmocka_unit_test(test_mask_secret),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
