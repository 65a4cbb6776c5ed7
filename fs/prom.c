/*
 * fs/prom.c - the Prometheus textfile of a mount (fs/fs_int.h).
 *
 * Every FS_PROM_SECONDS a thread of its own writes the cache counters to
 * <state_dir>/lazarusfs_cache_<id>.prom (node_exporter's textfile
 * collector reads that directory); fs_prom_free() stops it and removes the
 * file, so a gone mount exports nothing.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_int.h"

#define FS_PROM_SECONDS 10

struct fs_prom {
	struct fs *fs;
	char *path;
	pthread_t thread;
	pthread_mutex_t lock;   /* a leaf */
	pthread_cond_t cv;      /* CLOCK_MONOTONIC */
	bool stop;              /* protected by lock */
};

static void *prom_main(void *arg)
{
	struct fs_prom *p = arg;
	struct timespec ts;
	int ret;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		pthread_mutex_unlock(&p->lock);
		ret = cache_write_textfile(p->fs->cache, p->path);
		if (ret)
			fs_log(FS_LOG_DEBUG, "cannot write the textfile: %s: %s", p->path,
			       strerror(-ret));
		pthread_mutex_lock(&p->lock);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += FS_PROM_SECONDS;
		while (!p->stop &&
		       pthread_cond_timedwait(&p->cv, &p->lock, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int fs_prom_new(struct fs_prom **out, struct fs *fs, const char *path)
{
	struct fs_prom *p = calloc(1, sizeof(*p));
	pthread_condattr_t ca;
	int ret;

	if (!p || !(p->path = strdup(path))) {
		free(p);
		return -ENOMEM;
	}
	p->fs = fs;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&p->lock, NULL);
	ret = -pthread_create(&p->thread, NULL, prom_main, p);
	if (ret) {
		pthread_cond_destroy(&p->cv);
		pthread_mutex_destroy(&p->lock);
		free(p->path);
		free(p);
		return ret;
	}
	*out = p;
	return 0;
}

void fs_prom_free(struct fs_prom *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->lock);
	unlink(p->path);
	free(p->path);
	free(p);
}
