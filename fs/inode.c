/*
 * fs/inode.c - the inode table: FUSE node ids to backend paths.
 *
 * Design (after libfuse's passthrough_hp, with one twist):
 *  - Node ids are ours, counted up from 2 and never reused, so the kernel's
 *    view survives anything the engine does to its inode numbers.
 *  - The backend identity of an inode is (parent, name), hence a path from
 *    the root.  After an engine restart every path simply resolves again;
 *    there is no per-inode backend fd that could go stale.
 *  - Two hash tables: id -> inode, and (parent, name) -> inode.
 *  - Counts: nlookup (kernel lookups, dropped by forget), nopen (open
 *    handles) and nchild (inodes naming this one as parent).  nchild keeps
 *    a directory's path alive while a silly-renamed child is still open even
 *    after the kernel forgot the directory.  An inode is freed when all
 *    three are zero; a count below zero aborts.
 *  - An unlinked inode has no name and no parent: its path is gone
 *    (-ESTALE) while the kernel may still hold it.
 *
 * Locking: t->lock (rwlock) protects everything in the table.  It is a leaf
 * lock: nothing else is taken while holding it, and no I/O happens under it.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "fs/fs.h"

struct fs_inode {
	uint64_t ino;
	uint64_t parent;        /* 0 when unlinked */
	char *name;             /* NULL when unlinked */
	mode_t type;            /* S_IFMT bits */
	uint64_t nlookup;
	int64_t nopen;
	uint64_t nchild;
	bool silly;
	struct stat *attr;      /* last attributes seen (fs_inode_attr_set), or NULL */
	struct fs_inode *next_id;
	struct fs_inode *next_name;
};

struct fs_inode_table {
	pthread_rwlock_t lock;
	struct fs_inode **by_id;        /* protected by lock */
	struct fs_inode **by_name;      /* protected by lock */
	size_t nbuckets;                /* protected by lock, power of two */
	size_t count;                   /* protected by lock */
	uint64_t next_ino;              /* protected by lock */
};

bool fs_is_silly_name(const char *name)
{
	return !strncmp(name, FS_SILLY_PREFIX, sizeof(FS_SILLY_PREFIX) - 1);
}

static size_t id_slot(const struct fs_inode_table *t, uint64_t ino)
{
	return XXH3_64bits(&ino, sizeof(ino)) & (t->nbuckets - 1);
}

static size_t name_slot(const struct fs_inode_table *t, uint64_t parent,
			const char *name)
{
	return XXH3_64bits_withSeed(name, strlen(name), parent) & (t->nbuckets - 1);
}

static struct fs_inode *get(const struct fs_inode_table *t, uint64_t ino)
{
	for (struct fs_inode *i = t->by_id[id_slot(t, ino)]; i; i = i->next_id)
		if (i->ino == ino)
			return i;
	return NULL;
}

static struct fs_inode *get_name(const struct fs_inode_table *t,
				 uint64_t parent, const char *name)
{
	for (struct fs_inode *i = t->by_name[name_slot(t, parent, name)]; i;
	     i = i->next_name)
		if (i->parent == parent && !strcmp(i->name, name))
			return i;
	return NULL;
}

static void unhash_name(struct fs_inode_table *t, struct fs_inode *in)
{
	struct fs_inode **pp = &t->by_name[name_slot(t, in->parent, in->name)];

	while (*pp != in)
		pp = &(*pp)->next_name;
	*pp = in->next_name;
}

static void hash_name(struct fs_inode_table *t, struct fs_inode *in)
{
	size_t s = name_slot(t, in->parent, in->name);

	in->next_name = t->by_name[s];
	t->by_name[s] = in;
}

static void maybe_free(struct fs_inode_table *t, struct fs_inode *in);
static int set_name(struct fs_inode_table *t, struct fs_inode *in,
		    uint64_t parent, const char *name);
static int path_locked(struct fs_inode_table *t, uint64_t ino, const char *name,
		       char *buf, size_t len);

/* A count below zero is a bug: say which, in the log (stderr is /dev/null
 * once daemonized), and stop before the table lies to the kernel.  The
 * only log call under the table lock: nothing waits for us after it. */
static void __attribute__((noreturn)) count_below_zero(const char *count, uint64_t ino)
{
	fs_log(FS_LOG_ERR, "inode table corrupt: %s count of inode %llu below zero, aborting",
	       count, (unsigned long long)ino);
	abort();
}

/* Drop one child reference from `parent`, freeing it if it was the last. */
static void put_parent(struct fs_inode_table *t, uint64_t parent)
{
	struct fs_inode *p = get(t, parent);

	if (!p)
		return;
	if (p->nchild == 0) {
		count_below_zero("child", p->ino);
	}
	p->nchild--;
	maybe_free(t, p);
}

/* Remove the name of `in` from the table (it stays alive if counted). */
static void detach(struct fs_inode_table *t, struct fs_inode *in)
{
	uint64_t parent = in->parent;

	if (!in->name)
		return;
	unhash_name(t, in);
	free(in->name);
	in->name = NULL;
	in->parent = 0;
	put_parent(t, parent);
}

static void maybe_free(struct fs_inode_table *t, struct fs_inode *in)
{
	struct fs_inode **pp;

	if (in->ino == FS_ROOT_INO || in->nlookup || in->nopen || in->nchild)
		return;
	pp = &t->by_id[id_slot(t, in->ino)];
	while (*pp != in)
		pp = &(*pp)->next_id;
	*pp = in->next_id;
	t->count--;
	detach(t, in);
	free(in->attr);
	free(in);
}

static int grow(struct fs_inode_table *t)
{
	size_t nb = t->nbuckets * 2;
	struct fs_inode **ids = calloc(nb, sizeof(*ids));
	struct fs_inode **names = calloc(nb, sizeof(*names));
	struct fs_inode **old = t->by_id;
	size_t onb = t->nbuckets;

	if (!ids || !names) {
		free(ids);
		free(names);
		return -ENOMEM;
	}
	free(t->by_name);
	t->by_id = ids;
	t->by_name = names;
	t->nbuckets = nb;
	for (size_t s = 0; s < onb; s++) {
		struct fs_inode *i = old[s], *next;

		for (; i; i = next) {
			size_t ns = id_slot(t, i->ino);

			next = i->next_id;
			i->next_id = t->by_id[ns];
			t->by_id[ns] = i;
			if (i->name && i->ino != FS_ROOT_INO)
				hash_name(t, i);
		}
	}
	free(old);
	return 0;
}

int fs_inode_table_new(struct fs_inode_table **out)
{
	struct fs_inode_table *t = calloc(1, sizeof(*t));
	struct fs_inode *root = calloc(1, sizeof(*root));

	if (!t || !root)
		goto out_free;
	t->nbuckets = 1024;
	t->by_id = calloc(t->nbuckets, sizeof(*t->by_id));
	t->by_name = calloc(t->nbuckets, sizeof(*t->by_name));
	root->name = strdup("");
	if (!t->by_id || !t->by_name || !root->name)
		goto out_free;
	pthread_rwlock_init(&t->lock, NULL);
	root->ino = FS_ROOT_INO;
	root->type = S_IFDIR;
	root->nlookup = 1;
	t->by_id[id_slot(t, FS_ROOT_INO)] = root;   /* the root has no name entry */
	t->count = 1;
	t->next_ino = FS_ROOT_INO + 1;
	*out = t;
	return 0;
out_free:
	if (root)
		free(root->name);
	free(root);
	if (t) {
		free(t->by_id);
		free(t->by_name);
	}
	free(t);
	return -ENOMEM;
}

void fs_inode_table_free(struct fs_inode_table *t)
{
	if (!t)
		return;
	for (size_t s = 0; s < t->nbuckets; s++) {
		struct fs_inode *i = t->by_id[s], *next;

		for (; i; i = next) {
			next = i->next_id;
			free(i->name);
			free(i->attr);
			free(i);
		}
	}
	free(t->by_id);
	free(t->by_name);
	pthread_rwlock_destroy(&t->lock);
	free(t);
}

uint64_t fs_inode_lookup(struct fs_inode_table *t, uint64_t parent,
			 const char *name, mode_t type, uint64_t nlookup,
			 int *err)
{
	struct fs_inode *in, *p;
	uint64_t ino = 0;

	*err = 0;
	type &= S_IFMT;
	pthread_rwlock_wrlock(&t->lock);
	p = get(t, parent);
	if (!p || (!p->name && parent != FS_ROOT_INO)) {
		*err = -ESTALE;
		goto out;
	}
	in = get_name(t, parent, name);
	if (in && in->type != type) {
		/* the backend file was replaced by another kind of file; pin the
		 * parent, which the old child may have been keeping alive */
		p->nchild++;
		detach(t, in);
		maybe_free(t, in);
		p->nchild--;
		in = NULL;
	}
	if (!in) {
		if (t->count >= t->nbuckets && grow(t)) {
			*err = -ENOMEM;
			goto out;
		}
		in = calloc(1, sizeof(*in));
		if (!in || !(in->name = strdup(name))) {
			free(in);
			*err = -ENOMEM;
			goto out;
		}
		in->ino = t->next_ino++;
		in->parent = parent;
		in->type = type;
		in->next_id = t->by_id[id_slot(t, in->ino)];
		t->by_id[id_slot(t, in->ino)] = in;
		hash_name(t, in);
		p->nchild++;
		t->count++;
	}
	in->nlookup += nlookup;
	ino = in->ino;
	maybe_free(t, in);      /* nlookup == 0 probes create nothing lasting */
out:
	pthread_rwlock_unlock(&t->lock);
	return ino;
}

uint64_t fs_inode_find(struct fs_inode_table *t, uint64_t parent,
		       const char *name)
{
	struct fs_inode *in;
	uint64_t ino;

	pthread_rwlock_rdlock(&t->lock);
	in = get_name(t, parent, name);
	ino = in ? in->ino : 0;
	pthread_rwlock_unlock(&t->lock);
	return ino;
}

void fs_inode_forget(struct fs_inode_table *t, uint64_t ino, uint64_t n)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (in) {
		if (in->nlookup < n) {
			count_below_zero("lookup", ino);
		}
		in->nlookup -= n;
		maybe_free(t, in);
	}
	pthread_rwlock_unlock(&t->lock);
}

static void drop_open(struct fs_inode *in)
{
	if (--in->nopen < 0)
		count_below_zero("open", in->ino);
}

int fs_inode_open(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	int ret = 0;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (in)
		in->nopen++;
	else
		ret = -ESTALE;
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_close(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	int ret;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (!in) {
		ret = -ESTALE;
		goto out;
	}
	drop_open(in);
	ret = in->nopen;
	maybe_free(t, in);
out:
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_close_silly(struct fs_inode_table *t, uint64_t ino, char *buf,
			 size_t len)
{
	struct fs_inode *in;
	int ret = 0;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (!in) {
		ret = -ESTALE;
		goto out;
	}
	drop_open(in);
	if (!in->nopen && in->silly && !path_locked(t, ino, NULL, buf, len)) {
		in->silly = false;
		ret = 1;
	}
	maybe_free(t, in);
out:
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_make_silly(struct fs_inode_table *t, uint64_t parent,
			const char *name, uint64_t newparent,
			const char *newname)
{
	struct fs_inode *in;
	int ret = 0;

	pthread_rwlock_wrlock(&t->lock);
	in = get_name(t, parent, name);
	if (in && !set_name(t, in, newparent, newname)) {
		in->silly = true;
		ret = in->nopen;
	}
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_nopen(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	int ret;

	pthread_rwlock_rdlock(&t->lock);
	in = get(t, ino);
	ret = in ? (int)in->nopen : 0;
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

/* fs_inode_path() with t->lock already held. */
static int path_locked(struct fs_inode_table *t, uint64_t ino, const char *name,
		       char *buf, size_t len)
{
	const char *parts[256];
	size_t n = 0, pos = 0;
	int ret = 0;

	for (struct fs_inode *in = get(t, ino); ino != FS_ROOT_INO;
	     in = get(t, ino)) {
		if (!in || !in->name) {
			ret = -ESTALE;
			goto out;
		}
		if (n == sizeof(parts) / sizeof(*parts)) {
			ret = -ENAMETOOLONG;
			goto out;
		}
		parts[n++] = in->name;
		ino = in->parent;
	}
	if (!n && !name) {
		ret = snprintf(buf, len, ".") >= (int)len ? -ENAMETOOLONG : 0;
		goto out;
	}
	while (n--) {
		size_t l = strlen(parts[n]);

		if (pos + l + 1 > len) {
			ret = -ENAMETOOLONG;
			goto out;
		}
		memcpy(buf + pos, parts[n], l);
		pos += l;
		buf[pos++] = '/';
	}
	if (name) {
		size_t l = strlen(name);

		if (pos + l + 1 > len) {
			ret = -ENAMETOOLONG;
			goto out;
		}
		memcpy(buf + pos, name, l);
		pos += l;
	} else {
		pos--;          /* drop the trailing '/' */
	}
	buf[pos] = 0;
out:
	return ret;
}

int fs_inode_path(struct fs_inode_table *t, uint64_t ino, const char *name,
		  char *buf, size_t len)
{
	int ret;

	pthread_rwlock_rdlock(&t->lock);
	ret = path_locked(t, ino, name, buf, len);
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

/* Give `in` the name (parent, name); caller holds the write lock. */
static int set_name(struct fs_inode_table *t, struct fs_inode *in,
		    uint64_t parent, const char *name)
{
	struct fs_inode *p = get(t, parent);
	char *dup = strdup(name);

	if (!dup || !p) {
		free(dup);
		return -ENOMEM;
	}
	p->nchild++;            /* before detach, which may free the old parent */
	detach(t, in);
	in->parent = parent;
	in->name = dup;
	hash_name(t, in);
	return 0;
}

void fs_inode_rename(struct fs_inode_table *t, uint64_t parent,
		     const char *name, uint64_t newparent, const char *newname)
{
	struct fs_inode *src, *dst;

	pthread_rwlock_wrlock(&t->lock);
	src = get_name(t, parent, name);
	dst = get_name(t, newparent, newname);
	if (dst && dst != src) {
		detach(t, dst);
		maybe_free(t, dst);
	}
	if (src && dst != src && set_name(t, src, newparent, newname)) {
		/* out of memory: forget the name; lookups will find it again */
		detach(t, src);
		maybe_free(t, src);
	}
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_exchange(struct fs_inode_table *t, uint64_t parent,
		       const char *name, uint64_t newparent,
		       const char *newname)
{
	struct fs_inode *a, *b;

	pthread_rwlock_wrlock(&t->lock);
	a = get_name(t, parent, name);
	b = get_name(t, newparent, newname);
	if (a && b && a != b) {
		char *an = a->name, *bn = b->name;
		uint64_t ap = a->parent, bp = b->parent;

		unhash_name(t, a);
		unhash_name(t, b);
		a->name = bn;
		a->parent = bp;
		b->name = an;
		b->parent = ap;
		hash_name(t, a);
		hash_name(t, b);
	} else if (a && !b) {
		if (set_name(t, a, newparent, newname)) {
			detach(t, a);
			maybe_free(t, a);
		}
	} else if (b && !a) {
		if (set_name(t, b, parent, name)) {
			detach(t, b);
			maybe_free(t, b);
		}
	}
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_unlink(struct fs_inode_table *t, uint64_t parent,
		     const char *name)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	in = get_name(t, parent, name);
	if (in) {
		detach(t, in);
		maybe_free(t, in);
	}
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_drop_name(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (in) {
		detach(t, in);
		maybe_free(t, in);
	}
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_set_silly(struct fs_inode_table *t, uint64_t ino, bool silly)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (in)
		in->silly = silly;
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_attr_set(struct fs_inode_table *t, uint64_t ino, const struct stat *st)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	in = get(t, ino);
	if (in && !in->attr)
		in->attr = malloc(sizeof(*in->attr));
	if (in && in->attr)
		*in->attr = *st;
	pthread_rwlock_unlock(&t->lock);
}

int fs_inode_attr_get(struct fs_inode_table *t, uint64_t ino, struct stat *st)
{
	struct fs_inode *in;
	int ret = -ENOENT;

	pthread_rwlock_rdlock(&t->lock);
	in = get(t, ino);
	if (in && in->attr && in->name) {
		*st = *in->attr;
		ret = 0;
	}
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

bool fs_inode_is_silly(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	bool ret;

	pthread_rwlock_rdlock(&t->lock);
	in = get(t, ino);
	ret = in && in->silly;
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

size_t fs_inode_count(struct fs_inode_table *t)
{
	size_t n;

	pthread_rwlock_rdlock(&t->lock);
	n = t->count;
	pthread_rwlock_unlock(&t->lock);
	return n;
}
