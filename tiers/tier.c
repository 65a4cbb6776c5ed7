/*
 * Block store over one or more directories (see tier.h for the format):
 * opening the directories, and their health. A directory that fails with a
 * full disk or an I/O error is skipped for new blocks for retry_s seconds.
 * The other sources: see tier_int.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tiers/tier_int.h"

static int errset(char *err, size_t errlen, int ret, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int errset(char *err, size_t errlen, int ret, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return ret;
}

int tier_open(struct tier **out, enum tier_medium medium, const char *const *dirs,
	      size_t ndirs, char *err, size_t errlen)
{
	struct tier *t;
	int ret = 0;

	*out = NULL;
	if (ndirs == 0 || ndirs > TIER_MAX_DIRS)
		return errset(err, errlen, -EINVAL, "bad tier %s: %zu directories (1 to %d)",
			      tier_medium_name(medium), ndirs, TIER_MAX_DIRS);
	ret = uring_ready();
	if (ret < 0)
		return errset(err, errlen, ret, "io_uring setup failed: cache tier %s: %s",
			      tier_medium_name(medium), strerror(-ret));
	t = calloc(1, sizeof(*t));
	if (!t)
		return errset(err, errlen, -ENOMEM, "out of memory");
	t->medium = medium;
	t->retry_s = 60;
	pthread_mutex_init(&t->lock, NULL);
	for (size_t i = 0; i < TIER_MAX_DIRS; i++)
		t->dirs[i].dirfd = t->dirs[i].lockfd = -1;

	for (size_t i = 0; i < ndirs; i++) {
		struct tier_dirstate *d = &t->dirs[i];
		struct stat st;

		t->ndirs = i + 1;
		d->path = strdup(dirs[i]);
		if (!d->path) {
			ret = errset(err, errlen, -ENOMEM, "out of memory");
			goto out_close;
		}
		if (stat(dirs[i], &st) < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory missing: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		if (!S_ISDIR(st.st_mode)) {
			ret = errset(err, errlen, -ENOTDIR, "cache directory unusable: %s: %s", dirs[i],
				     strerror(ENOTDIR));
			goto out_close;
		}
		if (access(dirs[i], W_OK | X_OK) < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory not writable: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		d->dirfd = open(dirs[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d->dirfd < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory open failed: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		ret = uring_openat(d->dirfd, ".lazarus.lock", O_RDWR | O_CREAT, 0600);
		if (ret < 0) {
			errset(err, errlen, ret, "cache directory not writable: %s: %s", dirs[i], strerror(-ret));
			goto out_close;
		}
		d->lockfd = ret;
		if (flock(d->lockfd, LOCK_EX | LOCK_NB) < 0) {
			ret = -errno;
			errset(err, errlen, ret, "cache directory in use by another cache: %s", dirs[i]);
			goto out_close;
		}
		for (unsigned x = 0; x < 256; x++) {
			char sub[4];

			snprintf(sub, sizeof(sub), "%02x", x);
			ret = uring_mkdirat(d->dirfd, sub, 0700);
			if (ret < 0 && ret != -EEXIST) {
				errset(err, errlen, ret, "cache directory not writable: %s: %s", dirs[i], strerror(-ret));
				goto out_close;
			}
		}
		ret = 0;
	}
	*out = t;
	return 0;

out_close:
	tier_close(t);
	return ret;
}

void tier_close(struct tier *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->ndirs; i++) {
		if (t->dirs[i].lockfd >= 0)
			uring_close(t->dirs[i].lockfd);  /* drops the flock */
		if (t->dirs[i].dirfd >= 0)
			close(t->dirs[i].dirfd);
		free(t->dirs[i].path);
	}
	pthread_mutex_destroy(&t->lock);
	free(t);
}

enum tier_medium tier_medium_of(const struct tier *t) { return t->medium; }
size_t tier_ndirs(const struct tier *t) { return t->ndirs; }
const char *tier_dir(const struct tier *t, size_t i) { return i < t->ndirs ? t->dirs[i].path : NULL; }

void tier_set_retry(struct tier *t, unsigned seconds)
{
	pthread_mutex_lock(&t->lock);
	t->retry_s = seconds;
	pthread_mutex_unlock(&t->lock);
}

/* Healthy, or failed long enough ago to be tried again. */
static int dir_ok_locked(const struct tier *t, size_t i, time_t now)
{
	return !t->dirs[i].failed || now >= t->dirs[i].retry_at;
}

int tier_usable(struct tier *t)
{
	time_t now = time(NULL);
	int ok = 0;

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->ndirs && !ok; i++)
		ok = dir_ok_locked(t, i, now);
	pthread_mutex_unlock(&t->lock);
	return ok;
}

size_t dir_pick(struct tier *t, uint64_t key)
{
	time_t now = time(NULL);
	size_t dir = t->ndirs;
	int retried = 0;

	pthread_mutex_lock(&t->lock);
	for (size_t k = 0; k < t->ndirs; k++) {
		size_t i = (key + k) % t->ndirs;

		if (dir_ok_locked(t, i, now)) {
			dir = i;
			retried = t->dirs[i].failed;
			t->dirs[i].failed = 0;
			break;
		}
	}
	pthread_mutex_unlock(&t->lock);
	if (retried)
		tier_log(TIER_LOG_INFO, "cache directory retried: %s", t->dirs[dir].path);
	return dir;
}

void dir_fail(struct tier *t, size_t i, int err, const char *what)
{
	time_t now = time(NULL);
	unsigned retry_s;
	int first;

	pthread_mutex_lock(&t->lock);
	first = dir_ok_locked(t, i, now);   /* the first failure since it was healthy */
	retry_s = t->retry_s;
	t->dirs[i].failed = 1;
	t->dirs[i].retry_at = now + retry_s;
	pthread_mutex_unlock(&t->lock);
	if (first)
		tier_log(TIER_LOG_ERR, "cache %s failed, directory skipped for %us: %s: %s", what, retry_s,
			 t->dirs[i].path, strerror(-err));
}
