/*
 * state.c - the plugin's records under <state_dir>/csi. They live on disk so
 * that they survive a restart of the plugin (its pod is updated or evicted
 * while pods on the node keep their mounts).
 *
 * Two kinds, each a file of key=value lines written atomically (temporary
 * file, fsync, rename), named after the XXH3 of its key; the key is inside
 * too and checked on load:
 *   <xxh3(volume_id)>.vol    a staged volume (struct csi_vol)
 *   <xxh3(target)>.pub       which volume id a target path was published for
 * Values hold no newline: request strings with control characters are
 * refused in req.c.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "src/csi-shim/csi_int.h"

#define RECORD_MAX (2 * PATH_MAX + 512)	/* the largest record we write */

static void record_path(struct csi *csi, const char *key, const char *ext, char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/csi/%016llx.%s", csi->cfg.state_dir,
		 (unsigned long long)XXH3_64bits(key, strlen(key)), ext);
}

static int record_write(struct csi *csi, const char *path, const char *text)
{
	char dir[PATH_MAX], tmp[PATH_MAX + 8];
	FILE *f;
	int err;

	snprintf(dir, sizeof(dir), "%s/csi", csi->cfg.state_dir);
	err = csi_mkdir_p(dir, 0700);
	if (err)
		return err;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	fputs(text, f);
	if (fflush(f) || fsync(fileno(f)))
		err = -errno;
	if (fclose(f) && !err)
		err = -errno;
	if (!err && rename(tmp, path) < 0)
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}

/* Reads the whole record into buf. 0, -ENOENT, -EINVAL if it is too long. */
static int record_read(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len);
	if (n < 0)
		err = -errno;
	else if ((size_t)n == len)
		err = -EINVAL;
	else
		buf[n] = '\0';
	close(fd);
	return err;
}

/* The value of the "key=" line of a record. 0, -ENOENT, -EINVAL if it does
 * not fit into len bytes. */
static int record_get(const char *text, const char *key, char *out, size_t len)
{
	size_t kl = strlen(key);
	const char *p, *end;

	for (p = text; *p; p = *end ? end + 1 : end) {
		end = strchrnul(p, '\n');
		if (strncmp(p, key, kl) || p[kl] != '=')
			continue;
		p += kl + 1;
		if ((size_t)(end - p) >= len)
			return -EINVAL;
		memcpy(out, p, end - p);
		out[end - p] = '\0';
		return 0;
	}
	return -ENOENT;
}

/* ---- staged volumes ---------------------------------------------------------- */

void csi_vol_path(struct csi *csi, const char *volume_id, char out[PATH_MAX])
{
	record_path(csi, volume_id, "vol", out);
}

/* Parses a .vol record. volume_id: the one it must be for, or NULL. */
static int vol_parse(const char *text, const char *volume_id, struct csi_vol *vs)
{
	char flag[4];

	memset(vs, 0, sizeof(*vs));
	if (record_get(text, "volume_id", vs->volume_id, sizeof(vs->volume_id)) ||
	    record_get(text, "fluid_path", vs->fluid_path, sizeof(vs->fluid_path)) ||
	    !vs->fluid_path[0] || record_get(text, "label", vs->label, sizeof(vs->label)) == -EINVAL)
		return -EINVAL;
	if (volume_id && strcmp(vs->volume_id, volume_id))
		return -ENOENT;	/* another id with the same hash */
	vs->started = !record_get(text, "started", flag, sizeof(flag)) && !strcmp(flag, "1");
	vs->unstaged = !record_get(text, "unstaged", flag, sizeof(flag)) && !strcmp(flag, "1");
	return 0;
}

int csi_vol_load(struct csi *csi, const char *volume_id, struct csi_vol *vs)
{
	char path[PATH_MAX], text[RECORD_MAX];
	int err;

	csi_vol_path(csi, volume_id, path);
	err = record_read(path, text, sizeof(text));
	return err ? err : vol_parse(text, volume_id, vs);
}

int csi_vol_save(struct csi *csi, const char *volume_id, const struct csi_vol *vs)
{
	char path[PATH_MAX], text[RECORD_MAX];

	if (snprintf(text, sizeof(text), "volume_id=%s\nfluid_path=%s\nlabel=%s\nstarted=%d\nunstaged=%d\n",
		     volume_id, vs->fluid_path, vs->label, vs->started, vs->unstaged) >=
	    (int)sizeof(text))
		return -ENAMETOOLONG;
	csi_vol_path(csi, volume_id, path);
	return record_write(csi, path, text);
}

int csi_vol_remove(struct csi *csi, const char *volume_id)
{
	char path[PATH_MAX];

	csi_vol_path(csi, volume_id, path);
	return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

int csi_vol_list(struct csi *csi, const char *fluid_path, struct csi_vol **out, size_t *n)
{
	char dir[PATH_MAX], path[PATH_MAX + 256], expect[PATH_MAX], text[RECORD_MAX];
	struct csi_vol vs, *v = NULL, *grown;
	size_t alloc = 0;
	struct dirent *de;
	DIR *d;
	int err = 0;

	*out = NULL;
	*n = 0;
	snprintf(dir, sizeof(dir), "%s/csi", csi->cfg.state_dir);
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while (!err && (errno = 0, de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (len < 4 || strcmp(de->d_name + len - 4, ".vol"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		/* A damaged record names no fluid_path, and one under another
		 * id's name is not where csi_vol_remove() looks: neither counts. */
		if (record_read(path, text, sizeof(text)) || vol_parse(text, NULL, &vs) ||
		    strcmp(vs.fluid_path, fluid_path))
			continue;
		csi_vol_path(csi, vs.volume_id, expect);
		if (strcmp(expect, path))
			continue;
		if (*n == alloc) {
			grown = realloc(v, (alloc = alloc ? 2 * alloc : 4) * sizeof(*v));
			if (!grown) {
				err = -ENOMEM;
				break;
			}
			v = grown;
		}
		v[(*n)++] = vs;
	}
	if (!err && errno)
		err = -errno;
	closedir(d);
	if (err) {
		free(v);
		*n = 0;
		return err;
	}
	*out = v;
	return 0;
}

/* ---- published targets --------------------------------------------------------- */

int csi_pub_save(struct csi *csi, const char *target, const char *volume_id)
{
	char path[PATH_MAX], text[RECORD_MAX];

	if (snprintf(text, sizeof(text), "target=%s\nvolume_id=%s\n", target, volume_id) >=
	    (int)sizeof(text))
		return -ENAMETOOLONG;
	record_path(csi, target, "pub", path);
	return record_write(csi, path, text);
}

int csi_pub_load(struct csi *csi, const char *target, char volume_id[CSI_MAX_ID + 1])
{
	char path[PATH_MAX], text[RECORD_MAX], t[PATH_MAX];
	int err;

	record_path(csi, target, "pub", path);
	err = record_read(path, text, sizeof(text));
	if (!err)
		err = record_get(text, "target", t, sizeof(t));
	if (!err)
		err = strcmp(t, target) ? -ENOENT : record_get(text, "volume_id", volume_id,
							       CSI_MAX_ID + 1);
	return err;
}

int csi_pub_remove(struct csi *csi, const char *target)
{
	char path[PATH_MAX];

	record_path(csi, target, "pub", path);
	return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}
