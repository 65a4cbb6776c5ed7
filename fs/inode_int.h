/*
 * fs/inode_int.h - private to the inode table (fs/inode.c: the table,
 * lookups, counts and paths; fs/inode_names.c: changes of names).  The
 * design is at the top of fs/inode.c.  Every function here expects
 * t->lock held for writing (for reading where it only looks).
 */
#ifndef LAZARUSFS_INODE_INT_H
#define LAZARUSFS_INODE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fs/fs.h"

struct fs_inode;

struct fs_name {
	uint64_t parent;
	char *name;
	struct fs_inode *in;
	struct fs_name *next_hash;      /* by_name chain */
	struct fs_name *next;           /* the inode's other names */
};

struct fs_inode {
	uint64_t ino;
	struct fs_name *names;  /* NULL when unlinked; the first is the path */
	mode_t type;            /* S_IFMT bits */
	uint64_t nlookup;
	int64_t nopen;
	uint64_t nchild;
	bool silly;
	struct stat *attr;      /* last attributes seen (fs_inode_attr_set), or NULL */
	/* backend identity of a file with links, valid in generation bgen */
	dev_t bdev;
	ino_t bino;
	uint64_t bgen;          /* 0: not in by_bid */
	struct fs_inode *next_id;
	struct fs_inode *next_bid;
};

struct fs_inode_table {
	pthread_rwlock_t lock;
	struct fs_inode **by_id;        /* protected by lock */
	struct fs_name **by_name;       /* protected by lock */
	struct fs_inode **by_bid;       /* protected by lock */
	size_t nbuckets;                /* protected by lock, power of two */
	size_t count;                   /* protected by lock */
	uint64_t next_ino;              /* protected by lock */
};

struct fs_inode *inode_get(const struct fs_inode_table *t, uint64_t ino);
struct fs_name *inode_find_name(const struct fs_inode_table *t, uint64_t parent,
				const char *name);
/* Give `in` the name (parent, name), after its others; the caller checked
 * that the name is free.  0 or -ENOMEM. */
int inode_add_name(struct fs_inode_table *t, struct fs_inode *in,
		   uint64_t parent, const char *name);
/* Take name `n` away from its inode (which stays alive if counted). */
void inode_remove_name(struct fs_inode_table *t, struct fs_name *n);
/* Remove every name of `in`. */
void inode_detach(struct fs_inode_table *t, struct fs_inode *in);
/* Move name `n` to (parent, name), checked free.  0 or -ENOMEM. */
int inode_move_name(struct fs_inode_table *t, struct fs_name *n,
		    uint64_t parent, const char *name);
/* Free `in` when no count holds it any more. */
void inode_maybe_free(struct fs_inode_table *t, struct fs_inode *in);
/* Record the backend identity of `in` (a file with links, seen in gen). */
void inode_set_identity(struct fs_inode_table *t, struct fs_inode *in,
			const struct stat *st, uint64_t gen);
/* Forget the name `n`, and its inode if nothing counts it. */
void inode_drop(struct fs_inode_table *t, struct fs_name *n);
/* Log and abort: a count below zero is a bug. */
void inode_count_below_zero(const char *count, uint64_t ino)
	__attribute__((noreturn));

#endif
