/*
 * fs/journal.c - per-handle write journal.
 *
 * An engine like JuiceFS acknowledges a write while the data sits in its
 * memory; a crash before flush loses it.  Every write we acknowledge is
 * therefore recorded here until a flush or fsync of the same handle
 * succeeds, and replayed in order after the engine restarted and the handle
 * was reopened.  Entries are appended in sequence-number order, so dropping
 * "everything up to seq N" is a pop from the front.
 *
 * Memory use is bounded by mem_limit; larger journals spill their data to
 * an unlinked file under spill_dir.  The owner bounds the total by forcing a
 * checkpoint (fsync) when fs_journal_bytes() grows past its limit.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"

enum { J_WRITE, J_TRUNC };

struct jentry {
	uint64_t seq;
	int type;
	off_t off;              /* file offset, or the new size for J_TRUNC */
	size_t len;
	char *mem;              /* data, or NULL when spilled */
	off_t spill_off;
};

struct fs_journal {
	char *spill_dir;
	size_t mem_limit;
	size_t mem_used;
	size_t bytes;           /* data bytes in all entries */
	struct jentry *e;
	size_t head, tail, cap; /* live entries are e[head..tail) */
	uint64_t seq;
	int spill_fd;
	off_t spill_end;
};

struct fs_journal *fs_journal_new(const char *spill_dir, size_t mem_limit)
{
	struct fs_journal *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->spill_dir = spill_dir ? strdup(spill_dir) : NULL;
	j->mem_limit = mem_limit;
	j->spill_fd = -1;
	return j;
}

static void clear(struct fs_journal *j)
{
	for (size_t i = j->head; i < j->tail; i++)
		free(j->e[i].mem);
	j->head = j->tail = 0;
	j->mem_used = j->bytes = 0;
	if (j->spill_fd >= 0 && j->spill_end) {
		if (ftruncate(j->spill_fd, 0))
			fs_log(FS_LOG_WARN, "cannot shrink journal spill file: %s",
			       strerror(errno));
		j->spill_end = 0;
	}
}

void fs_journal_free(struct fs_journal *j)
{
	if (!j)
		return;
	clear(j);
	if (j->spill_fd >= 0)
		close(j->spill_fd);
	free(j->e);
	free(j->spill_dir);
	free(j);
}

static struct jentry *append(struct fs_journal *j)
{
	if (j->tail == j->cap) {
		if (j->head) {
			memmove(j->e, j->e + j->head, (j->tail - j->head) * sizeof(*j->e));
			j->tail -= j->head;
			j->head = 0;
		}
		if (j->tail == j->cap) {
			size_t cap = j->cap ? j->cap * 2 : 16;
			struct jentry *ne = realloc(j->e, cap * sizeof(*ne));

			if (!ne)
				return NULL;
			j->e = ne;
			j->cap = cap;
		}
	}
	memset(&j->e[j->tail], 0, sizeof(*j->e));
	return &j->e[j->tail];
}

static int open_spill(struct fs_journal *j)
{
	char tmpl[4096];
	int fd;

	if (!j->spill_dir)
		return -ENOSPC;
	fd = open(j->spill_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		/* tmpfs and most local filesystems have O_TMPFILE; fall back */
		snprintf(tmpl, sizeof(tmpl), "%s/journal-XXXXXX", j->spill_dir);
		fd = mkostemp(tmpl, O_CLOEXEC);
		if (fd < 0)
			return -errno;
		unlink(tmpl);
	}
	j->spill_fd = fd;
	return 0;
}

int fs_journal_write(struct fs_journal *j, const void *buf, size_t len,
		     off_t off)
{
	struct jentry *e = append(j);
	int ret;

	if (!e)
		return -ENOMEM;
	e->type = J_WRITE;
	e->off = off;
	e->len = len;
	if (j->mem_used + len <= j->mem_limit) {
		e->mem = malloc(len ? len : 1);
		if (!e->mem)
			return -ENOMEM;
		memcpy(e->mem, buf, len);
		j->mem_used += len;
	} else {
		if (j->spill_fd < 0 && (ret = open_spill(j)))
			return ret;
		for (size_t done = 0; done < len;) {
			ssize_t n = pwrite(j->spill_fd, (const char *)buf + done,
					   len - done, j->spill_end + done);

			if (n <= 0)
				return n < 0 ? -errno : -EIO;
			done += n;
		}
		e->spill_off = j->spill_end;
		j->spill_end += len;
	}
	j->bytes += len;
	e->seq = ++j->seq;
	j->tail++;
	return 0;
}

int fs_journal_truncate(struct fs_journal *j, off_t size)
{
	struct jentry *e = append(j);

	if (!e)
		return -ENOMEM;
	e->type = J_TRUNC;
	e->off = size;
	e->seq = ++j->seq;
	j->tail++;
	return 0;
}

uint64_t fs_journal_seq(const struct fs_journal *j)
{
	return j->seq;
}

void fs_journal_drop(struct fs_journal *j, uint64_t upto)
{
	while (j->head < j->tail && j->e[j->head].seq <= upto) {
		struct jentry *e = &j->e[j->head++];

		if (e->mem)
			j->mem_used -= e->len;
		free(e->mem);
		j->bytes -= e->type == J_WRITE ? e->len : 0;
	}
	if (j->head == j->tail)
		clear(j);
}

size_t fs_journal_bytes(const struct fs_journal *j)
{
	return j->bytes;
}

size_t fs_journal_entries(const struct fs_journal *j)
{
	return j->tail - j->head;
}

static int pwrite_all(int fd, const char *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, off);

		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO;
		buf += n;
		len -= n;
		off += n;
	}
	return 0;
}

int fs_journal_replay(struct fs_journal *j, int fd)
{
	char *chunk = NULL;
	int ret = 0;

	for (size_t i = j->head; i < j->tail && !ret; i++) {
		struct jentry *e = &j->e[i];

		if (e->type == J_TRUNC) {
			if (ftruncate(fd, e->off))
				ret = -errno;
			continue;
		}
		if (e->mem) {
			ret = pwrite_all(fd, e->mem, e->len, e->off);
			continue;
		}
		if (!chunk && !(chunk = malloc(1 << 20))) {
			ret = -ENOMEM;
			break;
		}
		for (size_t done = 0; done < e->len && !ret;) {
			size_t want = e->len - done > (1 << 20) ? (1 << 20) : e->len - done;
			ssize_t n = pread(j->spill_fd, chunk, want, e->spill_off + done);

			if (n <= 0) {
				ret = n < 0 ? -errno : -EIO;
				break;
			}
			ret = pwrite_all(fd, chunk, n, e->off + done);
			done += n;
		}
	}
	free(chunk);
	return ret;
}
