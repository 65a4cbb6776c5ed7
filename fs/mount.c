/*
 * fs/mount.c - one mounted proxy: state directory, FUSE session, lifecycle.
 *
 * Order matters: we mount first and daemonize right after, so that `mount`
 * returns at once; threads (engine supervisor, watchdog, control socket)
 * start only in the daemon, since fork() keeps just the calling thread.
 * The engine itself is not started here at all: the first real access
 * does that.
 *
 * The block cache has threads too (mover, prefetcher), so it follows the
 * same rule: fs_new() builds it once to report a bad tier directory before
 * anything is mounted, and, when we are going to daemonize, frees it again
 * (from a helper thread, so that no io_uring ring of it stays behind in
 * the thread that forks); fs_run() builds it for real in the daemon.
 * With a cache, fs/prom.c writes its Prometheus textfile.
 */
#include "config.h"

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <pthread.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs/fs_int.h"
#include "fs/passthrough.h"
#include "fs/takeover.h"


/* What the persisted metadata cache belongs to: engine and source. */
static uint64_t meta_tag(const struct fs_opts *o)
{
	XXH3_state_t *st = XXH3_createState();
	const char *p = fs_profile_name(o->profile);
	uint64_t h = 0;

	if (!st)
		return 0;
	XXH3_64bits_reset(st);
	XXH3_64bits_update(st, p, strlen(p) + 1);
	XXH3_64bits_update(st, o->source, strlen(o->source) + 1);
	if (o->engine_cmd)
		XXH3_64bits_update(st, o->engine_cmd, strlen(o->engine_cmd) + 1);
	h = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return h;
}

static void cache_log(enum tier_log_level level, const char *msg)
{
	enum fs_log_level l = level == TIER_LOG_ERR ? FS_LOG_ERR : level == TIER_LOG_WARN ? FS_LOG_WARN :
			      level == TIER_LOG_INFO ? FS_LOG_INFO : FS_LOG_DEBUG;

	fs_log(l, "%s", msg);
}

struct cache_probe {
	struct fs *fs;
	char *err;
	size_t errlen;
	int ret;
};

/* Build and drop the cache in a thread of its own: its ring goes with it. */
static void *cache_probe_main(void *arg)
{
	struct cache_probe *p = arg;
	struct cache *c = NULL;

	p->ret = cache_new(&c, &p->fs->o->cache, p->fs->dir, p->err, p->errlen);
	cache_free(c);
	return NULL;
}

/* cache wait hooks: a reader waiting for a prefetch is inside the engine */
static void cache_wait_begin(void *arg)
{
	fs_engine_watch_begin(arg);
}

static void cache_wait_end(void *arg)
{
	fs_engine_watch_end(arg);
}

static int cache_start(struct fs *fs, bool probe_only, char *err, size_t errlen)
{
	pthread_t t;
	int ret;

	if (probe_only) {
		struct cache_probe pr = { .fs = fs, .err = err, .errlen = errlen };

		if ((ret = -pthread_create(&t, NULL, cache_probe_main, &pr))) {
			snprintf(err, errlen, "cannot start a thread: %s", strerror(-ret));
			return ret;
		}
		pthread_join(t, NULL);
		return pr.ret;
	}
	if ((ret = cache_new(&fs->cache, &fs->o->cache, fs->dir, err, errlen)))
		return ret;
	cache_set_wait_hooks(fs->cache, cache_wait_begin, cache_wait_end, fs->engine);
	return 0;
}

/* The mount's textfile (fs/prom.c). */
static void prom_start(struct fs *fs)
{
	char *path;
	int ret;

	if (asprintf(&path, "%s/lazarusfs_%s.prom", fs->o->state_dir, fs->id) < 0)
		return;
	if ((ret = fs_prom_new(&fs->prom, fs, path)))
		fs_log(FS_LOG_WARN, "no prometheus textfile: %s", strerror(-ret));
	free(path);
}

/*
 * Our own worker pool instead of fuse_session_loop_mt(): the loop in
 * Debian's libfuse 3.14.0 retires its worker after every request (its
 * max_idle check treats the default -1 as "retire"), so each request paid
 * for a thread start and a /dev/fuse clone; metadata rates were a tenth of
 * the engine's.  WORKERS threads read /dev/fuse for the whole mount.  The
 * main thread sleeps until the session exits (unmount, or SIGTERM through
 * libfuse's handlers, which only this thread takes), then wakes every
 * worker out of its read with SIGUSR1 (a handler without SA_RESTART, so
 * the read returns EINTR) until all have seen the exit, and joins them.
 * The /dev/fuse fd is closed only after that (fuse_session_unmount), never
 * under a reader.  A worker still waiting for an engine restart is freed by
 * shutting the engine down, which fails such waits with EIO.
 */
#define WORKERS 16

struct pool {
	struct fuse_session *se;
	atomic_int running;     /* workers that have not returned */
};

static void *worker_main(void *arg)
{
	struct pool *p = arg;
	struct fuse_buf buf = { .mem = NULL };

	while (!fuse_session_exited(p->se)) {
		int res = fuse_session_receive_buf(p->se, &buf);

		if (res == -EINTR)
			continue;
		if (res <= 0) {
			fuse_session_exit(p->se);
			break;
		}
		fuse_session_process_buf(p->se, &buf);
	}
	free(buf.mem);
	atomic_fetch_sub(&p->running, 1);
	return NULL;
}

static void wake_handler(int sig)
{
	(void)sig;      /* only interrupts a blocking read */
}

static int serve(struct fs *fs)
{
	struct sigaction sa = { .sa_handler = wake_handler };
	struct pool p = { .se = fs->se };
	pthread_t tid[WORKERS];
	sigset_t block, old;
	int n = 0, ret = 0;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	for (; n < WORKERS; n++) {
		atomic_fetch_add(&p.running, 1);
		ret = -pthread_create(&tid[n], NULL, worker_main, &p);
		if (ret) {
			atomic_fetch_sub(&p.running, 1);
			break;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!n) {
		fs_log(FS_LOG_ERR, "cannot start request threads: %s", strerror(-ret));
		return ret;
	}
	while (!fuse_session_exited(fs->se))
		usleep(100000);
	for (int round = 0; atomic_load(&p.running) > 0; round++) {
		/* 2 s: someone waits for the engine (an upgrade waits for it) */
		if (round == 20 && !atomic_load(&fs->upgrading))
			fs_engine_shutdown(fs->engine);
		for (int i = 0; i < n; i++)
			pthread_kill(tid[i], SIGUSR1);
		usleep(100000);
	}
	for (int i = 0; i < n; i++)
		pthread_join(tid[i], NULL);
	return 0;
}

/* Root owner and mode as the engine last reported them (see ops.c). */
void fs_root_attr_save(struct fs *fs, const struct stat *st)
{
	char path[4200], tmp[4210];
	FILE *f;

	snprintf(path, sizeof(path), "%s/root.attr", fs->dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return;
	fprintf(f, "%o %u %u\n", (unsigned)st->st_mode, (unsigned)st->st_uid,
		(unsigned)st->st_gid);
	if (fclose(f) || rename(tmp, path))
		unlink(tmp);
}

void fs_root_attr_load(struct fs *fs)
{
	unsigned mode, uid, gid;
	char path[4200];
	FILE *f;

	snprintf(path, sizeof(path), "%s/root.attr", fs->dir);
	f = fopen(path, "re");
	if (!f)
		return;
	if (fscanf(f, "%o %u %u", &mode, &uid, &gid) == 3 && S_ISDIR(mode)) {
		fs->root_stat.st_mode = mode;
		fs->root_stat.st_uid = uid;
		fs->root_stat.st_gid = gid;
	}
	fclose(f);
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
	pthread_mutex_init(&fs->moves_lock, NULL);
	fs_mount_id(o->mountpoint, fs->id);
	if (asprintf(&fs->dir, "%s/%s", o->state_dir, fs->id) < 0 ||
	    asprintf(&fs->journal_dir, "%s/journal", fs->dir) < 0 ||
	    asprintf(&logpath, "%s/lazarusfs.log", fs->dir) < 0) {
		ret = -ENOMEM;
		goto out_free;
	}
	if ((ret = fs_mkdir_p(fs->dir, 0700)) || chmod(fs->dir, 0700) ||
	    (ret = fs_mkdir_p(fs->journal_dir, 0700))) {
		ret = ret ? ret : -errno;
		snprintf(err, errlen, "cannot create state directory: %s: %s", fs->dir, strerror(-ret));
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
		snprintf(err, errlen, "cannot open log file: %s: %s", logpath, strerror(-ret));
		goto out_free;
	}
	if ((ret = fs_inode_table_new(&fs->inodes)) ||
	    (ret = fs_pt_new(&fs->pt)) ||
	    (ret = fs_handle_table_new(&fs->handles, fs->journal_dir, fs_opts_journals(o))) ||
	    (ret = fs_engine_new(&fs->engine, o, fs->id, fs->dir, fs_recover_handles, fs))) {
		snprintf(err, errlen, "out of memory");
		goto out_free;
	}
	/* the metadata cache, and what the last proxy of this mount knew;
	 * with a block cache also at meta_ttl=0, its entries expired at once
	 * but kept as the last attributes seen for the offline service (the
	 * kernel may forget an inode, and with it the attributes it held) */
	if (o->meta_ttl > 0 || cache_config_ntiers(&o->cache)) {
		char mpath[4200];

		if ((ret = fs_meta_new(&fs->meta, o->meta_ttl, o->meta_max))) {
			snprintf(err, errlen, "out of memory");
			goto out_free;
		}
		snprintf(mpath, sizeof(mpath), "%s/meta.cache", fs->dir);
		fs_meta_load(fs->meta, mpath, meta_tag(o));
	}
	/* root attributes until the engine first answers: the mountpoint's own
	 * (a successor's mountpoint is its own mount, which nobody serves yet:
	 * root.attr has what the dead worker saw) */
	if (fs_tko_is_successor()) {
		fs->root_stat.st_mode = S_IFDIR | 0755;
		fs->root_stat.st_nlink = 2;
	} else if (stat(o->mountpoint, &fs->root_stat)) {
		ret = -errno;
		snprintf(err, errlen, "cannot use mountpoint: %s: %s", o->mountpoint, strerror(-ret));
		goto out_free;
	}
	fs->root_statvfs.f_bsize = fs->root_statvfs.f_frsize = 4096;
	fs->root_statvfs.f_namemax = 255;
	fs_root_attr_load(fs);
	/* a missing or read-only tier directory fails the mount, not a read */
	if (cache_config_ntiers(&o->cache)) {
		char cerr[400] = "";
		unsigned pt = o->hang_timeout >= 2 ? (unsigned)(o->hang_timeout / 2) : 1;

		/*
		 * Readers waiting for a prefetched block are under the hang
		 * watch (cache_wait_begin), but the prefetcher works through
		 * its queue one open at a time: bound its engine calls by half
		 * of hang_timeout so a frozen engine does not stall it longer
		 * than the watchdog takes to notice.
		 */
		if (o->hang_timeout > 0 && o->cache.prefetch && o->cache.prefetch_timeout > pt) {
			fs_log(FS_LOG_INFO, "prefetch_timeout lowered from %u to %u s (half of hang_timeout)",
			       o->cache.prefetch_timeout, pt);
			o->cache.prefetch_timeout = pt;
		}
		cache_set_log(cache_log);
		/* threads would stay behind in the holder if built before the
		 * takeover fork, or in the parent of daemonize() */
		if ((ret = cache_start(fs, !o->foreground || !o->no_takeover, cerr,
				       sizeof(cerr)))) {
			snprintf(err, errlen, "block cache: %s", cerr);
			goto out_free;
		}
	}
	free(logpath);
	*out = fs;
	return 0;
out_free:
	free(logpath);
	fs_free(fs);
	return ret;
}

/*
 * Go into the background (unless foreground): the parent waits until the
 * daemon reports with ready() and exits 0 when it is ready, 1 when it
 * failed or died first, so that `mount` returns only once the control
 * socket answers and the textfile exists.  *ready_fd is the daemon's end
 * (-1 in the foreground).
 */
static int daemonize(bool foreground, int *ready_fd)
{
	int p[2], nul;
	pid_t pid;

	*ready_fd = -1;
	if (foreground)
		return 0;
	if (pipe2(p, O_CLOEXEC))
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(p[0]);
		close(p[1]);
		return -errno;
	}
	if (pid > 0) {
		char c = 1;

		close(p[1]);
		while (read(p[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(c == 0 ? 0 : 1);
	}
	close(p[0]);
	if (setsid() < 0 || chdir("/"))
		fs_log(FS_LOG_WARN, "cannot detach from the terminal: %s", strerror(errno));
	nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		if (nul > 2)
			close(nul);
	}
	*ready_fd = p[1];
	return 0;
}

/* Tell the waiting parent how the start went (once). */
static void ready(int *fd, bool ok)
{
	char c = ok ? 0 : 1;

	if (*fd < 0)
		return;
	(void)!write(*fd, &c, 1);
	close(*fd);
	*fd = -1;
}

/*
 * Takeover (fs/takeover.c): the first worker forks the holder off right
 * after daemonizing (before any thread exists); a successor inherits the
 * session fd instead of mounting.  Both then read the session through
 * fs/session_io.c and log their inode and handle tables; a successor first
 * rebuilds them, adopts the engine, and serves the saved INIT on this
 * thread before any worker thread reads.
 */
static int takeover_begin(struct fs *fs, int *ready_fd)
{
	struct fs_tko *t = NULL;
	bool succ = fs_tko_is_successor();
	int ret;

	if (!succ && fs->o->no_takeover)
		goto no_takeover;
	if ((ret = fs_tko_start(fs, succ ? -1 : fuse_session_fd(fs->se), *ready_fd, &t))) {
		if (succ)
			return ret;
		fs_log(FS_LOG_WARN, "takeover off (a crash of the proxy loses the mount): %s",
		       strerror(-ret));
		goto no_takeover;
	}
	fs->tko = t;
	if ((ret = fs_session_io_install(fs, t->fusefd)))
		return ret;
	fs_engine_set_tko(fs->engine, t, t->sh->holder_pid);
	if ((ret = fs_inode_table_log(fs->inodes, t->ilog, succ)) ||
	    (ret = fs_handle_table_log(fs->handles, t->hlog, succ))) {
		fs_log(FS_LOG_ERR, "cannot %s the takeover state: %s", succ ? "restore" : "set up",
		       strerror(-ret));
		return ret;
	}
	if (succ) {
		char err[300] = "";
		int pid = atomic_load(&t->sh->engine_pid);
		struct fs_handle **v;
		size_t n = fs_handle_all(fs->handles, 0, &v);

		/* passthrough opens the kernel still has, with their backing ids */
		for (size_t i = 0; i < n; i++)
			if (!v[i]->dir && fs_pt_restore(fs, v[i]->ino, v[i]->pt, v[i]->backing))
				fs_log(FS_LOG_ERR, "cannot count passthrough open of inode %llu again",
				       (unsigned long long)v[i]->ino);
		fs_handle_put_all(fs->handles, v, n);
		fs_engine_count_handle(fs->engine, (int)n);
		fs_tko_load_counters(t, fs->engine);
		if (pid > 0 && (ret = fs_engine_adopt(fs->engine, pid, t->sh->engine_start,
						      t->sh->engine_gen, t->sh->backend, err,
						      sizeof(err))))
			fs_log(FS_LOG_WARN, "not adopting the engine: %s; starting a new one", err);
		fs_log(FS_LOG_WARN, "took over %s after a %s: %zu open handles, %zu inodes, engine %s",
		       fs->o->mountpoint,
		       atomic_load(&t->sh->reason) == FS_TKO_UPGRADE ? "proxy upgrade" : "proxy crash",
		       n, fs_inode_count(fs->inodes),
		       pid > 0 && !ret ? "adopted" : "not running");
	}
	return 0;
no_takeover:
	/* only passthrough may want our io then */
	if ((ret = fs_session_io_install(fs, fuse_session_fd(fs->se))))
		fs_log(FS_LOG_WARN, "passthrough off: cannot set the session's io: %s",
		       strerror(-ret));
	return 0;
}

/* A successor: libfuse sees the saved INIT (fs/session_io.c), then the
 * kernel resends what the dead worker had not answered. */
static int takeover_init(struct fs *fs)
{
	struct fuse_buf buf = { .mem = NULL };
	int ret, res;

	res = fuse_session_receive_buf(fs->se, &buf);
	if (res > 0)
		fuse_session_process_buf(fs->se, &buf);
	free(buf.mem);
	if (res <= 0 || fs_session_io_mismatch()) {
		fs_log(FS_LOG_ERR, "cannot take over: this proxy negotiates otherwise than the one that mounted (%s)",
		       res <= 0 ? "init not replayed" : "different INIT reply");
		return -EPROTO;
	}
	if ((ret = fs_session_io_resend(fs)))
		fs_log(FS_LOG_WARN, "cannot ask the kernel to resend unanswered requests (kernel before 6.9?): %s",
		       strerror(-ret));
	return 0;
}

/* A successor's mount is still at the mount point (not a newer one). */
static bool mounted_by_us(struct fs *fs)
{
	struct fs_mountinfo_dev dev;

	return fs->tko && fs_mountinfo_find(fs->o->mountpoint, "fuse.lazarusfs", &dev) > 0 &&
	       dev.major == fs->tko->sh->mnt_major && dev.minor == fs->tko->sh->mnt_minor;
}

int fs_run(struct fs *fs, int fuse_argc, char **fuse_argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(fuse_argc, fuse_argv);
	bool succ = fs_tko_is_successor();
	char sock[4200], masked[512];
	int ret, ready_fd = -1;

	fs->se = fuse_session_new(&args, fs_ops(), sizeof(struct fuse_lowlevel_ops), fs);
	if (!fs->se) {
		fs_log(FS_LOG_ERR, "invalid mount options (see above), nothing mounted");
		fuse_opt_free_args(&args);
		return -EINVAL;
	}
	snprintf(sock, sizeof(sock), "%s/ctl.sock", fs->dir);
	/* refuse a second proxy on the same mount point before mounting (the
	 * mount table, not the control socket: a proxy that is shutting down
	 * still answers there after its mount is gone) */
	if (!succ && fs_mountinfo_find(fs->o->mountpoint, "fuse.lazarusfs", NULL) > 0) {
		fs_log(FS_LOG_ERR, "already mounted: a lazarusfs proxy serves %s",
		       fs->o->mountpoint);
		ret = -EBUSY;
		goto out_destroy;
	}
	if (fuse_set_signal_handlers(fs->se)) {
		ret = -EIO;
		goto out_destroy;
	}
	if (!succ) {
		if (fuse_session_mount(fs->se, fs->o->mountpoint)) {
			fs_log(FS_LOG_ERR, "mount failed at %s", fs->o->mountpoint);
			ret = -EIO;
			goto out_signals;
		}
		fs_mask_secret(fs->o->source, masked, sizeof(masked));
		fs_log(FS_LOG_INFO, "mounted %s at %s (engine %s, id %s), engine starts on first access",
		       masked, fs->o->mountpoint, fs_profile_name(fs->o->profile), fs->id);
		if ((ret = daemonize(fs->o->foreground, &ready_fd))) {
			fs_log(FS_LOG_ERR, "cannot go into the background: %s", strerror(-ret));
			goto out_unmount;
		}
	}
	if (!fs->o->foreground || succ) {
		char logpath[4200];

		snprintf(logpath, sizeof(logpath), "%s/lazarusfs.log", fs->dir);
		fs_log_init(-1, true, logpath, fs->o->debug);
	}
	if ((ret = takeover_begin(fs, &ready_fd)))
		goto out_unmount;
	if (cache_config_ntiers(&fs->o->cache) && !fs->cache) {
		char cerr[400] = "";

		/* fs_new() checked it a moment ago: serve uncached rather than fail */
		if ((ret = cache_start(fs, false, cerr, sizeof(cerr))))
			fs_log(FS_LOG_ERR, "block cache disabled: %s", cerr);
	}
	if (succ && (ret = takeover_init(fs)))
		goto out_unmount;
	prom_start(fs);
	if ((ret = fs_engine_start_threads(fs->engine))) {
		fs_log(FS_LOG_ERR, "cannot start the engine supervisor: %s", strerror(-ret));
		goto out_unmount;
	}
	if ((ret = fs_closer_start(fs)))
		fs_log(FS_LOG_WARN, "cannot start the closer, releases close inline: %s",
		       strerror(-ret));
	if ((ret = fs_checkpointer_start(fs)))
		fs_log(FS_LOG_WARN, "cannot start the journal checkpointer, journal_age is not enforced: %s",
		       strerror(-ret));
	if ((ret = fs_ctl_new(&fs->ctl, sock, fs_ctl_handler, fs)))
		fs_log(FS_LOG_WARN, "cannot create control socket: %s: %s", sock, strerror(-ret));
	else if ((ret = fs_registry_add(fs, sock)))
		fs_log(FS_LOG_WARN, "cannot record the mount in the registry: %s: %s",
		       fs_registry_dir(), strerror(-ret));
	/* the control socket answers and the textfile exists: ready */
	ready(&ready_fd, true);
	if (fs->tko)
		atomic_store(&fs->tko->sh->serving, true);

	ret = serve(fs);
	if (!ret && atomic_load(&fs->upgrading)) {
		/* drained: the holder starts the next binary on the same mount */
		fs_log(FS_LOG_INFO, "drained for an upgrade of %s", fs->o->mountpoint);
		fs_engine_keep(fs->engine);
		fs_tko_save_counters(fs->tko, fs->engine);
		fs_handle_table_hand_over(fs->handles);
		fs_inode_table_log(fs->inodes, NULL, false);
		atomic_store(&fs->tko->sh->handover, true);
		ret = FS_TKO_EXIT_UPGRADE;
	} else {
		fs_registry_remove(fs);
		fs_log(FS_LOG_INFO, "unmounting %s", fs->o->mountpoint);
	}
	fs_checkpointer_stop(fs);
	fs_closer_stop(fs);
	if (fs->meta) {
		char mpath[4200];
		int r;

		snprintf(mpath, sizeof(mpath), "%s/meta.cache", fs->dir);
		if ((r = fs_meta_save(fs->meta, mpath, meta_tag(fs->o))))
			fs_log(FS_LOG_WARN, "cannot save the metadata cache: %s: %s", mpath,
			       strerror(-r));
	}
	fs_ctl_free(fs->ctl);
	fs->ctl = NULL;
	fs_engine_shutdown(fs->engine);
out_unmount:
	ready(&ready_fd, false);
	fs_prom_free(fs->prom);
	fs->prom = NULL;
	/* an upgrade keeps the mount, and so does a successor that failed to
	 * take over: the holder keeps it and tries again */
	if (ret == FS_TKO_EXIT_UPGRADE)
		;
	else if (!succ)
		fuse_session_unmount(fs->se);
	else if (!ret && mounted_by_us(fs))
		umount2(fs->o->mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW);
out_signals:
	fuse_remove_signal_handlers(fs->se);
out_destroy:
	fuse_session_destroy(fs->se);
	fs->se = NULL;
	fuse_opt_free_args(&args);      /* libfuse copies argv when it adds to it */
	return ret;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	/* handles the kernel never released (lazy unmount) hold cache files */
	fs_cache_detach_all(fs);
	cache_free(fs->cache);
	fs->cache = NULL;
	fs_meta_free(fs->meta);
	fs->meta = NULL;
	fs_engine_free(fs->engine);
	fs_handle_table_free(fs->handles);
	fs_pt_free(fs->pt);
	fs_inode_table_free(fs->inodes);
	fs_tko_free(fs->tko);
	pthread_mutex_destroy(&fs->root_lock);
	pthread_mutex_destroy(&fs->moves_lock);
	free(fs->journal_dir);
	free(fs->dir);
	free(fs);
	fs_log_release();
}
