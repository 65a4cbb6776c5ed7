/*
 * node.c - the CSI Identity and Node operations.
 *
 * Design notes
 * - Staging makes sure a FUSE filesystem is mounted at fluid_path. A FUSE mount
 *   that is already there (fstab, Fluid's FUSE DaemonSet, an earlier stage) is
 *   left alone; otherwise we start `lazarusfs -o OPTS SOURCE fluid_path`, which
 *   daemonizes once mounted. A stale mount (ENOTCONN) is detached first.
 *   Publish does the same before binding, because kubelet stages a volume only
 *   once per node and would never call stage again after the proxy died.
 * - Everything about a staged volume that NodeUnstageVolume needs but its
 *   request lacks (fluid_path, label key, whether we started the proxy) lives
 *   in <state_dir>/csi/<xxh3(volume_id)>.vol.
 * - Mount decisions come from /proc/self/mountinfo, never from stat() of a
 *   mount point, which fails or hangs on a dead FUSE mount. Paths that must be
 *   compared with mountinfo are made canonical by resolving the parent only.
 * - Bind mounts go through O_PATH descriptors and /proc/self/fd, so a symlink
 *   swapped in after our checks cannot redirect them.
 * - Calls on one volume id or target path never overlap: csi_handle() claims
 *   them in csi->busy and answers ABORTED (as the CSI spec asks) when another
 *   call holds them. csi->lock guards only that list.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "csi.pb-c.h"
#include "src/csi-shim/csi.h"

#define MAX_STACKED 64	/* unmounts tried on one path (stacked binds) */

extern char **environ;

struct csi_busy {
	struct csi_busy *next;
	char key[];	/* 'v' + volume id or 't' + target path */
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
}

/* ---- per-volume and per-target serialisation ---------------------------- */

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

/* ---- path helpers --------------------------------------------------------- */

/* Canonical form of path without touching its last component (which may be
 * a dead mount): realpath of the parent plus the name. -ENOENT if the parent
 * is missing, -EXDEV if it resolves outside root. */
static int canonical(const char *path, const char *root, char out[PATH_MAX])
{
	char dir[PATH_MAX], real[PATH_MAX];
	const char *name = strrchr(path, '/') + 1;

	snprintf(dir, sizeof(dir), "%.*s", (int)(name - path), path);
	if (!realpath(dir, real))
		return -errno;
	if (csi_path_below(real, root))
		return -EXDEV;
	if (snprintf(out, PATH_MAX, "%s/%s", strcmp(real, "/") ? real : "", name) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* mkdir -p; the caller has checked that the existing ancestors are ours. */
static int mkdir_p(const char *path, mode_t mode)
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

/* The path an O_PATH descriptor refers to. */
static int fd_path(int fd, char out[PATH_MAX])
{
	char link[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, out, PATH_MAX - 1);
	if (n < 0)
		return -errno;
	out[n] = '\0';
	return 0;
}

/* Unmounts everything stacked on point (canonical). A mount that will not go
 * (busy, or a dead FUSE connection) is detached. */
static int unmount_all(const char *point, struct csi_status *st)
{
	struct csi_mounts ms;
	bool mounted;
	int i, err;

	for (i = 0; i < MAX_STACKED; i++) {
		err = csi_mounts_read(&ms);
		if (err) {
			csi_fail(st, CSI_INTERNAL, "cannot read mountinfo: %s", strerror(-err));
			return err;
		}
		mounted = csi_mounts_find(&ms, point) != NULL;
		csi_mounts_free(&ms);
		if (!mounted)
			return 0;
		if (umount2(point, UMOUNT_NOFOLLOW) == 0 || errno == EINVAL)
			continue;
		csi_log("umount %s failed: %s, detaching it", point, strerror(errno));
		if (umount2(point, UMOUNT_NOFOLLOW | MNT_DETACH) < 0 && errno != EINVAL) {
			err = -errno;
			csi_fail(st, CSI_INTERNAL, "cannot unmount %s: %s", point, strerror(errno));
			return err;
		}
	}
	csi_fail(st, CSI_INTERNAL, "%s is still mounted after %d unmounts", point, MAX_STACKED);
	return -EBUSY;
}

static bool is_stale(const char *path)
{
	struct stat sb;

	return stat(path, &sb) < 0 && (errno == ENOTCONN || errno == ECONNABORTED);
}

/* ---- volume state --------------------------------------------------------- */

struct vol_state {
	char fluid_path[PATH_MAX];	/* canonical */
	char label[256];		/* "" if no label was set */
	bool started;			/* we started the proxy */
};

static void state_path(struct csi *csi, const char *volume_id, char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/csi/%016llx.vol", csi->cfg.state_dir,
		 (unsigned long long)XXH3_64bits(volume_id, strlen(volume_id)));
}

static int state_load(struct csi *csi, const char *volume_id, struct vol_state *vs)
{
	char path[PATH_MAX], line[PATH_MAX + 32];
	bool n = false;	/* a value did not fit */
	int err = 0;
	FILE *f;

	memset(vs, 0, sizeof(*vs));
	state_path(csi, volume_id, path);
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

static int state_save(struct csi *csi, const char *volume_id, const struct vol_state *vs)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	FILE *f;
	int err = 0;

	snprintf(path, sizeof(path), "%s/csi", csi->cfg.state_dir);
	err = mkdir_p(path, 0700);
	if (err)
		return err;
	state_path(csi, volume_id, path);
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

/* ---- the FUSE mount at fluid_path --------------------------------------- */

/* Runs lazarusfs, which returns once it has mounted point and daemonized. */
static bool run_lazarusfs(struct csi *csi, const struct csi_dataset *ds, const char *engine,
			  const char *point, struct csi_status *st)
{
	char *opts = NULL;
	char *argv[6];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, dfl;
	struct timespec nap = { 0, 50 * 1000 * 1000 };
	time_t deadline = time(NULL) + csi->cfg.mount_timeout;
	pid_t pid;
	int status, err;
	bool ok = false;

	/* state_dir goes last so the control socket is where we look for it. */
	if (asprintf(&opts, "engine=%s%s%s,state_dir=%s", engine, ds->options ? "," : "",
		     ds->options ? ds->options : "", csi->cfg.state_dir) < 0)
		return csi_fail(st, CSI_INTERNAL, "out of memory");
	argv[0] = (char *)csi->cfg.lazarusfs;
	argv[1] = "-o";
	argv[2] = opts;
	argv[3] = ds->source;
	argv[4] = (char *)point;
	argv[5] = NULL;
	/* Our signal mask blocks the signals the main thread waits for, and
	 * gRPC ignores SIGPIPE; the child must start with neither. */
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	sigaddset(&dfl, SIGTERM);
	sigaddset(&dfl, SIGINT);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
	/* The source may hold a password: log the engine, never the source. */
	csi_log("starting lazarusfs at %s (engine=%s)", point, engine);
	err = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	free(opts);
	if (err)
		return csi_fail(st, CSI_FAILED_PRECONDITION, "cannot run %s: %s", argv[0],
				strerror(err));
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (time(NULL) >= deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return csi_fail(st, CSI_INTERNAL, "lazarusfs did not mount %s within %d s",
					point, csi->cfg.mount_timeout);
		}
		nanosleep(&nap, NULL);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return csi_fail(st, CSI_INTERNAL, "lazarusfs failed to mount %s (%s %d); see its log",
				point, WIFEXITED(status) ? "exit status" : "signal",
				WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	/* It exited 0, so the mount should be there; make sure. */
	do {
		struct csi_mounts ms;
		const struct csi_mount *m;

		if (csi_mounts_read(&ms))
			break;
		m = csi_mounts_find(&ms, point);
		ok = m && csi_mount_is_fuse(m);
		csi_mounts_free(&ms);
	} while (!ok && time(NULL) < deadline && !nanosleep(&nap, NULL));
	if (!ok)
		return csi_fail(st, CSI_INTERNAL, "lazarusfs exited but %s is not mounted", point);
	return true;
}

/*
 * Makes sure a healthy FUSE filesystem is mounted at the request's fluid_path
 * and puts its canonical path in point. When nothing is mounted it starts
 * lazarusfs if the dataset has a config (ds, may be NULL); otherwise stage
 * fails and publish waits for someone else to mount it (as Fluid does).
 */
static bool ensure_mounted(struct csi *csi, const struct csi_req *r,
			   const struct csi_dataset *ds, const char *config,
			   char point[PATH_MAX], bool *started, struct csi_status *st)
{
	time_t deadline = time(NULL) + csi->cfg.mount_timeout;
	struct timespec nap = { 0, 200 * 1000 * 1000 };
	struct csi_mounts ms;
	const struct csi_mount *m;
	const char *engine;
	int err;

	*started = false;
	err = canonical(r->fluid_path, csi->mount_root, point);
	if (!err && is_stale(point)) {
		csi_log("fluid_path %s is a stale mount, cleaning it up", point);
		if (unmount_all(point, st))
			return false;
	}
	if (!err || err == -ENOENT)
		err = mkdir_p(r->fluid_path, 0755);
	if (!err)
		err = canonical(r->fluid_path, csi->mount_root, point);
	if (err == -EXDEV)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"fluid_path %s leads outside --mount-root through a symlink",
				r->fluid_path);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot create fluid_path %s: %s", r->fluid_path,
				strerror(-err));
	for (;;) {
		err = csi_mounts_read(&ms);
		if (err)
			return csi_fail(st, CSI_INTERNAL, "cannot read mountinfo: %s", strerror(-err));
		m = csi_mounts_find(&ms, point);
		if (m && !csi_mount_is_fuse(m)) {
			csi_fail(st, CSI_FAILED_PRECONDITION,
				 "fluid_path %s holds a %s mount, not a FUSE filesystem", point,
				 m->fstype);
			csi_mounts_free(&ms);
			return false;
		}
		csi_mounts_free(&ms);
		if (m)
			return true;
		if (ds)
			break;
		if (r->op == CSI_NODE_STAGE || time(NULL) >= deadline)
			return csi_fail(st, CSI_FAILED_PRECONDITION,
					"nothing is mounted at fluid_path %s and there is no dataset config %s",
					point, config);
		nanosleep(&nap, NULL);
	}
	engine = ds->engine ? ds->engine : csi_engine_for(r->mount_type);
	if (!engine)
		return csi_fail(st, CSI_FAILED_PRECONDITION,
				"config %s: engine= is required for mount_type '%s'", config,
				r->mount_type);
	if (!run_lazarusfs(csi, ds, engine, point, st))
		return false;
	*started = true;
	return true;
}

/* Loads <config_dir>/<ns>-<name>.conf into ds; *have is false if it is absent. */
static bool load_dataset(struct csi *csi, const struct csi_req *r, struct csi_dataset *ds,
			 char config[PATH_MAX], bool *have, struct csi_status *st)
{
	int err;

	*have = false;
	memset(ds, 0, sizeof(*ds));
	snprintf(config, PATH_MAX, "%s/%s-%s.conf", csi->cfg.config_dir, r->ns, r->name);
	/* Without valid names (publish of a hand-made PV) there is no config. */
	if (!csi_dns_label(r->ns) || !csi_dns_subdomain(r->name))
		return true;
	err = csi_dataset_load(config, ds, st);
	if (err == -ENOENT)
		return true;
	if (err == -ENOMEM || (err && err != -EINVAL))
		return csi_fail(st, CSI_INTERNAL, "cannot read config %s: %s", config,
				strerror(-err));
	*have = !err;
	return !err;
}

/* ---- stage / unstage ------------------------------------------------------ */

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

static bool node_stage(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct csi_dataset ds;
	struct vol_state vs, old;
	char config[PATH_MAX];
	char *key = NULL;
	bool have, ok = false;
	int err;

	if (!load_dataset(csi, r, &ds, config, &have, st))
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
	if (!ensure_mounted(csi, r, have ? &ds : NULL, config, vs.fluid_path, &vs.started, st))
		goto out;
	/* A repeated stage must not forget that an earlier one started the proxy. */
	if (!vs.started && state_load(csi, r->volume_id, &old) == 0 &&
	    !strcmp(old.fluid_path, vs.fluid_path))
		vs.started = old.started;
	err = state_save(csi, r->volume_id, &vs);
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

static bool node_unstage(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct vol_state vs;
	struct csi_mounts ms;
	const struct csi_mount *m;
	char path[PATH_MAX];
	bool lazarus = false;
	size_t binds = 0;
	int err;

	err = state_load(csi, r->volume_id, &vs);
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
		if (unmount_all(vs.fluid_path, st))
			return false;
		wait_backend_gone(csi, vs.fluid_path);
	}
	state_path(csi, r->volume_id, path);
	if (unlink(path) < 0 && errno != ENOENT)
		return csi_fail(st, CSI_INTERNAL, "cannot remove %s: %s", path, strerror(errno));
	csi_log("volume %s unstaged", r->volume_id);
	return true;
}

/* ---- publish / unpublish -------------------------------------------------- */

/* The bind source: fluid_path/sub_path opened O_PATH, checked to stay inside
 * the volume after symlinks. Returns the fd and its path, or -1 with st set. */
static int open_source(const struct csi_req *r, const char *point, char src[PATH_MAX],
		       struct csi_status *st)
{
	char path[PATH_MAX];
	struct stat sb;
	int fd;

	if (snprintf(path, sizeof(path), "%s%s%s", point, r->sub_path[0] ? "/" : "",
		     r->sub_path) >= (int)sizeof(path)) {
		csi_fail(st, CSI_INVALID_ARGUMENT, "fluid_sub_path is too long");
		return -1;
	}
	fd = open(path, O_PATH | O_CLOEXEC);
	if (fd < 0) {
		csi_fail(st, errno == ENOENT ? CSI_FAILED_PRECONDITION : CSI_INTERNAL,
			 "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	if (fd_path(fd, src) || csi_path_below(src, point)) {
		csi_fail(st, CSI_INVALID_ARGUMENT,
			 "fluid_sub_path %s escapes the volume through a symlink", r->sub_path);
		goto fail;
	}
	if (fstat(fd, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		csi_fail(st, CSI_FAILED_PRECONDITION, "%s is not a directory", path);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

/* A target that is mounted already: same source and mode is success (a
 * repeated call), a dead mount is removed, anything else is ALREADY_EXISTS.
 * Returns 1 if done, 0 to go on and mount (with the flags of the volume's
 * mount in *flags), -1 on error. */
static int check_existing(const struct csi_req *r, const char *point, const char *src,
			  const char *target, unsigned long *flags, struct csi_status *st)
{
	struct csi_mounts ms;
	const struct csi_mount *t, *v;
	char root[PATH_MAX];
	int ret = 0;

	if (csi_mounts_read(&ms)) {
		csi_fail(st, CSI_INTERNAL, "cannot read mountinfo");
		return -1;
	}
	t = csi_mounts_find(&ms, target);
	v = csi_mounts_find(&ms, point);
	*flags = v ? v->flags : 0;
	if (!t)
		goto out;
	if (is_stale(target)) {
		csi_log("target %s is a stale mount, cleaning it up", target);
		ret = unmount_all(target, st) ? -1 : 0;
		goto out;
	}
	if (!v) {	/* ensure_mounted() saw it a moment ago */
		csi_fail(st, CSI_FAILED_PRECONDITION, "fluid_path %s is no longer mounted", point);
		ret = -1;
		goto out;
	}
	/* The bind shows the volume's device and the path inside it as root. */
	snprintf(root, sizeof(root), "%s%s", strcmp(v->root, "/") ? v->root : "",
		 src + strlen(point));
	if (t->major == v->major && t->minor == v->minor &&
	    !strcmp(t->root, root[0] ? root : "/") && !(t->flags & MS_RDONLY) == !r->readonly) {
		ret = 1;
		goto out;
	}
	csi_fail(st, CSI_ALREADY_EXISTS,
		 "target_path %s is already mounted with a different source or mode", target);
	ret = -1;
out:
	csi_mounts_free(&ms);
	return ret;
}

static bool bind_mount(const struct csi_req *r, int sfd,
		       unsigned long src_flags, const char *target, struct csi_status *st)
{
	char from[64], to[64], real[PATH_MAX];
	unsigned long keep = src_flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME |
					  MS_NODIRATIME | MS_RELATIME);
	bool ok = false;
	int tfd;

	tfd = open(target, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (tfd < 0)
		return csi_fail(st, CSI_INTERNAL, "cannot open target_path %s: %s", target,
				strerror(errno));
	if (fd_path(tfd, real) || strcmp(real, target)) {
		csi_fail(st, CSI_INVALID_ARGUMENT, "target_path %s changed under us", target);
		goto out;
	}
	snprintf(from, sizeof(from), "/proc/self/fd/%d", sfd);
	snprintf(to, sizeof(to), "/proc/self/fd/%d", tfd);
	if (mount(from, to, NULL, MS_BIND, NULL) < 0) {
		csi_fail(st, CSI_INTERNAL, "bind mount on %s failed: %s", target, strerror(errno));
		goto out;
	}
	/* A bind mount takes its flags from a remount; keep nosuid etc. */
	if (r->readonly &&
	    mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, NULL) < 0) {
		csi_fail(st, CSI_INTERNAL, "read-only remount of %s failed: %s", target,
			 strerror(errno));
		umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW);
		goto out;
	}
	ok = true;
out:
	close(tfd);
	return ok;
}

static bool node_publish(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct csi_dataset ds;
	char config[PATH_MAX], point[PATH_MAX], src[PATH_MAX], target[PATH_MAX];
	unsigned long src_flags = 0;
	bool have, started, ok = false;
	int sfd = -1, err, done;

	if (!load_dataset(csi, r, &ds, config, &have, st))
		return false;
	if (!ensure_mounted(csi, r, have ? &ds : NULL, config, point, &started, st))
		goto out;
	sfd = open_source(r, point, src, st);
	if (sfd < 0)
		goto out;
	err = mkdir_p(r->target, 0750);
	if (!err)
		err = canonical(r->target, csi->kubelet_root, target);
	if (err == -EXDEV) {
		csi_fail(st, CSI_INVALID_ARGUMENT,
			 "target_path %s leads outside --kubelet-root through a symlink", r->target);
		goto out;
	}
	if (err) {
		csi_fail(st, CSI_INTERNAL, "cannot create target_path %s: %s", r->target,
			 strerror(-err));
		goto out;
	}
	done = check_existing(r, point, src, target, &src_flags, st);
	if (done) {
		ok = done > 0;
		goto out;
	}
	if (!bind_mount(r, sfd, src_flags, target, st))
		goto out;
	csi_log("volume %s published at %s%s", r->volume_id, target, r->readonly ? " (ro)" : "");
	ok = true;
out:
	if (sfd >= 0)
		close(sfd);
	csi_dataset_free(&ds);
	return ok;
}

static bool node_unpublish(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	char target[PATH_MAX];
	int err;

	err = canonical(r->target, csi->kubelet_root, target);
	if (err == -ENOENT)
		return true;	/* the parent is gone, so is the target */
	if (err == -EXDEV)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"target_path %s leads outside --kubelet-root through a symlink",
				r->target);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot resolve target_path %s: %s", r->target,
				strerror(-err));
	if (unmount_all(target, st))
		return false;
	if (rmdir(target) < 0 && errno != ENOENT)
		return csi_fail(st, CSI_INTERNAL, "cannot remove target_path %s: %s", target,
				strerror(errno));
	csi_log("volume %s unpublished from %s", r->volume_id, target);
	return true;
}

/* ---- stats ----------------------------------------------------------------- */

static bool pack(const ProtobufCMessage *m, uint8_t **resp, size_t *len, struct csi_status *st)
{
	*len = protobuf_c_message_get_packed_size(m);
	*resp = malloc(*len ? *len : 1);
	if (!*resp)
		return csi_fail(st, CSI_INTERNAL, "out of memory");
	protobuf_c_message_pack(m, *resp);
	return true;
}

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

static bool node_stats(struct csi *csi, const struct csi_req *r, uint8_t **resp, size_t *len,
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

	err = canonical(r->target, csi->kubelet_root, path);
	if (err == -ENOENT)
		return csi_fail(st, CSI_NOT_FOUND, "volume_path %s does not exist", r->target);
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
	return pack(&out.base, resp, len, st);
}

/* ---- dispatch -------------------------------------------------------------- */

static bool identity(struct csi *csi, enum csi_op op, uint8_t **resp, size_t *len,
		     struct csi_status *st)
{
	switch (op) {
	case CSI_GET_PLUGIN_INFO: {
		Csi__V1__GetPluginInfoResponse m = CSI__V1__GET_PLUGIN_INFO_RESPONSE__INIT;

		m.name = (char *)csi->cfg.driver_name;
		m.vendor_version = PACKAGE_VERSION;
		return pack(&m.base, resp, len, st);
	}
	case CSI_GET_PLUGIN_CAPABILITIES: {
		/* No CONTROLLER_SERVICE: a node-only plugin. */
		Csi__V1__GetPluginCapabilitiesResponse m =
			CSI__V1__GET_PLUGIN_CAPABILITIES_RESPONSE__INIT;

		return pack(&m.base, resp, len, st);
	}
	case CSI_PROBE: {
		Csi__V1__ProbeResponse m = CSI__V1__PROBE_RESPONSE__INIT;
		Csi__V1__BoolValue ready = CSI__V1__BOOL_VALUE__INIT;

		ready.value = true;
		m.ready = &ready;
		return pack(&m.base, resp, len, st);
	}
	case CSI_NODE_GET_INFO: {
		Csi__V1__NodeGetInfoResponse m = CSI__V1__NODE_GET_INFO_RESPONSE__INIT;

		m.node_id = (char *)csi->cfg.node_id;
		return pack(&m.base, resp, len, st);
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
		return pack(&m.base, resp, len, st);
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
		ok = r.op == CSI_NODE_STAGE ? node_stage(csi, &r, st) :
		     r.op == CSI_NODE_UNSTAGE ? node_unstage(csi, &r, st) :
		     r.op == CSI_NODE_PUBLISH ? node_publish(csi, &r, st) :
		     node_unpublish(csi, &r, st);
		busy_drop(csi, r.volume_id, target);
		if (ok)
			pack(&empty.base, resp, resp_len, st);	/* all four replies are empty */
		else
			csi_log("%s %s failed: %s", method, r.volume_id, st->msg);
		break;
	case CSI_NODE_GET_VOLUME_STATS:
		node_stats(csi, &r, resp, resp_len, st);
		break;
	default:
		identity(csi, r.op, resp, resp_len, st);
		break;
	}
	csi_req_free(&r);
}
