/*
 * paths.c - path checks and canonical forms. Requests carry paths that must
 * stay inside their roots: cleaned lexically first (no "..", no "//"), then
 * checked through the symlinks of their existing ancestors. Paths compared
 * with mountinfo are made canonical without touching their last component,
 * which may be a dead FUSE mount that hangs or fails on stat().
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "src/csi-shim/csi_int.h"

/* Appends the components of in to out (which holds len bytes), skipping empty
 * and "." ones. Returns the new length or -errno. */
static int path_append(char *out, size_t len, const char *in)
{
	while (*in) {
		const char *end = strchrnul(in, '/');
		size_t n = end - in;

		if (n == 2 && in[0] == '.' && in[1] == '.')
			return -EPERM;
		if (n && !(n == 1 && in[0] == '.')) {
			if (len + 1 + n >= PATH_MAX)
				return -ENAMETOOLONG;
			out[len++] = '/';
			memcpy(out + len, in, n);
			len += n;
			out[len] = '\0';
		}
		in = *end ? end + 1 : end;
	}
	return len;
}

int csi_path_clean(const char *path, char **out)
{
	char buf[PATH_MAX] = "";
	int len;

	if (!path || path[0] != '/')
		return -EINVAL;
	len = path_append(buf, 0, path);
	if (len < 0)
		return len;
	*out = strdup(len ? buf : "/");
	return *out ? 0 : -ENOMEM;
}

int csi_subpath_clean(const char *sub, char **out)
{
	char buf[PATH_MAX] = "";
	int len = path_append(buf, 0, sub);

	if (len < 0)
		return len;
	/* Stored without the leading '/', so "" is the volume root. */
	*out = strdup(len ? buf + 1 : "");
	return *out ? 0 : -ENOMEM;
}

/* Is path equal to base (if !strict) or below it? Both clean and absolute. */
static bool below(const char *path, const char *base, bool strict)
{
	size_t n = strlen(base);

	if (!strcmp(path, base))
		return !strict;
	if (n == 1)	/* base is "/" */
		return true;
	return !strncmp(path, base, n) && path[n] == '/';
}

int csi_path_below(const char *resolved, const char *base)
{
	return below(resolved, base, false) ? 0 : -EXDEV;
}

int csi_path_inside(const char *path, const char *root, const char *root_real)
{
	char real[PATH_MAX];

	if (!below(path, root, true))
		return -EXDEV;
	return csi_path_canonical(path, root_real, real);
}

int csi_path_canonical(const char *path, const char *root, char out[PATH_MAX])
{
	char dir[PATH_MAX], real[PATH_MAX];
	size_t keep = strrchr(path, '/') - path;	/* the parent */

	for (;;) {
		snprintf(dir, sizeof(dir), "%.*s", (int)(keep ? keep : 1), path);
		if (realpath(dir, real))
			break;
		if (errno != ENOENT || !keep)
			return -errno;
		keep = (const char *)memrchr(path, '/', keep) - path;
	}
	if (csi_path_below(real, root))
		return -EXDEV;
	if (snprintf(out, PATH_MAX, "%s%s", strcmp(real, "/") ? real : "", path + keep) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

int csi_mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	char *p;

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (p = buf + 1;; p++) {
		if (*p != '/' && *p)
			continue;
		char c = *p;

		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		if (!c)
			return 0;
		*p = c;
	}
}
