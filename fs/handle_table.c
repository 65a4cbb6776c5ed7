/*
 * fs/handle_table.c - the open-handle table (fs/handle.h).
 *
 * The FUSE fh of a handle is its index in this table, never a pointer, so a
 * stale or forged fh can only miss.  Handles are reference counted: the
 * table holds one reference until release, and every user (a request, the
 * recovery pass walking all handles) holds one while it works, so a handle
 * released meanwhile stays valid until the last user puts it.
 *
 * Locking: t->lock protects slots, free list and every handle's refs.  It
 * is a leaf lock.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "fs/handle.h"

struct fs_handle_table {
	pthread_mutex_t lock;
	struct fs_handle **slots;       /* protected by lock */
	size_t cap;                     /* protected by lock */
	size_t count;                   /* protected by lock */
	size_t *free_idx;               /* protected by lock: stack of free slots */
	size_t nfree;                   /* protected by lock */
};

int fs_handle_table_new(struct fs_handle_table **out)
{
	struct fs_handle_table *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	*out = t;
	return 0;
}

static void handle_free(struct fs_handle *h)
{
	if (h->fd >= 0)
		close(h->fd);
	for (size_t i = 0; i < h->nents; i++)
		free(h->ents[i].name);
	free(h->ents);
	fs_journal_free(h->journal);
	pthread_rwlock_destroy(&h->lock);
	pthread_rwlock_destroy(&h->cflock);
	pthread_mutex_destroy(&h->jlock);
	free(h);
}

void fs_handle_table_free(struct fs_handle_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->cap; i++)
		if (t->slots[i])
			handle_free(t->slots[i]);
	free(t->slots);
	free(t->free_idx);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

struct fs_handle *fs_handle_alloc(uint64_t ino, int flags, bool dir,
				  const char *spill_dir, size_t journal_mem)
{
	struct fs_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->ino = ino;
	h->flags = flags;
	h->dir = dir;
	h->fd = -1;
	if (!dir && !(h->journal = fs_journal_new(spill_dir, journal_mem))) {
		free(h);
		return NULL;
	}
	pthread_rwlock_init(&h->lock, NULL);
	pthread_rwlock_init(&h->cflock, NULL);
	pthread_mutex_init(&h->jlock, NULL);
	return h;
}

int64_t fs_handle_add(struct fs_handle_table *t, struct fs_handle *h)
{
	int64_t idx;

	pthread_mutex_lock(&t->lock);
	if (t->nfree) {
		idx = t->free_idx[--t->nfree];
	} else {
		if (t->count == t->cap) {
			size_t cap = t->cap ? t->cap * 2 : 64;
			struct fs_handle **ns = realloc(t->slots, cap * sizeof(*ns));
			size_t *nf = realloc(t->free_idx, cap * sizeof(*nf));

			if (ns)
				t->slots = ns;
			if (nf)
				t->free_idx = nf;
			if (!ns || !nf) {
				pthread_mutex_unlock(&t->lock);
				return -ENOMEM;
			}
			for (size_t i = t->cap; i < cap; i++)
				ns[i] = NULL;
			t->cap = cap;
		}
		idx = t->count;
	}
	t->slots[idx] = h;
	h->refs = 1;
	t->count++;
	pthread_mutex_unlock(&t->lock);
	return idx;
}

struct fs_handle *fs_handle_get(struct fs_handle_table *t, uint64_t idx)
{
	struct fs_handle *h = NULL;

	pthread_mutex_lock(&t->lock);
	if (idx < t->cap && t->slots[idx]) {
		h = t->slots[idx];
		h->refs++;
	}
	pthread_mutex_unlock(&t->lock);
	return h;
}

void fs_handle_put(struct fs_handle_table *t, struct fs_handle *h)
{
	bool last;

	pthread_mutex_lock(&t->lock);
	last = --h->refs == 0;
	pthread_mutex_unlock(&t->lock);
	if (last)
		handle_free(h);
}

void fs_handle_remove(struct fs_handle_table *t, uint64_t idx)
{
	struct fs_handle *h;

	pthread_mutex_lock(&t->lock);
	h = idx < t->cap ? t->slots[idx] : NULL;
	if (h) {
		t->slots[idx] = NULL;
		t->free_idx[t->nfree++] = idx;
		t->count--;
	}
	pthread_mutex_unlock(&t->lock);
	if (h)
		fs_handle_put(t, h);
}

size_t fs_handle_all(struct fs_handle_table *t, uint64_t ino,
		     struct fs_handle ***out)
{
	struct fs_handle **v;
	size_t n = 0;

	pthread_mutex_lock(&t->lock);
	v = malloc((t->count ? t->count : 1) * sizeof(*v));
	for (size_t i = 0; v && i < t->cap; i++) {
		struct fs_handle *h = t->slots[i];

		if (h && (!ino || h->ino == ino)) {
			h->refs++;
			v[n++] = h;
		}
	}
	pthread_mutex_unlock(&t->lock);
	*out = v;
	return n;
}

void fs_handle_put_all(struct fs_handle_table *t, struct fs_handle **v,
		       size_t n)
{
	for (size_t i = 0; i < n; i++)
		fs_handle_put(t, v[i]);
	free(v);
}

size_t fs_handle_count(struct fs_handle_table *t)
{
	size_t n;

	pthread_mutex_lock(&t->lock);
	n = t->count;
	pthread_mutex_unlock(&t->lock);
	return n;
}
