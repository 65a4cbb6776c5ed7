/* Cache statistics: snapshot, text / JSON, Prometheus textfile. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/cache_int.h"

void cache_get_stats(struct cache *c, struct cache_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&c->lock);
	st->ntiers = c->ntiers;
	for (size_t i = 0; i < c->ntiers; i++) {
		const struct ctier *t = &c->tiers[i];
		struct cache_tier_stats *o = &st->tier[i];

		o->used = t->used;
		o->reserved = t->reserved;
		o->quota = t->quota;
		o->blocks = t->st.blocks;
		o->hits = STAT_GET(t->st.hits);
		o->demotions = t->st.demotions;
		o->promotions = t->st.promotions;
		o->evictions = t->st.evictions;
		o->checksum_failures = STAT_GET(t->st.checksum_failures);
		o->io_errors = STAT_GET(t->st.io_errors);
		o->write_errors = t->st.write_errors;
	}
	pthread_mutex_unlock(&c->lock);
#define G(f) st->f = STAT_GET(c->st.f)
	G(lookups); G(hits); G(misses); G(fill_skipped);
	G(checksum_failures); G(torn_discarded); G(invalidations);
	G(prefetch_issued); G(prefetch_done); G(prefetch_failed); G(prefetch_used); G(prefetch_wasted);
	G(direct_reads); G(engine_reads); G(engine_bytes); G(engine_ns);
	G(copies_written); G(copies_opened);
	G(files_listed); G(files_read_ahead); G(files_used); G(files_dropped);
#undef G
}

/* Lookups that did not find the block in tier i or any tier above it. */
static uint64_t tier_misses(const struct cache_stats *st, size_t i)
{
	uint64_t above = 0;

	for (size_t k = 0; k <= i; k++)
		above += st->tier[k].hits;
	return st->lookups > above ? st->lookups - above : 0;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void paths_joined(struct cache *c, size_t i, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (size_t k = 0; k < c->cfg.tiers[i].npaths && n < len; k++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s", k ? "|" : "", c->cfg.tiers[i].paths[k]);
}

int cache_stats_format(struct cache *c, int json, char **out)
{
	struct cache_stats st;
	char *text = NULL, paths[2048];
	size_t len = 0;
	FILE *f;
	double eff;

	*out = NULL;
	cache_get_stats(c, &st);
	eff = st.prefetch_done ? (double)st.prefetch_used / (double)st.prefetch_done : 0.0;
	f = open_memstream(&text, &len);
	if (!f)
		return -ENOMEM;
	if (json) {
		fprintf(f, "{\"block_size\":%u,\"tiers\":[", c->bs);
		for (size_t i = 0; i < st.ntiers; i++) {
			const struct cache_tier_stats *t = &st.tier[i];

			paths_joined(c, i, paths, sizeof(paths));
			fprintf(f, "%s{\"tier\":%zu,\"medium\":\"%s\",\"paths\":", i ? "," : "", i,
				tier_medium_name(c->tiers[i].medium));
			json_str(f, paths);
			fprintf(f, ",\"usable\":%s,\"quota_bytes\":%" PRIu64 ",\"used_bytes\":%" PRIu64
				",\"blocks\":%" PRIu64 ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64
				",\"demotions\":%" PRIu64 ",\"promotions\":%" PRIu64 ",\"evictions\":%" PRIu64
				",\"checksum_failures\":%" PRIu64 ",\"io_errors\":%" PRIu64
				",\"write_errors\":%" PRIu64 "}",
				tier_usable(c->tiers[i].store) ? "true" : "false", t->quota, t->used,
				t->blocks, t->hits, tier_misses(&st, i), t->demotions, t->promotions,
				t->evictions, t->checksum_failures, t->io_errors, t->write_errors);
		}
		fprintf(f, "],\"lookups\":%" PRIu64 ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64
			",\"fill_skipped\":%" PRIu64 ",\"checksum_failures\":%" PRIu64
			",\"torn_discarded\":%" PRIu64 ",\"invalidations\":%" PRIu64
			",\"prefetch\":{\"issued\":%" PRIu64 ",\"completed\":%" PRIu64 ",\"failed\":%" PRIu64
			",\"used\":%" PRIu64 ",\"wasted\":%" PRIu64 ",\"effectiveness\":%.4f}"
			",\"direct_reads\":%" PRIu64
			",\"copies\":{\"written\":%" PRIu64 ",\"opened\":%" PRIu64 "}"
			",\"files\":{\"listed\":%" PRIu64 ",\"read_ahead\":%" PRIu64 ",\"used\":%" PRIu64
			",\"dropped\":%" PRIu64 "}"
			",\"engine\":{\"reads\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f}}\n",
			st.lookups, st.hits, st.misses, st.fill_skipped, st.checksum_failures,
			st.torn_discarded, st.invalidations, st.prefetch_issued, st.prefetch_done,
			st.prefetch_failed, st.prefetch_used, st.prefetch_wasted, eff, st.direct_reads,
			st.copies_written, st.copies_opened, st.files_listed, st.files_read_ahead, st.files_used, st.files_dropped,
			st.engine_reads, st.engine_bytes, (double)st.engine_ns / 1e9);
	} else {
		fprintf(f, "block_size: %u\ntiers: %zu\n", c->bs, st.ntiers);
		for (size_t i = 0; i < st.ntiers; i++) {
			const struct cache_tier_stats *t = &st.tier[i];

			paths_joined(c, i, paths, sizeof(paths));
			fprintf(f, "tier%zu.medium: %s\ntier%zu.paths: %s\ntier%zu.usable: %s\n"
				"tier%zu.quota_bytes: %" PRIu64 "\ntier%zu.used_bytes: %" PRIu64 "\n"
				"tier%zu.blocks: %" PRIu64 "\ntier%zu.hits: %" PRIu64 "\ntier%zu.misses: %" PRIu64 "\n"
				"tier%zu.demotions: %" PRIu64 "\ntier%zu.promotions: %" PRIu64 "\n"
				"tier%zu.evictions: %" PRIu64 "\ntier%zu.checksum_failures: %" PRIu64 "\n"
				"tier%zu.io_errors: %" PRIu64 "\ntier%zu.write_errors: %" PRIu64 "\n",
				i, tier_medium_name(c->tiers[i].medium), i, paths,
				i, tier_usable(c->tiers[i].store) ? "yes" : "no",
				i, t->quota, i, t->used, i, t->blocks, i, t->hits, i, tier_misses(&st, i),
				i, t->demotions, i, t->promotions, i, t->evictions,
				i, t->checksum_failures, i, t->io_errors, i, t->write_errors);
		}
		fprintf(f, "lookups: %" PRIu64 "\nhits: %" PRIu64 "\nmisses: %" PRIu64 "\n"
			"fill_skipped: %" PRIu64 "\nchecksum_failures: %" PRIu64 "\n"
			"torn_discarded: %" PRIu64 "\ninvalidations: %" PRIu64 "\n"
			"prefetch_issued: %" PRIu64 "\nprefetch_completed: %" PRIu64 "\n"
			"prefetch_failed: %" PRIu64 "\nprefetch_used: %" PRIu64 "\n"
			"prefetch_wasted: %" PRIu64 "\nprefetch_effectiveness: %.4f\n"
			"direct_reads: %" PRIu64 "\n"
			"copies_written: %" PRIu64 "\ncopies_opened: %" PRIu64 "\n"
			"files_listed: %" PRIu64 "\nfiles_read_ahead: %" PRIu64 "\n"
			"files_used: %" PRIu64 "\nfiles_dropped: %" PRIu64 "\n"
			"engine_reads: %" PRIu64 "\nengine_bytes: %" PRIu64 "\nengine_seconds: %.6f\n",
			st.lookups, st.hits, st.misses, st.fill_skipped, st.checksum_failures,
			st.torn_discarded, st.invalidations, st.prefetch_issued, st.prefetch_done,
			st.prefetch_failed, st.prefetch_used, st.prefetch_wasted, eff, st.direct_reads,
			st.copies_written, st.copies_opened, st.files_listed, st.files_read_ahead, st.files_used, st.files_dropped,
			st.engine_reads, st.engine_bytes, (double)st.engine_ns / 1e9);
	}
	if (fclose(f) != 0) {
		free(text);
		return -ENOMEM;
	}
	*out = text;
	return 0;
}

void cache_set_labels(struct cache *c, const char *labels)
{
	char *l = labels && *labels ? strdup(labels) : NULL;

	pthread_mutex_lock(&c->lock);
	free(c->labels);
	c->labels = l;
	pthread_mutex_unlock(&c->lock);
}

static void prom_head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void cache_prom_write(struct cache *c, FILE *f)
{
	struct cache_stats st;
	char lab[4200];
	const char *sep;

	cache_get_stats(c, &st);
	pthread_mutex_lock(&c->lock);
	snprintf(lab, sizeof(lab), "%s", c->labels ? c->labels : "");
	pthread_mutex_unlock(&c->lock);
	sep = *lab ? "," : "";

	static const struct { const char *name, *type, *help; size_t off; } tm[] = {
#define T(n, t, h, fld) { "lazarusfs_cache_tier_" n, t, h, offsetof(struct cache_tier_stats, fld) }
		T("hits_total", "counter", "Block reads served from this tier.", hits),
		T("used_bytes", "gauge", "Bytes of block files in this tier.", used),
		T("quota_bytes", "gauge", "Quota of this tier in bytes.", quota),
		T("blocks", "gauge", "Block files in this tier.", blocks),
		T("demotions_total", "counter", "Blocks moved from this tier to a lower one.", demotions),
		T("promotions_total", "counter", "Blocks moved from this tier to the top tier.", promotions),
		T("evictions_total", "counter", "Blocks dropped from this tier to make room.", evictions),
		T("checksum_failures_total", "counter", "Blocks of this tier that failed verification.", checksum_failures),
		T("io_errors_total", "counter", "Read errors in this tier.", io_errors),
		T("write_errors_total", "counter", "Write errors in this tier (full disk, I/O error).", write_errors),
#undef T
	};
	for (size_t m = 0; m < sizeof(tm) / sizeof(tm[0]); m++) {
		prom_head(f, tm[m].name, tm[m].type, tm[m].help);
		for (size_t i = 0; i < st.ntiers; i++)
			fprintf(f, "%s{%s%stier=\"%zu\",medium=\"%s\"} %" PRIu64 "\n", tm[m].name, lab, sep, i,
				tier_medium_name(c->tiers[i].medium),
				*(const uint64_t *)((const char *)&st.tier[i] + tm[m].off));
	}
	prom_head(f, "lazarusfs_cache_tier_misses_total", "counter",
		  "Block lookups not served by this tier or any tier above it.");
	for (size_t i = 0; i < st.ntiers; i++)
		fprintf(f, "lazarusfs_cache_tier_misses_total{%s%stier=\"%zu\",medium=\"%s\"} %" PRIu64 "\n",
			lab, sep, i, tier_medium_name(c->tiers[i].medium), tier_misses(&st, i));
	prom_head(f, "lazarusfs_cache_tier_usable", "gauge", "1 when the tier accepts new blocks.");
	for (size_t i = 0; i < st.ntiers; i++)
		fprintf(f, "lazarusfs_cache_tier_usable{%s%stier=\"%zu\",medium=\"%s\"} %d\n",
			lab, sep, i, tier_medium_name(c->tiers[i].medium), tier_usable(c->tiers[i].store));

	const struct { const char *name, *help; uint64_t v; } gm[] = {
		{ "lazarusfs_cache_lookups_total", "Block lookups by readers.", st.lookups },
		{ "lazarusfs_cache_hits_total", "Block lookups served from a tier.", st.hits },
		{ "lazarusfs_cache_misses_total", "Block lookups served by the engine.", st.misses },
		{ "lazarusfs_cache_fill_skipped_total", "Fetched blocks not stored for lack of room.", st.fill_skipped },
		{ "lazarusfs_cache_checksum_failures_total", "Blocks that failed verification.", st.checksum_failures },
		{ "lazarusfs_cache_torn_discarded_total", "Torn or temporary block files discarded at start.", st.torn_discarded },
		{ "lazarusfs_cache_invalidations_total", "Files whose blocks were dropped at open.", st.invalidations },
		{ "lazarusfs_cache_prefetch_issued_total", "Blocks queued for prefetch.", st.prefetch_issued },
		{ "lazarusfs_cache_prefetch_completed_total", "Prefetches that completed.", st.prefetch_done },
		{ "lazarusfs_cache_prefetch_failed_total", "Prefetches that failed or were cancelled.", st.prefetch_failed },
		{ "lazarusfs_cache_prefetch_used_total", "Prefetched blocks that a reader used.", st.prefetch_used },
		{ "lazarusfs_cache_files_read_ahead_total", "Listed small files read ahead whole.", st.files_read_ahead },
		{ "lazarusfs_cache_files_used_total", "Files read ahead that were opened afterwards.", st.files_used },
		{ "lazarusfs_cache_prefetch_wasted_total", "Prefetched blocks dropped unread.", st.prefetch_wasted },
		{ "lazarusfs_cache_direct_reads_total", "Small random misses read from the engine without fetching the block.", st.direct_reads },
		{ "lazarusfs_engine_reads_total", "Reads sent to the engine (demand and prefetch).", st.engine_reads },
		{ "lazarusfs_engine_read_bytes_total", "Bytes read from the engine.", st.engine_bytes },
	};
	for (size_t m = 0; m < sizeof(gm) / sizeof(gm[0]); m++) {
		prom_head(f, gm[m].name, "counter", gm[m].help);
		fprintf(f, "%s%s%s%s %" PRIu64 "\n", gm[m].name, *lab ? "{" : "", lab, *lab ? "}" : "", gm[m].v);
	}
	prom_head(f, "lazarusfs_engine_read_seconds_total", "counter",
		  "Time readers waited for demand fetches from the engine.");
	fprintf(f, "lazarusfs_engine_read_seconds_total%s%s%s %.6f\n", *lab ? "{" : "", lab,
		*lab ? "}" : "", (double)st.engine_ns / 1e9);
}

int cache_write_textfile(struct cache *c, const char *path)
{
	char def[4096], tmp[4200];
	FILE *f;
	int ret = 0;

	if (!path) {
		if (!c->state_dir)
			return -EINVAL;
		snprintf(def, sizeof(def), "%s/lazarusfs_cache.prom", c->state_dir);
		path = def;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	cache_prom_write(c, f);
	if (fflush(f) != 0 || ferror(f))
		ret = -EIO;
	if (fclose(f) != 0 && !ret)
		ret = -errno;
	if (!ret && rename(tmp, path) < 0)
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}
