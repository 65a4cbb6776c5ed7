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
	/* takeover (fs/inode_log.c): every change is appended here before
	 * the caller answers the kernel; NULL when off or while replaying */
	struct fs_statelog *log;        /* protected by lock */
	size_t log_snap_at;             /* protected by lock: snapshot when
					 * the log grows past this */
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
/* The id hash's slot of `ino`; grow the hashes when full (0 or -ENOMEM). */
size_t inode_id_slot(const struct fs_inode_table *t, uint64_t ino);
int inode_grow(struct fs_inode_table *t);
void inode_bid_hash(struct fs_inode_table *t, struct fs_inode *in);

/*
 * Takeover log records (fs/inode_log.c): every public function that
 * changes the table calls inode_log() right after taking t->lock for
 * writing, with its own arguments; a successor replays them by calling
 * the same functions in the same order, which gives the same table (node
 * ids included: they come from next_ino).
 */
enum inode_log_type {
	IL_LOOKUP = 1, IL_LOOKUP_ST, IL_LINK, IL_FORGET, IL_OPEN, IL_CLOSE,
	IL_RENAME, IL_EXCHANGE, IL_UNLINK, IL_MAKE_SILLY, IL_DROP_NAME,
	IL_SET_SILLY,
	IL_S_INODE = 32, IL_S_NAME, IL_S_BID, IL_S_NEXT,        /* snapshot */
};
struct inode_log_args {
	uint64_t a, b, n, gen;          /* ids, counts, generation */
	uint32_t mode, nlink;
	uint64_t dev, ino;              /* of the stat seen (lookup_st, link) */
};
void inode_log(struct fs_inode_table *t, enum inode_log_type type,
	       const struct inode_log_args *args, const char *s1, const char *s2);

/* Log and abort: a count below zero is a bug. */
void inode_count_below_zero(const char *count, uint64_t ino)
	__attribute__((noreturn));

#endif
