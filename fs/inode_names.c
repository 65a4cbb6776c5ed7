/*
 * fs/inode_names.c - changes to the names of the inode table (fs/fs.h):
 * link, rename, exchange, unlink, silly renames.  A name belongs to one
 * inode; an inode may have several (a hard-linked file).  See fs/inode.c.
 *
 * Locking: every function takes t->lock for writing itself.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/inode_int.h"

int fs_inode_link(struct fs_inode_table *t, uint64_t ino, uint64_t newparent,
		  const char *newname, const struct stat *st, uint64_t gen)
{
	struct fs_inode *in, *p;
	struct fs_name *n;
	int ret = 0;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_LINK, &(struct inode_log_args){
			  .a = ino, .b = newparent, .gen = gen, .mode = st ? st->st_mode : 0,
			  .nlink = st ? (uint32_t)st->st_nlink : 0, .dev = st ? st->st_dev : 0,
			  .ino = st ? st->st_ino : 0 }, newname, NULL);
	in = inode_get(t, ino);
	p = inode_get(t, newparent);
	if (!in || !in->names || !p || (!p->names && newparent != FS_ROOT_INO)) {
		ret = -ESTALE;
		goto out;
	}
	n = inode_find_name(t, newparent, newname);
	if (n && n->in == in)
		goto out;
	if (n) {
		/* a name we still knew for something that is gone */
		struct fs_inode *old = n->in;

		p->nchild++;
		inode_remove_name(t, n);
		inode_maybe_free(t, old);
		p->nchild--;
	}
	ret = inode_add_name(t, in, newparent, newname);
	if (!ret && st)
		inode_set_identity(t, in, st, gen);
out:
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

int fs_inode_make_silly(struct fs_inode_table *t, uint64_t parent,
			const char *name, uint64_t newparent,
			const char *newname)
{
	struct fs_name *n;
	int ret = 0;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_MAKE_SILLY, &(struct inode_log_args){ .a = parent, .b = newparent },
		  name, newname);
	n = inode_find_name(t, parent, name);
	if (n && !inode_find_name(t, newparent, newname) &&
	    !inode_move_name(t, n, newparent, newname)) {
		n->in->silly = true;
		ret = n->in->nopen;
	}
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

/* Forget the name `n` (and free its inode if nothing counts it). */
void inode_drop(struct fs_inode_table *t, struct fs_name *n)
{
	struct fs_inode *in = n->in;

	inode_remove_name(t, n);
	inode_maybe_free(t, in);
}

void fs_inode_rename(struct fs_inode_table *t, uint64_t parent,
		     const char *name, uint64_t newparent, const char *newname)
{
	struct fs_name *src, *dst;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_RENAME, &(struct inode_log_args){ .a = parent, .b = newparent },
		  name, newname);
	src = inode_find_name(t, parent, name);
	dst = inode_find_name(t, newparent, newname);
	/* between two names of one file rename does nothing (POSIX) */
	if (src && dst && src->in == dst->in)
		goto out;
	if (dst)
		inode_drop(t, dst);
	if (src && inode_move_name(t, src, newparent, newname))
		inode_drop(t, src);   /* out of memory: lookups will find it again */
out:
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_exchange(struct fs_inode_table *t, uint64_t parent,
		       const char *name, uint64_t newparent,
		       const char *newname)
{
	struct fs_name *a, *b;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_EXCHANGE, &(struct inode_log_args){ .a = parent, .b = newparent },
		  name, newname);
	a = inode_find_name(t, parent, name);
	b = inode_find_name(t, newparent, newname);
	if (a && b) {
		/* the names swap inodes; the parents' child counts stay */
		struct fs_inode *ai = a->in, *bi = b->in;
		struct fs_name **pp;

		if (ai != bi) {
			for (pp = &ai->names; *pp != a; pp = &(*pp)->next)
				;
			*pp = b;
			for (pp = &bi->names; *pp != b; pp = &(*pp)->next)
				;
			*pp = a;
			{
				struct fs_name *an = a->next;

				a->next = b->next;
				b->next = an;
			}
			a->in = bi;
			b->in = ai;
		}
	} else if (a || b) {
		struct fs_name *n = a ? a : b;

		if (a ? inode_move_name(t, a, newparent, newname) :
			inode_move_name(t, b, parent, name))
			inode_drop(t, n);
	}
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_unlink(struct fs_inode_table *t, uint64_t parent,
		     const char *name)
{
	struct fs_name *n;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_UNLINK, &(struct inode_log_args){ .a = parent }, name, NULL);
	n = inode_find_name(t, parent, name);
	if (n)
		inode_drop(t, n);
	pthread_rwlock_unlock(&t->lock);
}

void fs_inode_drop_name(struct fs_inode_table *t, uint64_t ino)
{
	struct fs_inode *in;

	pthread_rwlock_wrlock(&t->lock);
	inode_log(t, IL_DROP_NAME, &(struct inode_log_args){ .a = ino }, NULL, NULL);
	in = inode_get(t, ino);
	if (in) {
		inode_detach(t, in);
		inode_maybe_free(t, in);
	}
	pthread_rwlock_unlock(&t->lock);
}

