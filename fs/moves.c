/*
 * fs/moves.c - renames in flight (fs/fs_int.h).
 *
 * A rename is sent to the engine before the inode table learns of it
 * (only a rename that succeeded may change our paths).  If the engine dies
 * in between, it may have done the rename or not, and the recovery that
 * runs meanwhile reopens files and replays journals by the paths the table
 * still has.  A file that the rename moved is then not found at its old
 * path.  So every rename registers itself here for as long as it runs,
 * and a reopen or replay that finds nothing at a path tries the path the
 * rename gives it.  The rename's own retry finds its result (the source
 * gone, the target there) and counts as done.
 *
 * Locking: lock protects the list (a leaf).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs_int.h"

struct fs_move {
	char *from, *to;
	struct fs_move *next;   /* protected by fs->moves_lock */
};

struct fs_move *fs_move_begin(struct fs *fs, const char *from, const char *to)
{
	struct fs_move *mv = calloc(1, sizeof(*mv));

	if (!mv || !(mv->from = strdup(from)) || !(mv->to = strdup(to))) {
		if (mv)
			free(mv->from);
		free(mv);
		return NULL;    /* no memory: the race just stays possible */
	}
	pthread_mutex_lock(&fs->moves_lock);
	mv->next = fs->moves;
	fs->moves = mv;
	pthread_mutex_unlock(&fs->moves_lock);
	return mv;
}

void fs_move_end(struct fs *fs, struct fs_move *mv)
{
	struct fs_move **pp;

	if (!mv)
		return;
	pthread_mutex_lock(&fs->moves_lock);
	for (pp = &fs->moves; *pp && *pp != mv; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = mv->next;
	pthread_mutex_unlock(&fs->moves_lock);
	free(mv->from);
	free(mv->to);
	free(mv);
}

int fs_move_translate(struct fs *fs, const char *rel, char *out, size_t len)
{
	int ret = -ENOENT;

	pthread_mutex_lock(&fs->moves_lock);
	for (struct fs_move *mv = fs->moves; mv; mv = mv->next) {
		size_t n = strlen(mv->from);

		if (!strncmp(rel, mv->from, n) && (rel[n] == 0 || rel[n] == '/')) {
			ret = snprintf(out, len, "%s%s", mv->to, rel + n) >= (int)len ?
			      -ENAMETOOLONG : 0;
			break;
		}
	}
	pthread_mutex_unlock(&fs->moves_lock);
	return ret;
}
