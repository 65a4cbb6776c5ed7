/*
 * metaops: the metadata part of the lazarusfs benchmark.
 *
 * Usage: metaops DIR N [PHASE...]
 * Runs, over N empty files DIR/f<i> (DIR must exist and be empty):
 *   create     open(O_CREAT|O_EXCL|O_WRONLY) + close
 *   stat       stat
 *   restat     stat again (the same as stat; a separate name so that a
 *              second pass, e.g. without dropping caches, reports apart)
 *   openclose  open(O_RDONLY) + close
 *   unlink     unlink
 * in that order (or only the phases named). Prints one JSON object per line:
 *   {"op":"stat","n":10000,"secs":0.123,"ops":81300.0,"p50_us":9.1,"p99_us":40.2,"max_us":900.0,"errors":0}
 * Files are spread over subdirectories of 1000 entries so that no single
 * directory gets huge (d<i/1000>/f<i>); the subdirectories are created before
 * the create phase and removed after unlink, outside the timed region.
 *
 * A C helper rather than fio's filecreate/filestat engines because fio has
 * no open/close phase and no per-op latency for those engines in 3.33.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PER_DIR 1000

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int do_op(const char *op, const char *path)
{
	int fd;

	if (!strcmp(op, "create")) {
		fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
		if (fd < 0)
			return -errno;
		return close(fd) ? -errno : 0;
	}
	if (!strcmp(op, "stat") || !strcmp(op, "restat")) {
		struct stat st;

		return stat(path, &st) ? -errno : 0;
	}
	if (!strcmp(op, "openclose")) {
		fd = open(path, O_RDONLY);
		if (fd < 0)
			return -errno;
		return close(fd) ? -errno : 0;
	}
	if (!strcmp(op, "unlink"))
		return unlink(path) ? -errno : 0;
	return -EINVAL;
}

static int run_phase(const char *dir, long n, const char *op, double *lat)
{
	char path[4096];
	long i, errors = 0;
	int first_err = 0;
	double t0, t1, a;

	t0 = now_us();
	for (i = 0; i < n; i++) {
		int r;

		snprintf(path, sizeof(path), "%s/d%ld/f%ld", dir, i / PER_DIR, i);
		a = now_us();
		r = do_op(op, path);
		lat[i] = now_us() - a;
		if (r < 0) {
			if (!errors)
				first_err = -r;
			errors++;
		}
	}
	t1 = now_us();
	qsort(lat, n, sizeof(*lat), cmp_double);
	printf("{\"op\":\"%s\",\"n\":%ld,\"secs\":%.6f,\"ops\":%.1f,"
	       "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
	       "\"errors\":%ld,\"first_error\":\"%s\"}\n",
	       op, n, (t1 - t0) / 1e6, n / ((t1 - t0) / 1e6),
	       lat[n / 2], lat[(long)(n * 0.99)], lat[n - 1], errors,
	       errors ? strerror(first_err) : "");
	fflush(stdout);
	return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
	static const char *const all[] = { "create", "stat", "openclose", "unlink" };
	const char *const *phases = all;
	int nphases = 4, i, rc = 0;
	char path[4096];
	double *lat;
	long n, d;

	if (argc < 3 || (n = atol(argv[2])) <= 0) {
		fprintf(stderr, "usage: metaops DIR N [create|stat|restat|openclose|unlink...]\n");
		return 2;
	}
	if (argc > 3) {
		phases = (const char *const *)argv + 3;
		nphases = argc - 3;
	}
	lat = calloc(n, sizeof(*lat));
	if (!lat)
		return 2;
	for (i = 0; i < nphases; i++) {
		if (!strcmp(phases[i], "create")) {
			for (d = 0; d <= (n - 1) / PER_DIR; d++) {
				snprintf(path, sizeof(path), "%s/d%ld", argv[1], d);
				if (mkdir(path, 0755) && errno != EEXIST) {
					fprintf(stderr, "metaops: mkdir %s: %s\n", path,
						strerror(errno));
					return 2;
				}
			}
		}
		rc |= run_phase(argv[1], n, phases[i], lat);
		if (!strcmp(phases[i], "unlink")) {
			for (d = 0; d <= (n - 1) / PER_DIR; d++) {
				snprintf(path, sizeof(path), "%s/d%ld", argv[1], d);
				rmdir(path);
			}
		}
	}
	free(lat);
	return rc;
}
