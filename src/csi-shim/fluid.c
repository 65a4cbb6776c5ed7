/*
 * fluid.c - the FUSE mount at fluid_path. A FUSE mount that is already there
 * (fstab, Fluid's FUSE DaemonSet, an earlier stage, a proxy that an earlier
 * instance of this plugin started) is left alone; otherwise we start
 * `lazarusfs -o OPTS SOURCE fluid_path`, which daemonizes once mounted. A
 * stale mount (ENOTCONN) is detached first. Mount decisions come from
 * /proc/self/mountinfo, never from stat() of a mount point, which fails or
 * hangs on a dead FUSE mount.
 *
 * The launcher (--launcher) is a command put in front of that argv so that
 * the proxy, and the holder it leaves behind, live outside the plugin's pod
 * (`systemd-run --scope ...`: a scope of the host's systemd, which deleting
 * the pod does not touch). We wait only for the launcher's exit status, as
 * for lazarusfs's own: a launcher must return once lazarusfs has returned.
 * On the mount timeout we kill the launcher, not what it started, which may
 * no longer be ours to kill (a later stage or publish finds its mount).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "src/csi-shim/csi_int.h"

extern char **environ;

/* ---- the launcher --------------------------------------------------------- */

#define LAUNCHER_ID "{id}"

/* The first "{name}" in word other than {id}, or NULL; *len gets its length. */
static const char *unknown_placeholder(const char *word, int *len)
{
	const char *p, *e;

	for (p = strchr(word, '{'); p; p = strchr(p + 1, '{')) {
		for (e = p + 1; isalpha((unsigned char)*e) || *e == '_'; e++)
			;
		if (e > p + 1 && *e == '}' && strncmp(p, LAUNCHER_ID, e + 1 - p)) {
			*len = (int)(e + 1 - p);
			return p;
		}
	}
	return NULL;
}

int csi_launcher_parse(const char *s, char ***words, struct csi_status *st)
{
	char **v = NULL, **nv;
	const char *bad;
	size_t n = 0, len;
	int blen;

	*words = NULL;
	for (;; s += len) {
		s += strspn(s, " \t");
		len = strcspn(s, " \t");
		if (!len)
			break;
		nv = realloc(v, (n + 2) * sizeof(*v));
		if (!nv || !(nv[n] = strndup(s, len))) {
			csi_launcher_free(nv ? nv : v);
			csi_fail(st, CSI_INTERNAL, "out of memory");
			return -ENOMEM;
		}
		v = nv;
		v[++n] = NULL;
		bad = unknown_placeholder(v[n - 1], &blen);
		if (bad) {
			csi_fail(st, CSI_INVALID_ARGUMENT,
				 "unknown placeholder %.*s in --launcher (known: " LAUNCHER_ID ")",
				 blen, bad);
			csi_launcher_free(v);
			return -EINVAL;
		}
	}
	*words = v;
	return 0;
}

void csi_launcher_free(char **words)
{
	for (size_t i = 0; words && words[i]; i++)
		free(words[i]);
	free(words);
}

/* word with every {id} replaced by id, malloc'd; NULL when out of memory. */
static char *launcher_word(const char *word, const char *id)
{
	size_t il = strlen(LAUNCHER_ID), n = 0;
	const char *p;
	char *out, *o;

	for (p = word; (p = strstr(p, LAUNCHER_ID)); p += il)
		n++;
	out = malloc(strlen(word) + n * strlen(id) + 1);	/* id is longer than {id} */
	if (!out)
		return NULL;
	for (o = out, p = word; *p;) {
		if (!strncmp(p, LAUNCHER_ID, il)) {
			o = stpcpy(o, id);
			p += il;
		} else {
			*o++ = *p++;
		}
	}
	*o = '\0';
	return out;
}

/* ---- starting lazarusfs ------------------------------------------------------- */

/* Runs [launcher...] lazarusfs, which returns once it has mounted point and
 * daemonized. */
static bool run_lazarusfs(struct csi *csi, const struct csi_dataset *ds, const char *engine,
			  const char *point, struct csi_status *st)
{
	char *opts = NULL;
	char **argv, **lz, id[17];
	size_t nl = 0, i;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, dfl;
	struct timespec nap = { 0, 50 * 1000 * 1000 };
	time_t deadline = time(NULL) + csi->cfg.mount_timeout;
	pid_t pid;
	int status, err;
	bool ok = false;

	while (csi->launcher && csi->launcher[nl])
		nl++;
	argv = calloc(nl + 6, sizeof(*argv));
	/* state_dir goes last so the control socket is where we look for it. */
	if (!argv || asprintf(&opts, "engine=%s%s%s,state_dir=%s", engine,
			      ds->options ? "," : "", ds->options ? ds->options : "",
			      csi->cfg.state_dir) < 0) {
		free(argv);
		return csi_fail(st, CSI_INTERNAL, "out of memory");
	}
	csi_proxy_id(point, id);
	for (i = 0; i < nl; i++)
		if (!(argv[i] = launcher_word(csi->launcher[i], id))) {
			csi_fail(st, CSI_INTERNAL, "out of memory");
			goto out;
		}
	lz = argv + nl;
	lz[0] = (char *)csi->cfg.lazarusfs;
	lz[1] = "-o";
	lz[2] = opts;
	lz[3] = ds->source;
	lz[4] = (char *)point;
	lz[5] = NULL;
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
	csi_log("starting lazarusfs at %s (engine=%s%s%s)", point, engine,
		nl ? ", launcher " : "", nl ? argv[0] : "");
	err = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (err) {
		csi_fail(st, CSI_FAILED_PRECONDITION, "cannot run %s: %s", argv[0], strerror(err));
		goto out;
	}
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (time(NULL) >= deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			csi_fail(st, CSI_INTERNAL, "lazarusfs did not mount %s within %d s", point,
				 csi->cfg.mount_timeout);
			goto out;
		}
		nanosleep(&nap, NULL);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		csi_fail(st, CSI_INTERNAL, "%s failed to mount %s (%s %d); see its log",
			 nl ? "the launcher of lazarusfs" : "lazarusfs", point,
			 WIFEXITED(status) ? "exit status" : "signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
		goto out;
	}
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
		csi_fail(st, CSI_INTERNAL, "lazarusfs exited but %s is not mounted", point);
out:
	for (i = 0; i < nl; i++)
		free(argv[i]);
	free(argv);
	free(opts);
	return ok;
}

bool csi_fluid_claim(struct csi *csi, const struct csi_req *r, char point[PATH_MAX],
		     struct csi_status *st)
{
	int err = csi_path_canonical(r->fluid_path, csi->mount_root, point);

	if (err == -EXDEV)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"fluid_path %s leads outside --mount-root through a symlink",
				r->fluid_path);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot resolve fluid_path %s: %s", r->fluid_path,
				strerror(-err));
	return csi_fluid_take(csi, point, st);
}

/*
 * Makes sure a healthy FUSE filesystem is mounted at point. When nothing is
 * mounted it starts lazarusfs if the dataset has a config (ds, may be NULL);
 * otherwise stage fails and publish waits for someone else to mount it (as
 * Fluid does).
 */
bool csi_ensure_mounted(struct csi *csi, const struct csi_req *r,
			const struct csi_dataset *ds, const char *config,
			const char *point, bool *started, struct csi_status *st)
{
	time_t deadline = time(NULL) + csi->cfg.mount_timeout;
	struct timespec nap = { 0, 200 * 1000 * 1000 };
	char again[PATH_MAX];
	struct csi_mounts ms;
	const struct csi_mount *m;
	const char *engine;
	int err;

	*started = false;
	if (csi_is_stale(point)) {
		csi_log("fluid_path %s is a stale mount, cleaning it up", point);
		if (csi_unmount_all(point, st))
			return false;
	}
	err = csi_mkdir_p(point, 0755);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot create fluid_path %s: %s", point,
				strerror(-err));
	/* A symlink swapped in since csi_fluid_claim() would move the mount. */
	err = csi_path_canonical(point, csi->mount_root, again);
	if (err || strcmp(again, point))
		return csi_fail(st, CSI_INVALID_ARGUMENT, "fluid_path %s changed under us",
				r->fluid_path);
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

bool csi_load_dataset(struct csi *csi, const struct csi_req *r, struct csi_dataset *ds,
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
