/*
 * fs/meta.c - the metadata cache (fs/meta.h): attributes, missing names
 * and whole directory listings of the engine, by path.
 *
 * Every stat through the engine is a round trip through two FUSE file
 * systems, and for an object store a request to the store.  A training
 * job lists its dataset and then opens and stats every file, many times;
 * a read-only dataset never changes under it.  So lazarusfs keeps what the
 * engine told it:
 *  - attributes by path (from lookup, getattr, readdirplus, creates);
 *  - missing names (a lookup that found nothing);
 *  - complete listings of directories, which also answer "missing" for any
 *    name not in them.
 *
 * Freshness: every entry expires `ttl` seconds after it was learnt;
 * INFINITY (immutable datasets, ro mounts) means never, until dropped.
 * Changes made through lazarusfs drop (or replace) the entries they touch,
 * so they are seen at once; changes made elsewhere are seen once an entry
 * expires.  An expired entry is still good enough for the offline service
 * (the engine is down: something is better than a hang), through the
 * stale_ok flag.
 *
 * Memory: entries are charged their key, their struct stat and their
 * listing; past max_bytes the least recently used go.
 *
 * Persistence: fs_meta_save() writes every entry to a file (at unmount),
 * fs_meta_load() reads them back (at mount), so a restarted proxy, and the
 * offline service of a proxy whose engine never started, can answer
 * listings and stats.  Entries of an immutable dataset (ttl INFINITY) come
 * back as fresh; with a finite ttl they come back expired, good only for
 * the offline service: what changed meanwhile is unknown.
 *
 * Locking: one mutex, a leaf; nothing here does I/O under it (save and
 * load build or parse the file's contents outside it).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs/meta.h"

struct mentry {
	char *key;
	size_t klen;
	uint64_t hash;
	bool has_attr;
	bool missing;
	struct stat st;
	double expires;                 /* of the attributes / missing mark */
	struct fs_dirent *ents;         /* a complete listing, or NULL */
	size_t nents;
	double list_expires;
	size_t bytes;
	struct mentry *next_hash;
	struct mentry *lru_prev, *lru_next;     /* most recent first */
};

struct fs_meta {
	pthread_mutex_t lock;
	double ttl;                     /* immutable */
	size_t max_bytes;               /* immutable */
	struct mentry **buckets;        /* protected by lock */
	size_t nbuckets;                /* protected by lock, a power of two */
	size_t count;                   /* protected by lock */
	size_t bytes;                   /* protected by lock */
	struct mentry *lru_head, *lru_tail;     /* protected by lock */
	struct fs_meta_stats st;        /* protected by lock */
};

int fs_meta_new(struct fs_meta **out, double ttl, size_t max_bytes)
{
	struct fs_meta *m = calloc(1, sizeof(*m));

	if (!m)
		return -ENOMEM;
	m->nbuckets = 1024;
	m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
	if (!m->buckets) {
		free(m);
		return -ENOMEM;
	}
	m->ttl = ttl;
	m->max_bytes = max_bytes;
	pthread_mutex_init(&m->lock, NULL);
	*out = m;
	return 0;
}

static void free_ents(struct fs_dirent *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

static void entry_free(struct mentry *e)
{
	free_ents(e->ents, e->nents);
	free(e->key);
	free(e);
}

void fs_meta_free(struct fs_meta *m)
{
	if (!m)
		return;
	for (struct mentry *e = m->lru_head, *next; e; e = next) {
		next = e->lru_next;
		entry_free(e);
	}
	free(m->buckets);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

static uint64_t key_hash(const char *key, size_t klen)
{
	return XXH3_64bits(key, klen);
}

static void lru_unlink(struct fs_meta *m, struct mentry *e)
{
	if (e->lru_prev)
		e->lru_prev->lru_next = e->lru_next;
	else
		m->lru_head = e->lru_next;
	if (e->lru_next)
		e->lru_next->lru_prev = e->lru_prev;
	else
		m->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_front(struct fs_meta *m, struct mentry *e)
{
	e->lru_next = m->lru_head;
	if (m->lru_head)
		m->lru_head->lru_prev = e;
	m->lru_head = e;
	if (!m->lru_tail)
		m->lru_tail = e;
}

static struct mentry *find_locked(struct fs_meta *m, const char *key, size_t klen)
{
	uint64_t h = key_hash(key, klen);

	for (struct mentry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next_hash)
		if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen))
			return e;
	return NULL;
}

static void remove_locked(struct fs_meta *m, struct mentry *e)
{
	struct mentry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];

	while (*pp != e)
		pp = &(*pp)->next_hash;
	*pp = e->next_hash;
	lru_unlink(m, e);
	m->count--;
	m->bytes -= e->bytes;
	entry_free(e);
}

static void grow_locked(struct fs_meta *m)
{
	size_t nb = m->nbuckets * 2;
	struct mentry **b = calloc(nb, sizeof(*b));

	if (!b)
		return;         /* longer chains, still correct */
	for (size_t i = 0; i < m->nbuckets; i++)
		for (struct mentry *e = m->buckets[i], *next; e; e = next) {
			next = e->next_hash;
			e->next_hash = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
		}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = nb;
}

static size_t entry_bytes(const struct mentry *e)
{
	size_t b = sizeof(*e) + e->klen + 1;

	for (size_t i = 0; i < e->nents; i++)
		b += sizeof(e->ents[i]) + strlen(e->ents[i].name) + 1;
	return b;
}

static void recharge_locked(struct fs_meta *m, struct mentry *e)
{
	m->bytes -= e->bytes;
	e->bytes = entry_bytes(e);
	m->bytes += e->bytes;
	while (m->bytes > m->max_bytes && m->lru_tail && m->lru_tail != e) {
		remove_locked(m, m->lru_tail);
		m->st.evictions++;
	}
}

/* The entry for key, made when missing (NULL: out of memory). */
static struct mentry *get_locked(struct fs_meta *m, const char *key)
{
	size_t klen = strlen(key);
	struct mentry *e = find_locked(m, key, klen);

	if (e) {
		lru_unlink(m, e);
		lru_front(m, e);
		return e;
	}
	if (m->count >= m->nbuckets)
		grow_locked(m);
	e = calloc(1, sizeof(*e));
	if (!e || !(e->key = strdup(key))) {
		free(e);
		return NULL;
	}
	e->klen = klen;
	e->hash = key_hash(key, klen);
	e->next_hash = m->buckets[e->hash & (m->nbuckets - 1)];
	m->buckets[e->hash & (m->nbuckets - 1)] = e;
	lru_front(m, e);
	m->count++;
	e->bytes = 0;
	return e;
}

static double expiry(const struct fs_meta *m)
{
	return isinf(m->ttl) ? INFINITY : fs_now() + m->ttl;
}

/* Split "a/b/c" into the parent key "a/b" and the name "c" ("." for a
 * name at the root). */
static const char *split(const char *rel, char *parent, size_t len)
{
	const char *slash = strrchr(rel, '/');

	if (!slash) {
		snprintf(parent, len, ".");
		return rel;
	}
	snprintf(parent, len, "%.*s", (int)(slash - rel), rel);
	return slash + 1;
}

static bool in_listing(const struct mentry *d, const char *name)
{
	for (size_t i = 0; i < d->nents; i++)
		if (!strcmp(d->ents[i].name, name))
			return true;
	return false;
}

int fs_meta_attr(struct fs_meta *m, const char *rel, struct stat *st, bool stale_ok)
{
	char parent[PATH_MAX];
	const char *name;
	struct mentry *e, *d;
	double now = fs_now();
	int ret = -EAGAIN;

	if (!m)
		return -EAGAIN;
	pthread_mutex_lock(&m->lock);
	e = find_locked(m, rel, strlen(rel));
	if (e && (e->has_attr || e->missing) && (stale_ok || e->expires > now)) {
		lru_unlink(m, e);
		lru_front(m, e);
		if (e->missing) {
			ret = -ENOENT;
			m->st.negative_hits++;
		} else {
			*st = e->st;
			ret = 0;
			m->st.hits++;
		}
		goto out;
	}
	/* a name not in its directory's complete listing does not exist */
	name = split(rel, parent, sizeof(parent));
	if (strcmp(rel, ".") && (d = find_locked(m, parent, strlen(parent))) &&
	    d->ents && (stale_ok || d->list_expires > now) && !in_listing(d, name)) {
		ret = -ENOENT;
		m->st.negative_hits++;
		goto out;
	}
	m->st.misses++;
out:
	pthread_mutex_unlock(&m->lock);
	return ret;
}

void fs_meta_set_attr(struct fs_meta *m, const char *rel, const struct stat *st)
{
	struct mentry *e;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	if ((e = get_locked(m, rel))) {
		e->st = *st;
		e->has_attr = true;
		e->missing = false;
		e->expires = expiry(m);
		recharge_locked(m, e);
	}
	pthread_mutex_unlock(&m->lock);
}

void fs_meta_set_missing(struct fs_meta *m, const char *rel)
{
	struct mentry *e;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	if ((e = get_locked(m, rel))) {
		e->has_attr = false;
		e->missing = true;
		e->expires = expiry(m);
		free_ents(e->ents, e->nents);
		e->ents = NULL;
		e->nents = 0;
		recharge_locked(m, e);
	}
	pthread_mutex_unlock(&m->lock);
}

void fs_meta_drop(struct fs_meta *m, const char *rel)
{
	struct mentry *e;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	if ((e = find_locked(m, rel, strlen(rel))))
		remove_locked(m, e);
	pthread_mutex_unlock(&m->lock);
}

void fs_meta_changed(struct fs_meta *m, const char *rel)
{
	char parent[PATH_MAX];

	if (!m)
		return;
	split(rel, parent, sizeof(parent));
	fs_meta_drop(m, rel);
	/* the directory's listing, mtime and link count changed too */
	if (strcmp(rel, "."))
		fs_meta_drop(m, parent);
}

void fs_meta_drop_tree(struct fs_meta *m, const char *rel)
{
	size_t len = strlen(rel);
	bool all = !strcmp(rel, ".");

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	for (struct mentry *e = m->lru_head, *next; e; e = next) {
		next = e->lru_next;
		if (all || (e->klen >= len && !memcmp(e->key, rel, len) &&
			    (e->klen == len || e->key[len] == '/')))
			remove_locked(m, e);
	}
	pthread_mutex_unlock(&m->lock);
}

int fs_meta_listing(struct fs_meta *m, const char *rel, struct fs_dirent **out,
		    size_t *n, bool stale_ok)
{
	struct fs_dirent *v = NULL;
	struct mentry *e;
	int ret = -EAGAIN;

	if (!m)
		return -EAGAIN;
	pthread_mutex_lock(&m->lock);
	e = find_locked(m, rel, strlen(rel));
	if (!e || !e->ents || (!stale_ok && e->list_expires <= fs_now())) {
		m->st.misses++;
		goto out;
	}
	lru_unlink(m, e);
	lru_front(m, e);
	v = calloc(e->nents ? e->nents : 1, sizeof(*v));
	if (!v) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < e->nents; i++) {
		v[i] = e->ents[i];
		if (!(v[i].name = strdup(e->ents[i].name))) {
			free_ents(v, i);
			ret = -ENOMEM;
			goto out;
		}
	}
	*out = v;
	*n = e->nents;
	m->st.hits++;
	ret = 0;
out:
	pthread_mutex_unlock(&m->lock);
	return ret;
}

void fs_meta_set_listing(struct fs_meta *m, const char *rel,
			 const struct fs_dirent *ents, size_t n)
{
	struct fs_dirent *v;
	struct mentry *e;

	if (!m)
		return;
	v = calloc(n ? n : 1, sizeof(*v));
	for (size_t i = 0; v && i < n; i++) {
		v[i] = ents[i];
		if (!(v[i].name = strdup(ents[i].name))) {
			free_ents(v, i);
			v = NULL;
		}
	}
	if (!v)
		return;         /* out of memory: simply not cached */
	pthread_mutex_lock(&m->lock);
	if ((e = get_locked(m, rel))) {
		free_ents(e->ents, e->nents);
		e->ents = v;
		e->nents = n;
		e->list_expires = expiry(m);
		v = NULL;
		recharge_locked(m, e);
	}
	pthread_mutex_unlock(&m->lock);
	if (v)
		free_ents(v, n);
}

void fs_meta_get_stats(struct fs_meta *m, struct fs_meta_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	*out = m->st;
	out->entries = m->count;
	out->bytes = m->bytes;
	out->max_bytes = m->max_bytes;
	pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------ persistence */

#define META_MAGIC "lazarusfs-meta 1\n"

/*
 * File format: the magic line, a u64 tag naming the dataset (a different
 * source or engine on the same mount point must not inherit it), then one
 * record per entry:
 *   u32 key length, key bytes, u8 flags (1 attr, 2 missing, 4 listing),
 *   struct stat (with attr), u32 count and per entry {u64 ino, u8 type,
 *   u32 name length, name} (with listing).
 * Written to a temporary file and renamed, so a crash leaves the old file.
 */
struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void put(struct buf *b, const void *data, size_t len)
{
	if (b->oom)
		return;
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 1 << 16;
		char *np;

		while (cap < b->len + len)
			cap *= 2;
		if (!(np = realloc(b->p, cap))) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
}

int fs_meta_save(struct fs_meta *m, const char *path, uint64_t tag)
{
	struct buf b = { 0 };
	char tmp[PATH_MAX + 8];
	int fd, ret;

	if (!m)
		return 0;
	put(&b, META_MAGIC, strlen(META_MAGIC));
	put(&b, &tag, sizeof(tag));
	pthread_mutex_lock(&m->lock);
	/* least recent first, so a load keeps the LRU order */
	for (struct mentry *e = m->lru_tail; e; e = e->lru_prev) {
		uint32_t kl = (uint32_t)e->klen, cnt = (uint32_t)e->nents;
		uint8_t fl = (e->has_attr ? 1 : 0) | (e->missing ? 2 : 0) | (e->ents ? 4 : 0);

		put(&b, &kl, sizeof(kl));
		put(&b, e->key, kl);
		put(&b, &fl, 1);
		if (e->has_attr)
			put(&b, &e->st, sizeof(e->st));
		if (e->ents) {
			put(&b, &cnt, sizeof(cnt));
			for (size_t i = 0; i < e->nents; i++) {
				uint64_t ino = e->ents[i].ino;
				uint8_t type = e->ents[i].type;
				uint32_t nl = (uint32_t)strlen(e->ents[i].name);

				put(&b, &ino, sizeof(ino));
				put(&b, &type, 1);
				put(&b, &nl, sizeof(nl));
				put(&b, e->ents[i].name, nl);
			}
		}
	}
	pthread_mutex_unlock(&m->lock);
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ret = fd < 0 ? -errno : fs_pwrite_all(fd, b.p, b.len, 0);
	if (fd >= 0 && close(fd) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (ret)
		unlink(tmp);
	free(b.p);
	return ret;
}

struct rd {
	const char *p;
	size_t len, pos;
};

static bool get(struct rd *r, void *out, size_t len)
{
	if (r->len - r->pos < len)
		return false;
	memcpy(out, r->p + r->pos, len);
	r->pos += len;
	return true;
}

int fs_meta_load(struct fs_meta *m, const char *path, uint64_t tag)
{
	uint64_t ftag;
	struct stat fst;
	struct rd r = { 0 };
	char *data = NULL;
	int fd, ret = 0;
	size_t loaded = 0;

	if (!m)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &fst) || !(data = malloc(fst.st_size ? fst.st_size : 1)) ||
	    fs_pread_all(fd, data, fst.st_size, 0) != fst.st_size) {
		ret = data ? -EIO : -ENOMEM;
		goto out;
	}
	r.p = data;
	r.len = fst.st_size;
	if (r.len < strlen(META_MAGIC) || memcmp(data, META_MAGIC, strlen(META_MAGIC))) {
		ret = -EINVAL;
		goto out;
	}
	r.pos = strlen(META_MAGIC);
	if (!get(&r, &ftag, sizeof(ftag)) || ftag != tag) {
		ret = 0;        /* another dataset's: start empty */
		goto out;
	}
	while (r.pos < r.len) {
		char key[PATH_MAX];
		uint32_t kl, cnt;
		uint8_t fl;
		struct stat st;

		if (!get(&r, &kl, sizeof(kl)) || kl >= sizeof(key) || !get(&r, key, kl) ||
		    !get(&r, &fl, 1)) {
			ret = -EINVAL;
			break;
		}
		key[kl] = 0;
		if (fl & 1) {
			if (!get(&r, &st, sizeof(st))) {
				ret = -EINVAL;
				break;
			}
			fs_meta_set_attr(m, key, &st);
		}
		if (fl & 2)
			fs_meta_set_missing(m, key);
		if (fl & 4) {
			struct fs_dirent *v;
			bool ok = get(&r, &cnt, sizeof(cnt)) && cnt <= (r.len - r.pos) / 13;

			v = ok ? calloc(cnt ? cnt : 1, sizeof(*v)) : NULL;
			for (uint32_t i = 0; v && ok && i < cnt; i++) {
				uint64_t ino = 0;
				uint32_t nl;

				ok = get(&r, &ino, sizeof(ino)) && get(&r, &v[i].type, 1) &&
				     get(&r, &nl, sizeof(nl)) && nl < NAME_MAX + 1 &&
				     (v[i].name = calloc(1, nl + 1)) && get(&r, v[i].name, nl);
				v[i].ino = ino;
			}
			if (ok && v)
				fs_meta_set_listing(m, key, v, cnt);
			if (v)
				free_ents(v, cnt);
			if (!ok) {
				ret = -EINVAL;
				break;
			}
		}
		loaded++;
	}
	if (!isinf(m->ttl)) {
		pthread_mutex_lock(&m->lock);
		for (struct mentry *e = m->lru_head; e; e = e->lru_next)
			e->expires = e->list_expires = 0;
		pthread_mutex_unlock(&m->lock);
	}
out:
	free(data);
	close(fd);
	if (ret)
		fs_log(FS_LOG_WARN, "metadata cache file unusable, kept %zu entries: %s: %s",
		       loaded, path, strerror(-ret));
	return ret;
}
