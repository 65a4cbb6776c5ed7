/*
 * fs/handle_table.c - the open-handle table and the files behind the
 * handles (fs/handle.h).
 *
 * The FUSE fh of a handle is its index in this table, never a pointer, so a
 * stale or forged fh can only miss.  Handles are reference counted: the
 * table holds one reference until release, and every user (a request, the
 * recovery pass walking all handles) holds one while it works, so a handle
 * released meanwhile stays valid until the last user puts it.
 *
 * Files: every file handle holds a reference on the struct fs_file of its
 * inode, found in a small hash by node id and made on first use, so all
 * descriptors of one file (every name of a hard-linked one, since they are
 * one node) share one journal.  The file goes when its last handle does.
 *
 * Locking: t->lock protects slots, the free list, every handle's refs and
 * the file hash with every file's refs.  It is a leaf lock.
 */
#include "config.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/handle.h"

#define FILE_BUCKETS 256

struct fs_handle_table {
	pthread_mutex_t lock;
	struct fs_handle **slots;       /* protected by lock */
	size_t cap;                     /* protected by lock */
	size_t count;                   /* protected by lock */
	size_t *free_idx;               /* protected by lock: stack of free slots */
	size_t nfree;                   /* protected by lock */
	struct fs_file *files[FILE_BUCKETS];    /* protected by lock */
	size_t nfiles;                  /* protected by lock */
	char *spill_dir;                /* immutable */
	bool journal;                   /* immutable */
};

static atomic_uint_fast64_t next_tag = 1;

int fs_handle_table_new(struct fs_handle_table **out, const char *spill_dir,
			bool journal)
{
	struct fs_handle_table *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	if (spill_dir && !(t->spill_dir = strdup(spill_dir))) {
		free(t);
		return -ENOMEM;
	}
	t->journal = journal;
	pthread_mutex_init(&t->lock, NULL);
	*out = t;
	return 0;
}

static void file_free(struct fs_file *f)
{
	if (f->journal && fs_journal_entries(f->journal))
		fs_log(FS_LOG_WARN, "journal of inode %llu dropped with %zu changes not made durable",
		       (unsigned long long)f->ino, fs_journal_entries(f->journal));
	fs_journal_free(f->journal);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

/* Caller holds t->lock. */
static struct fs_file *file_get_locked(struct fs_handle_table *t, uint64_t ino)
{
	struct fs_file **b = &t->files[ino % FILE_BUCKETS], *f;

	for (f = *b; f; f = f->next)
		if (f->ino == ino) {
			f->refs++;
			return f;
		}
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	if (t->journal && !(f->journal = fs_journal_new(t->spill_dir))) {
		free(f);
		return NULL;
	}
	f->ino = ino;
	f->refs = 1;
	pthread_mutex_init(&f->lock, NULL);
	f->next = *b;
	*b = f;
	t->nfiles++;
	return f;
}

void fs_file_put(struct fs_handle_table *t, struct fs_file *f)
{
	struct fs_file **pp;
	bool last;

	pthread_mutex_lock(&t->lock);
	last = --f->refs == 0;
	if (last) {
		for (pp = &t->files[f->ino % FILE_BUCKETS]; *pp != f; pp = &(*pp)->next)
			;
		*pp = f->next;
		t->nfiles--;
	}
	pthread_mutex_unlock(&t->lock);
	if (last)
		file_free(f);
}

struct fs_file *fs_file_find(struct fs_handle_table *t, uint64_t ino)
{
	struct fs_file *f;

	pthread_mutex_lock(&t->lock);
	for (f = t->files[ino % FILE_BUCKETS]; f; f = f->next)
		if (f->ino == ino) {
			f->refs++;
			break;
		}
	pthread_mutex_unlock(&t->lock);
	return f;
}

size_t fs_file_all(struct fs_handle_table *t, struct fs_file ***out)
{
	struct fs_file **v;
	size_t n = 0;

	pthread_mutex_lock(&t->lock);
	v = malloc((t->nfiles ? t->nfiles : 1) * sizeof(*v));
	for (size_t i = 0; v && i < FILE_BUCKETS; i++)
		for (struct fs_file *f = t->files[i]; f; f = f->next) {
			f->refs++;
			v[n++] = f;
		}
	pthread_mutex_unlock(&t->lock);
	*out = v;
	return n;
}

void fs_file_put_all(struct fs_handle_table *t, struct fs_file **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		fs_file_put(t, v[i]);
	free(v);
}

static void handle_free(struct fs_handle_table *t, struct fs_handle *h)
{
	if (h->fd >= 0)
		close(h->fd);
	for (size_t i = 0; i < h->nents; i++)
		free(h->ents[i].name);
	free(h->ents);
	if (h->file)
		fs_file_put(t, h->file);
	pthread_rwlock_destroy(&h->lock);
	pthread_rwlock_destroy(&h->cflock);
	free(h);
}

void fs_handle_table_free(struct fs_handle_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->cap; i++)
		if (t->slots[i])
			handle_free(t, t->slots[i]);
	free(t->slots);
	free(t->free_idx);
	free(t->spill_dir);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

struct fs_handle *fs_handle_alloc(uint64_t ino, int flags, bool dir)
{
	struct fs_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->ino = ino;
	h->tag = atomic_fetch_add(&next_tag, 1);
	h->flags = flags;
	h->dir = dir;
	h->fd = -1;
	pthread_rwlock_init(&h->lock, NULL);
	pthread_rwlock_init(&h->cflock, NULL);
	return h;
}

int64_t fs_handle_add(struct fs_handle_table *t, struct fs_handle *h)
{
	int64_t idx;

	pthread_mutex_lock(&t->lock);
	if (!h->dir && !h->file && !(h->file = file_get_locked(t, h->ino))) {
		pthread_mutex_unlock(&t->lock);
		return -ENOMEM;
	}
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
		handle_free(t, h);
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
