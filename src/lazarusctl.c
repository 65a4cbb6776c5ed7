/*
 * lazarusctl - talk to a running lazarusfs proxy.  See lazarusctl(8).
 *
 * Everything goes through the proxy's control socket (one command line in,
 * the answer out), except warmup, which reads files through the mount
 * itself: N worker threads take the files' blocks one at a time, open the
 * file through the mount (so the proxy revalidates it), ask the proxy
 * whether the block is cached already ("contains OFF LEN RELPATH") and
 * read it through the mount only when it is not.  The proxy's read
 * path then fetches and stores it.  A warmup that was interrupted thus
 * resumes where it stopped, and a finished one costs only the questions.
 * The kernel page cache is dropped for each block before and after it is
 * read (POSIX_FADV_DONTNEED): pages already in it would hide the read from
 * the proxy, and a warmup should not fill it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs.h"

#define CTL_TIMEOUT_MS 5000
#define WARM_JOBS 4
#define WARM_MAX_JOBS 64
#define WARM_SETTLE_S 30

static const char *prog = "lazarusctl";

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lazarusctl list [--json]\n"
		"       lazarusctl wait MOUNTPOINT [--timeout SECONDS]\n"
		"       lazarusctl [--state-dir DIR] status MOUNTPOINT\n"
		"       lazarusctl [--state-dir DIR] stats MOUNTPOINT [--json]\n"
		"       lazarusctl [--state-dir DIR] warmup [-j N] MOUNTPOINT PATH...\n"
		"       lazarusctl [--state-dir DIR] evict MOUNTPOINT [PATH...]\n"
		"       lazarusctl [--state-dir DIR] upgrade MOUNTPOINT [--binary PATH] [--timeout S]\n"
		"\n"
		"  list        every lazarusfs mount of this node: state, engine, pid,\n"
		"              uptime, restarts (--json: as JSON)\n"
		"  wait        until the mount is ready (its proxy answers); exit 1 with\n"
		"              the reason after --timeout (10 s)\n"
		"  status      engine state, pid, uptime, restarts, open handles, last error\n"
		"  stats       block cache statistics per tier (--json: as JSON)\n"
		"  warmup      read files or whole trees into the block cache, skipping\n"
		"              blocks that are cached already (-j: parallel readers, %d)\n"
		"  evict       drop cached blocks of PATHs and everything below (all without PATH)\n"
		"  upgrade     replace the proxy in place with PATH (absolute; default: its own\n"
		"              binary) and wait for the new one to answer (--timeout, 10 s)\n"
		"  PATH        relative to the mount point, or absolute inside it\n"
		"  --state-dir the proxy's state_dir ($LAZARUSFS_STATE_DIR; without either,\n"
		"              the mount's own, from the registry %s, else %s)\n",
		WARM_JOBS, fs_registry_dir(), LAZARUSFS_STATE_DIR);
}

/*
 * The control socket of a mount: in the state_dir given (--state-dir or
 * $LAZARUSFS_STATE_DIR), else the one the mount recorded in the registry,
 * else the default state directory's.
 */
static int ctl_socket(const char *state_dir, const char *mnt, char *sock, size_t len)
{
	struct fs_registry_entry r;

	if (!state_dir && !fs_registry_lookup(mnt, &r)) {
		snprintf(sock, len, "%s", r.socket);
		return 0;
	}
	return fs_ctl_path(state_dir ? state_dir : LAZARUSFS_STATE_DIR, mnt, sock, len);
}

/* "key: value" of a status reply, or "" (a static copy). */
static const char *field(const char *reply, const char *key)
{
	static char v[512];
	size_t kl = strlen(key);

	v[0] = 0;
	for (const char *l = reply; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, key, kl) && l[kl] == ':' && l[kl + 1] == ' ') {
			snprintf(v, sizeof(v), "%.*s", (int)strcspn(l + kl + 2, "\n"), l + kl + 2);
			break;
		}
	return v;
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

struct lister {
	bool json;
	int n;
};

/* One mount of the mount table: its line of `lazarusctl list`. */
static int list_one(const struct fs_mountinfo *mi, void *arg)
{
	static const char *const keys[] = { "state", "engine", "proxy_pid", "pid", "uptime",
					     "restarts", "recoveries", "open_handles", "last_error" };
	struct lister *l = arg;
	char sock[4200], *reply = NULL;
	const char *vals[9];
	char copy[9][512];

	if (strcmp(mi->fstype, "fuse.lazarusfs"))
		return 0;
	if (ctl_socket(NULL, mi->mnt, sock, sizeof(sock)) ||
	    fs_ctl_request(sock, "status", &reply, CTL_TIMEOUT_MS)) {
		free(reply);
		reply = NULL;
	}
	for (size_t i = 0; i < 9; i++) {
		snprintf(copy[i], sizeof(copy[i]), "%s", reply ? field(reply, keys[i]) : "");
		vals[i] = copy[i];
	}
	if (!reply)
		vals[0] = "unreachable";
	if (l->json) {
		printf("%s{\"mountpoint\":", l->n ? "," : "");
		json_string(mi->mnt);
		for (size_t i = 0; i < 9; i++) {
			printf(",\"%s\":", keys[i]);
			json_string(vals[i]);
		}
		putchar('}');
	} else {
		if (!l->n)
			printf("%-40s %-11s %-8s %-9s %-9s %-9s %s\n", "MOUNTPOINT", "STATE",
			       "ENGINE", "PROXY", "PID", "UPTIME", "RESTARTS");
		printf("%-40s %-11s %-8s %-9s %-9s %-9s %s\n", mi->mnt, vals[0], vals[1],
		       vals[2], vals[3], vals[4], vals[5]);
	}
	l->n++;
	free(reply);
	return 0;
}

static int cmd_list(bool json)
{
	struct lister l = { .json = json };
	int ret;

	if (json)
		putchar('[');
	ret = fs_mountinfo_each(NULL, list_one, &l);
	if (json)
		printf("]\n");
	if (ret < 0) {
		fprintf(stderr, "%s: error: cannot read the mount table: %s\n", prog, strerror(-ret));
		return 1;
	}
	return 0;
}

/*
 * upgrade: ask the proxy to drain and hand over, then wait until a proxy
 * with another pid answers, and show its status.
 */
static int cmd_upgrade(const char *sock, const char *mnt, const char *binary, double timeout)
{
	char cmd[4200], *reply = NULL, old[32];
	struct timespec ts;
	double end;
	int ret;

	if ((ret = fs_ctl_request(sock, "status", &reply, CTL_TIMEOUT_MS))) {
		fprintf(stderr, "%s: error: %s: no lazarusfs proxy answers for %s (socket %s)\n",
			prog, strerror(-ret), mnt, sock);
		return 1;
	}
	snprintf(old, sizeof(old), "%s", field(reply, "proxy_pid"));
	free(reply);
	snprintf(cmd, sizeof(cmd), "upgrade%s%s", binary ? " " : "", binary ? binary : "");
	if ((ret = fs_ctl_request(sock, cmd, &reply, CTL_TIMEOUT_MS))) {
		fprintf(stderr, "%s: error: %s: the proxy of %s did not answer the upgrade\n", prog,
			strerror(-ret), mnt);
		return 1;
	}
	if (!strncmp(reply, "error:", 6)) {
		fprintf(stderr, "%s: %s", prog, reply);
		free(reply);
		return 1;
	}
	free(reply);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	end = ts.tv_sec + ts.tv_nsec / 1e9 + timeout;
	for (;;) {
		reply = NULL;
		if (!fs_ctl_request(sock, "status", &reply, CTL_TIMEOUT_MS) &&
		    strcmp(field(reply, "proxy_pid"), old)) {
			printf("upgraded: proxy pid %s -> ", old);
			printf("%s, version ", field(reply, "proxy_pid"));
			printf("%s\n", field(reply, "version"));
			free(reply);
			return 0;
		}
		free(reply);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		if (ts.tv_sec + ts.tv_nsec / 1e9 > end) {
			fprintf(stderr, "%s: error: no new proxy answers for %s after %g s (see its log)\n",
				prog, mnt, timeout);
			return 1;
		}
		usleep(50000);
	}
}

/* Ready: mounted as fuse.lazarusfs and its proxy answers. */
static int cmd_wait(const char *mnt, double timeout)
{
	char *real = realpath(mnt, NULL), sock[4200], *reply = NULL;
	const char *why = "not a lazarusfs mount";
	const char *path = real ? real : mnt;
	struct timespec ts;
	double end, now;
	int ret = 1;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	end = ts.tv_sec + ts.tv_nsec / 1e9 + timeout;
	for (;;) {
		if (fs_mountinfo_find(path, "fuse.lazarusfs", NULL) <= 0) {
			why = "not a lazarusfs mount";
		} else if (ctl_socket(NULL, path, sock, sizeof(sock)) ||
			   fs_ctl_request(sock, "status", &reply, CTL_TIMEOUT_MS)) {
			why = "mounted, but its proxy does not answer";
		} else {
			printf("ready: %s (state %s)\n", path, field(reply, "state"));
			ret = 0;
			break;
		}
		free(reply);
		reply = NULL;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		now = ts.tv_sec + ts.tv_nsec / 1e9;
		if (now >= end)
			break;
		usleep(100000);
	}
	if (ret)
		fprintf(stderr, "%s: %s: not ready after %g s: %s\n", prog, path, timeout, why);
	free(reply);
	free(real);
	return ret;
}

/* One request; prints the error itself.  Returns 0, or 1 on failure. */
static int request(const char *sock, const char *mnt, const char *cmd, char **reply)
{
	int ret = fs_ctl_request(sock, cmd, reply, CTL_TIMEOUT_MS);

	if (ret) {
		fprintf(stderr, "%s: error: %s: no lazarusfs proxy answers for %s (socket %s)\n",
			prog, strerror(-ret), mnt, sock);
		return 1;
	}
	if (!strncmp(*reply, "error:", 6)) {
		fprintf(stderr, "%s: %s: %s", prog, mnt, *reply);
		free(*reply);
		*reply = NULL;
		return 1;
	}
	return 0;
}

/*
 * The cache key of PATH: relative to the mount root without "." or empty
 * components ("" is the root).  An absolute PATH must lie inside `mnt`
 * (canonical); it is not resolved further, so symlinks are not followed.
 * Returns 0 or -EINVAL.
 */
static int path_key(const char *mnt, const char *path, char *key, size_t len)
{
	size_t mlen = strlen(mnt), n = 0;
	const char *p = path;

	if (*path == '/') {
		if (!strcmp(mnt, "/"))
			mlen = 0;
		if (strncmp(path, mnt, mlen) || (path[mlen] && path[mlen] != '/'))
			return -EINVAL;
		p = path + mlen;
	}
	while (*p) {
		const char *e;
		size_t cl;

		while (*p == '/')
			p++;
		e = strchrnul(p, '/');
		cl = e - p;
		if (cl == 0)
			break;
		if (cl == 2 && !strncmp(p, "..", 2))
			return -EINVAL;
		if (!(cl == 1 && *p == '.')) {
			if (n + cl + 2 > len)
				return -EINVAL;
			if (n)
				key[n++] = '/';
			memcpy(key + n, p, cl);
			n += cl;
		}
		p = e;
	}
	key[n] = 0;
	return 0;
}

static int cmd_evict(const char *sock, const char *mnt, char **paths, int npaths)
{
	char key[PATH_MAX], cmd[PATH_MAX + 16], *reply;
	long total = 0;
	int rc = 0;

	for (int i = 0; i < (npaths ? npaths : 1); i++) {
		if (npaths && path_key(mnt, paths[i], key, sizeof(key))) {
			fprintf(stderr, "%s: error: %s is not a path inside %s\n", prog, paths[i], mnt);
			rc = 1;
			continue;
		}
		snprintf(cmd, sizeof(cmd), npaths && *key ? "evict %s" : "evict", key);
		if (request(sock, mnt, cmd, &reply)) {
			rc = 1;
			continue;
		}
		total += strtol(reply + strcspn(reply, "0123456789"), NULL, 10);
		free(reply);
	}
	printf("evicted %ld blocks\n", total);
	return rc;
}

/* ----------------------------------------------------------- warmup */

struct wfile {
	char *key;              /* cache key (relative path) */
	uint64_t size;
};

struct warm {
	const char *sock, *mnt;
	uint32_t bs;            /* cache block size */
	struct wfile *files;
	size_t nfiles, cap;
	uint64_t total;         /* bytes in all files */

	pthread_mutex_t lock;
	size_t cur_file;        /* protected by lock: next block to hand out */
	uint64_t cur_block;     /* protected by lock */
	uint64_t done_read;     /* protected by lock: bytes read through the mount */
	uint64_t done_cached;   /* protected by lock: bytes found cached */
	unsigned errors;        /* protected by lock */
	bool finished;          /* protected by lock: all workers are done */
};

static struct warm *walk_ctx;   /* nftw has no user argument */
static int walk_err;

static int walk_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	struct warm *w = walk_ctx;
	char key[PATH_MAX];

	if (type == FTW_DNR || type == FTW_NS) {
		fprintf(stderr, "%s: warning: cannot read %s, skipped\n", prog, path);
		walk_err = 1;
		return 0;
	}
	if (type != FTW_F || !S_ISREG(st->st_mode) || !st->st_size)
		return 0;
	if (path_key(w->mnt, path, key, sizeof(key)) || strchr(key, '\n')) {
		fprintf(stderr, "%s: warning: %s: unusable name, skipped\n", prog, path);
		walk_err = 1;
		return 0;
	}
	if (w->nfiles == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 256;
		struct wfile *nf = realloc(w->files, cap * sizeof(*nf));

		if (!nf)
			return -1;
		w->files = nf;
		w->cap = cap;
	}
	w->files[w->nfiles].key = strdup(key);
	if (!w->files[w->nfiles].key)
		return -1;
	w->files[w->nfiles++].size = st->st_size;
	w->total += st->st_size;
	return 0;
}

/* Hand out the next block: file index and block index.  false when done. */
static bool next_block(struct warm *w, size_t *fi, uint64_t *bi)
{
	bool ok = false;

	pthread_mutex_lock(&w->lock);
	while (w->cur_file < w->nfiles &&
	       w->cur_block * w->bs >= w->files[w->cur_file].size) {
		w->cur_file++;
		w->cur_block = 0;
	}
	if (w->cur_file < w->nfiles) {
		*fi = w->cur_file;
		*bi = w->cur_block++;
		ok = true;
	}
	pthread_mutex_unlock(&w->lock);
	return ok;
}

static void *warm_worker(void *arg)
{
	struct warm *w = arg;
	char path[PATH_MAX * 2], cmd[PATH_MAX + 64], *reply = NULL;
	size_t fi, open_fi = SIZE_MAX;
	uint64_t bi;
	char *buf = malloc(w->bs);
	int fd = -1;

	while (buf && next_block(w, &fi, &bi)) {
		const struct wfile *f = &w->files[fi];
		uint64_t off = bi * w->bs;
		uint64_t len = f->size - off < w->bs ? f->size - off : w->bs;
		bool cached = false, err = false;

		/* open first: the proxy then drops blocks of a changed file */
		if (open_fi != fi) {
			if (fd >= 0)
				close(fd);
			snprintf(path, sizeof(path), "%s/%s", w->mnt, f->key);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			open_fi = fi;
			if (fd < 0)
				fprintf(stderr, "%s: warning: %s: %s\n", prog, path,
					strerror(errno));
		}
		snprintf(cmd, sizeof(cmd), "contains %llu %llu %s",
			 (unsigned long long)off, (unsigned long long)len, f->key);
		if (fd >= 0 && strlen(f->key) < PATH_MAX &&
		    !fs_ctl_request(w->sock, cmd, &reply, CTL_TIMEOUT_MS)) {
			cached = reply[0] == '1';
			free(reply);
		}
		if (!cached) {
			if (fd < 0) {
				err = true;
				len = 0;
			} else {
				uint64_t got = 0;

				posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED);
				while (got < len) {
					ssize_t n = pread(fd, buf + got, len - got, off + got);

					if (n < 0 && errno == EINTR)
						continue;
					if (n < 0) {
						fprintf(stderr, "%s: warning: %s/%s at %llu: %s\n",
							prog, w->mnt, f->key,
							(unsigned long long)(off + got), strerror(errno));
						err = true;
					}
					if (n <= 0)
						break;  /* an error, or the file shrank */
					got += n;
				}
				posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED);
				len = got;
			}
		}
		pthread_mutex_lock(&w->lock);
		if (cached)
			w->done_cached += len;
		else
			w->done_read += len;
		w->errors += err;
		pthread_mutex_unlock(&w->lock);
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void human(double bytes, char *buf, size_t len)
{
	static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;

	while (bytes >= 1024 && u < 4) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

static void eta_str(double s, char *buf, size_t len)
{
	if (s < 0 || s > 99 * 3600)
		snprintf(buf, len, "--:--");
	else if (s >= 3600)
		snprintf(buf, len, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
	else
		snprintf(buf, len, "%d:%02d", (int)s / 60, (int)s % 60);
}

/* One progress report: a redrawn bar on a terminal, plain lines otherwise. */
static void progress(struct warm *w, double t0, bool tty, bool final)
{
	uint64_t rd, ca, done;
	char sdone[32], stotal[32], srate[32], seta[32], bar[31];
	double el = now_s() - t0, rate, frac;

	pthread_mutex_lock(&w->lock);
	rd = w->done_read;
	ca = w->done_cached;
	pthread_mutex_unlock(&w->lock);
	done = rd + ca;
	rate = el > 0 ? rd / el : 0;
	frac = w->total ? (double)done / w->total : 1;
	human(done, sdone, sizeof(sdone));
	human(w->total, stotal, sizeof(stotal));
	human(rate, srate, sizeof(srate));
	eta_str(rate > 0 ? (w->total - done) / rate : -1, seta, sizeof(seta));
	if (final) {
		char sread[32], scached[32];

		human(rd, sread, sizeof(sread));
		human(ca, scached, sizeof(scached));
		if (tty)
			fputs("\r\033[K", stdout);
		printf("warmup: %zu files, %s: %s read in %.1f s (%s/s), %s already cached%s\n",
		       w->nfiles, stotal, sread, el, srate, scached,
		       w->errors ? ", with errors" : "");
	} else if (tty) {
		int fill = (int)(frac * 30);

		memset(bar, '#', fill);
		memset(bar + fill, '-', 30 - fill);
		bar[30] = 0;
		printf("\r\033[K[%s] %5.1f%%  %s / %s  %s/s  ETA %s", bar, frac * 100, sdone,
		       stotal, srate, seta);
	} else {
		printf("warmup: %.1f%% %s / %s, %s/s, ETA %s\n", frac * 100, sdone, stotal, srate,
		       seta);
	}
	fflush(stdout);
}

/*
 * The proxy stores the blocks read ahead for a reader in the background:
 * wait until every file is wholly cached (at most WARM_SETTLE_S seconds),
 * so that the cache is complete when warmup returns, and say which files
 * stay incomplete (the tiers are too small, or a file changed meanwhile).
 */
static void warm_settle(struct warm *w)
{
	bool *left = calloc(w->nfiles ? w->nfiles : 1, sizeof(*left));
	double end = now_s() + WARM_SETTLE_S;
	size_t n = w->nfiles;
	char cmd[PATH_MAX + 64], *reply;

	if (!left)
		return;
	for (size_t i = 0; i < w->nfiles; i++)
		left[i] = true;
	for (;;) {
		n = 0;
		for (size_t i = 0; i < w->nfiles; i++) {
			if (!left[i])
				continue;
			snprintf(cmd, sizeof(cmd), "contains 0 %llu %s",
				 (unsigned long long)w->files[i].size, w->files[i].key);
			if (!fs_ctl_request(w->sock, cmd, &reply, CTL_TIMEOUT_MS)) {
				left[i] = reply[0] != '1';
				free(reply);
			}
			n += left[i];
		}
		if (!n || now_s() >= end)
			break;
		usleep(100 * 1000);
	}
	for (size_t i = 0, shown = 0; i < w->nfiles && shown < 5; i++)
		if (left[i] && ++shown)
			fprintf(stderr, "%s: warning: %s/%s is not wholly cached\n", prog, w->mnt,
				w->files[i].key);
	if (n)
		fprintf(stderr, "%s: warning: %zu of %zu files not wholly cached (tiers too small, "
			"or files changed)\n", prog, n, w->nfiles);
	free(left);
}

static int cmd_warmup(const char *sock, const char *mnt, char **paths, int npaths, int jobs)
{
	struct warm w = { .sock = sock, .mnt = mnt };
	pthread_t th[WARM_MAX_JOBS];
	char key[PATH_MAX], full[PATH_MAX * 2], *reply, *bs;
	bool tty = isatty(1);
	double t0, last;
	int started = 0, rc = 0;

	/* the cache's block size, and whether there is a cache at all */
	if (request(sock, mnt, "stats", &reply))
		return 1;
	bs = strstr(reply, "block_size: ");
	w.bs = bs ? strtoul(bs + 12, NULL, 10) : 0;
	free(reply);
	if (!w.bs) {
		fprintf(stderr, "%s: error: no block cache on %s (no tier configured)\n", prog, mnt);
		return 1;
	}
	walk_ctx = &w;
	for (int i = 0; i < npaths; i++) {
		if (path_key(mnt, paths[i], key, sizeof(key))) {
			fprintf(stderr, "%s: error: %s is not a path inside %s\n", prog, paths[i], mnt);
			rc = 1;
			continue;
		}
		snprintf(full, sizeof(full), "%s%s%s", mnt, *key ? "/" : "", key);
		if (nftw(full, walk_cb, 32, FTW_PHYS) < 0) {
			fprintf(stderr, "%s: error: %s: %s\n", prog, full, strerror(errno));
			rc = 1;
		}
	}
	rc |= walk_err;
	pthread_mutex_init(&w.lock, NULL);
	t0 = last = now_s();
	for (; started < jobs; started++)
		if (pthread_create(&th[started], NULL, warm_worker, &w))
			break;
	if (!started) {
		fprintf(stderr, "%s: error: cannot start threads\n", prog);
		rc = 1;
	}
	/* report until the work is handed out, then join */
	for (;;) {
		bool more;
		struct timespec ts = { 0, 200 * 1000 * 1000 };

		pthread_mutex_lock(&w.lock);
		more = w.done_read + w.done_cached < w.total &&
		       w.cur_file < w.nfiles;
		pthread_mutex_unlock(&w.lock);
		if (!more || !started)
			break;
		nanosleep(&ts, NULL);
		if (tty || now_s() - last >= 5) {
			progress(&w, t0, tty, false);
			last = now_s();
		}
	}
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (!w.errors)
		warm_settle(&w);
	progress(&w, t0, tty, true);
	if (w.errors)
		rc = 1;
	for (size_t i = 0; i < w.nfiles; i++)
		free(w.files[i].key);
	free(w.files);
	pthread_mutex_destroy(&w.lock);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'J' },
		{ "jobs", required_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 't' },
		{ "binary", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *state_dir = getenv("LAZARUSFS_STATE_DIR"), *cmd, *binary = NULL;
	char sock[4200], *reply = NULL, *mnt;
	bool json = false;
	double timeout = 10;
	int c, ret, jobs = WARM_JOBS;

	if (state_dir && !*state_dir)
		state_dir = NULL;
	while ((c = getopt_long(argc, argv, "hVj:", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			state_dir = optarg;
			break;
		case 'J':
			json = true;
			break;
		case 'b':
			binary = optarg;
			break;
		case 'j':
			jobs = atoi(optarg);
			if (jobs < 1 || jobs > WARM_MAX_JOBS) {
				fprintf(stderr, "%s: error: -j wants 1 to %d\n", prog, WARM_MAX_JOBS);
				return 2;
			}
			break;
		case 't':
			timeout = atof(optarg);
			if (timeout < 0) {
				fprintf(stderr, "%s: error: --timeout wants seconds >= 0\n", prog);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("lazarusctl %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind == 1 && !strcmp(argv[optind], "list"))
		return cmd_list(json);
	if (argc - optind < 2) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind];
	if (!strcmp(cmd, "wait"))
		return argc - optind == 2 ? cmd_wait(argv[optind + 1], timeout) : (usage(stderr), 2);
	if ((!strcmp(cmd, "status") || !strcmp(cmd, "stats") || !strcmp(cmd, "upgrade")) ?
	    argc - optind != 2 :
	    !strcmp(cmd, "warmup") ? argc - optind < 3 : strcmp(cmd, "evict")) {
		usage(stderr);
		return 2;
	}
	if (json && strcmp(cmd, "stats")) {
		usage(stderr);
		return 2;
	}
	ret = ctl_socket(state_dir, argv[optind + 1], sock, sizeof(sock));
	if (ret) {
		fprintf(stderr, "%s: error: %s: state directory path too long\n", prog,
			strerror(-ret));
		return 1;
	}
	if (!strcmp(cmd, "upgrade")) {
		char *abs = binary ? realpath(binary, NULL) : NULL;

		if (binary && !abs) {
			fprintf(stderr, "%s: error: %s: %s\n", prog, binary, strerror(errno));
			return 1;
		}
		ret = cmd_upgrade(sock, argv[optind + 1], abs, timeout);
		free(abs);
		return ret;
	}
	if (!strcmp(cmd, "warmup") || !strcmp(cmd, "evict")) {
		mnt = realpath(argv[optind + 1], NULL);
		if (!mnt) {
			fprintf(stderr, "%s: error: %s: %s\n", prog, argv[optind + 1],
				strerror(errno));
			return 1;
		}
		ret = !strcmp(cmd, "warmup") ?
		      cmd_warmup(sock, mnt, argv + optind + 2, argc - optind - 2, jobs) :
		      cmd_evict(sock, mnt, argv + optind + 2, argc - optind - 2);
		free(mnt);
		return ret;
	}
	ret = fs_ctl_request(sock, !strcmp(cmd, "stats") && json ? "stats json" : cmd,
			     &reply, CTL_TIMEOUT_MS);
	if (ret) {
		fprintf(stderr, "%s: error: %s: no lazarusfs proxy answers for %s (socket %s)\n",
			prog, strerror(-ret), argv[optind + 1], sock);
		return 1;
	}
	fputs(reply, stdout);
	ret = !strncmp(reply, "error:", 6);
	free(reply);
	return ret;
}
