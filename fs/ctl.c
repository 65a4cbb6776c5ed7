/*
 * fs/ctl.c - the control socket behind lazarusctl.
 *
 * A unix stream socket, mode 0600 in a 0700 directory, so only root can
 * talk to it.  The protocol is one command line in, a text answer out, then
 * the server closes.  One thread serves connections one at a time; the
 * answers are built from in-memory state and never wait for the engine.
 */
#include "config.h"

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

struct fs_ctl {
	int fd;
	int stopfd;
	char *path;
	ino_t ino;              /* of our socket file: unlink only that one */
	fs_ctl_fn fn;
	void *arg;
	pthread_t thread;
};

static int make_addr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	strcpy(sa->sun_path, path);
	return 0;
}

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
	if ((ret = make_addr(path, &sa)))
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

int fs_ctl_path(const char *state_dir, const char *mountpoint, char *buf,
		size_t len)
{
	char *real = realpath(mountpoint, NULL), id[17];
	int n;

	/* a dead FUSE mount fails realpath with ENOTCONN: use the text */
	fs_mount_id(real ? real : mountpoint, id);
	free(real);
	n = snprintf(buf, len, "%s/%s/ctl.sock", state_dir, id);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int fs_ctl_request(const char *sock_path, const char *cmd, char **out,
		   int timeout_ms)
{
	struct sockaddr_un sa;
	size_t len = 0, cap = 4096;
	char *buf = NULL;
	int fd, ret;

	*out = NULL;
	if ((ret = make_addr(sock_path, &sa)))
		return ret;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		ret = -errno;
		goto out_close;
	}
	if (send(fd, cmd, strlen(cmd), MSG_NOSIGNAL) < 0 ||
	    send(fd, "\n", 1, MSG_NOSIGNAL) < 0) {
		ret = -errno;
		goto out_close;
	}
	buf = malloc(cap);
	if (!buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&p, 1, timeout_ms) != 1) {
			ret = -ETIMEDOUT;
			goto out_free;
		}
		if (len + 1 == cap) {
			char *nb = realloc(buf, cap *= 2);

			if (!nb) {
				ret = -ENOMEM;
				goto out_free;
			}
			buf = nb;
		}
		r = read(fd, buf + len, cap - 1 - len);
		if (r < 0) {
			ret = -errno;
			goto out_free;
		}
		if (!r)
			break;
		len += r;
	}
	buf[len] = 0;
	*out = buf;
	buf = NULL;
out_free:
	free(buf);
out_close:
	close(fd);
	return ret;
}
