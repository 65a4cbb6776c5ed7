/* mounts.c - read /proc/self/mountinfo (see proc(5)) and take mounts down. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "src/csi-shim/csi_int.h"

#define MAX_STACKED 64	/* unmounts tried on one path (stacked binds) */

static const struct {
	const char *name;
	unsigned long flag;
} mnt_flags[] = {
	{ "ro", MS_RDONLY }, { "nosuid", MS_NOSUID }, { "nodev", MS_NODEV },
	{ "noexec", MS_NOEXEC }, { "noatime", MS_NOATIME }, { "nodiratime", MS_NODIRATIME },
	{ "relatime", MS_RELATIME },
};

/* Undoes the kernel's octal escapes (\040 for space, \011, \012, \134). */
static char *unescape(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;
	size_t i;

	if (!out)
		return NULL;
	for (i = 0; i < n; i++) {
		if (s[i] == '\\' && i + 3 < n && s[i + 1] >= '0' && s[i + 1] <= '3' &&
		    s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
			*o++ = (char)((s[i + 1] - '0') << 6 | (s[i + 2] - '0') << 3 | (s[i + 3] - '0'));
			i += 3;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

static void mount_clear(struct csi_mount *m)
{
	free(m->root);
	free(m->point);
	free(m->fstype);
	free(m->source);
	memset(m, 0, sizeof(*m));
}

/* Splits off the next space-separated field of *s into (*f, *n). */
static bool field(const char **s, const char **f, size_t *n)
{
	const char *p = *s;

	while (*p == ' ')
		p++;
	if (!*p || *p == '\n')
		return false;
	*f = p;
	while (*p && *p != ' ' && *p != '\n')
		p++;
	*n = p - *f;
	*s = p;
	return true;
}

int csi_mount_parse(const char *line, struct csi_mount *m)
{
	const char *f[6], *p = line, *opt, *fs, *src;
	size_t n[6], on, fsn, srcn, len;
	int k;

	memset(m, 0, sizeof(*m));
	/* id parent major:minor root point options */
	for (k = 0; k < 6; k++)
		if (!field(&p, &f[k], &n[k]))
			return -EINVAL;
	if (sscanf(f[2], "%u:%u", &m->major, &m->minor) != 2)
		return -EINVAL;
	for (opt = f[5], on = n[5]; on > 0; opt += len, on -= len) {
		len = strcspn(opt, ",");
		if (len > on)
			len = on;
		for (k = 0; k < (int)(sizeof(mnt_flags) / sizeof(mnt_flags[0])); k++)
			if (len == strlen(mnt_flags[k].name) && !strncmp(opt, mnt_flags[k].name, len))
				m->flags |= mnt_flags[k].flag;
		if (len < on)
			len++;	/* the comma */
	}
	/* optional fields up to the "-" separator, then fstype and source */
	do {
		if (!field(&p, &fs, &fsn))
			return -EINVAL;
	} while (!(fsn == 1 && fs[0] == '-'));
	if (!field(&p, &fs, &fsn) || !field(&p, &src, &srcn))
		return -EINVAL;
	m->root = unescape(f[3], n[3]);
	m->point = unescape(f[4], n[4]);
	m->fstype = unescape(fs, fsn);
	m->source = unescape(src, srcn);
	if (!m->root || !m->point || !m->fstype || !m->source) {
		mount_clear(m);
		return -ENOMEM;
	}
	return 0;
}

int csi_mounts_read(struct csi_mounts *ms)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0, alloc = 0;
	int err = 0;

	ms->v = NULL;
	ms->n = 0;
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		if (ms->n == alloc) {
			struct csi_mount *v = realloc(ms->v, (alloc = alloc ? alloc * 2 : 64) * sizeof(*v));

			if (!v) {
				err = -ENOMEM;
				break;
			}
			ms->v = v;
		}
		err = csi_mount_parse(line, &ms->v[ms->n]);
		if (err)
			break;
		ms->n++;
	}
	free(line);
	fclose(f);
	if (err)
		csi_mounts_free(ms);
	return err;
}

void csi_mounts_free(struct csi_mounts *ms)
{
	size_t i;

	for (i = 0; i < ms->n; i++)
		mount_clear(&ms->v[i]);
	free(ms->v);
	ms->v = NULL;
	ms->n = 0;
}

const struct csi_mount *csi_mounts_find(const struct csi_mounts *ms, const char *point)
{
	size_t i = ms->n;

	/* mountinfo lists mounts in mount order, so the last match is on top. */
	while (i-- > 0)
		if (!strcmp(ms->v[i].point, point))
			return &ms->v[i];
	return NULL;
}

bool csi_mount_is_fuse(const struct csi_mount *m)
{
	return !strcmp(m->fstype, "fuse") || !strcmp(m->fstype, "fuseblk") ||
	       !strncmp(m->fstype, "fuse.", 5);
}

int csi_unmount_all(const char *point, struct csi_status *st)
{
	struct csi_mounts ms;
	bool mounted;
	int i, err;

	for (i = 0; i < MAX_STACKED; i++) {
		err = csi_mounts_read(&ms);
		if (err) {
			csi_fail(st, CSI_INTERNAL, "cannot read mountinfo: %s", strerror(-err));
			return err;
		}
		mounted = csi_mounts_find(&ms, point) != NULL;
		csi_mounts_free(&ms);
		if (!mounted)
			return 0;
		if (umount2(point, UMOUNT_NOFOLLOW) == 0 || errno == EINVAL)
			continue;
		csi_log("umount %s failed: %s, detaching it", point, strerror(errno));
		if (umount2(point, UMOUNT_NOFOLLOW | MNT_DETACH) < 0 && errno != EINVAL) {
			err = -errno;
			csi_fail(st, CSI_INTERNAL, "cannot unmount %s: %s", point, strerror(errno));
			return err;
		}
	}
	csi_fail(st, CSI_INTERNAL, "%s is still mounted after %d unmounts", point, MAX_STACKED);
	return -EBUSY;
}

bool csi_is_stale(const char *path)
{
	struct stat sb;

	return stat(path, &sb) < 0 && (errno == ENOTCONN || errno == ECONNABORTED);
}
