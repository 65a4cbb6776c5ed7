/*
 * fs/mount.c - one mounted proxy: state directory, FUSE session, lifecycle.
 *
 * Order matters: we mount first and daemonize right after, so that `mount`
 * returns at once; threads (engine supervisor, watchdog, control socket)
 * start only in the daemon, since fork() keeps just the calling thread.
 * The engine itself is not started here at all: the first real access
 * does that.
 */
#include "config.h"

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs/fs_int.h"

void fs_mount_id(const char *mountpoint, char id[17])
{
	snprintf(id, 17, "%016llx",
		 (unsigned long long)XXH3_64bits(mountpoint, strlen(mountpoint)));
}

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	size_t len = strlen(path);

	if (len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -errno;
	return 0;
}

static int ctl_handler(void *arg, const char *cmd, char **reply)
{
	struct fs *fs = arg;

	if (!strcmp(cmd, "status")) {
		*reply = fs_engine_status(fs->engine);
		return *reply ? 0 : -ENOMEM;
	}
	if (asprintf(reply, "error: unknown command '%.64s'\n", cmd) < 0)
		*reply = NULL;
	return -EINVAL;
}

int fs_new(struct fs **out, struct fs_opts *o, char *err, size_t errlen)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	char **argv = NULL, **env = NULL, *logpath = NULL;
	int ret;

	if (!fs)
		return -ENOMEM;
	fs->o = o;
	pthread_mutex_init(&fs->root_lock, NULL);
	fs_mount_id(o->mountpoint, fs->id);
	if (asprintf(&fs->dir, "%s/%s", o->state_dir, fs->id) < 0 ||
	    asprintf(&fs->journal_dir, "%s/journal", fs->dir) < 0 ||
	    asprintf(&logpath, "%s/lazarusfs.log", fs->dir) < 0) {
		ret = -ENOMEM;
		goto out_free;
	}
	if ((ret = mkdir_p(fs->dir, 0700)) || chmod(fs->dir, 0700) ||
	    (ret = mkdir_p(fs->journal_dir, 0700))) {
		ret = ret ? ret : -errno;
		snprintf(err, errlen, "%s: state directory %s", strerror(-ret), fs->dir);
		goto out_free;
	}
	/* a bad template or env file is a mount-time error, not a surprise later */
	if ((ret = fs_profile_argv(o, "/", fs->id, &argv, &env, err, errlen)))
		goto out_free;
	fs_strv_free(argv);
	fs_strv_free(env);
	env = NULL;
	if (o->engine_env && (ret = fs_envfile_read(o->engine_env, &env, err, errlen)))
		goto out_free;
	fs_strv_free(env);
	if ((ret = fs_log_init(o->foreground ? FS_LOG_DEBUG : FS_LOG_WARN, false,
				 logpath, o->debug))) {
		snprintf(err, errlen, "%s: log file %s", strerror(-ret), logpath);
		goto out_free;
	}
	if ((ret = fs_inode_table_new(&fs->inodes)) ||
	    (ret = fs_handle_table_new(&fs->handles)) ||
	    (ret = fs_engine_new(&fs->engine, o, fs->id, fs->dir, fs_recover_handles, fs))) {
		snprintf(err, errlen, "out of memory");
		goto out_free;
	}
	/* root attributes until the engine first answers: the mountpoint's own */
	if (stat(o->mountpoint, &fs->root_stat)) {
		ret = -errno;
		snprintf(err, errlen, "%s: mountpoint %s", strerror(-ret), o->mountpoint);
		goto out_free;
	}
	fs->root_statvfs.f_bsize = fs->root_statvfs.f_frsize = 4096;
	fs->root_statvfs.f_namemax = 255;
	free(logpath);
	*out = fs;
	return 0;
out_free:
	free(logpath);
	fs_free(fs);
	return ret;
}

int fs_run(struct fs *fs, int fuse_argc, char **fuse_argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(fuse_argc, fuse_argv);
	struct fuse_loop_config *cfg = NULL;
	char sock[4200], masked[512];
	int ret;

	fs->se = fuse_session_new(&args, fs_ops(), sizeof(struct fuse_lowlevel_ops), fs);
	if (!fs->se) {
		fs_log(FS_LOG_ERR, "invalid mount options (see above), nothing mounted");
		return -EINVAL;
	}
	snprintf(sock, sizeof(sock), "%s/ctl.sock", fs->dir);
	/* refuse a second proxy on the same mount point before mounting */
	{
		char *probe = NULL;

		if (!fs_ctl_request(sock, "status", &probe, 500)) {
			free(probe);
			fs_log(FS_LOG_ERR, "already mounted: a lazarusfs proxy serves %s",
			       fs->o->mountpoint);
			ret = -EBUSY;
			goto out_destroy;
		}
	}
	if (fuse_set_signal_handlers(fs->se)) {
		ret = -EIO;
		goto out_destroy;
	}
	if (fuse_session_mount(fs->se, fs->o->mountpoint)) {
		fs_log(FS_LOG_ERR, "mount failed at %s", fs->o->mountpoint);
		ret = -EIO;
		goto out_signals;
	}
	fs_mask_secret(fs->o->source, masked, sizeof(masked));
	fs_log(FS_LOG_INFO, "mounted %s at %s (engine %s, id %s), engine starts on first access",
	       masked, fs->o->mountpoint, fs_profile_name(fs->o->profile), fs->id);
	if (fuse_daemonize(fs->o->foreground)) {
		ret = -EIO;
		goto out_unmount;
	}
	if (!fs->o->foreground) {
		char logpath[4200];

		snprintf(logpath, sizeof(logpath), "%s/lazarusfs.log", fs->dir);
		fs_log_init(-1, true, logpath, fs->o->debug);
	}
	if ((ret = fs_engine_start_threads(fs->engine))) {
		fs_log(FS_LOG_ERR, "%s: cannot start engine supervisor", strerror(-ret));
		goto out_unmount;
	}
	if ((ret = fs_ctl_new(&fs->ctl, sock, ctl_handler, fs)))
		fs_log(FS_LOG_WARN, "%s: no control socket at %s", strerror(-ret), sock);

	cfg = fuse_loop_cfg_create();
	if (!cfg) {
		ret = -ENOMEM;
		goto out_engine;
	}
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	fuse_loop_cfg_set_max_threads(cfg, 64);
	fuse_loop_cfg_set_idle_threads(cfg, 16);
	ret = fuse_session_loop_mt(fs->se, cfg);
	ret = ret < 0 ? ret : 0;
	fuse_loop_cfg_destroy(cfg);
	fs_log(FS_LOG_INFO, "unmounting %s", fs->o->mountpoint);
out_engine:
	fs_ctl_free(fs->ctl);
	fs->ctl = NULL;
	fs_engine_shutdown(fs->engine);
out_unmount:
	fuse_session_unmount(fs->se);
out_signals:
	fuse_remove_signal_handlers(fs->se);
out_destroy:
	fuse_session_destroy(fs->se);
	fs->se = NULL;
	return ret;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	fs_engine_free(fs->engine);
	fs_handle_table_free(fs->handles);
	fs_inode_table_free(fs->inodes);
	pthread_mutex_destroy(&fs->root_lock);
	free(fs->journal_dir);
	free(fs->dir);
	free(fs);
	fs_log_release();
}
