/*
 * stage.c - NodeStageVolume and NodeUnstageVolume. Staging labels the node
 * (Fluid's FUSE DaemonSet selects on the label) and makes sure the volume's
 * FUSE mount exists; it records what unstaging will need in
 * <state_dir>/csi. Unstaging removes the label and, with the OnDemand clean
 * policy, the proxy this plugin started, once nothing uses the volume's
 * fluid_path any more (see csi_node_unstage()).
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
	char config[PATH_MAX], point[PATH_MAX];
	char *key = NULL;
	bool have, ok = false;
	int err;

	if (!csi_load_dataset(csi, r, &ds, config, &have, st))
		return false;
	if (!csi_fluid_claim(csi, r, point, st)) {
		csi_dataset_free(&ds);
		return false;
	}
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
	if (!csi_ensure_mounted(csi, r, have ? &ds : NULL, config, point, &vs.started, st))
		goto out;
	snprintf(vs.fluid_path, sizeof(vs.fluid_path), "%s", point);
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
	csi_fluid_drop(csi, point);
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

/* A mount of an engine backend, <backend>.<pid of the proxy's holder>. */
static bool backend_mounted(const struct csi_mounts *ms, const char *backend)
{
	size_t i, n = strlen(backend);

	for (i = 0; i < ms->n; i++)
		if (!strncmp(ms->v[i].point, backend, n) && ms->v[i].point[n] == '.')
			return true;
	return false;
}

/* After its mount is gone a lazarusfs proxy still unmounts its engine from
 * <state_dir>/<id>/backend.<pid>. A proxy started at the same path before
 * that would lose its backend, so a stage right after an unstage waits. */
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
		there = backend_mounted(&ms, backend);
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

/* Has label been removed already: is it first, or the label of v[0..i)? */
static bool label_done(const char *label, const char *first, const struct csi_vol *v, size_t i)
{
	if (!strcmp(label, first))
		return true;
	while (i-- > 0)
		if (!strcmp(v[i].label, label))
			return true;
	return false;
}

/*
 * The proxy and the node label belong to fluid_path, which several volume
 * ids may share; its users are the bind mounts of its FUSE mount and the
 * staged volumes with records on disk. While another remains, unstaging only
 * marks this volume's record unstaged; the last user undoes what every stage
 * of fluid_path did (their labels, the proxy if one of them started it) and
 * removes all their records. The records are on disk, so this holds across
 * a restart of the plugin.
 */
bool csi_node_unstage(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct csi_vol vs, *v = NULL;
	struct csi_mounts ms;
	const struct csi_mount *m;
	bool lazarus = false, started, ok = false;
	size_t n = 0, i, users = 0, binds = 0;
	int err;

	err = csi_vol_load(csi, r->volume_id, &vs);
	if (err) {
		csi_log("volume %s was not staged by this plugin, nothing to unstage", r->volume_id);
		return true;
	}
	if (!csi_fluid_take(csi, vs.fluid_path, st))
		return false;
	err = csi_vol_list(csi, vs.fluid_path, &v, &n);
	if (err) {
		csi_fail(st, CSI_INTERNAL, "cannot read the volume records in %s/csi: %s",
			 csi->cfg.state_dir, strerror(-err));
		goto out;
	}
	for (i = 0; i < n; i++)
		users += !v[i].unstaged && strcmp(v[i].volume_id, vs.volume_id);
	err = csi_mounts_read(&ms);
	if (err) {
		csi_fail(st, CSI_INTERNAL, "cannot read mountinfo: %s", strerror(-err));
		goto out;
	}
	m = csi_mounts_find(&ms, vs.fluid_path);
	if (m) {
		binds = count_binds(&ms, m);
		lazarus = !strcmp(m->fstype, "fuse.lazarusfs");
	}
	csi_mounts_free(&ms);
	if (users || binds) {
		csi_log("volume %s unstaged; %s is still used by %zu other volumes and %zu bind "
			"mounts, keeping it", r->volume_id, vs.fluid_path, users, binds);
		vs.unstaged = true;
		err = csi_vol_save(csi, r->volume_id, &vs);
		if (err)
			csi_fail(st, CSI_INTERNAL, "cannot save volume state in %s: %s",
				 csi->cfg.state_dir, strerror(-err));
		ok = !err;
		goto out;
	}
	/* The last user. A failure leaves every record, so a retry redoes it all. */
	if (vs.label[0] && !set_label(csi, vs.label, false, st))
		goto out;
	started = vs.started;
	for (i = 0; i < n; i++) {
		if (!strcmp(v[i].volume_id, vs.volume_id))
			continue;
		started |= v[i].started;
		if (v[i].label[0] && !label_done(v[i].label, vs.label, v, i) &&
		    !set_label(csi, v[i].label, false, st))
			goto out;
	}
	if (csi->cfg.clean_policy == CSI_CLEAN_ON_DEMAND && started && lazarus) {
		csi_log("unmounting lazarusfs at %s (clean policy OnDemand)", vs.fluid_path);
		if (csi_unmount_all(vs.fluid_path, st))
			goto out;
		wait_backend_gone(csi, vs.fluid_path);
	}
	for (i = 0; i < n; i++)
		if (strcmp(v[i].volume_id, vs.volume_id) && (err = csi_vol_remove(csi, v[i].volume_id)))
			break;
	if (!err)
		err = csi_vol_remove(csi, vs.volume_id);
	if (err) {
		csi_fail(st, CSI_INTERNAL, "cannot remove a volume record in %s/csi: %s",
			 csi->cfg.state_dir, strerror(-err));
		goto out;
	}
	if (n > 1)
		csi_log("volume %s unstaged, the last of %zu volumes on %s", r->volume_id, n,
			vs.fluid_path);
	else
		csi_log("volume %s unstaged", r->volume_id);
	ok = true;
out:
	csi_fluid_drop(csi, vs.fluid_path);
	free(v);
	return ok;
}
