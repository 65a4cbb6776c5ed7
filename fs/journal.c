/*
 * fs/journal.c - the write journal of one file (fs/fs.h).
 *
 * An engine like JuiceFS acknowledges a write while the data sits in its
 * memory; a crash before its flush loses it.  Every change to a file that
 * lazarusfs acknowledges (write, truncate, fallocate) is therefore
 * recorded here, in the order the engine applied it, until a flush or
 * fsync made it durable, and replayed in that order after a restart.
 *
 * One journal per file, not per descriptor: the changes of every
 * descriptor (and of truncates by path) form one sequence, so a replay can
 * never put an older change over a newer one.
 *
 * Retiring.  A successful fsync makes everything the engine had applied
 * before it durable; a flush does the same for the whole file or only for
 * the descriptor it went through, depending on the engine
 * (fs_journal_retire's tag).  Retired entries are only marked: an entry can
 * be dropped only once every older entry is retired too, because a replay
 * starts at the oldest entry that is not durable and must re-apply every
 * change after it, durable or not, to keep the order.  Replaying a suffix
 * of the sequence onto the engine's state is correct because every change
 * is an assignment (bytes, zeros or a size) that does not depend on what
 * was there: applying changes k..n to a state that already holds some of
 * them gives the same file as applying them to the state before k.  For
 * the same reason a replay that is cut short (the engine died again) is
 * simply run again.
 *
 * Storage.  Entries live in a log file under the spill directory (an
 * unlinked O_TMPFILE): a 4 KiB superblock that says where the first live
 * record is, then records, each a fixed header followed by its data.
 * Retirements are appended as records too, so the file alone describes the
 * journal: fs_journal_load() rebuilds one from it (a proxy that takes over
 * from a dead one can do that from a descriptor it was handed).  The
 * in-memory index only points into the file.  When everything is retired
 * the file is truncated to nothing; a durable prefix is punched out, in
 * whole pages, and the superblock moved past it.
 *
 * Not thread safe: the owner (struct fs_file) serialises every call.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs.h"

#define JREC_MAGIC 0x314a5a4cu  /* "LZJ1" */
#define JSB_MAGIC 0x53535a4cu   /* "LZSS" */
#define JSB_SIZE 4096

/* The superblock at offset 0 of the log file. */
struct jsb {
	uint32_t magic;
	uint32_t version;
	uint64_t first;         /* offset of the first record to read */
};

enum { J_WRITE = 1, J_TRUNC, J_FALLOC, J_RETIRE };

/* On-disk record header; J_WRITE records are followed by len bytes. */
struct jrec {
	uint32_t magic;
	uint32_t type;
	uint64_t seq;           /* J_RETIRE: retires up to this seq */
	uint64_t tag;           /* J_RETIRE: 0 = every tag */
	int64_t off;            /* offset, or the new size for J_TRUNC */
	uint64_t len;           /* J_WRITE, J_FALLOC */
	int32_t mode;           /* fallocate mode */
	uint32_t pad;
};

static size_t data_len(const struct jrec *r)
{
	return r->type == J_WRITE ? r->len : 0;
}

struct jentry {
	uint64_t seq;
	uint64_t tag;
	int type;
	int mode;
	off_t off;
	uint64_t len;
	off_t data;             /* offset of the data in the log file */
	double when;            /* monotonic seconds, for the age bound */
	bool durable;
};

struct fs_journal {
	char *spill_dir;
	char *name;             /* the log file's name in spill_dir, or NULL:
				 * an unlinked one */
	bool keep;              /* free leaves the named file (a successor's) */
	int fd;                 /* the log file, or -1 until the first entry */
	off_t end;              /* of the log file (0: not even a superblock) */
	off_t start;            /* punched up to here */
	struct jentry *e;
	size_t head, tail, cap; /* live entries are e[head..tail) */
	uint64_t seq;
	size_t bytes;           /* data bytes in live entries */
	off_t size;             /* the file's size as far as we know */
};

struct fs_journal *fs_journal_new(const char *spill_dir)
{
	struct fs_journal *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->spill_dir = spill_dir ? strdup(spill_dir) : NULL;
	if (spill_dir && !j->spill_dir) {
		free(j);
		return NULL;
	}
	j->fd = -1;
	return j;
}

void fs_journal_free(struct fs_journal *j)
{
	if (!j)
		return;
	if (j->fd >= 0)
		close(j->fd);
	if (j->name && !j->keep) {
		char path[4200];

		snprintf(path, sizeof(path), "%s/%s", j->spill_dir, j->name);
		unlink(path);
	}
	free(j->e);
	free(j->spill_dir);
	free(j->name);
	free(j);
}

void fs_journal_keep_file(struct fs_journal *j)
{
	j->keep = true;
}

int fs_journal_set_name(struct fs_journal *j, const char *name, bool load)
{
	char path[4200];
	int fd, ret;

	if (!j->spill_dir || j->fd >= 0 || !(j->name = strdup(name)))
		return -EINVAL;
	if (!load)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", j->spill_dir, name);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if ((ret = fs_journal_load(j, fd)) && j->fd < 0)
		close(fd);
	return ret;
}

int fs_journal_fd(const struct fs_journal *j)
{
	return j->fd;
}

static int open_log(struct fs_journal *j)
{
	char tmpl[4096];
	int fd;

	if (!j->spill_dir)
		return -ENOSPC;
	if (j->name) {
		snprintf(tmpl, sizeof(tmpl), "%s/%s", j->spill_dir, j->name);
		fd = open(tmpl, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		j->fd = fd;
		return 0;
	}
	fd = open(j->spill_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		/* tmpfs and most local filesystems have O_TMPFILE; fall back */
		snprintf(tmpl, sizeof(tmpl), "%s/journal-XXXXXX", j->spill_dir);
		fd = mkostemp(tmpl, O_CLOEXEC);
		if (fd < 0)
			return -errno;
		unlink(tmpl);
	}
	j->fd = fd;
	return 0;
}

/* Everything is durable: forget it all and give the space back. */
static void clear(struct fs_journal *j)
{
	j->head = j->tail = 0;
	j->bytes = 0;
	if (j->fd >= 0 && j->end) {
		if (ftruncate(j->fd, 0))
			fs_log(FS_LOG_WARN, "cannot shrink journal file: %s", strerror(errno));
	}
	j->end = j->start = 0;
}

static struct jentry *slot(struct fs_journal *j)
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
	return &j->e[j->tail];
}

static int write_sb(struct fs_journal *j, off_t first)
{
	struct jsb sb = { .magic = JSB_MAGIC, .version = 1, .first = first };

	return fs_pwrite_all(j->fd, &sb, sizeof(sb), 0);
}

/* Append a record (and its data) to the log file. */
static int log_append(struct fs_journal *j, const struct jrec *r,
		      const void *data, off_t *data_off)
{
	size_t len = data_len(r);
	int ret;

	if (j->fd < 0 && (ret = open_log(j)))
		return ret;
	if (!j->end) {
		if ((ret = write_sb(j, JSB_SIZE)))
			return ret;
		j->end = j->start = JSB_SIZE;
	}
	if ((ret = fs_pwrite_all(j->fd, r, sizeof(*r), j->end)) ||
	    (len && (ret = fs_pwrite_all(j->fd, data, len, j->end + sizeof(*r)))))
		return ret;     /* the partial record is past j->end: ignored */
	if (data_off)
		*data_off = j->end + sizeof(*r);
	j->end += sizeof(*r) + len;
	return 0;
}

static int add(struct fs_journal *j, uint64_t tag, int type, int mode,
	       off_t off, uint64_t len, const void *data)
{
	struct jrec r = { .magic = JREC_MAGIC, .type = type, .seq = j->seq + 1,
			  .tag = tag, .off = off, .len = len, .mode = mode };
	struct jentry *e = slot(j);
	int ret;

	if (!e)
		return -ENOMEM;
	memset(e, 0, sizeof(*e));
	if ((ret = log_append(j, &r, data, &e->data)))
		return ret;
	e->seq = ++j->seq;
	e->tag = tag;
	e->type = type;
	e->mode = mode;
	e->off = off;
	e->len = len;
	e->when = fs_now();
	j->tail++;
	if (type == J_WRITE) {
		j->bytes += len;
		if (off + (off_t)len > j->size)
			j->size = off + len;
	} else if (type == J_TRUNC) {
		j->size = off;
	} else if (!(mode & FALLOC_FL_KEEP_SIZE) && off + (off_t)len > j->size) {
		j->size = off + len;
	}
	return 0;
}

int fs_journal_write(struct fs_journal *j, uint64_t tag, const void *buf,
		     size_t len, off_t off)
{
	return add(j, tag, J_WRITE, 0, off, len, buf);
}

int fs_journal_truncate(struct fs_journal *j, uint64_t tag, off_t size)
{
	return add(j, tag, J_TRUNC, 0, size, 0, NULL);
}

int fs_journal_fallocate(struct fs_journal *j, uint64_t tag, int mode,
			 off_t off, off_t len)
{
	return add(j, tag, J_FALLOC, mode, off, len, NULL);
}

uint64_t fs_journal_seq(const struct fs_journal *j)
{
	return j->seq;
}

void fs_journal_set_size(struct fs_journal *j, off_t size)
{
	if (size > j->size)
		j->size = size;
}

off_t fs_journal_size(const struct fs_journal *j)
{
	return j->size;
}

/* Mark entries durable and drop the durable prefix (no record written). */
static void mark(struct fs_journal *j, uint64_t upto, uint64_t tag)
{
	for (size_t i = j->head; i < j->tail && j->e[i].seq <= upto; i++)
		if (!tag || j->e[i].tag == tag)
			j->e[i].durable = true;
	while (j->head < j->tail && j->e[j->head].durable) {
		struct jentry *e = &j->e[j->head++];

		if (e->type == J_WRITE)
			j->bytes -= e->len;
	}
}

void fs_journal_retire(struct fs_journal *j, uint64_t upto, uint64_t tag)
{
	struct jrec r = { .magic = JREC_MAGIC, .type = J_RETIRE, .seq = upto, .tag = tag };
	off_t first, start;

	mark(j, upto, tag);
	if (j->head == j->tail) {
		clear(j);
		return;
	}
	/* the file alone must tell what is retired (fs_journal_load) */
	if (log_append(j, &r, NULL, NULL))
		fs_log(FS_LOG_WARN, "cannot record a journal retirement: %s", strerror(errno));
	/* give back the space of the durable prefix, in whole pages, once
	 * the superblock points past it */
	first = j->e[j->head].data - (off_t)sizeof(struct jrec);
	start = first & ~(off_t)(JSB_SIZE - 1);
	if (start > j->start && !write_sb(j, first) &&
	    !fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, j->start,
		       start - j->start))
		j->start = start;
}

size_t fs_journal_bytes(const struct fs_journal *j)
{
	return j->bytes;
}

size_t fs_journal_entries(const struct fs_journal *j)
{
	return j->tail - j->head;
}

bool fs_journal_has_tag(const struct fs_journal *j, uint64_t tag)
{
	for (size_t i = j->head; i < j->tail; i++)
		if (!j->e[i].durable && j->e[i].tag == tag)
			return true;
	return false;
}

double fs_journal_age(const struct fs_journal *j)
{
	return j->head < j->tail ? fs_now() - j->e[j->head].when : 0;
}

int fs_journal_replay(struct fs_journal *j, int fd)
{
	char *chunk = NULL;
	int ret = 0;

	for (size_t i = j->head; i < j->tail && !ret; i++) {
		struct jentry *e = &j->e[i];

		switch (e->type) {
		case J_TRUNC:
			ret = ftruncate(fd, e->off) ? -errno : 0;
			break;
		case J_FALLOC:
			ret = fallocate(fd, e->mode, e->off, e->len) ? -errno : 0;
			break;
		case J_WRITE:
			if (!chunk && !(chunk = malloc(1 << 20))) {
				ret = -ENOMEM;
				break;
			}
			for (uint64_t done = 0; done < e->len && !ret;) {
				size_t want = e->len - done > (1 << 20) ? (1 << 20) : e->len - done;
				ssize_t n = fs_pread_all(j->fd, chunk, want, e->data + done);

				if (n != (ssize_t)want) {
					ret = n < 0 ? (int)n : -EIO;
					break;
				}
				ret = fs_pwrite_all(fd, chunk, want, e->off + done);
				done += want;
			}
			break;
		}
	}
	free(chunk);
	return ret;
}

int fs_journal_load(struct fs_journal *j, int fd)
{
	struct stat st;
	struct jsb sb;
	struct jrec r;
	off_t pos;
	int ret = 0;

	if (j->fd >= 0 || j->tail)
		return -EBUSY;
	if (fstat(fd, &st))
		return -errno;
	j->fd = fd;
	if (!st.st_size)
		return 0;       /* an empty journal */
	if (fs_pread_all(fd, &sb, sizeof(sb), 0) != sizeof(sb) || sb.magic != JSB_MAGIC ||
	    sb.version != 1 || sb.first < JSB_SIZE)
		return -EINVAL;
	for (pos = sb.first;;) {
		ssize_t n = fs_pread_all(fd, &r, sizeof(r), pos);
		struct jentry *e;

		if (n != sizeof(r) || r.magic != JREC_MAGIC ||
		    pos + (off_t)sizeof(r) + (off_t)data_len(&r) > st.st_size)
			break;  /* the end, or a record torn by a crash */
		if (r.type == J_RETIRE) {
			mark(j, r.seq, r.tag);
			pos += sizeof(r);
			continue;
		}
		if (r.type < J_WRITE || r.type > J_FALLOC) {
			ret = -EINVAL;
			break;
		}
		if (!(e = slot(j))) {
			ret = -ENOMEM;
			break;
		}
		memset(e, 0, sizeof(*e));
		e->seq = r.seq;
		e->tag = r.tag;
		e->type = r.type;
		e->mode = r.mode;
		e->off = r.off;
		e->len = r.type == J_TRUNC ? 0 : r.len;
		e->data = pos + sizeof(r);
		e->when = fs_now();
		if (e->type == J_WRITE)
			j->bytes += e->len;
		/* the size the changes leave, as when they were recorded */
		if (e->type == J_WRITE && e->off + (off_t)e->len > j->size)
			j->size = e->off + (off_t)e->len;
		else if (e->type == J_TRUNC)
			j->size = e->off;
		else if (e->type == J_FALLOC && !(e->mode & FALLOC_FL_KEEP_SIZE) &&
			 e->off + (off_t)e->len > j->size)
			j->size = e->off + (off_t)e->len;
		if (r.seq > j->seq)
			j->seq = r.seq;
		j->tail++;
		pos += sizeof(r) + data_len(&r);
	}
	j->end = pos;
	j->start = sb.first & ~(off_t)(JSB_SIZE - 1);
	if (j->head == j->tail)
		clear(j);
	return ret;
}
