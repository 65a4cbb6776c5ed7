/*
 * fs/inode_log.c - the inode table's takeover log (fs/takeover.h).
 *
 * The kernel holds node ids with lookup counts; a worker that takes over
 * from a dead one must know every one of them, with the same path, or the
 * kernel's next FORGET or GETATTR on it would meet nothing.  So every
 * change to the table is appended to a state log (a memfd the holder
 * keeps) under the table lock, before the caller answers the kernel: a
 * worker that dies after the append but before its answer leaves a count
 * one too high, which only keeps an inode a little longer; it never leaves
 * one too low.
 *
 * A record is the changing call itself, with its arguments; the successor
 * calls the same functions in the same order and gets the same table,
 * node ids included, since ids come from next_ino in that order.  When the
 * log has grown past twice its last snapshot (and at least 4 MiB), the
 * table is written out as a snapshot instead: every inode, then every
 * name in each inode's order (the first name is its path), then the
 * backend identities, then next_ino.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "fs/inode_int.h"
#include "fs/takeover.h"

#define SNAP_MIN (4u << 20)

struct s_inode {
	uint64_t ino, nlookup;
	int64_t nopen;
	uint32_t type, silly;
};

struct s_bid {
	uint64_t ino, dev, bino, gen;
};

static int snap_add(struct fs_inode_table *t, uint32_t type, const void *p, size_t len,
		    const char *name)
{
	char buf[sizeof(struct s_inode) + 4096];
	size_t nl = name ? strlen(name) + 1 : 0;

	if (len + nl > sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, p, len);
	if (nl)
		memcpy(buf + len, name, nl);
	return fs_statelog_snap_add(t->log, type, buf, len + nl);
}

/* Write the whole table as the log.  Caller holds t->lock for writing. */
static int snapshot_locked(struct fs_inode_table *t)
{
	int ret = 0;

	fs_statelog_snap_begin(t->log);
	for (size_t s = 0; !ret && s < t->nbuckets; s++)
		for (struct fs_inode *i = t->by_id[s]; !ret && i; i = i->next_id) {
			struct s_inode r = { .ino = i->ino, .nlookup = i->nlookup,
					     .nopen = i->nopen, .type = i->type,
					     .silly = i->silly };

			ret = snap_add(t, IL_S_INODE, &r, sizeof(r), NULL);
		}
	for (size_t s = 0; !ret && s < t->nbuckets; s++)
		for (struct fs_inode *i = t->by_id[s]; !ret && i; i = i->next_id)
			for (struct fs_name *n = i->names; !ret && n; n = n->next) {
				uint64_t r[2] = { i->ino, n->parent };

				ret = snap_add(t, IL_S_NAME, r, sizeof(r), n->name);
			}
	for (size_t s = 0; !ret && s < t->nbuckets; s++)
		for (struct fs_inode *i = t->by_id[s]; !ret && i; i = i->next_id)
			if (i->bgen) {
				struct s_bid r = { i->ino, i->bdev, i->bino, i->bgen };

				ret = snap_add(t, IL_S_BID, &r, sizeof(r), NULL);
			}
	if (!ret)
		ret = snap_add(t, IL_S_NEXT, &t->next_ino, sizeof(t->next_ino), NULL);
	if (!ret)
		ret = fs_statelog_snap_commit(t->log);
	t->log_snap_at = 2 * fs_statelog_size(t->log);
	if (t->log_snap_at < SNAP_MIN)
		t->log_snap_at = SNAP_MIN;
	return ret;
}

void inode_log(struct fs_inode_table *t, enum inode_log_type type,
	       const struct inode_log_args *args, const char *s1, const char *s2)
{
	char buf[sizeof(*args) + 2 * 4096];
	size_t l1 = s1 ? strlen(s1) + 1 : 1, l2 = s2 ? strlen(s2) + 1 : 1;

	if (!t->log || sizeof(*args) + l1 + l2 > sizeof(buf))
		return;
	memcpy(buf, args, sizeof(*args));
	memcpy(buf + sizeof(*args), s1 ? s1 : "", l1);
	memcpy(buf + sizeof(*args) + l1, s2 ? s2 : "", l2);
	if (fs_statelog_append(t->log, type, buf, sizeof(*args) + l1 + l2))
		return;
	if (fs_statelog_size(t->log) > t->log_snap_at)
		snapshot_locked(t);
}

/* ---- replay: t->log is NULL, so the calls below log nothing */

static int restore_inode(struct fs_inode_table *t, const struct s_inode *r)
{
	struct fs_inode *in = inode_get(t, r->ino);

	if (!in) {
		if (t->count >= t->nbuckets && inode_grow(t))
			return -ENOMEM;
		if (!(in = calloc(1, sizeof(*in))))
			return -ENOMEM;
		in->ino = r->ino;
		in->next_id = t->by_id[inode_id_slot(t, in->ino)];
		t->by_id[inode_id_slot(t, in->ino)] = in;
		t->count++;
	}
	in->type = r->type;
	in->nlookup = r->nlookup;
	in->nopen = r->nopen;
	in->silly = r->silly;
	return 0;
}

static int replay_one(void *arg, uint32_t type, const void *p, size_t len)
{
	struct fs_inode_table *t = arg;
	const struct inode_log_args *a = p;
	const char *s1 = (const char *)p + sizeof(*a), *s2;
	struct stat st = { 0 };
	int err = 0;

	if (type >= IL_S_INODE) {
		int ret = 0;

		pthread_rwlock_wrlock(&t->lock);
		if (type == IL_S_INODE && len >= sizeof(struct s_inode)) {
			ret = restore_inode(t, p);
		} else if (type == IL_S_NAME && len > 2 * sizeof(uint64_t)) {
			const uint64_t *r = p;
			struct fs_inode *in = inode_get(t, r[0]);

			ret = in && !inode_find_name(t, r[1], (const char *)(r + 2)) ?
			      inode_add_name(t, in, r[1], (const char *)(r + 2)) : -EUCLEAN;
		} else if (type == IL_S_BID && len >= sizeof(struct s_bid)) {
			const struct s_bid *r = p;
			struct fs_inode *in = inode_get(t, r->ino);

			if (in && in->names && !in->bgen) {
				in->bdev = r->dev;
				in->bino = r->bino;
				in->bgen = r->gen;
				inode_bid_hash(t, in);
			}
		} else if (type == IL_S_NEXT && len >= sizeof(uint64_t)) {
			t->next_ino = *(const uint64_t *)p;
		} else {
			ret = -EUCLEAN;
		}
		pthread_rwlock_unlock(&t->lock);
		return ret;
	}
	if (len < sizeof(*a) + 2)
		return -EUCLEAN;
	s2 = s1 + strlen(s1) + 1;
	if ((size_t)(s2 - (const char *)p) >= len)
		return -EUCLEAN;
	st.st_mode = a->mode;
	st.st_nlink = a->nlink;
	st.st_dev = a->dev;
	st.st_ino = a->ino;
	switch (type) {
	case IL_LOOKUP:
		fs_inode_lookup(t, a->a, s1, a->mode, a->n, &err);
		break;
	case IL_LOOKUP_ST:
		fs_inode_lookup_st(t, a->a, s1, &st, a->gen, a->n, &err);
		break;
	case IL_LINK:
		fs_inode_link(t, a->a, a->b, s1, a->mode ? &st : NULL, a->gen);
		break;
	case IL_FORGET:
		fs_inode_forget(t, a->a, a->n);
		break;
	case IL_OPEN:
		fs_inode_open(t, a->a);
		break;
	case IL_CLOSE: {
		char buf[PATH_MAX];

		/* the silly file itself was the dead worker's to remove */
		if (a->n)
			fs_inode_close_silly(t, a->a, buf, sizeof(buf));
		else
			fs_inode_close(t, a->a);
		break;
	}
	case IL_RENAME:
		fs_inode_rename(t, a->a, s1, a->b, s2);
		break;
	case IL_EXCHANGE:
		fs_inode_exchange(t, a->a, s1, a->b, s2);
		break;
	case IL_UNLINK:
		fs_inode_unlink(t, a->a, s1);
		break;
	case IL_MAKE_SILLY:
		fs_inode_make_silly(t, a->a, s1, a->b, s2);
		break;
	case IL_DROP_NAME:
		fs_inode_drop_name(t, a->a);
		break;
	case IL_SET_SILLY:
		fs_inode_set_silly(t, a->a, a->n != 0);
		break;
	default:
		return -EUCLEAN;
	}
	return 0;
}

int fs_inode_table_log(struct fs_inode_table *t, struct fs_statelog *l, bool restore)
{
	int ret = 0;

	if (restore && (ret = fs_statelog_each(l, replay_one, t)))
		return ret;
	pthread_rwlock_wrlock(&t->lock);
	t->log = l;
	if (l)
		ret = snapshot_locked(t);
	pthread_rwlock_unlock(&t->lock);
	return ret;
}
