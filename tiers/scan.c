/*
 * The scan at mount: every block file of every directory is checked
 * (length, footer, chunk table, identity) before cache/ indexes it; temp
 * files of interrupted writes, torn or foreign-format files and plain copies
 * (tier.h) are deleted.
 * Directory listing uses readdir(3): liburing 2.3 has no opcode for it.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "tiers/tier_int.h"

/* Validate one block file; fills b (file_key points into keybuf). Returns 0
 * when valid, -EBADMSG when torn or foreign, other -errno on I/O error. */
static int scan_one(int dfd, const char *rel, uint64_t key, uint64_t seq,
		    struct tier_block *b, char *keybuf)
{
	struct footer f;
	struct iovec iov[2];
	char *table = NULL;
	uint64_t size;
	size_t tlen;
	ssize_t n;
	int fd, ret;

	fd = uring_openat(dfd, rel, O_RDONLY, 0);
	if (fd < 0)
		return fd;
	ret = uring_fsize(fd, &size);
	if (ret < 0)
		goto out_close;
	ret = -EBADMSG;
	if (size < TIER_FOOTER_SIZE)
		goto out_close;
	iov[0] = (struct iovec){ &f, sizeof(f) };
	n = uring_rw(fd, iov, 1, (off_t)(size - TIER_FOOTER_SIZE), 0);
	if (n != (ssize_t)sizeof(f) || !footer_valid(&f) || f.key != key || f.seq != seq ||
	    size != tier_block_bytes(f.len, f.key_len))
		goto out_close;
	/* the chunk table must match the footer, or the block is torn */
	tlen = table_bytes(f.len);
	table = malloc(tlen + 1);   /* + 1: never malloc(0) */
	if (!table) {
		ret = -ENOMEM;
		goto out_close;
	}
	iov[0] = (struct iovec){ table, tlen };
	iov[1] = (struct iovec){ keybuf, f.key_len };
	n = uring_rw(fd, iov, 2, (off_t)f.len, 0);
	if (n != (ssize_t)(tlen + f.key_len) || XXH3_64bits(table, tlen) != f.checksum ||
	    tier_block_key(keybuf, f.key_len, f.index) != key)
		goto out_close;
	keybuf[f.key_len] = '\0';
	*b = (struct tier_block){
		.key = key, .seq = seq, .index = f.index, .len = f.len, .block_size = f.block_size,
		.file_size = f.file_size, .file_mtime_ns = f.file_mtime_ns,
		.checksum = f.checksum, .file_key = keybuf, .file_key_len = f.key_len,
	};
	ret = 0;
out_close:
	free(table);
	uring_close(fd);
	return ret;
}

int tier_scan(struct tier *t, int (*cb)(void *arg, const struct tier_block *b),
	      void *arg, unsigned *discarded)
{
	char *keybuf = malloc(TIER_KEY_MAX + 1);
	unsigned ndisc = 0;
	int ret = 0;

	if (!keybuf)
		return -ENOMEM;
	for (size_t i = 0; i < t->ndirs && ret == 0; i++) {
		for (unsigned x = 0; x < 256 && ret == 0; x++) {
			char sub[4], rel[300];
			struct dirent *de;
			DIR *dir;
			int fd;

			snprintf(sub, sizeof(sub), "%02x", x);
			fd = openat(t->dirs[i].dirfd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (fd < 0)
				continue;
			dir = fdopendir(fd);
			if (!dir) {
				close(fd);
				continue;
			}
			while ((de = readdir(dir)) && ret == 0) {
				struct tier_block b;
				uint64_t key, seq;
				size_t nl = strlen(de->d_name);
				int r;

				if (de->d_name[0] == '.')
					continue;
				snprintf(rel, sizeof(rel), "%s/%s", sub, de->d_name);
				if ((nl == 39 && !strcmp(de->d_name + 33, TIER_WHOLE_SUFFIX)) ||
				    (nl == 43 && !strcmp(de->d_name + 33, TIER_WHOLE_SUFFIX ".tmp"))) {
					/* a plain copy: its checksum died with its process */
					uring_unlinkat(t->dirs[i].dirfd, rel);
					continue;
				}
				if (nl == 37 && !strcmp(de->d_name + 33, ".tmp")) {
					/* interrupted write: never served */
					uring_unlinkat(t->dirs[i].dirfd, rel);
					ndisc++;
					continue;
				}
				if (block_name_parse(de->d_name, &key, &seq) < 0 || (key >> 56) != x)
					continue;   /* not ours: leave it alone */
				r = scan_one(t->dirs[i].dirfd, rel, key, seq, &b, keybuf);
				if (r == -EBADMSG) {
					tier_log(TIER_LOG_WARN, "cache block torn, discarded: %s/%s", t->dirs[i].path, rel);
					uring_unlinkat(t->dirs[i].dirfd, rel);
					ndisc++;
					continue;
				}
				if (r < 0) {
					tier_log(TIER_LOG_WARN, "cache block unreadable, skipped: %s/%s: %s",
					     t->dirs[i].path, rel, strerror(-r));
					continue;
				}
				b.dir = (uint32_t)i;
				r = cb(arg, &b);
				if (r == 1)
					uring_unlinkat(t->dirs[i].dirfd, rel);
				else if (r != 0)
					ret = r;
			}
			closedir(dir);
		}
	}
	free(keybuf);
	if (discarded)
		*discarded = ndisc;
	return ret;
}
