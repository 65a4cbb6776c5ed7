/*
 * lazarusctl - talk to a running lazarusfs proxy.  See lazarusctl(8).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lazarusctl [--state-dir DIR] status MOUNTPOINT\n"
		"\n"
		"  status      engine state, pid, uptime, restarts, open handles, last error\n"
		"  --state-dir the proxy's state_dir (default %s, or $LAZARUSFS_STATE_DIR)\n",
		LAZARUSFS_STATE_DIR);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "state-dir", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const char *state_dir = getenv("LAZARUSFS_STATE_DIR");
	char sock[4200], *reply = NULL;
	int c, ret;

	if (!state_dir || !*state_dir)
		state_dir = LAZARUSFS_STATE_DIR;
	while ((c = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			state_dir = optarg;
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
	if (argc - optind != 2 || strcmp(argv[optind], "status")) {
		usage(stderr);
		return 2;
	}
	ret = fs_ctl_path(state_dir, argv[optind + 1], sock, sizeof(sock));
	if (!ret)
		ret = fs_ctl_request(sock, argv[optind], &reply, 5000);
	if (ret) {
		fprintf(stderr, "lazarusctl: error: %s: no lazarusfs proxy answers for %s (socket %s)\n",
			strerror(-ret), argv[optind + 1], sock);
		return 1;
	}
	fputs(reply, stdout);
	ret = !strncmp(reply, "error:", 6);
	free(reply);
	return ret;
}
