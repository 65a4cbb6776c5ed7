/*
 * fs/io.c - whole-buffer pread/pwrite, shared by the handles and the
 * journal (fs/fs.h).
 */
#include "config.h"

#include <errno.h>
#include <unistd.h>

#include "fs/fs.h"

ssize_t fs_pread_all(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + done);

		if (n < 0)
			return -errno;
		if (!n)
			break;
		done += n;
	}
	return done;
}

int fs_pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, off + done);

		if (n < 0)
			return -errno;
		if (!n)
			return -EIO;
		done += n;
	}
	return 0;
}
