/*
 * fs/prom.c - the Prometheus textfile of a mount (fs/fs_int.h).
 *
 * Every FS_PROM_SECONDS a thread of its own writes
 * <state_dir>/lazarusfs_<id>.prom (node_exporter's textfile collector
 * reads that directory), atomically: a temporary file, then a rename.  It
 * holds the figures an operator pages on (is the proxy up, is the engine,
 * how often it restarted and how long recoveries took, handles, requests,
 * journals, the metadata cache) and, with a block cache, passthrough and
 * the cache's families.  Every sample carries a mountpoint label.  fs_prom_free()
 * stops the thread and removes the file, so a gone mount exports nothing.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs_int.h"
#include "fs/takeover.h"
#include "fs/passthrough.h"

#define FS_PROM_SECONDS 5

struct fs_prom {
	struct fs *fs;
	char *path;
	char *label;            /* mountpoint="...", escaped */
	pthread_t thread;
	pthread_mutex_t lock;   /* a leaf */
	pthread_cond_t cv;      /* CLOCK_MONOTONIC */
	bool stop;              /* protected by lock */
};

static void head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(FILE *f, const struct fs_prom *p, const char *name,
		   const char *type, const char *help, double v)
{
	head(f, name, type, help);
	fprintf(f, "%s{%s} %.17g\n", name, p->label, v);
}

static void write_families(struct fs_prom *p, FILE *f)
{
	struct fs *fs = p->fs;
	struct fs_engine_metrics m;
	struct fs_meta_stats ms;
	struct fs_pt_stats ps;
	unsigned long cum = 0;
	size_t jbytes, jentries;

	fs_engine_get_metrics(fs->engine, &m);
	fs_tko_save_counters(fs->tko, fs->engine);
	fs_journal_totals(fs, &jbytes, &jentries);
	sample(f, p, "lazarusfs_up", "gauge", "1 while the proxy serves the mount.", 1);
	sample(f, p, "lazarusfs_engine_up", "gauge", "1 while the engine runs and answers.",
	       m.state == FS_ENGINE_RUNNING);
	head(f, "lazarusfs_engine_state", "gauge", "The engine's state: 1 for the current one.");
	for (int s = FS_ENGINE_STOPPED; s <= FS_ENGINE_FAILED; s++)
		fprintf(f, "lazarusfs_engine_state{%s,state=\"%s\"} %d\n", p->label,
			fs_engine_state_name(s), m.state == (enum fs_engine_state)s);
	sample(f, p, "lazarusfs_engine_starts_total", "counter",
	       "Engine processes started (first starts and restarts).", m.starts);
	sample(f, p, "lazarusfs_engine_restarts_total", "counter",
	       "Restarts after the engine was lost.", m.restarts);
	sample(f, p, "lazarusfs_engine_recoveries_total", "counter",
	       "Recoveries completed: restarted, journals replayed, handles reopened.", m.recoveries);
	sample(f, p, "lazarusfs_engine_hang_kills_total", "counter",
	       "Engines killed because a call was stuck past hang_timeout.", m.hang_kills);
	sample(f, p, "lazarusfs_engine_start_failures_total", "counter",
	       "Starts and restarts that failed.", m.start_failures);
	if (fs->tko) {
		sample(f, p, "lazarusfs_proxy_restarts_total", "counter",
		       "Proxies that died and were replaced on the same mount.",
		       atomic_load(&fs->tko->sh->crashes));
		sample(f, p, "lazarusfs_proxy_upgrades_total", "counter",
		       "Proxies replaced on request (lazarusctl upgrade).",
		       atomic_load(&fs->tko->sh->upgrades));
	}
	head(f, "lazarusfs_engine_recovery_duration_seconds", "histogram",
	     "Time from the engine's loss to its recovery.");
	for (size_t i = 0; i < FS_ENGINE_REC_BUCKETS; i++) {
		cum += m.rec_buckets[i];
		if (i < FS_ENGINE_REC_BUCKETS - 1)
			fprintf(f, "lazarusfs_engine_recovery_duration_seconds_bucket{%s,le=\"%g\"} %lu\n",
				p->label, fs_engine_rec_bounds[i], cum);
		else
			fprintf(f, "lazarusfs_engine_recovery_duration_seconds_bucket{%s,le=\"+Inf\"} %lu\n",
				p->label, cum);
	}
	fprintf(f, "lazarusfs_engine_recovery_duration_seconds_sum{%s} %.6f\n", p->label, m.rec_sum);
	fprintf(f, "lazarusfs_engine_recovery_duration_seconds_count{%s} %lu\n", p->label, cum);
	sample(f, p, "lazarusfs_open_handles", "gauge", "Open files and directories.", m.handles);
	sample(f, p, "lazarusfs_requests_inflight", "gauge", "Requests inside the engine now.",
	       m.inflight);
	sample(f, p, "lazarusfs_requests_waiting", "gauge",
	       "Requests waiting for the engine to start or recover.", m.waiting);
	sample(f, p, "lazarusfs_journal_bytes", "gauge",
	       "Data bytes of acknowledged changes not yet durable on the engine.", jbytes);
	sample(f, p, "lazarusfs_journal_entries", "gauge",
	       "Acknowledged changes not yet durable on the engine.", jentries);
	if (fs->meta) {
		fs_meta_get_stats(fs->meta, &ms);
		sample(f, p, "lazarusfs_metadata_cache_entries", "gauge",
		       "Entries of the metadata cache.", ms.entries);
		sample(f, p, "lazarusfs_metadata_cache_bytes", "gauge",
		       "Memory of the metadata cache.", ms.bytes);
		sample(f, p, "lazarusfs_metadata_cache_hits_total", "counter",
		       "Lookups, stats and listings answered by the metadata cache.",
		       ms.hits + ms.negative_hits);
		sample(f, p, "lazarusfs_metadata_cache_misses_total", "counter",
		       "Lookups, stats and listings the metadata cache could not answer.", ms.misses);
	}
	if (fs->cache) {
		fs_pt_get_stats(fs, &ps);
		sample(f, p, "lazarusfs_passthrough_on", "gauge",
		       "1 while files wholly in a cache tier are read by the kernel (FUSE passthrough).",
		       !strcmp(ps.state, "on"));
		sample(f, p, "lazarusfs_passthrough_opens_total", "counter",
		       "Opens passed through to a cache file.", ps.opens);
		sample(f, p, "lazarusfs_passthrough_fallbacks_total", "counter",
		       "Opens of a wholly cached file served the normal way.", ps.fallbacks);
		cache_prom_write(fs->cache, f);
	}
}

int fs_prom_write(struct fs_prom *p)
{
	char tmp[4200];
	FILE *f;
	int ret = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", p->path);
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	write_families(p, f);
	if (fflush(f) || ferror(f))
		ret = -EIO;
	if (fclose(f) && !ret)
		ret = -errno;
	if (!ret && rename(tmp, p->path))
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

static void *prom_main(void *arg)
{
	struct fs_prom *p = arg;
	struct timespec ts;
	int ret;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += FS_PROM_SECONDS;
		while (!p->stop &&
		       pthread_cond_timedwait(&p->cv, &p->lock, &ts) != ETIMEDOUT)
			;
		if (p->stop)
			break;
		pthread_mutex_unlock(&p->lock);
		ret = fs_prom_write(p);
		if (ret)
			fs_log(FS_LOG_DEBUG, "cannot write the textfile: %s: %s", p->path,
			       strerror(-ret));
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* mountpoint="..." with the value escaped as Prometheus wants. */
static char *make_label(const char *mnt)
{
	size_t n = strlen(mnt);
	char *l = malloc(2 * n + 16), *q;

	if (!l)
		return NULL;
	q = l + sprintf(l, "mountpoint=\"");
	for (const char *s = mnt; *s; s++) {
		if (*s == '"' || *s == '\\')
			*q++ = '\\';
		if (*s == '\n') {
			*q++ = '\\';
			*q++ = 'n';
		} else {
			*q++ = *s;
		}
	}
	*q++ = '"';
	*q = 0;
	return l;
}

int fs_prom_new(struct fs_prom **out, struct fs *fs, const char *path)
{
	struct fs_prom *p = calloc(1, sizeof(*p));
	pthread_condattr_t ca;
	int ret;

	if (!p || !(p->path = strdup(path)) || !(p->label = make_label(fs->o->mountpoint))) {
		if (p)
			free(p->path);
		free(p);
		return -ENOMEM;
	}
	p->fs = fs;
	if (fs->cache)
		cache_set_labels(fs->cache, p->label);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&p->lock, NULL);
	/* the first one now: a mount is ready when its textfile exists */
	if ((ret = fs_prom_write(p)))
		fs_log(FS_LOG_WARN, "cannot write the textfile: %s: %s", path, strerror(-ret));
	ret = -pthread_create(&p->thread, NULL, prom_main, p);
	if (ret) {
		pthread_cond_destroy(&p->cv);
		pthread_mutex_destroy(&p->lock);
		unlink(p->path);
		free(p->label);
		free(p->path);
		free(p);
		return ret;
	}
	*out = p;
	return 0;
}

void fs_prom_free(struct fs_prom *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->lock);
	unlink(p->path);
	free(p->label);
	free(p->path);
	free(p);
}
