/* ctl.c - ask a lazarusfs proxy for its engine state over its control socket. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

#include "src/csi-shim/csi.h"

/* Copies the value of "key: value" lines into val. */
static void get_value(const char *reply, const char *key, char *val, size_t len)
{
	size_t kl = strlen(key);
	const char *p = reply;

	val[0] = '\0';
	for (; *p; p = strchrnul(p, '\n'), p += *p == '\n') {
		if (strncmp(p, key, kl) || p[kl] != ':')
			continue;
		p += kl + 1;
		p += *p == ' ';
		snprintf(val, len, "%.*s", (int)(strchrnul(p, '\n') - p), p);
		return;
	}
}

void csi_proxy_id(const char *point, char id[17])
{
	snprintf(id, 17, "%016llx", (unsigned long long)XXH3_64bits(point, strlen(point)));
}

int csi_proxy_dir(const char *state_dir, const char *point, char *out, size_t len)
{
	char id[17];
	int n;

	csi_proxy_id(point, id);
	n = snprintf(out, len, "%s/%s", state_dir, id);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int csi_ctl_status(const char *state_dir, const char *point, char *state,
		   size_t state_len, char *last_error, size_t err_len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = 2 };
	char reply[4096];
	size_t got = 0;
	ssize_t n;
	int fd, err = 0;

	/* point comes from mountinfo, which is canonical already; resolving it
	 * again would stat a possibly hung FUSE mount. */
	if (csi_proxy_dir(state_dir, point, sa.sun_path, sizeof(sa.sun_path) - 9))
		return -ENAMETOOLONG;
	strcat(sa.sun_path, "/ctl.sock");
	if (access(sa.sun_path, F_OK) < 0)
		return -errno;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A wedged proxy must not hang NodeGetVolumeStats. */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    write(fd, "status\n", 7) != 7) {
		err = -errno;
		goto out;
	}
	while (got < sizeof(reply) - 1 && (n = read(fd, reply + got, sizeof(reply) - 1 - got)) > 0)
		got += n;
	reply[got] = '\0';
	if (!got) {
		err = -EPROTO;
		goto out;
	}
	get_value(reply, "state", state, state_len);
	get_value(reply, "last_error", last_error, err_len);
out:
	close(fd);
	return err;
}
