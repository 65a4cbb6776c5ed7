/*
 * stats.c - NodeGetVolumeStats: usage from statfs() and the volume condition
 * from the lazarusfs proxy behind the volume (its control socket).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>

#include "csi.pb-c.h"
#include "src/csi-shim/csi_int.h"

/* Fills the volume condition from the lazarusfs proxy behind mount t. */
static void condition(struct csi *csi, const struct csi_mounts *ms, const struct csi_mount *t,
		      Csi__V1__VolumeCondition *vc, char *msg, size_t len)
{
	char state[64], last_error[256];
	size_t i;
	int err;

	for (i = 0; i < ms->n; i++) {
		const struct csi_mount *p = &ms->v[i];

		if (p->major != t->major || p->minor != t->minor ||
		    strcmp(p->fstype, "fuse.lazarusfs") || csi_path_below(p->point, csi->mount_root))
			continue;
		err = csi_ctl_status(csi->cfg.state_dir, p->point, state, sizeof(state), last_error,
				     sizeof(last_error));
		if (err == -ENOENT)
			return;	/* no control socket: not our proxy */
		if (err) {
			vc->abnormal = true;
			snprintf(msg, len, "lazarusfs proxy at %s is not running (control socket: %s)",
				 p->point, strerror(-err));
		} else if (!strcmp(state, "failed") || !strcmp(state, "recovering")) {
			vc->abnormal = true;
			snprintf(msg, len, "engine %s%s%s", state, last_error[0] ? ": " : "",
				 last_error);
		}
		return;
	}
}

/* Is the mount t at path (canonical) a publish of volume_id? Its publish
 * record says; a bind from before the plugin kept records must at least
 * show the device of the volume's own mount. */
static bool published_here(struct csi *csi, const char *volume_id, const char *path,
			   const struct csi_mounts *ms, const struct csi_mount *t)
{
	char owner[CSI_MAX_ID + 1];
	const struct csi_mount *v;
	struct csi_vol vs;

	if (!csi_pub_load(csi, path, owner))
		return !strcmp(owner, volume_id);
	if (csi_vol_load(csi, volume_id, &vs))
		return false;
	v = csi_mounts_find(ms, vs.fluid_path);
	return v && v->major == t->major && v->minor == t->minor;
}

bool csi_node_stats(struct csi *csi, const struct csi_req *r, uint8_t **resp, size_t *len,
		    struct csi_status *st)
{
	Csi__V1__NodeGetVolumeStatsResponse out = CSI__V1__NODE_GET_VOLUME_STATS_RESPONSE__INIT;
	Csi__V1__VolumeUsage bytes = CSI__V1__VOLUME_USAGE__INIT, inodes = CSI__V1__VOLUME_USAGE__INIT;
	Csi__V1__VolumeUsage *usage[2] = { &bytes, &inodes };
	Csi__V1__VolumeCondition vc = CSI__V1__VOLUME_CONDITION__INIT;
	struct csi_mounts ms;
	const struct csi_mount *t;
	char path[PATH_MAX], msg[512] = "";
	struct statfs sf;
	int err;

	err = csi_path_canonical(r->target, csi->kubelet_root, path);
	if (err)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_path %s: %s", r->target,
				strerror(-err));
	err = csi_mounts_read(&ms);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot read mountinfo: %s", strerror(-err));
	t = csi_mounts_find(&ms, path);
	if (!t) {
		csi_mounts_free(&ms);
		return csi_fail(st, CSI_NOT_FOUND, "volume_path %s is not a mounted volume", path);
	}
	if (!published_here(csi, r->volume_id, path, &ms, t)) {
		csi_mounts_free(&ms);
		return csi_fail(st, CSI_NOT_FOUND, "volume %s is not published at %s", r->volume_id,
				path);
	}
	condition(csi, &ms, t, &vc, msg, sizeof(msg));
	csi_mounts_free(&ms);
	if (statfs(path, &sf) == 0) {
		bytes.unit = CSI__V1__VOLUME_USAGE__UNIT__BYTES;
		bytes.total = (int64_t)(sf.f_blocks * sf.f_frsize);
		bytes.available = (int64_t)(sf.f_bavail * sf.f_frsize);
		bytes.used = (int64_t)((sf.f_blocks - sf.f_bfree) * sf.f_frsize);
		inodes.unit = CSI__V1__VOLUME_USAGE__UNIT__INODES;
		inodes.total = (int64_t)sf.f_files;
		inodes.available = (int64_t)sf.f_ffree;
		inodes.used = (int64_t)(sf.f_files - sf.f_ffree);
		out.n_usage = 2;
		out.usage = usage;
	} else if (!vc.abnormal) {
		vc.abnormal = true;
		snprintf(msg, sizeof(msg), "statfs %.400s: %s", path, strerror(errno));
	}
	vc.message = msg;
	out.volume_condition = &vc;
	return csi_pack(&out.base, resp, len, st);
}
