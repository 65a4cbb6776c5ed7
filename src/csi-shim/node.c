/*
 * node.c - the CSI Identity service and the dispatch of Node calls; the
 * calls themselves are in stage.c, publish.c and stats.c (see csi_int.h).
 *
 * Design notes
 * - Staging makes sure a FUSE filesystem is mounted at fluid_path (fluid.c).
 *   Publish does the same before binding, because kubelet stages a volume only
 *   once per node and would never call stage again after the proxy died.
 * - Everything about a staged volume that NodeUnstageVolume needs but its
 *   request lacks (fluid_path, label key, whether we started the proxy) lives
 *   in <state_dir>/csi/<xxh3(volume_id)>.vol, and the volume id published at
 *   each target in <xxh3(target)>.pub (state.c). Volume ids may share a
 *   fluid_path; its proxy and label go with its last user (stage.c).
 * - Mount decisions come from /proc/self/mountinfo, never from stat() of a
 *   mount point, which fails or hangs on a dead FUSE mount. Paths that must be
 *   compared with mountinfo are made canonical by resolving the parent only.
 * - Bind mounts go through O_PATH descriptors and /proc/self/fd, so a symlink
 *   swapped in after our checks cannot redirect them (publish.c).
 * - Calls on one volume id or target path never overlap: csi_handle() claims
 *   them in csi->busy and answers ABORTED (as the CSI spec asks) when another
 *   call holds them. Stage, publish and unstage also claim the canonical
 *   fluid_path (csi_fluid_take), because volume ids that share it share its
 *   proxy and label: an unstage must not count users while a stage of
 *   another volume is mounting. Nobody waits for a claim, so the order in
 *   which they are taken cannot deadlock. csi->lock guards only that list.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "csi.pb-c.h"
#include "src/csi-shim/csi_int.h"

struct csi_busy {
	struct csi_busy *next;
	char key[];	/* 'v' + volume id, 't' + target path or 'p' + fluid_path */
};

int csi_init(struct csi *csi, const struct csi_config *cfg, struct csi_status *st)
{
	memset(csi, 0, sizeof(*csi));
	csi->cfg = *cfg;
	if (!csi_dns_subdomain(cfg->node_id)) {
		csi_fail(st, CSI_INVALID_ARGUMENT, "node id '%s' is not a valid node name",
			 cfg->node_id);
		return -EINVAL;
	}
	csi->mount_root = realpath(cfg->mount_root, NULL);
	if (!csi->mount_root) {
		csi_fail(st, CSI_INVALID_ARGUMENT, "mount root %s: %s", cfg->mount_root,
			 strerror(errno));
		return -errno;
	}
	csi->kubelet_root = realpath(cfg->kubelet_root, NULL);
	if (!csi->kubelet_root) {
		int err = -errno;

		csi_fail(st, CSI_INVALID_ARGUMENT, "kubelet root %s: %s", cfg->kubelet_root,
			 strerror(-err));
		free(csi->mount_root);
		return err;
	}
	if (cfg->launcher) {
		int err = csi_launcher_parse(cfg->launcher, &csi->launcher, st);

		if (err) {
			free(csi->mount_root);
			free(csi->kubelet_root);
			return err;
		}
	}
	pthread_mutex_init(&csi->lock, NULL);
	return 0;
}

void csi_release(struct csi *csi)
{
	while (csi->busy) {
		struct csi_busy *b = csi->busy;

		csi->busy = b->next;
		free(b);
	}
	pthread_mutex_destroy(&csi->lock);
	free(csi->mount_root);
	free(csi->kubelet_root);
	csi_launcher_free(csi->launcher);
}

/* ---- per-volume, per-target and per-fluid_path serialisation ----------------- */

static bool busy_has(struct csi *csi, char kind, const char *s)
{
	struct csi_busy *b;

	for (b = csi->busy; b; b = b->next)
		if (b->key[0] == kind && !strcmp(b->key + 1, s))
			return true;
	return false;
}

static int busy_add(struct csi *csi, char kind, const char *s)
{
	struct csi_busy *b = malloc(sizeof(*b) + strlen(s) + 2);

	if (!b)
		return -ENOMEM;
	b->key[0] = kind;
	strcpy(b->key + 1, s);
	b->next = csi->busy;
	csi->busy = b;
	return 0;
}

static void busy_del(struct csi *csi, char kind, const char *s)
{
	struct csi_busy **p, *b;

	for (p = &csi->busy; (b = *p); p = &b->next)
		if (b->key[0] == kind && !strcmp(b->key + 1, s)) {
			*p = b->next;
			free(b);
			return;
		}
}

/* Claims the volume id and the target (may be NULL), both or neither. */
static bool busy_take(struct csi *csi, const char *vol, const char *target,
		      struct csi_status *st)
{
	bool ok = false;

	pthread_mutex_lock(&csi->lock);
	if (busy_has(csi, 'v', vol))
		csi_fail(st, CSI_ABORTED, "an operation on volume %s is already in progress", vol);
	else if (target && busy_has(csi, 't', target))
		csi_fail(st, CSI_ABORTED, "an operation on target %s is already in progress",
			 target);
	else if (busy_add(csi, 'v', vol))
		csi_fail(st, CSI_INTERNAL, "out of memory");
	else if (target && busy_add(csi, 't', target)) {
		busy_del(csi, 'v', vol);
		csi_fail(st, CSI_INTERNAL, "out of memory");
	} else
		ok = true;
	pthread_mutex_unlock(&csi->lock);
	return ok;
}

static void busy_drop(struct csi *csi, const char *vol, const char *target)
{
	pthread_mutex_lock(&csi->lock);
	busy_del(csi, 'v', vol);
	if (target)
		busy_del(csi, 't', target);
	pthread_mutex_unlock(&csi->lock);
}

bool csi_fluid_take(struct csi *csi, const char *point, struct csi_status *st)
{
	bool ok = false;

	pthread_mutex_lock(&csi->lock);
	if (busy_has(csi, 'p', point))
		csi_fail(st, CSI_ABORTED, "an operation on fluid_path %s is already in progress",
			 point);
	else if (busy_add(csi, 'p', point))
		csi_fail(st, CSI_INTERNAL, "out of memory");
	else
		ok = true;
	pthread_mutex_unlock(&csi->lock);
	return ok;
}

void csi_fluid_drop(struct csi *csi, const char *point)
{
	pthread_mutex_lock(&csi->lock);
	busy_del(csi, 'p', point);
	pthread_mutex_unlock(&csi->lock);
}

/* ---- dispatch -------------------------------------------------------------- */

bool csi_pack(const ProtobufCMessage *m, uint8_t **resp, size_t *len, struct csi_status *st)
{
	*len = protobuf_c_message_get_packed_size(m);
	*resp = malloc(*len ? *len : 1);
	if (!*resp)
		return csi_fail(st, CSI_INTERNAL, "out of memory");
	protobuf_c_message_pack(m, *resp);
	return true;
}

static bool identity(struct csi *csi, enum csi_op op, uint8_t **resp, size_t *len,
		     struct csi_status *st)
{
	switch (op) {
	case CSI_GET_PLUGIN_INFO: {
		Csi__V1__GetPluginInfoResponse m = CSI__V1__GET_PLUGIN_INFO_RESPONSE__INIT;

		m.name = (char *)csi->cfg.driver_name;
		m.vendor_version = PACKAGE_VERSION;
		return csi_pack(&m.base, resp, len, st);
	}
	case CSI_GET_PLUGIN_CAPABILITIES: {
		/* No CONTROLLER_SERVICE: a node-only plugin. */
		Csi__V1__GetPluginCapabilitiesResponse m =
			CSI__V1__GET_PLUGIN_CAPABILITIES_RESPONSE__INIT;

		return csi_pack(&m.base, resp, len, st);
	}
	case CSI_PROBE: {
		Csi__V1__ProbeResponse m = CSI__V1__PROBE_RESPONSE__INIT;
		Csi__V1__BoolValue ready = CSI__V1__BOOL_VALUE__INIT;

		ready.value = true;
		m.ready = &ready;
		return csi_pack(&m.base, resp, len, st);
	}
	case CSI_NODE_GET_INFO: {
		Csi__V1__NodeGetInfoResponse m = CSI__V1__NODE_GET_INFO_RESPONSE__INIT;

		m.node_id = (char *)csi->cfg.node_id;
		return csi_pack(&m.base, resp, len, st);
	}
	case CSI_NODE_GET_CAPABILITIES: {
		static const Csi__V1__NodeServiceCapability__RPC__Type types[] = {
			CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__STAGE_UNSTAGE_VOLUME,
			CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__GET_VOLUME_STATS,
			CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__VOLUME_CONDITION,
		};
		Csi__V1__NodeGetCapabilitiesResponse m = CSI__V1__NODE_GET_CAPABILITIES_RESPONSE__INIT;
		Csi__V1__NodeServiceCapability caps[3], *capp[3];
		Csi__V1__NodeServiceCapability__RPC rpcs[3];
		size_t i;

		for (i = 0; i < 3; i++) {
			csi__v1__node_service_capability__init(&caps[i]);
			csi__v1__node_service_capability__rpc__init(&rpcs[i]);
			rpcs[i].type = types[i];
			caps[i].type_case = CSI__V1__NODE_SERVICE_CAPABILITY__TYPE_RPC;
			caps[i].rpc = &rpcs[i];
			capp[i] = &caps[i];
		}
		m.n_capabilities = 3;
		m.capabilities = capp;
		return csi_pack(&m.base, resp, len, st);
	}
	default:
		return csi_fail(st, CSI_INTERNAL, "unexpected operation %d", op);
	}
}

void csi_handle(struct csi *csi, const char *method, const uint8_t *req, size_t len,
		uint8_t **resp, size_t *resp_len, struct csi_status *st)
{
	static const Csi__V1__NodeStageVolumeResponse empty = CSI__V1__NODE_STAGE_VOLUME_RESPONSE__INIT;
	struct csi_req r;
	const char *target;
	bool ok;

	*resp = NULL;
	*resp_len = 0;
	if (!csi_req_parse(csi, method, req, len, &r, st))
		return;
	switch (r.op) {
	case CSI_NODE_STAGE:
	case CSI_NODE_UNSTAGE:
	case CSI_NODE_PUBLISH:
	case CSI_NODE_UNPUBLISH:
		target = r.op == CSI_NODE_PUBLISH || r.op == CSI_NODE_UNPUBLISH ? r.target : NULL;
		if (!busy_take(csi, r.volume_id, target, st))
			break;
		ok = r.op == CSI_NODE_STAGE ? csi_node_stage(csi, &r, st) :
		     r.op == CSI_NODE_UNSTAGE ? csi_node_unstage(csi, &r, st) :
		     r.op == CSI_NODE_PUBLISH ? csi_node_publish(csi, &r, st) :
		     csi_node_unpublish(csi, &r, st);
		busy_drop(csi, r.volume_id, target);
		if (ok)
			csi_pack(&empty.base, resp, resp_len, st);	/* all four replies are empty */
		else
			csi_log("%s %s failed: %s", method, r.volume_id, st->msg);
		break;
	case CSI_NODE_GET_VOLUME_STATS:
		csi_node_stats(csi, &r, resp, resp_len, st);
		break;
	default:
		identity(csi, r.op, resp, resp_len, st);
		break;
	}
	csi_req_free(&r);
}
