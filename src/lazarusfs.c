/*
 * lazarusfs - a FUSE proxy that starts the real engine lazily and keeps
 * open files working across engine crashes.  See lazarusfs(8).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/fs.h"
#include "fs/takeover.h"

/*
 * Overwrite a secret SOURCE in our own argv so `ps` shows the masked form.
 * The kernel reads argv from our memory, so this is enough.
 */
static void hide_secret(int argc, char **argv, const char *source)
{
	char masked[512];

	fs_mask_secret(source, masked, sizeof(masked));
	if (!strcmp(masked, source))
		return;
	for (int i = 1; i < argc; i++) {
		size_t len = strlen(argv[i]);

		if (strcmp(argv[i], source))
			continue;
		memset(argv[i], 0, len);
		memcpy(argv[i], masked, strlen(masked) < len ? strlen(masked) : len);
	}
}

int main(int argc, char **argv)
{
	struct fs_opts o;
	struct fs *fs = NULL;
	char err[512] = "", **fargv = NULL;
	int fargc = 0, ret;

	umask(0);       /* the kernel already applied the caller's umask */
	/* a successor worker gets its command line from the holder */
	if ((ret = fs_tko_successor_argv(&argc, &argv, err, sizeof(err)))) {
		fprintf(stderr, "lazarusfs: error: %s\n", err);
		return 1;
	}
	if (!fs_tko_is_successor())
		fs_tko_save_argv(argc, argv);
	fs_opts_init(&o);
	ret = fs_opts_parse(&o, argc, argv, &fargc, &fargv, err, sizeof(err));
	if (ret == 1) {
		ret = 0;
		goto out;
	}
	if (ret) {
		fprintf(stderr, "lazarusfs: error: %s\n", err);
		goto out;
	}
	hide_secret(argc, argv, o.source);
	ret = fs_new(&fs, &o, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "lazarusfs: error: %s\n", err);
		goto out;
	}
	ret = fs_run(fs, fargc, fargv);
out:
	fs_free(fs);
	fs_strv_free(fargv);
	fs_opts_release(&o);
	fs_tko_release_argv();
	return ret == FS_TKO_EXIT_UPGRADE ? FS_TKO_EXIT_UPGRADE : ret ? 1 : 0;
}
