/* dataset.c - per-dataset configuration, engine profiles and node label keys. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/csi-shim/csi.h"

#define LABEL_PREFIX "fluid.io/f-"
#define LABEL_MAX 63	/* Fluid's limit (DNS-1035 label length) on the whole key */

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

int csi_dataset_load(const char *path, struct csi_dataset *ds, struct csi_status *st)
{
	struct {
		const char *key;
		char **val;
	} keys[] = {
		{ "source", &ds->source }, { "engine", &ds->engine },
		{ "options", &ds->options }, { "dataset_uid", &ds->dataset_uid },
	};
	FILE *f;
	char *line = NULL, *k, *v;
	size_t cap = 0, i;
	int lineno = 0, err = 0;

	memset(ds, 0, sizeof(*ds));
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (!err && getline(&line, &cap, f) > 0) {
		lineno++;
		k = trim(line);
		if (!*k || *k == '#')
			continue;
		v = strchr(k, '=');
		if (!v) {
			csi_fail(st, CSI_FAILED_PRECONDITION, "config %s:%d: expected key=value",
				 path, lineno);
			err = -EINVAL;
			break;
		}
		*v++ = '\0';
		k = trim(k);
		v = trim(v);
		for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (!strcmp(k, keys[i].key))
				break;
		if (i == sizeof(keys) / sizeof(keys[0])) {
			csi_fail(st, CSI_FAILED_PRECONDITION, "config %s:%d: unknown key '%.64s'",
				 path, lineno, k);
			err = -EINVAL;
		} else {
			free(*keys[i].val);
			*keys[i].val = strdup(v);
			if (!*keys[i].val)
				err = -ENOMEM;
		}
	}
	free(line);
	fclose(f);
	if (!err && (!ds->source || !*ds->source)) {
		csi_fail(st, CSI_FAILED_PRECONDITION, "config %s: source= is required", path);
		err = -EINVAL;
	}
	if (err)
		csi_dataset_free(ds);
	return err;
}

void csi_dataset_free(struct csi_dataset *ds)
{
	free(ds->source);
	free(ds->engine);
	free(ds->options);
	free(ds->dataset_uid);
	memset(ds, 0, sizeof(*ds));
}

const char *csi_engine_for(const char *mount_type)
{
	if (!strcmp(mount_type, "JuiceFS"))
		return "juicefs";
	if (!strcmp(mount_type, "fuse.alluxio-fuse"))
		return "alluxio";
	return NULL;
}

int csi_label_key(const char *ns, const char *name, const char *uid, char **key)
{
	int n;

	n = asprintf(key, LABEL_PREFIX "%s-%s", ns, name);
	if (n < 0)
		return -ENOMEM;
	if (n < LABEL_MAX)
		return 0;
	free(*key);
	*key = NULL;
	if (!uid || !*uid)
		return -ENAMETOOLONG;
	if (!csi_dns_label(uid))
		return -EINVAL;
	return asprintf(key, LABEL_PREFIX "%s", uid) < 0 ? -ENOMEM : 0;
}
