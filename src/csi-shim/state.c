/*
 * state.c - the plugin's records under <state_dir>/csi. They live on disk so
 * that they survive a restart of the plugin (its pod is updated or evicted
 * while pods on the node keep their mounts).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "src/csi-shim/csi_int.h"

void csi_vol_path(struct csi *csi, const char *volume_id, char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/csi/%016llx.vol", csi->cfg.state_dir,
		 (unsigned long long)XXH3_64bits(volume_id, strlen(volume_id)));
}

int csi_vol_load(struct csi *csi, const char *volume_id, struct csi_vol *vs)
{
	char path[PATH_MAX], line[PATH_MAX + 32];
	bool n = false;	/* a value did not fit */
	int err = 0;
	FILE *f;

	memset(vs, 0, sizeof(*vs));
	csi_vol_path(csi, volume_id, path);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (!err && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (!strncmp(line, "fluid_path=", 11))
			n = snprintf(vs->fluid_path, sizeof(vs->fluid_path), "%s", line + 11) >=
			    (int)sizeof(vs->fluid_path);
		else if (!strncmp(line, "label=", 6))
			n = snprintf(vs->label, sizeof(vs->label), "%s", line + 6) >=
			    (int)sizeof(vs->label);
		else if (!strcmp(line, "started=1"))
			vs->started = true;
		err = n ? -EINVAL : 0;
	}
	fclose(f);
	return !err && vs->fluid_path[0] ? 0 : -EINVAL;
}

int csi_vol_save(struct csi *csi, const char *volume_id, const struct csi_vol *vs)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	FILE *f;
	int err = 0;

	snprintf(path, sizeof(path), "%s/csi", csi->cfg.state_dir);
	err = csi_mkdir_p(path, 0700);
	if (err)
		return err;
	csi_vol_path(csi, volume_id, path);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	fprintf(f, "volume_id=%s\nfluid_path=%s\nlabel=%s\nstarted=%d\n", volume_id,
		vs->fluid_path, vs->label, vs->started);
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
