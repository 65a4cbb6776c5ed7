/*
 * fs/mountinfo.c - the one parser of /proc/self/mountinfo (fs/fs.h).
 *
 * A line is
 *   ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
 * with spaces, tabs, newlines and backslashes in ROOT, MOUNTPOINT and
 * SOURCE written as octal escapes (\040 for a space).  Stacked mounts on
 * one directory appear in mount order, the top one last.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs.h"

/* Undo the octal escapes in place. */
static void unescape(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = 0;
}

/* Next space-separated field of *s, NUL terminated in place, or NULL. */
static char *field(char **s)
{
	char *f = *s + strspn(*s, " \n");

	if (!*f)
		return NULL;
	*s = f + strcspn(f, " \n");
	if (**s)
		*(*s)++ = 0;
	return f;
}

int fs_mountinfo_parse(char *line, struct fs_mountinfo *mi)
{
	char *s = line, *devs, *f;

	memset(mi, 0, sizeof(*mi));
	if (!field(&s) || !field(&s) || !(devs = field(&s)) ||
	    sscanf(devs, "%u:%u", &mi->major, &mi->minor) != 2 ||
	    !(mi->root = field(&s)) || !(mi->mnt = field(&s)) || !field(&s))
		return -EINVAL;
	/* optional fields up to the separator */
	while ((f = field(&s)) && strcmp(f, "-"))
		;
	if (!f || !(mi->fstype = field(&s)))
		return -EINVAL;
	mi->source = field(&s);
	if (!mi->source)
		mi->source = "";
	unescape(mi->root);
	unescape(mi->mnt);
	unescape(mi->source);
	return 0;
}

int fs_mountinfo_each(const char *path,
		      int (*fn)(const struct fs_mountinfo *mi, void *arg),
		      void *arg)
{
	FILE *f = fopen(path ? path : "/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int ret = 0;

	if (!f)
		return -errno;
	while (!ret && getline(&line, &cap, f) > 0) {
		struct fs_mountinfo mi;

		if (!fs_mountinfo_parse(line, &mi))
			ret = fn(&mi, arg);
	}
	free(line);
	fclose(f);
	return ret;
}

struct find {
	const char *mnt;
	const char *fstype;
	struct fs_mountinfo_dev *out;
	bool found;
};

static int find_cb(const struct fs_mountinfo *mi, void *arg)
{
	struct find *q = arg;

	if (strcmp(mi->mnt, q->mnt) || (q->fstype && strcmp(mi->fstype, q->fstype)))
		return 0;
	q->found = true;
	if (q->out) {
		q->out->major = mi->major;
		q->out->minor = mi->minor;
	}
	return 0;       /* go on: the last (top) mount wins */
}

int fs_mountinfo_find(const char *mnt, const char *fstype,
		      struct fs_mountinfo_dev *dev)
{
	struct find q = { .mnt = mnt, .fstype = fstype, .out = dev };
	int ret = fs_mountinfo_each(NULL, find_cb, &q);

	return ret < 0 ? ret : q.found;
}
