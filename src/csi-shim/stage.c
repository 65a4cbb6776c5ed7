/*
 * stage.c - NodeStageVolume and NodeUnstageVolume. Staging labels the node
 * (Fluid's FUSE DaemonSet selects on the label) and makes sure the volume's
 * FUSE mount exists; it records what unstaging will need in
 * <state_dir>/csi. Unstaging removes the label and, with the OnDemand clean
 * policy, the proxy this plugin started, once nothing uses the volume.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "src/csi-shim/csi_int.h"

static bool set_label(struct csi *csi, const char *key, bool set, struct csi_status *st)
{
	int err = csi_kube_label(&csi->cfg, key, set, st);

	if (err == -ENOTCONN) {
		csi_log("node label %s skipped: not in a cluster (no KUBERNETES_SERVICE_HOST)", key);
		return true;
	}
	if (!err)
		csi_log("node label %s %s", key, set ? "set" : "removed");
	return !err;
}

bool csi_node_stage(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct csi_dataset ds;
	struct csi_vol vs, old;
	char config[PATH_MAX];
	char *key = NULL;
	bool have, ok = false;
	int err;

	if (!csi_load_dataset(csi, r, &ds, config, &have, st))
		return false;
	memset(&vs, 0, sizeof(vs));
	/* Label first: Fluid's FUSE DaemonSet selects on it, so a volume whose
	 * FUSE pod is Fluid's gets it started even if we fail below. */
	err = csi_label_key(r->ns, r->name, ds.dataset_uid, &key);
	if (err == -ENAMETOOLONG || err == -EINVAL)
		csi_log("node label skipped: fluid.io/f-%s-%s is 63 characters or longer and %s has %s",
			r->ns, r->name, config, err == -EINVAL ? "an invalid dataset_uid" : "no dataset_uid");
	else if (err)
		goto out;
	else if (!set_label(csi, key, true, st))
		goto out;
	else
		snprintf(vs.label, sizeof(vs.label), "%s", key);
	if (!csi_ensure_mounted(csi, r, have ? &ds : NULL, config, vs.fluid_path, &vs.started, st))
		goto out;
	/* A repeated stage must not forget that an earlier one started the proxy. */
	if (!vs.started && csi_vol_load(csi, r->volume_id, &old) == 0 &&
	    !strcmp(old.fluid_path, vs.fluid_path))
		vs.started = old.started;
	err = csi_vol_save(csi, r->volume_id, &vs);
	if (err) {
		csi_fail(st, CSI_INTERNAL, "cannot save volume state in %s: %s", csi->cfg.state_dir,
			 strerror(-err));
		goto out;
	}
	csi_log("volume %s staged at %s", r->volume_id, vs.fluid_path);
	ok = true;
out:
	if (err == -ENOMEM)
		csi_fail(st, CSI_INTERNAL, "out of memory");
	free(key);
	csi_dataset_free(&ds);
	return ok;
}

/* Mounts of the same FUSE connection as the one at point, except point. */
static size_t count_binds(const struct csi_mounts *ms, const struct csi_mount *m)
{
	size_t i, n = 0;

	for (i = 0; i < ms->n; i++)
		if (ms->v[i].major == m->major && ms->v[i].minor == m->minor &&
		    strcmp(ms->v[i].point, m->point))
			n++;
	return n;
}

/* After its mount is gone a lazarusfs proxy still unmounts its engine from
 * <state_dir>/<id>/backend. A proxy started at the same path before that
 * would lose its backend, so a stage right after an unstage waits for it. */
static void wait_backend_gone(struct csi *csi, const char *point)
{
	struct timespec nap = { 0, 50 * 1000 * 1000 };
	time_t deadline = time(NULL) + csi->cfg.mount_timeout;
	char dir[PATH_MAX], backend[PATH_MAX];
	struct csi_mounts ms;
	bool there;

	if (!realpath(csi->cfg.state_dir, dir) ||
	    csi_proxy_dir(dir, point, backend, sizeof(backend) - 8))
		return;
	strcat(backend, "/backend");
	for (;;) {
		if (csi_mounts_read(&ms))
			return;
		there = csi_mounts_find(&ms, backend) != NULL;
		csi_mounts_free(&ms);
		if (!there)
			return;
		if (time(NULL) >= deadline) {
			csi_log("lazarusfs engine still mounted at %s after %d s", backend,
				csi->cfg.mount_timeout);
			return;
		}
		nanosleep(&nap, NULL);
	}
}

bool csi_node_unstage(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct csi_vol vs;
	struct csi_mounts ms;
	const struct csi_mount *m;
	char path[PATH_MAX];
	bool lazarus = false;
	size_t binds = 0;
	int err;

	err = csi_vol_load(csi, r->volume_id, &vs);
	if (err) {
		csi_log("volume %s was not staged by this plugin, nothing to unstage", r->volume_id);
		return true;
	}
	err = csi_mounts_read(&ms);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot read mountinfo: %s", strerror(-err));
	m = csi_mounts_find(&ms, vs.fluid_path);
	if (m) {
		binds = count_binds(&ms, m);
		lazarus = !strcmp(m->fstype, "fuse.lazarusfs");
	}
	csi_mounts_free(&ms);
	if (binds) {
		csi_log("volume %s: %zu bind mounts of %s remain, keeping it", r->volume_id, binds,
			vs.fluid_path);
		return true;
	}
	if (vs.label[0] && !set_label(csi, vs.label, false, st))
		return false;
	if (csi->cfg.clean_policy == CSI_CLEAN_ON_DEMAND && vs.started && lazarus) {
		csi_log("unmounting lazarusfs at %s (clean policy OnDemand)", vs.fluid_path);
		if (csi_unmount_all(vs.fluid_path, st))
			return false;
		wait_backend_gone(csi, vs.fluid_path);
	}
	csi_vol_path(csi, r->volume_id, path);
	if (unlink(path) < 0 && errno != ENOENT)
		return csi_fail(st, CSI_INTERNAL, "cannot remove %s: %s", path, strerror(errno));
	csi_log("volume %s unstaged", r->volume_id);
	return true;
}
