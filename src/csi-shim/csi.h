/*
 * csi.h - lazarusfs-csi, the CSI node plugin: request logic without transport.
 *
 * The gRPC transport (server.c) hands each call to csi_handle() as a method
 * name plus the serialized request and sends back what it returns. Everything
 * here works on protobuf-c messages and plain syscalls, so unit tests and the
 * fuzzer drive it without gRPC.
 *
 * Ownership: struct csi owns copies of the configuration strings it needs.
 * Locking: csi->lock protects csi->busy, the set of volume ids, target paths
 * and fluid paths that have a call in flight. It is a leaf lock held only for list
 * operations; no I/O happens under it. All other fields are read-only after
 * csi_init(), so csi_handle() may run on many threads at once.
 * Errors: functions return 0 or -errno; RPC results are a struct csi_status.
 */
#ifndef LAZARUSFS_CSI_H
#define LAZARUSFS_CSI_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Status codes: the numeric values are gRPC's canonical codes. */
enum csi_code {
	CSI_OK = 0,
	CSI_INVALID_ARGUMENT = 3,
	CSI_NOT_FOUND = 5,
	CSI_ALREADY_EXISTS = 6,
	CSI_FAILED_PRECONDITION = 9,
	CSI_ABORTED = 10,
	CSI_UNIMPLEMENTED = 12,
	CSI_INTERNAL = 13,
};

struct csi_status {
	enum csi_code code;
	char msg[512];
};

/* Sets st and returns false, so validators can `return csi_fail(...)`. */
bool csi_fail(struct csi_status *st, enum csi_code code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* What NodeUnstageVolume does to a proxy this plugin started (Fluid's names). */
enum csi_clean_policy {
	CSI_CLEAN_ON_RUNTIME_DELETED,	/* leave it mounted (default) */
	CSI_CLEAN_ON_DEMAND,		/* unmount it when no bind mount remains */
};

struct csi_config {
	const char *driver_name;	/* "fuse.csi.fluid.io" */
	const char *node_id;		/* Kubernetes node name */
	const char *mount_root;		/* fluid_path must be inside */
	const char *kubelet_root;	/* target/staging paths must be inside */
	const char *config_dir;		/* <ns>-<name>.conf per dataset */
	const char *state_dir;		/* lazarusfs state_dir; ours is <state_dir>/csi */
	const char *lazarusfs;		/* program started by NodeStageVolume */
	const char *launcher;		/* command prefix for lazarusfs, words split
					 * on blanks; NULL or "" for none */
	enum csi_clean_policy clean_policy;
	int mount_timeout;		/* seconds to wait for a FUSE mount */
	const char *kube_api;		/* NULL: https://$KUBERNETES_SERVICE_HOST:PORT */
	const char *kube_token_file;
	const char *kube_ca_file;
};

struct csi_busy;

struct csi {
	struct csi_config cfg;		/* strings owned by the caller */
	char *mount_root;		/* canonical (realpath) */
	char *kubelet_root;		/* canonical (realpath) */
	char **launcher;		/* cfg.launcher's words, NULL-terminated;
					 * NULL when there is none */
	pthread_mutex_t lock;		/* leaf lock, protects busy */
	struct csi_busy *busy;		/* protected by lock */
};

/* Checks the configuration, resolves the roots and splits the launcher.
 * cfg's strings must outlive csi. Returns 0, or -errno with a message in st. */
int csi_init(struct csi *csi, const struct csi_config *cfg, struct csi_status *st);
void csi_release(struct csi *csi);

/*
 * Serves one RPC. method is the gRPC path ("/csi.v1.Node/NodeStageVolume").
 * On CSI_OK, *resp is a malloc'd serialized response of *resp_len bytes (the
 * caller frees it); otherwise *resp is NULL and st->msg says why.
 */
void csi_handle(struct csi *csi, const char *method, const uint8_t *req,
		size_t len, uint8_t **resp, size_t *resp_len, struct csi_status *st);

/* ---- request decoding and validation (first half of csi_handle) ---------- */

enum csi_op {
	CSI_GET_PLUGIN_INFO, CSI_GET_PLUGIN_CAPABILITIES, CSI_PROBE,
	CSI_NODE_GET_INFO, CSI_NODE_GET_CAPABILITIES,
	CSI_NODE_STAGE, CSI_NODE_UNSTAGE, CSI_NODE_PUBLISH, CSI_NODE_UNPUBLISH,
	CSI_NODE_GET_VOLUME_STATS,
};

/* A decoded, validated request. Strings point into msg or are owned copies
 * (the cleaned paths); csi_req_free() releases both. */
struct csi_req {
	enum csi_op op;
	struct ProtobufCMessage *msg;
	const char *volume_id;
	char *target;		/* cleaned target_path (or volume_path for stats) */
	char *staging;		/* cleaned staging_target_path */
	char *fluid_path;	/* cleaned volume_context fluid_path */
	char *sub_path;		/* cleaned fluid_sub_path, "" when absent */
	const char *mount_type, *ns, *name;	/* volume_context, may be "" */
	bool readonly;		/* publish: readonly flag or a reader-only mode */
};

/* Decodes req for method and checks every field that needs no mount. Returns
 * true on success; false with st set (the request owns nothing then). */
bool csi_req_parse(struct csi *csi, const char *method, const uint8_t *req,
		   size_t len, struct csi_req *out, struct csi_status *st);
void csi_req_free(struct csi_req *r);

/* ---- path checks --------------------------------------------------------- */

/* Cleans an absolute path: collapses "//" and "/./", drops a trailing '/'.
 * Returns 0 with a malloc'd *out, -EINVAL if the path is empty or relative,
 * -EPERM if it has a ".." component, -ENAMETOOLONG. */
int csi_path_clean(const char *path, char **out);
/* Cleans fluid_sub_path: relative to the volume (leading '/' ignored, as
 * Fluid joins it). Returns 0 with *out ("" for the volume root), -EPERM for a
 * ".." component, -ENAMETOOLONG. */
int csi_subpath_clean(const char *sub, char **out);
/* For a cleaned path: 0 if it is strictly inside root (lexically) and the
 * deepest existing ancestor of its parent resolves inside root_real, so no
 * symlink leads out. -EXDEV if it leads outside, other -errno from realpath. */
int csi_path_inside(const char *path, const char *root, const char *root_real);
/* 0 if resolved equals base or lies below it, else -EXDEV. */
int csi_path_below(const char *resolved, const char *base);
/* Kubernetes names: a DNS label (namespace) and a DNS subdomain (name). */
bool csi_dns_label(const char *s);
bool csi_dns_subdomain(const char *s);

/* ---- helpers shared by the node operations ------------------------------- */

/* A line of /proc/self/mountinfo, unescaped. */
struct csi_mount {
	unsigned major, minor;
	char *root, *point, *fstype, *source;
	unsigned long flags;	/* per-mount MS_RDONLY, MS_NOSUID, MS_NODEV, ... */
};
struct csi_mounts {
	struct csi_mount *v;
	size_t n;
};
/* Parses one mountinfo line into m (strings malloc'd). 0 or -EINVAL/-ENOMEM. */
int csi_mount_parse(const char *line, struct csi_mount *m);
/* Reads /proc/self/mountinfo. 0 or -errno. */
int csi_mounts_read(struct csi_mounts *ms);
void csi_mounts_free(struct csi_mounts *ms);
/* The topmost mount at point, or NULL. */
const struct csi_mount *csi_mounts_find(const struct csi_mounts *ms, const char *point);
bool csi_mount_is_fuse(const struct csi_mount *m);

/* Per-dataset configuration, <config_dir>/<ns>-<name>.conf: key=value lines,
 * '#' comments. All strings malloc'd, NULL when absent. */
struct csi_dataset {
	char *source, *engine, *options, *dataset_uid;
};
/* 0, -ENOENT if the file is missing, -EINVAL with st set on a bad line. */
int csi_dataset_load(const char *path, struct csi_dataset *ds, struct csi_status *st);
void csi_dataset_free(struct csi_dataset *ds);
/* lazarusfs engine for a Fluid mount_type, or NULL if there is none. */
const char *csi_engine_for(const char *mount_type);

/* The node label for a dataset, following Fluid: fluid.io/f-<ns>-<name>, or
 * fluid.io/f-<uid> if that is 63 characters or longer. Returns 0 with a
 * malloc'd *key, -ENAMETOOLONG when the key is too long and uid is NULL or
 * "", -EINVAL when uid is not a DNS label. */
int csi_label_key(const char *ns, const char *name, const char *uid, char **key);

/* Sets (value "true") or removes (null) a label on node cfg->node_id through
 * the Kubernetes API. 0, -ENOTCONN if no API server is configured (not in a
 * cluster), or -EIO with the reason in st. */
int csi_kube_label(const struct csi_config *cfg, const char *key, bool set,
		   struct csi_status *st);

/* The mount id lazarusfs gives the proxy mounted at point (canonical): the
 * XXH3_64 of point in 16 hex digits, as in `lazarusctl status`. */
void csi_proxy_id(const char *point, char id[17]);
/* <state_dir>/<id> of the lazarusfs proxy mounted at point (canonical).
 * 0 or -ENAMETOOLONG. */
int csi_proxy_dir(const char *state_dir, const char *point, char *out, size_t len);

/* Asks the lazarusfs proxy mounted at point (canonical, as in mountinfo) for
 * its engine state through its control socket. On 0, state and last_error hold the values ("" if absent);
 * -ENOENT if there is no control socket, other -errno on failure. */
int csi_ctl_status(const char *state_dir, const char *point, char *state,
		   size_t state_len, char *last_error, size_t err_len);

void csi_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- transport (server.c, linked into the program with gRPC) ------------- */

/* Serves CSI on endpoint (unix:///path, unix:/path or /path; the socket gets
 * mode 0600) until SIGTERM or SIGINT, which the caller must have blocked in
 * every thread. Returns 0, or -errno if the socket could not be served. */
int csi_server_run(struct csi *csi, const char *endpoint);

#endif
