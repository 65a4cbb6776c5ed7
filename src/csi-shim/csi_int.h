/*
 * csi_int.h - private to src/csi-shim/: what the node operations share.
 * csi.h stays the module's header; this one only connects its files:
 *
 *   node.c     csi_init/csi_release, per-volume serialisation, dispatch
 *   fluid.c    the FUSE mount at fluid_path (start lazarusfs, through the
 *              launcher if there is one, or wait)
 *   stage.c    NodeStageVolume, NodeUnstageVolume, node labels
 *   publish.c  NodePublishVolume, NodeUnpublishVolume (bind mounts)
 *   stats.c    NodeGetVolumeStats and the volume condition
 *   state.c    the records under <state_dir>/csi
 *   paths.c    path checks and canonical forms; mounts.c mountinfo, unmount
 *
 * Node operations run on many threads at once; csi_handle() guarantees
 * that calls on one volume id or one target path do not overlap, and stage,
 * publish and unstage claim their fluid_path too (csi_fluid_take()).
 * Errors: 0 or -errno; functions that return bool set st when false.
 */
#ifndef LAZARUSFS_CSI_INT_H
#define LAZARUSFS_CSI_INT_H

#include <limits.h>
#include <sys/types.h>

#include "src/csi-shim/csi.h"

struct ProtobufCMessage;

/* ---- paths.c --------------------------------------------------------------- */

/* Canonical form of a clean absolute path without touching its last
 * component (which may be a dead mount): the deepest existing ancestor of its
 * parent resolved, plus the rest (which does not exist, so holds no symlink).
 * -EXDEV if that ancestor resolves outside root, other -errno from realpath. */
int csi_path_canonical(const char *path, const char *root, char out[PATH_MAX]);
/* mkdir -p; the caller has checked that the existing ancestors are ours. */
int csi_mkdir_p(const char *path, mode_t mode);

/* ---- mounts.c -------------------------------------------------------------- */

/* Unmounts everything stacked on point (canonical). A mount that will not go
 * (busy, or a dead FUSE connection) is detached. 0, or -errno with st set. */
int csi_unmount_all(const char *point, struct csi_status *st);
/* stat() of path fails with ENOTCONN or ECONNABORTED: a dead FUSE mount. */
bool csi_is_stale(const char *path);

/* ---- state.c --------------------------------------------------------------- */

#define CSI_MAX_ID 128	/* the CSI spec lets plugins cap ids at 128 bytes */

/*
 * What NodeUnstageVolume needs about a staged volume and its request lacks,
 * in <state_dir>/csi/<xxh3(volume_id)>.vol. Several volume ids may share one
 * fluid_path (one dataset, several PVs): the proxy and the node label belong
 * to the fluid_path, so a volume unstaged while another still uses it keeps
 * its record, marked unstaged, until the last user unstages and undoes what
 * all of them did (stage.c).
 */
struct csi_vol {
	char volume_id[CSI_MAX_ID + 1];
	char fluid_path[PATH_MAX];	/* canonical */
	char label[256];		/* "" if no label was set */
	bool started;			/* we started the proxy */
	bool unstaged;			/* unstaged by kubelet, kept for the last user */
};

void csi_vol_path(struct csi *csi, const char *volume_id, char out[PATH_MAX]);
/* 0, -ENOENT if volume_id has no record, -EINVAL if the record is damaged. */
int csi_vol_load(struct csi *csi, const char *volume_id, struct csi_vol *vs);
/* Writes the record atomically (temporary file, fsync, rename). 0 or -errno. */
int csi_vol_save(struct csi *csi, const char *volume_id, const struct csi_vol *vs);
/* 0 (also when there is none) or -errno. */
int csi_vol_remove(struct csi *csi, const char *volume_id);
/* Every record whose fluid_path is fluid_path, in a malloc'd *out (NULL when
 * *n is 0). Damaged records are skipped. 0 or -errno. */
int csi_vol_list(struct csi *csi, const char *fluid_path, struct csi_vol **out, size_t *n);

/* <state_dir>/csi/<xxh3(target)>.pub: the volume id target (canonical) was
 * published for, so that NodeGetVolumeStats and a second NodePublishVolume
 * can tell two volumes that share a fluid_path apart. 0 or -errno; load gives
 * -ENOENT when the target has no record. */
int csi_pub_save(struct csi *csi, const char *target, const char *volume_id);
int csi_pub_load(struct csi *csi, const char *target, char volume_id[CSI_MAX_ID + 1]);
int csi_pub_remove(struct csi *csi, const char *target);

/* ---- fluid.c --------------------------------------------------------------- */

struct csi_dataset;

/* Splits a --launcher value on blanks into *words, NULL-terminated (NULL
 * when it has none). {id} is its one placeholder; another {name} is refused
 * as a typo. 0, or -EINVAL or -ENOMEM with st set. */
int csi_launcher_parse(const char *s, char ***words, struct csi_status *st);
void csi_launcher_free(char **words);

/* Loads <config_dir>/<ns>-<name>.conf into ds; *have is false if it is
 * absent (or the request has no valid names). config gets its path. */
bool csi_load_dataset(struct csi *csi, const struct csi_req *r, struct csi_dataset *ds,
		      char config[PATH_MAX], bool *have, struct csi_status *st);
/* Resolves the request's fluid_path into point (canonical) and claims it for
 * this call (csi_fluid_drop() releases it): stage, publish and unstage of
 * volumes that share a fluid_path do not overlap. ABORTED if another call
 * holds it. */
bool csi_fluid_claim(struct csi *csi, const struct csi_req *r, char point[PATH_MAX],
		     struct csi_status *st);
/* Makes sure a healthy FUSE filesystem is mounted at point (from
 * csi_fluid_claim); *started says whether we started lazarusfs for it. See
 * fluid.c. */
bool csi_ensure_mounted(struct csi *csi, const struct csi_req *r,
			const struct csi_dataset *ds, const char *config,
			const char *point, bool *started, struct csi_status *st);

/* ---- node.c ------------------------------------------------------------------ */

/* Claims fluid_path point (canonical) for the calling operation, or fails
 * with ABORTED when another call holds it; csi_fluid_drop() releases it. */
bool csi_fluid_take(struct csi *csi, const char *point, struct csi_status *st);
void csi_fluid_drop(struct csi *csi, const char *point);

/* ---- the node operations ----------------------------------------------------- */

bool csi_node_stage(struct csi *csi, const struct csi_req *r, struct csi_status *st);
bool csi_node_unstage(struct csi *csi, const struct csi_req *r, struct csi_status *st);
bool csi_node_publish(struct csi *csi, const struct csi_req *r, struct csi_status *st);
bool csi_node_unpublish(struct csi *csi, const struct csi_req *r, struct csi_status *st);
/* On true, *resp is a malloc'd NodeGetVolumeStatsResponse. */
bool csi_node_stats(struct csi *csi, const struct csi_req *r, uint8_t **resp, size_t *len,
		    struct csi_status *st);

/* Serializes m into a malloc'd *resp. */
bool csi_pack(const struct ProtobufCMessage *m, uint8_t **resp, size_t *len,
	      struct csi_status *st);

#endif
