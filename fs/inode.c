/*
 * fs/inode.c - the inode table: FUSE node ids to backend paths.
 *
 * Design (after libfuse's passthrough_hp, with one twist):
 *  - Node ids are ours, counted up from 2 and never reused, so the kernel's
 *    view survives anything the engine does to its inode numbers.
 *  - The backend identity of an inode is a name (parent, name), hence a
 *    path from the root.  After an engine restart every path simply
 *    resolves again; there is no per-inode backend fd that could go stale.
 *  - A node may have several names: the names of one hard-linked file.
 *    Names made by our own link() join the node; names found by lookup join
 *    a node with the same backend (st_dev, st_ino) seen in the same engine
 *    generation, and only for files that say they have more than one link
 *    (st_nlink > 1), because inode numbers mean nothing across a restart
 *    and some engines (sshfs) make them up per path.  Any live name serves
 *    as the node's path; the first is used.  Directories have one name.
 *  - Three hash tables: id -> inode, (parent, name) -> name, and backend
 *    (dev, ino) -> inode for files with links.
 *  - Counts: nlookup (kernel lookups, dropped by forget), nopen (open
 *    handles) and nchild (names whose parent is this inode).  nchild keeps
 *    a directory's path alive while a silly-renamed child is still open even
 *    after the kernel forgot the directory.  An inode is freed when all
 *    three are zero; a count below zero aborts.
 *  - An unlinked inode has no names: its path is gone (-ESTALE) while the
 *    kernel may still hold it.
 *
 * Locking: t->lock (rwlock) protects everything in the table.  It is a leaf
 * lock: nothing else is taken while holding it, and no I/O happens under it.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "fs/inode_int.h"

bool fs_is_silly_name(const char *name)
{
	return !strncmp(name, FS_SILLY_PREFIX, sizeof(FS_SILLY_PREFIX) - 1);
}

/* A count below zero is a bug: say which, in the log (stderr is /dev/null
 * once daemonized), and stop before the table lies to the kernel.  The
 * only log call under the table lock: nothing waits for us after it. */
void inode_count_below_zero(const char *count, uint64_t ino)
{
	fs_log(FS_LOG_ERR, "inode table corrupt: %s count of inode %llu below zero, aborting",
	       count, (unsigned long long)ino);
	abort();
}

size_t inode_id_slot(const struct fs_inode_table *t, uint64_t ino)
{
	return XXH3_64bits(&ino, sizeof(ino)) & (t->nbuckets - 1);
}

static size_t name_slot(const struct fs_inode_table *t, uint64_t parent,
			const char *name)
{
	return XXH3_64bits_withSeed(name, strlen(name), parent) & (t->nbuckets - 1);
}

static size_t bid_slot(const struct fs_inode_table *t, dev_t dev, ino_t bino)
{
	uint64_t k[2] = { (uint64_t)dev, (uint64_t)bino };

	return XXH3_64bits(k, sizeof(k)) & (t->nbuckets - 1);
}

struct fs_inode *inode_get(const struct fs_inode_table *t, uint64_t ino)
{
	for (struct fs_inode *i = t->by_id[inode_id_slot(t, ino)]; i; i = i->next_id)
		if (i->ino == ino)
			return i;
	return NULL;
}

struct fs_name *inode_find_name(const struct fs_inode_table *t, uint64_t parent,
				 const char *name)
{
	for (struct fs_name *n = t->by_name[name_slot(t, parent, name)]; n;
	     n = n->next_hash)
		if (n->parent == parent && !strcmp(n->name, name))
			return n;
	return NULL;
}

static struct fs_inode *get_name(const struct fs_inode_table *t,
				 uint64_t parent, const char *name)
{
	struct fs_name *n = inode_find_name(t, parent, name);

	return n ? n->in : NULL;
}

static void hash_name(struct fs_inode_table *t, struct fs_name *n)
{
	size_t s = name_slot(t, n->parent, n->name);

	n->next_hash = t->by_name[s];
	t->by_name[s] = n;
}

static void unhash_name(struct fs_inode_table *t, struct fs_name *n)
{
	struct fs_name **pp = &t->by_name[name_slot(t, n->parent, n->name)];

	while (*pp != n)
		pp = &(*pp)->next_hash;
	*pp = n->next_hash;
}

static void bid_unhash(struct fs_inode_table *t, struct fs_inode *in)
{
	struct fs_inode **pp;

	if (!in->bgen)
		return;
	for (pp = &t->by_bid[bid_slot(t, in->bdev, in->bino)]; *pp != in;
	     pp = &(*pp)->next_bid)
		;
	*pp = in->next_bid;
	in->bgen = 0;
}

void inode_bid_hash(struct fs_inode_table *t, struct fs_inode *in)
{
	size_t s = bid_slot(t, in->bdev, in->bino);

	in->next_bid = t->by_bid[s];
	t->by_bid[s] = in;
}

static struct fs_inode *bid_find(const struct fs_inode_table *t, dev_t dev,
				 ino_t bino, uint64_t gen)
{
	for (struct fs_inode *i = t->by_bid[bid_slot(t, dev, bino)]; i; i = i->next_bid)
		if (i->bdev == dev && i->bino == bino && i->bgen == gen)
			return i;
	return NULL;
}

void inode_maybe_free(struct fs_inode_table *t, struct fs_inode *in);

/* Drop one child reference from `parent`, freeing it if it was the last. */
static void put_parent(struct fs_inode_table *t, uint64_t parent)
{
	struct fs_inode *p = inode_get(t, parent);

	if (!p)
		return;
	if (p->nchild == 0)
		inode_count_below_zero("child", p->ino);
	p->nchild--;
	inode_maybe_free(t, p);
}

/* Give `in` the name (parent, name), after its others.  The caller checked
 * that the name is free. */
int inode_add_name(struct fs_inode_table *t, struct fs_inode *in,
		    uint64_t parent, const char *name)
{
	struct fs_inode *p = inode_get(t, parent);
	struct fs_name *n = calloc(1, sizeof(*n)), **pp;

	if (!n || !p || !(n->name = strdup(name))) {
		free(n);
		return -ENOMEM;
	}
	n->parent = parent;
	n->in = in;
	p->nchild++;
	hash_name(t, n);
	for (pp = &in->names; *pp; pp = &(*pp)->next)
		;
	*pp = n;
	return 0;
}

/* Take name `n` away from its inode (which stays alive if counted). */
void inode_remove_name(struct fs_inode_table *t, struct fs_name *n)
{
	struct fs_inode *in = n->in;
	uint64_t parent = n->parent;
	struct fs_name **pp;

	unhash_name(t, n);
	for (pp = &in->names; *pp != n; pp = &(*pp)->next)
		;
	*pp = n->next;
	free(n->name);
	free(n);
	if (!in->names)
		bid_unhash(t, in);      /* an unlinked file joins nothing */
	put_parent(t, parent);
}

/* Remove every name of `in`. */
void inode_detach(struct fs_inode_table *t, struct fs_inode *in)
{
	while (in->names)
		inode_remove_name(t, in->names);
}

/* Move name `n` to (parent, name); the caller checked that it is free. */
int inode_move_name(struct fs_inode_table *t, struct fs_name *n,
		     uint64_t parent, const char *name)
{
	struct fs_inode *p = inode_get(t, parent);
	char *dup = strdup(name);
	uint64_t old = n->parent;

	if (!dup || !p) {
		free(dup);
		return -ENOMEM;
	}
	p->nchild++;            /* before put_parent, which may free the old one */
	unhash_name(t, n);
	free(n->name);
	n->name = dup;
	n->parent = parent;
	hash_name(t, n);
	put_parent(t, old);
	return 0;
}

void inode_maybe_free(struct fs_inode_table *t, struct fs_inode *in)
{
	struct fs_inode **pp;

	if (in->ino == FS_ROOT_INO || in->nlookup || in->nopen || in->nchild)
		return;
	pp = &t->by_id[inode_id_slot(t, in->ino)];
	while (*pp != in)
		pp = &(*pp)->next_id;
	*pp = in->next_id;
	t->count--;
	inode_detach(t, in);
	free(in->attr);
	free(in);
}

int inode_grow(struct fs_inode_table *t)
{
	size_t nb = t->nbuckets * 2;
	struct fs_inode **ids = calloc(nb, sizeof(*ids));
	struct fs_name **names = calloc(nb, sizeof(*names));
	struct fs_inode **bids = calloc(nb, sizeof(*bids));
	struct fs_inode **old = t->by_id;
	size_t onb = t->nbuckets;

	if (!ids || !names || !bids) {
		free(ids);
		free(names);
		free(bids);
		return -ENOMEM;
	}
	free(t->by_name);
	free(t->by_bid);
	t->by_id = ids;
	t->by_name = names;
	t->by_bid = bids;
	t->nbuckets = nb;
	for (size_t s = 0; s < onb; s++) {
		struct fs_inode *i = old[s], *next;

		for (; i; i = next) {
			size_t ns = inode_id_slot(t, i->ino);

			next = i->next_id;
			i->next_id = t->by_id[ns];
			t->by_id[ns] = i;
			if (i->ino != FS_ROOT_INO)
				for (struct fs_name *n = i->names; n; n = n->next)
					hash_name(t, n);
			if (i->bgen)
				inode_bid_hash(t, i);
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
	t->by_bid = calloc(t->nbuckets, sizeof(*t->by_bid));
	if (!t->by_id || !t->by_name || !t->by_bid)
		goto out_free;
	pthread_rwlock_init(&t->lock, NULL);
	root->ino = FS_ROOT_INO;
	root->type = S_IFDIR;
	root->nlookup = 1;
	t->by_id[inode_id_slot(t, FS_ROOT_INO)] = root;   /* the root has no name */
	t->count = 1;
	t->next_ino = FS_ROOT_INO + 1;
	*out = t;
	return 0;
out_free:
	free(root);
	if (t) {
		free(t->by_id);
		free(t->by_name);
		free(t->by_bid);
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
			while (i->names) {
				struct fs_name *n = i->names;

				i->names = n->next;
				free(n->name);
				free(n);
			}
			free(i->attr);
			free(i);
		}
	}
	free(t->by_id);
	free(t->by_name);
	free(t->by_bid);
	pthread_rwlock_destroy(&t->lock);
	free(t);
}

/* May `st` (seen in generation gen) join a node by backend identity? */
static bool linked_file(const struct stat *st, uint64_t gen)
{
	return gen && st->st_ino && st->st_nlink > 1 && !S_ISDIR(st->st_mode);
}

/* Record the backend identity of `in` for generation gen, unless another
 * node already holds it (two nodes the kernel knows cannot become one). */
void inode_set_identity(struct fs_inode_table *t, struct fs_inode *in,
			 const struct stat *st, uint64_t gen)
{
	struct fs_inode *other;

	if (!linked_file(st, gen) || !in->names)
		return;
	if (in->bgen == gen && in->bdev == st->st_dev && in->bino == st->st_ino)
		return;
	other = bid_find(t, st->st_dev, st->st_ino, gen);
	if (other && other != in)
		return;
	bid_unhash(t, in);
	in->bdev = st->st_dev;
	in->bino = st->st_ino;
	in->bgen = gen;
	inode_bid_hash(t, in);
}

/* The lookup of fs_inode_lookup() and fs_inode_lookup_st(). */
static uint64_t lookup_locked(struct fs_inode_table *t, uint64_t parent,
			      const char *name, mode_t type, const struct stat *st,
			      uint64_t gen, uint64_t nlookup, int *err)
{
	struct fs_inode *in = NULL, *p;
	struct fs_name *n;
	uint64_t ino;

	*err = 0;
	type &= S_IFMT;
	p = inode_get(t, parent);
	if (!p || (!p->names && parent != FS_ROOT_INO)) {
		*err = -ESTALE;
		return 0;
	}
	n = inode_find_name(t, parent, name);
	if (n && n->in->type != type) {
		/* the backend file was replaced by another kind of file; pin the
		 * parent, which the old child may have been keeping alive */
		struct fs_inode *old = n->in;

		p->nchild++;
		inode_remove_name(t, n);
		inode_maybe_free(t, old);
		p->nchild--;
		n = NULL;
	}
	if (n) {
		in = n->in;
	} else {
		/* another name of a file we know: the same node */
		if (st && linked_file(st, gen)) {
			in = bid_find(t, st->st_dev, st->st_ino, gen);
			if (in && (in->type != type || !in->names))
				in = NULL;
		}
		if (!in) {
			if (t->count >= t->nbuckets && inode_grow(t)) {
				*err = -ENOMEM;
				return 0;
			}
			in = calloc(1, sizeof(*in));
			if (!in) {
				*err = -ENOMEM;
				return 0;
			}
			in->ino = t->next_ino++;
			in->type = type;
			in->next_id = t->by_id[inode_id_slot(t, in->ino)];
			t->by_id[inode_id_slot(t, in->ino)] = in;
			t->count++;
		}
		if (inode_add_name(t, in, parent, name)) {
			*err = -ENOMEM;
			inode_maybe_free(t, in);
			return 0;
		}
	}
	if (st)
		inode_set_identity(t, in, st, gen);
	in->nlookup += nlookup;
	ino = in->ino;
	inode_maybe_free(t, in);      /* nlookup == 0 probes create nothing lasting */
	return ino;
}
uint64_t fs_inode_lookup(struct fs_inode_table *t, uint64_t parent,
			 const char *name, mode_t type, uint64_t nlookup,
			 int *err)
{
	uint64_t ino;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_LOOKUP, &(struct inode_log_args){ .a = parent, .n = nlookup,
							  .mode = type }, name, NULL);
	ino = lookup_locked(t, parent, name, type, NULL, 0, nlookup, err);
	pthread_rwlock_unlock(&t->lock);
	return ino;
}

uint64_t fs_inode_lookup_st(struct fs_inode_table *t, uint64_t parent,
			    const char *name, const struct stat *st, uint64_t gen,
			    uint64_t nlookup, int *err)
{
	uint64_t ino;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_LOOKUP_ST, &(struct inode_log_args){
			  .a = parent, .n = nlookup, .gen = gen, .mode = st->st_mode,
			  .nlink = (uint32_t)st->st_nlink, .dev = st->st_dev, .ino = st->st_ino },
		  name, NULL);
	ino = lookup_locked(t, parent, name, st->st_mode, st, gen, nlookup, err);
	pthread_rwlock_unlock(&t->lock);
	return ino;
}

int fs_inode_nnames(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	int n = 0;

	pthread_rwlock_rdlock(&t->lock);
	in = inode_get(t, ino);
	for (struct fs_name *nm = in ? in->names : NULL; nm; nm = nm->next)
		n++;
	pthread_rwlock_unlock(&t->lock);
	return n;
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
	inode_log(t, IL_FORGET, &(struct inode_log_args){ .a = ino, .n = n }, NULL, NULL);
	in = inode_get(t, ino);
	if (in) {
		if (in->nlookup < n)
			inode_count_below_zero("lookup", ino);
		in->nlookup -= n;
		inode_maybe_free(t, in);
	}
	pthread_rwlock_unlock(&t->lock);
}

static void drop_open(struct fs_inode *in)
{
	if (--in->nopen < 0)
		inode_count_below_zero("open", in->ino);
}

int fs_inode_open(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	int ret = 0;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_OPEN, &(struct inode_log_args){ .a = ino }, NULL, NULL);
	in = inode_get(t, ino);
	if (in)
		in->nopen++;
	else
		ret = -ESTALE;
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

static int path_locked(struct fs_inode_table *t, uint64_t ino, const char *name,
		       char *buf, size_t len);

/*
 * Drop one open count of `ino`.  With buf: when that was the last open of
 * a silly-renamed file, clear the mark and put its path in buf (*silly).
 * Returns the open count left, or -ESTALE.
 */
static int close_open(struct fs_inode_table *t, uint64_t ino, char *buf,
		      size_t len, bool *silly)
{
	struct fs_inode *in;
	int ret;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_CLOSE, &(struct inode_log_args){ .a = ino, .n = buf != NULL }, NULL, NULL);
	in = inode_get(t, ino);
	if (!in) {
		ret = -ESTALE;
		goto out;
	}
	drop_open(in);
	ret = in->nopen;
	if (buf && !in->nopen && in->silly && !path_locked(t, ino, NULL, buf, len)) {
		in->silly = false;
		*silly = true;
	}
	inode_maybe_free(t, in);
out:
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_close(struct fs_inode_table *t, uint64_t ino)
{
	return close_open(t, ino, NULL, 0, NULL);
}

int fs_inode_close_silly(struct fs_inode_table *t, uint64_t ino, char *buf,
			 size_t len)
{
	bool silly = false;
	int ret = close_open(t, ino, buf, len, &silly);

	return ret < 0 ? ret : silly;
}

int fs_inode_nopen(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;
	int ret;

	pthread_rwlock_rdlock(&t->lock);
	in = inode_get(t, ino);
	ret = in ? (int)in->nopen : 0;
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

/* The path through name `nm` (NULL: the root), then the first name of
 * every inode on the way up, with `name` appended when given. */
static int path_from(struct fs_inode_table *t, const struct fs_name *nm,
		     const char *name, char *buf, size_t len)
{
	const char *parts[256];
	size_t n = 0, pos = 0;

	while (nm) {
		struct fs_inode *in;

		if (n == sizeof(parts) / sizeof(*parts))
			return -ENAMETOOLONG;
		parts[n++] = nm->name;
		if (nm->parent == FS_ROOT_INO)
			break;
		in = inode_get(t, nm->parent);
		if (!in || !in->names)
			return -ESTALE;
		nm = in->names;
	}
	if (!n && !name)
		return snprintf(buf, len, ".") >= (int)len ? -ENAMETOOLONG : 0;
	while (n--) {
		size_t l = strlen(parts[n]);

		if (pos + l + 1 > len)
			return -ENAMETOOLONG;
		memcpy(buf + pos, parts[n], l);
		pos += l;
		buf[pos++] = '/';
	}
	if (name) {
		size_t l = strlen(name);

		if (pos + l + 1 > len)
			return -ENAMETOOLONG;
		memcpy(buf + pos, name, l);
		pos += l;
	} else {
		pos--;          /* drop the trailing '/' */
	}
	buf[pos] = 0;
	return 0;
}

/* fs_inode_path() with t->lock already held. */
static int path_locked(struct fs_inode_table *t, uint64_t ino, const char *name,
		       char *buf, size_t len)
{
	struct fs_inode *in = inode_get(t, ino);

	if (ino == FS_ROOT_INO)
		return path_from(t, NULL, name, buf, len);
	if (!in || !in->names)
		return -ESTALE;
	return path_from(t, in->names, name, buf, len);
}

int fs_inode_path_except(struct fs_inode_table *t, uint64_t ino,
			 uint64_t parent, const char *name, char *buf, size_t len)
{
	struct fs_inode *in;
	struct fs_name *nm = NULL;
	int ret = -ENOENT;

	pthread_rwlock_rdlock(&t->lock);
	in = inode_get(t, ino);
	for (nm = in ? in->names : NULL; nm; nm = nm->next)
		if (nm->parent != parent || strcmp(nm->name, name))
			break;
	if (nm)
		ret = path_from(t, nm, NULL, buf, len);
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_each_path(struct fs_inode_table *t, uint64_t ino,
		       void (*fn)(const char *rel, void *arg), void *arg)
{
	char buf[PATH_MAX];
	struct fs_inode *in;
	int n = 0;

	pthread_rwlock_rdlock(&t->lock);
	in = inode_get(t, ino);
	for (struct fs_name *nm = in ? in->names : NULL; nm; nm = nm->next)
		if (!path_from(t, nm, NULL, buf, sizeof(buf))) {
			fn(buf, arg);
			n++;
		}
	pthread_rwlock_unlock(&t->lock);
	return n;
}

bool fs_inode_is_first_name(struct fs_inode_table *t, uint64_t ino,
			    uint64_t parent, const char *name)
{
	struct fs_inode *in;
	bool ret;

	pthread_rwlock_rdlock(&t->lock);
	in = inode_get(t, ino);
	ret = in && in->names && in->names->parent == parent &&
	      !strcmp(in->names->name, name);
	pthread_rwlock_unlock(&t->lock);
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

void fs_inode_set_silly(struct fs_inode_table *t, uint64_t ino, bool silly)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_SET_SILLY, &(struct inode_log_args){ .a = ino, .n = silly }, NULL, NULL);
	in = inode_get(t, ino);
	if (in)
		in->silly = silly;
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_attr_set(struct fs_inode_table *t, uint64_t ino, const struct stat *st)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	in = inode_get(t, ino);
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
	in = inode_get(t, ino);
	if (in && in->attr && in->names) {
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
	in = inode_get(t, ino);
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
