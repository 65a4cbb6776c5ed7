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
 * Takeover (fs/takeover.h): with a state log, every insert and removal is
 * appended to it under t->lock before the caller answers the kernel, so
 * that a successor worker rebuilds the same fh numbers
 * (fs_handle_table_restore), and journals are files named after their
 * inode that it loads again.  The log is memory (a memfd), so t->lock
 * stays a leaf without I/O.
 *
 * Locking: t->lock protects slots, the free list, every handle's refs and
 * the file hash with every file's refs.  It is a leaf lock.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/handle.h"
#include "fs/takeover.h"

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
	struct fs_statelog *log;        /* protected by lock: takeover, or NULL */
	size_t log_snap_at;             /* protected by lock */
};

/* Takeover log records. */
enum { HL_ADD = 1, HL_DEL, HL_S_TAG };
struct hl_add {
	uint64_t idx, ino, tag;
	int32_t flags, dir;
	int32_t pt, backing;            /* passthrough: enum fs_pt_mode, id */
};
#define HL_SNAP_MIN (1u << 20)

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
	if (f->journal && t->log) {
		char name[40];

		/* a successor loads it again (fs_handle_table_restore) */
		snprintf(name, sizeof(name), "ino.%llu", (unsigned long long)ino);
		fs_journal_set_name(f->journal, name, false);
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

/* Write every handle as the log.  Caller holds t->lock. */
static void hlog_snapshot_locked(struct fs_handle_table *t)
{
	uint64_t tag = atomic_load(&next_tag);
	int ret = 0;

	fs_statelog_snap_begin(t->log);
	for (size_t i = 0; !ret && i < t->cap; i++) {
		struct fs_handle *h = t->slots[i];
		struct hl_add r;

		if (!h)
			continue;
		r = (struct hl_add){ i, h->ino, h->tag, h->flags, h->dir, h->pt, h->backing };
		ret = fs_statelog_snap_add(t->log, HL_ADD, &r, sizeof(r));
	}
	if (!ret)
		ret = fs_statelog_snap_add(t->log, HL_S_TAG, &tag, sizeof(tag));
	if (!ret)
		fs_statelog_snap_commit(t->log);
	t->log_snap_at = 2 * fs_statelog_size(t->log) + HL_SNAP_MIN;
}

/* Caller holds t->lock. */
static void hlog_add(struct fs_handle_table *t, uint64_t idx, const struct fs_handle *h)
{
	struct hl_add r = { idx, h->ino, h->tag, h->flags, h->dir, h->pt, h->backing };

	if (!t->log || fs_statelog_append(t->log, HL_ADD, &r, sizeof(r)))
		return;
	if (fs_statelog_size(t->log) > t->log_snap_at)
		hlog_snapshot_locked(t);
}

/* Grow the slots (doubling, from 64) until slot idx exists: 0 or
 * -ENOMEM.  Caller holds t->lock. */
static int grow_locked(struct fs_handle_table *t, uint64_t idx)
{
	size_t cap = t->cap ? t->cap : 64;
	struct fs_handle **ns;
	size_t *nf;

	if (idx < t->cap)
		return 0;
	while (cap <= idx)
		cap *= 2;
	ns = realloc(t->slots, cap * sizeof(*ns));
	if (ns)
		t->slots = ns;
	nf = realloc(t->free_idx, cap * sizeof(*nf));
	if (nf)
		t->free_idx = nf;
	if (!ns || !nf)
		return -ENOMEM;
	for (size_t i = t->cap; i < cap; i++)
		ns[i] = NULL;
	t->cap = cap;
	return 0;
}

/* Put h at slot idx (a restore); caller holds t->lock. */
static int place_locked(struct fs_handle_table *t, uint64_t idx, struct fs_handle *h)
{
	int ret;

	if (idx >= (1u << 24))
		return -EUCLEAN;
	if ((ret = grow_locked(t, idx)))
		return ret;
	if (t->slots[idx])
		return -EUCLEAN;
	if (!h->dir && !(h->file = file_get_locked(t, h->ino)))
		return -ENOMEM;
	t->slots[idx] = h;
	h->refs = 1;
	t->count++;
	return 0;
}

static int restore_one(void *arg, uint32_t type, const void *p, size_t len)
{
	struct fs_handle_table *t = arg;
	int ret = 0;

	if (type == HL_ADD && len >= sizeof(struct hl_add)) {
		const struct hl_add *r = p;
		struct fs_handle *h = fs_handle_alloc(r->ino, r->flags, r->dir);

		if (!h)
			return -ENOMEM;
		h->tag = r->tag;
		h->pt = (uint8_t)r->pt;
		h->backing = r->backing;
		if (r->tag >= atomic_load(&next_tag))
			atomic_store(&next_tag, r->tag + 1);
		/* what it wrote before may not be flushed */
		atomic_store(&h->unflushed, !r->dir && (r->flags & O_ACCMODE) != O_RDONLY);
		pthread_mutex_lock(&t->lock);
		if ((ret = place_locked(t, r->idx, h)))
			h->refs = 1;
		pthread_mutex_unlock(&t->lock);
		if (ret)
			fs_handle_put(t, h);
	} else if (type == HL_DEL && len >= sizeof(uint64_t)) {
		uint64_t idx = *(const uint64_t *)p;
		struct fs_handle *h = NULL;

		pthread_mutex_lock(&t->lock);
		if (idx < t->cap && (h = t->slots[idx])) {
			t->slots[idx] = NULL;
			t->count--;
		}
		pthread_mutex_unlock(&t->lock);
		if (h)
			fs_handle_put(t, h);
	} else if (type == HL_S_TAG && len >= sizeof(uint64_t)) {
		uint64_t tag = *(const uint64_t *)p;

		if (tag > atomic_load(&next_tag))
			atomic_store(&next_tag, tag);
	} else {
		ret = -EUCLEAN;
	}
	return ret;
}

int fs_handle_table_log(struct fs_handle_table *t, struct fs_statelog *l, bool restore)
{
	int ret = 0;

	if (restore && (ret = fs_statelog_each(l, restore_one, t)))
		return ret;
	pthread_mutex_lock(&t->lock);
	/* the free list again: every slot below cap that is empty */
	t->nfree = 0;
	for (size_t i = t->cap; i-- > 0;)
		if (!t->slots[i])
			t->free_idx[t->nfree++] = i;
	if (restore) {
		/* journals of the dead worker, under the names it gave them */
		for (size_t b = 0; b < FILE_BUCKETS; b++)
			for (struct fs_file *f = t->files[b]; f; f = f->next) {
				char name[40];
				int r;

				if (!f->journal)
					continue;
				snprintf(name, sizeof(name), "ino.%llu", (unsigned long long)f->ino);
				if ((r = fs_journal_set_name(f->journal, name, true)))
					fs_log(FS_LOG_ERR, "cannot load the journal of inode %llu: %s",
					       (unsigned long long)f->ino, strerror(-r));
			}
	}
	t->log = l;
	hlog_snapshot_locked(t);
	pthread_mutex_unlock(&t->lock);
	return ret;
}

void fs_handle_table_hand_over(struct fs_handle_table *t)
{
	pthread_mutex_lock(&t->lock);
	t->log = NULL;
	for (size_t b = 0; b < FILE_BUCKETS; b++)
		for (struct fs_file *f = t->files[b]; f; f = f->next)
			if (f->journal)
				fs_journal_keep_file(f->journal);
	pthread_mutex_unlock(&t->lock);
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
		if (grow_locked(t, t->count)) {
			pthread_mutex_unlock(&t->lock);
			return -ENOMEM;
		}
		idx = t->count;
	}
	t->slots[idx] = h;
	h->refs = 1;
	t->count++;
	hlog_add(t, (uint64_t)idx, h);
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
		if (t->log) {
			uint64_t i = idx;

			fs_statelog_append(t->log, HL_DEL, &i, sizeof(i));
		}
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
