/*
 * fs/closer.c - backend descriptors are closed by a thread of their own
 * (fs/handle.h).
 *
 * Closing a descriptor of the engine's mount is a round trip to the engine
 * (the kernel sends it FLUSH, then RELEASE), and release of an application
 * handle used to wait for it, so every open+close paid two engine round
 * trips.  Nothing needs that close to be done before release returns: the
 * application's close() already flushed through op_flush, release cannot
 * report an error, and the descriptor is no longer reachable from any
 * handle.  So release hands the descriptor over and returns; the closer
 * closes it under the hang watch.
 *
 * Locking: lock protects the queue (a leaf).
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "fs/fs_int.h"

struct fs_closer {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	int *fds;               /* protected by lock */
	size_t n, cap;          /* protected by lock */
	bool stop;              /* protected by lock */
};

static void *closer_main(void *arg)
{
	struct fs *fs = arg;
	struct fs_closer *c = fs->closer;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		while (!c->n && !c->stop)
			pthread_cond_wait(&c->cv, &c->lock);
		if (!c->n)
			break;  /* stopped and drained */
		{
			int fd = c->fds[--c->n];

			pthread_mutex_unlock(&c->lock);
			fs_engine_watch_begin(fs->engine);
			close(fd);
			fs_engine_watch_end(fs->engine);
			pthread_mutex_lock(&c->lock);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

int fs_closer_start(struct fs *fs)
{
	struct fs_closer *c = calloc(1, sizeof(*c));
	int ret;

	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cv, NULL);
	fs->closer = c;
	ret = -pthread_create(&c->thread, NULL, closer_main, fs);
	if (ret) {
		fs->closer = NULL;
		pthread_mutex_destroy(&c->lock);
		pthread_cond_destroy(&c->cv);
		free(c);
	}
	return ret;
}

void fs_closer_push(struct fs *fs, int fd)
{
	struct fs_closer *c = fs->closer;
	bool queued = false;

	if (c) {
		pthread_mutex_lock(&c->lock);
		if (c->n == c->cap) {
			size_t cap = c->cap ? c->cap * 2 : 64;
			int *nf = realloc(c->fds, cap * sizeof(*nf));

			if (nf) {
				c->fds = nf;
				c->cap = cap;
			}
		}
		if (c->n < c->cap && !c->stop) {
			c->fds[c->n++] = fd;
			queued = true;
			pthread_cond_signal(&c->cv);
		}
		pthread_mutex_unlock(&c->lock);
	}
	if (!queued) {
		/* no closer (or out of memory): close here */
		fs_engine_watch_begin(fs->engine);
		close(fd);
		fs_engine_watch_end(fs->engine);
	}
}

void fs_closer_stop(struct fs *fs)
{
	struct fs_closer *c = fs->closer;

	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cv);
	free(c->fds);
	free(c);
	fs->closer = NULL;
}
