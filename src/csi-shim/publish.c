/*
 * publish.c - NodePublishVolume and NodeUnpublishVolume: bind mounts of
 * fluid_path[/fluid_sub_path] onto pod target paths. Bind mounts go through
 * O_PATH descriptors and /proc/self/fd, so a symlink swapped in after our
 * checks cannot redirect them. Unpublishing removes every mount stacked on a
 * target (Fluid's recovery stacked binds, fluid#5416).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/csi-shim/csi_int.h"

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

/* A target that is mounted already: same source and mode for the same volume
 * id is success (a repeated call), a dead mount is removed, anything else is
 * ALREADY_EXISTS. Two volume ids that share a fluid_path make identical
 * binds: the target's publish record tells them apart. Returns 1 if done, 0
 * to go on and mount (with the flags of the volume's mount in *flags), -1 on
 * error. */
static int check_existing(struct csi *csi, const struct csi_req *r, const char *point,
			  const char *src, const char *target, unsigned long *flags,
			  struct csi_status *st)
{
	struct csi_mounts ms;
	const struct csi_mount *t, *v;
	char root[PATH_MAX], owner[CSI_MAX_ID + 1];
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
	if (csi_is_stale(target)) {
		csi_log("target %s is a stale mount, cleaning it up", target);
		ret = csi_unmount_all(target, st) ? -1 : 0;
		goto out;
	}
	if (!v) {	/* csi_ensure_mounted() saw it a moment ago */
		csi_fail(st, CSI_FAILED_PRECONDITION, "fluid_path %s is no longer mounted", point);
		ret = -1;
		goto out;
	}
	/* The bind shows the volume's device and the path inside it as root. */
	snprintf(root, sizeof(root), "%s%s", strcmp(v->root, "/") ? v->root : "",
		 src + strlen(point));
	if (t->major != v->major || t->minor != v->minor ||
	    strcmp(t->root, root[0] ? root : "/") || !(t->flags & MS_RDONLY) != !r->readonly) {
		csi_fail(st, CSI_ALREADY_EXISTS,
			 "target_path %s is already mounted with a different source or mode", target);
		ret = -1;
	} else if (!csi_pub_load(csi, target, owner) && strcmp(owner, r->volume_id)) {
		csi_fail(st, CSI_ALREADY_EXISTS, "target_path %s already holds volume %s", target,
			 owner);
		ret = -1;
	} else {
		ret = 1;	/* no record: published before the plugin kept them */
	}
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

/* Publish restarted a proxy that died: unstaging must know it is ours. */
static void note_started(struct csi *csi, const struct csi_req *r, const char *point)
{
	struct csi_vol vs;
	int err;

	if (csi_vol_load(csi, r->volume_id, &vs) || strcmp(vs.fluid_path, point) || vs.started)
		return;
	vs.started = true;
	err = csi_vol_save(csi, r->volume_id, &vs);
	if (err)
		csi_log("cannot save volume state of %s in %s: %s", r->volume_id,
			csi->cfg.state_dir, strerror(-err));
}

bool csi_node_publish(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	struct csi_dataset ds;
	char config[PATH_MAX], point[PATH_MAX], src[PATH_MAX], target[PATH_MAX];
	unsigned long src_flags = 0;
	bool have, started, ok = false;
	int sfd = -1, err, done;

	if (!csi_load_dataset(csi, r, &ds, config, &have, st))
		return false;
	if (!csi_fluid_claim(csi, r, point, st)) {
		csi_dataset_free(&ds);
		return false;
	}
	if (!csi_ensure_mounted(csi, r, have ? &ds : NULL, config, point, &started, st))
		goto out;
	if (started)
		note_started(csi, r, point);
	sfd = open_source(r, point, src, st);
	if (sfd < 0)
		goto out;
	err = csi_mkdir_p(r->target, 0750);
	if (!err)
		err = csi_path_canonical(r->target, csi->kubelet_root, target);
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
	done = check_existing(csi, r, point, src, target, &src_flags, st);
	if (done) {
		ok = done > 0;
		goto out;
	}
	/* The record first: a bind without one would be anybody's. */
	err = csi_pub_save(csi, target, r->volume_id);
	if (err) {
		csi_fail(st, CSI_INTERNAL, "cannot save the publish record in %s: %s",
			 csi->cfg.state_dir, strerror(-err));
		goto out;
	}
	if (!bind_mount(r, sfd, src_flags, target, st)) {
		csi_pub_remove(csi, target);
		goto out;
	}
	csi_log("volume %s published at %s%s", r->volume_id, target, r->readonly ? " (ro)" : "");
	ok = true;
out:
	if (sfd >= 0)
		close(sfd);
	csi_fluid_drop(csi, point);
	csi_dataset_free(&ds);
	return ok;
}

bool csi_node_unpublish(struct csi *csi, const struct csi_req *r, struct csi_status *st)
{
	char target[PATH_MAX];
	int err;

	err = csi_path_canonical(r->target, csi->kubelet_root, target);
	if (err == -EXDEV)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"target_path %s leads outside --kubelet-root through a symlink",
				r->target);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot resolve target_path %s: %s", r->target,
				strerror(-err));
	if (csi_unmount_all(target, st))
		return false;
	if (rmdir(target) < 0 && errno != ENOENT)
		return csi_fail(st, CSI_INTERNAL, "cannot remove target_path %s: %s", target,
				strerror(errno));
	err = csi_pub_remove(csi, target);
	if (err)
		return csi_fail(st, CSI_INTERNAL, "cannot remove the publish record of %s: %s",
				target, strerror(-err));
	csi_log("volume %s unpublished from %s", r->volume_id, target);
	return true;
}
