/*
 * fs/ctl_client.c - the client side of the control socket, and mount ids
 * (fs/fs.h).  This is all lazarusctl links of fs/, besides the log and the
 * mountinfo parser: nothing here starts threads or talks to an engine.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs/fs.h"

void fs_mount_id(const char *mountpoint, char id[17])
{
	snprintf(id, 17, "%016llx",
		 (unsigned long long)XXH3_64bits(mountpoint, strlen(mountpoint)));
}

const char *fs_registry_dir(void)
{
	const char *d = getenv("LAZARUSFS_REGISTRY");

	return d && *d ? d : LAZARUSFS_STATE_DIR "/mounts";
}

int fs_registry_path(const char *mountpoint, char *buf, size_t len)
{
	char id[17];
	int n;

	fs_mount_id(mountpoint, id);
	n = snprintf(buf, len, "%s/%s", fs_registry_dir(), id);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int fs_registry_lookup(const char *mountpoint, struct fs_registry_entry *out)
{
	char *real = realpath(mountpoint, NULL), path[4200], line[4200];
	int ret;
	FILE *f;

	memset(out, 0, sizeof(*out));
	/* a dead FUSE mount fails realpath with ENOTCONN: use the text */
	ret = fs_registry_path(real ? real : mountpoint, path, sizeof(path));
	free(real);
	if (ret)
		return ret;
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (!strncmp(line, "mountpoint=", 11))
			snprintf(out->mountpoint, sizeof(out->mountpoint), "%s", line + 11);
		else if (!strncmp(line, "state_dir=", 10))
			snprintf(out->state_dir, sizeof(out->state_dir), "%s", line + 10);
		else if (!strncmp(line, "socket=", 7))
			snprintf(out->socket, sizeof(out->socket), "%s", line + 7);
		else if (!strncmp(line, "pid=", 4))
			out->pid = atoi(line + 4);
	}
	fclose(f);
	return out->socket[0] ? 0 : -EINVAL;
}

int fs_ctl_sockaddr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	strcpy(sa->sun_path, path);
	return 0;
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
	if ((ret = fs_ctl_sockaddr(sock_path, &sa)))
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
