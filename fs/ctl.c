/*
 * fs/ctl.c - the control socket behind lazarusctl.
 *
 * A unix stream socket, mode 0600 in a 0700 directory, so only root can
 * talk to it.  The protocol is one command line in, a text answer out, then
 * the server closes.  One thread serves connections one at a time; the
 * answers are built from in-memory state and never wait for the engine.
 * The client side is in fs/ctl_client.c.
 */
#include "config.h"

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_int.h"
#include "fs/takeover.h"

struct fs_ctl {
	int fd;
	int stopfd;
	char *path;
	ino_t ino;              /* of our socket file: unlink only that one */
	fs_ctl_fn fn;
	void *arg;
	pthread_t thread;
};

static void serve(struct fs_ctl *c, int fd)
{
	char cmd[4096], *reply = NULL;
	size_t n = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	while (n < sizeof(cmd) - 1 && poll(&p, 1, 2000) == 1) {
		ssize_t r = read(fd, cmd + n, sizeof(cmd) - 1 - n);

		if (r <= 0)
			break;
		n += r;
		if (memchr(cmd, '\n', n))
			break;
	}
	cmd[n] = 0;
	cmd[strcspn(cmd, "\r\n")] = 0;
	if (c->fn(c->arg, cmd, &reply) < 0 && !reply)
		reply = strdup("error: command failed\n");
	for (size_t off = 0, len = reply ? strlen(reply) : 0; off < len;) {
		ssize_t w = send(fd, reply + off, len - off, MSG_NOSIGNAL);

		if (w <= 0)
			break;
		off += w;
	}
	free(reply);
}

static void *ctl_main(void *arg)
{
	struct fs_ctl *c = arg;

	for (;;) {
		struct pollfd p[2] = { { .fd = c->fd, .events = POLLIN },
				       { .fd = c->stopfd, .events = POLLIN } };
		int fd;

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(c, fd);
		close(fd);
	}
	return NULL;
}

int fs_ctl_new(struct fs_ctl **out, const char *path, fs_ctl_fn fn, void *arg)
{
	struct fs_ctl *c = calloc(1, sizeof(*c));
	struct sockaddr_un sa;
	struct stat st;
	int ret;

	if (!c)
		return -ENOMEM;
	c->fd = c->stopfd = -1;
	c->fn = fn;
	c->arg = arg;
	if ((ret = fs_ctl_sockaddr(path, &sa)))
		goto out_free;
	/* a proxy of this mount point that is still shutting down may own the
	 * path: take it over; it unlinks only its own socket file */
	unlink(path);
	c->path = strdup(path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	c->stopfd = eventfd(0, EFD_CLOEXEC);
	if (!c->path || c->fd < 0 || c->stopfd < 0) {
		ret = c->path ? -errno : -ENOMEM;
		goto out_free;
	}
	if (bind(c->fd, (struct sockaddr *)&sa, sizeof(sa)) || chmod(path, 0600) ||
	    listen(c->fd, 16) || stat(path, &st)) {
		ret = -errno;
		goto out_unlink;
	}
	c->ino = st.st_ino;
	ret = -pthread_create(&c->thread, NULL, ctl_main, c);
	if (ret)
		goto out_unlink;
	*out = c;
	return 0;
out_unlink:
	unlink(path);
out_free:
	if (c->fd >= 0)
		close(c->fd);
	if (c->stopfd >= 0)
		close(c->stopfd);
	free(c->path);
	free(c);
	return ret;
}

void fs_ctl_free(struct fs_ctl *c)
{
	uint64_t one = 1;
	struct stat st;

	if (!c)
		return;
	(void)!write(c->stopfd, &one, sizeof(one));
	pthread_join(c->thread, NULL);
	close(c->fd);
	close(c->stopfd);
	/* a new proxy on the same mount point may own the path by now */
	if (!stat(c->path, &st) && st.st_ino == c->ino)
		unlink(c->path);
	free(c->path);
	free(c);
}

/* ------------------------------------------------------- the registry */

int fs_registry_add(struct fs *fs, const char *sock)
{
	char path[4200], tmp[4300];
	int ret = 0;
	FILE *f;

	if ((ret = fs_mkdir_p(fs_registry_dir(), 0755)))
		return ret;
	if ((ret = fs_registry_path(fs->o->mountpoint, path, sizeof(path))))
		return ret;
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	fprintf(f, "mountpoint=%s\nstate_dir=%s\nsocket=%s\npid=%d\n", fs->o->mountpoint,
		fs->o->state_dir, sock, (int)getpid());
	if (fclose(f))
		ret = -errno;
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

void fs_registry_remove(struct fs *fs)
{
	struct fs_registry_entry r;
	char path[4200];

	/* only our own: a new proxy of this mount point may have written it */
	if (!fs_registry_path(fs->o->mountpoint, path, sizeof(path)) &&
	    !fs_registry_lookup(fs->o->mountpoint, &r) && r.pid == (int)getpid())
		unlink(path);
}

/* ------------------------------------------------------- the commands */

/* Append the metadata cache's figures to a stats reply (text lines, or
 * one more member of the JSON object). */
static int add_meta_stats(struct fs *fs, bool json, char **reply)
{
	struct fs_meta_stats ms;
	char *s = NULL, *end;
	int n;

	if (!fs->meta)
		return 0;
	fs_meta_get_stats(fs->meta, &ms);
	if (json) {
		end = strrchr(*reply, '}');
		if (!end)
			return -EINVAL;
		*end = 0;
		n = asprintf(&s, "%s%s\"meta\":{\"entries\":%zu,\"bytes\":%zu,\"max_bytes\":%zu,"
			     "\"hits\":%llu,\"negative_hits\":%llu,\"misses\":%llu,"
			     "\"evictions\":%llu}}\n", *reply, end[-1] == '{' ? "" : ",",
			     ms.entries, ms.bytes, ms.max_bytes, (unsigned long long)ms.hits,
			     (unsigned long long)ms.negative_hits,
			     (unsigned long long)ms.misses, (unsigned long long)ms.evictions);
	} else {
		n = asprintf(&s, "%smeta_entries: %zu\nmeta_bytes: %zu\nmeta_max_bytes: %zu\n"
			     "meta_hits: %llu\nmeta_negative_hits: %llu\nmeta_misses: %llu\n"
			     "meta_evictions: %llu\n", *reply, ms.entries, ms.bytes,
			     ms.max_bytes, (unsigned long long)ms.hits,
			     (unsigned long long)ms.negative_hits,
			     (unsigned long long)ms.misses, (unsigned long long)ms.evictions);
	}
	if (n < 0)
		return -ENOMEM;
	free(*reply);
	*reply = s;
	return 0;
}

/* "prefix ARG": ARG (the rest of the line, may hold blanks), else NULL */
static const char *cmd_arg(const char *cmd, const char *prefix)
{
	size_t n = strlen(prefix);

	if (strncmp(cmd, prefix, n))
		return NULL;
	if (!cmd[n])
		return cmd + n;
	return cmd[n] == ' ' ? cmd + n + 1 : NULL;
}

/*
 * upgrade [BINARY]: drain at a request boundary and let the holder start
 * BINARY (or our own binary again) on the same mount.  The command line
 * stays the one the mount was made with, so no option can change.
 */
static int upgrade(struct fs *fs, const char *binary, char **reply)
{
	struct fs_tko_shared *sh = fs->tko ? fs->tko->sh : NULL;
	struct stat st;

	if (!sh) {
		*reply = strdup("error: takeover is off on this mount (takeover=off, or it failed at mount): cannot upgrade in place\n");
		return -EINVAL;
	}
	if (atomic_load(&sh->broken)) {
		*reply = strdup("error: the takeover state of this mount is incomplete: cannot upgrade in place\n");
		return -EINVAL;
	}
	if (*binary && (binary[0] != '/' || stat(binary, &st) || !S_ISREG(st.st_mode) ||
			access(binary, X_OK) || strlen(binary) >= sizeof(sh->next_binary))) {
		if (asprintf(reply, "error: not an executable file given by absolute path: %.256s\n",
			     binary) < 0)
			*reply = NULL;
		return -EINVAL;
	}
	if (atomic_exchange(&fs->upgrading, true)) {
		*reply = strdup("error: an upgrade is already under way\n");
		return -EBUSY;
	}
	snprintf(sh->next_binary, sizeof(sh->next_binary), "%s", binary);
	fs_log(FS_LOG_WARN, "upgrade requested (%s): draining", *binary ? binary : "same binary");
	fuse_session_exit(fs->se);
	if (asprintf(reply, "upgrading: proxy pid %d drains, the holder starts %s\n", (int)getpid(),
		     *binary ? binary : "the same binary") < 0)
		*reply = NULL;
	return *reply ? 0 : -ENOMEM;
}

/*
 * Control commands (one line in, "key: value" lines out):
 *   upgrade [BINARY]          replace this proxy in place (see upgrade())
 *   status                    engine state (fs_engine_status)
 *   stats | stats json        cache statistics, text or JSON
 *   evict [RELPATH]           drop cached blocks of RELPATH and below (all)
 *   contains OFF LEN RELPATH  "1" when every block of the range is cached
 * RELPATH is relative to the mount root, as the cache keys are.  All of it
 * answers from memory, never waiting for the engine.
 */
int fs_ctl_handler(void *arg, const char *cmd, char **reply)
{
	struct fs *fs = arg;
	const char *a;
	int ret;

	if (!strcmp(cmd, "status")) {
		char *es = fs_engine_status(fs->engine);

		struct fs_tko_shared *sh = fs->tko ? fs->tko->sh : NULL;

		/* the process serving the mount, then the engine's figures */
		if (!es || asprintf(reply, "proxy_pid: %d\nholder_pid: %d\ntakeover: %s\n"
				    "proxy_restarts: %lu\nproxy_upgrades: %lu\n"
				    "version: %s\nstate_dir: %s\n%s",
				    (int)getpid(), sh ? (int)sh->holder_pid : 0,
				    !sh ? "off" : atomic_load(&sh->broken) ? "broken" : "on",
				    sh ? atomic_load(&sh->crashes) : 0UL,
				    sh ? atomic_load(&sh->upgrades) : 0UL,
				    PACKAGE_VERSION, fs->o->state_dir, es) < 0)
			*reply = NULL;
		free(es);
		return *reply ? 0 : -ENOMEM;
	}
	if (!strcmp(cmd, "stats") || !strcmp(cmd, "stats json")) {
		bool json = cmd[5] != 0;

		if (!fs->cache)
			*reply = strdup(json ? "{\"enabled\":false}\n" : "enabled: no\n");
		else if ((ret = cache_stats_format(fs->cache, json, reply)))
			return ret;
		return *reply ? add_meta_stats(fs, json, reply) : -ENOMEM;
	}
	if ((a = cmd_arg(cmd, "upgrade")))
		return upgrade(fs, a, reply);
	if ((a = cmd_arg(cmd, "evict"))) {
		if (!fs->cache)
			goto nocache;
		ret = cache_evict(fs->cache, *a ? a : NULL);
		if (asprintf(reply, "evicted_blocks: %d\n", ret) < 0)
			*reply = NULL;
		return *reply ? 0 : -ENOMEM;
	}
	if ((a = cmd_arg(cmd, "contains"))) {
		unsigned long long off, len;
		int pos = 0;

		if (!fs->cache)
			goto nocache;
		if (sscanf(a, "%llu %llu %n", &off, &len, &pos) != 2 || !pos || !a[pos]) {
			*reply = strdup("error: usage: contains OFFSET LENGTH RELPATH\n");
			return -EINVAL;
		}
		*reply = strdup(cache_contains(fs->cache, a + pos, off, len) ? "1\n" : "0\n");
		return *reply ? 0 : -ENOMEM;
	}
	if (asprintf(reply, "error: unknown command '%.64s'\n", cmd) < 0)
		*reply = NULL;
	return -EINVAL;
nocache:
	*reply = strdup("error: no block cache on this mount (no tier configured)\n");
	return -EINVAL;
}
