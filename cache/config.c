/* Cache configuration: -o keys and the lazarusfs.conf(5) file. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/cache.h"

__attribute__((format(printf, 3, 4)))
static int cfg_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

void cache_config_init(struct cache_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	for (int i = 0; i < CACHE_MAX_TIERS; i++) {
		cfg->tiers[i].high = 0.95;
		cfg->tiers[i].low = 0.80;
	}
	cfg->block_size = 4u << 20;
	cfg->prefetch = 8;
	cfg->prefetch_depth = 16;
	cfg->prefetch_timeout = 30;
	cfg->prefetch_files = 1u << 20;
}

static void tier_paths_free(struct cache_tier_config *t)
{
	for (size_t i = 0; i < t->npaths; i++)
		free(t->paths[i]);
	free(t->paths);
	t->paths = NULL;
	t->npaths = 0;
}

void cache_config_release(struct cache_config *cfg)
{
	for (int i = 0; i < CACHE_MAX_TIERS; i++)
		tier_paths_free(&cfg->tiers[i]);
}

size_t cache_config_ntiers(const struct cache_config *cfg)
{
	size_t n = 0;

	while (n < CACHE_MAX_TIERS && cfg->tiers[n].defined)
		n++;
	return n;
}

/* "4M", "1G", "512KiB", "1048576" -> bytes. */
static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	uint64_t mul = 1;

	if (!*s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (toupper((unsigned char)*end)) {
	case 'K': mul = 1ULL << 10; end++; break;
	case 'M': mul = 1ULL << 20; end++; break;
	case 'G': mul = 1ULL << 30; end++; break;
	case 'T': mul = 1ULL << 40; end++; break;
	default: break;
	}
	if (mul > 1 && (*end == 'i' || *end == 'I'))
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end || (v && mul > UINT64_MAX / v))
		return -EINVAL;
	*out = v * mul;
	return 0;
}

/* "0.95" or "95%" -> 0.95, must lie in (0, 1]. */
static int parse_fraction(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s)
		return -EINVAL;
	if (*end == '%') {
		v /= 100.0;
		end++;
	}
	if (*end || !(v > 0.0 && v <= 1.0))
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_uint(const char *s, unsigned max, unsigned *out)
{
	char *end;
	unsigned long v;

	if (!*s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

static int parse_bool(const char *s, int *out)
{
	if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
		*out = 1;
	else if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))
		*out = 0;
	else
		return -EINVAL;
	return 0;
}

/* Replace t->paths with the '|'-separated list in s. */
static int set_paths(struct cache_tier_config *t, const char *s, size_t len, char *err, size_t errlen)
{
	char **paths = NULL;
	size_t n = 0;
	const char *p = s, *end = s + len;

	while (p <= end) {
		const char *bar = memchr(p, '|', (size_t)(end - p));
		const char *stop = bar ? bar : end;
		char **np;

		if (stop == p || *p != '/') {
			for (size_t i = 0; i < n; i++)
				free(paths[i]);
			free(paths);
			return cfg_err(err, errlen, "cache path must be absolute: %.*s", (int)len, s);
		}
		np = realloc(paths, (n + 1) * sizeof(*paths));
		if (!np || !(np[n] = strndup(p, (size_t)(stop - p)))) {
			paths = np ? np : paths;
			for (size_t i = 0; i < n; i++)
				free(paths[i]);
			free(paths);
			return cfg_err(err, errlen, "out of memory");
		}
		paths = np;
		n++;
		if (n > TIER_MAX_DIRS) {
			for (size_t i = 0; i < n; i++)
				free(paths[i]);
			free(paths);
			return cfg_err(err, errlen, "too many cache paths in one tier (max %d)", TIER_MAX_DIRS);
		}
		if (!bar)
			break;
		p = bar + 1;
	}
	tier_paths_free(t);
	t->paths = paths;
	t->npaths = n;
	return 0;
}

static void tier_update_defined(struct cache_tier_config *t)
{
	t->defined = t->npaths > 0 && t->quota > 0;
}

static int set_tier_key(struct cache_config *cfg, int n, const char *sub, const char *value,
			char *err, size_t errlen)
{
	struct cache_tier_config *t = &cfg->tiers[n];
	int ret = 0;

	if (!*sub) {
		/* MEDIUM:PATHS:QUOTA; paths may contain ':' so split at first and last */
		const char *c1 = strchr(value, ':'), *c2 = strrchr(value, ':');
		char med[8];
		uint64_t q;

		if (!c1 || c1 == c2 || (size_t)(c1 - value) >= sizeof(med))
			return cfg_err(err, errlen, "bad tier%d: expected MEDIUM:PATH[|PATH...]:QUOTA, got %s", n, value);
		memcpy(med, value, (size_t)(c1 - value));
		med[c1 - value] = '\0';
		if (tier_medium_parse(med, &t->medium) < 0)
			return cfg_err(err, errlen, "bad tier%d medium: %s (MEM, SSD or HDD)", n, med);
		if (parse_size(c2 + 1, &q) < 0 || q == 0)
			return cfg_err(err, errlen, "bad tier%d quota: %s", n, c2 + 1);
		ret = set_paths(t, c1 + 1, (size_t)(c2 - c1 - 1), err, errlen);
		if (ret < 0)
			return ret;
		t->quota = q;
	} else if (!strcmp(sub, "_medium")) {
		if (tier_medium_parse(value, &t->medium) < 0)
			return cfg_err(err, errlen, "bad tier%d medium: %s (MEM, SSD or HDD)", n, value);
	} else if (!strcmp(sub, "_path") || !strcmp(sub, "_paths")) {
		ret = set_paths(t, value, strlen(value), err, errlen);
	} else if (!strcmp(sub, "_quota")) {
		if (parse_size(value, &t->quota) < 0 || t->quota == 0)
			return cfg_err(err, errlen, "bad tier%d quota: %s", n, value);
	} else if (!strcmp(sub, "_high")) {
		if (parse_fraction(value, &t->high) < 0)
			return cfg_err(err, errlen, "bad tier%d_high: %s (a fraction such as 0.95 or 95%%)", n, value);
	} else if (!strcmp(sub, "_low")) {
		if (parse_fraction(value, &t->low) < 0)
			return cfg_err(err, errlen, "bad tier%d_low: %s (a fraction such as 0.8 or 80%%)", n, value);
	} else {
		return -ENOENT;
	}
	tier_update_defined(t);
	return ret;
}

int cache_config_set(struct cache_config *cfg, const char *key, const char *value,
		     char *err, size_t errlen)
{
	uint64_t sz;
	unsigned u;

	if (!value)
		value = "";
	if (!strncmp(key, "tier", 4) && isdigit((unsigned char)key[4])) {
		int n = key[4] - '0';

		if (isdigit((unsigned char)key[5]))
			return -ENOENT;
		if (n >= CACHE_MAX_TIERS)
			return cfg_err(err, errlen, "bad %s: at most %d tiers (tier0..tier%d)", key,
				       CACHE_MAX_TIERS, CACHE_MAX_TIERS - 1);
		return set_tier_key(cfg, n, key + 5, value, err, errlen);
	}
	if (!strcmp(key, "block_size")) {
		if (parse_size(value, &sz) < 0 || sz < (64u << 10) || sz > (64u << 20) || (sz & (sz - 1)))
			return cfg_err(err, errlen, "bad block_size: %s (a power of two from 64K to 64M)", value);
		cfg->block_size = (uint32_t)sz;
	} else if (!strcmp(key, "prefetch")) {
		if (parse_uint(value, 256, &u) < 0)
			return cfg_err(err, errlen, "bad prefetch: %s (blocks, 0 to 256)", value);
		cfg->prefetch = u;
	} else if (!strcmp(key, "prefetch_depth")) {
		if (parse_uint(value, 256, &u) < 0 || u == 0)
			return cfg_err(err, errlen, "bad prefetch_depth: %s (1 to 256)", value);
		cfg->prefetch_depth = u;
	} else if (!strcmp(key, "prefetch_timeout")) {
		if (parse_uint(value, 3600, &u) < 0 || u == 0)
			return cfg_err(err, errlen, "bad prefetch_timeout: %s (seconds, 1 to 3600)", value);
		cfg->prefetch_timeout = u;
	} else if (!strcmp(key, "prefetch_files")) {
		if (parse_size(value, &sz) < 0 || sz > (1u << 30))
			return cfg_err(err, errlen, "bad prefetch_files: %s (a size up to 1G, 0 = off)", value);
		cfg->prefetch_files = sz;
	} else if (!strcmp(key, "verify_mem")) {
		int b;

		if (parse_bool(value, &b) < 0)
			return cfg_err(err, errlen, "bad verify_mem: %s (0 or 1)", value);
		cfg->verify_mem = b;
	} else if (!strcmp(key, "config")) {
		if (!*value)
			return cfg_err(err, errlen, "bad config: empty file name");
		return cache_config_load(cfg, value, err, errlen);
	} else {
		return -ENOENT;
	}
	return 0;
}

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int cache_config_load_cb(struct cache_config *cfg, const char *path,
			 int (*other)(void *arg, const char *key, const char *value,
				      char *err, size_t errlen),
			 void *arg, char *err, size_t errlen)
{
	char line[4096], section[32] = "", msg[512];
	char paths[4096] = "";   /* accumulated "path" lines of the current tier section */
	int path_tier = -1, lineno = 0, ret = 0;
	FILE *f = fopen(path, "re");

	if (!f) {
		ret = -errno;
		snprintf(msg, sizeof(msg), "config file open failed: %s: %s", path, strerror(-ret));
		if (err && errlen)
			snprintf(err, errlen, "%s", msg);
		return ret;
	}
	while (fgets(line, sizeof(line), f)) {
		char *s = trim(line), *eq, *k, *v, full[64];

		lineno++;
		msg[0] = '\0';
		if (!*s || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			char *e = strchr(s, ']');

			if (!e || e[1] || (size_t)(e - s - 1) >= sizeof(section)) {
				ret = cfg_err(msg, sizeof(msg), "bad section header: %s", s);
				goto out_err;
			}
			*e = '\0';
			snprintf(section, sizeof(section), "%s", trim(s + 1));
			if (*section && strcmp(section, "cache") &&
			    !(!strncmp(section, "tier", 4) && isdigit((unsigned char)section[4]) && !section[5]) &&
			    !other) {
				ret = cfg_err(msg, sizeof(msg), "unknown section: [%s]", section);
				goto out_err;
			}
			continue;
		}
		eq = strchr(s, '=');
		if (!eq) {
			ret = cfg_err(msg, sizeof(msg), "expected key = value: %s", s);
			goto out_err;
		}
		*eq = '\0';
		k = trim(s);
		v = trim(eq + 1);
		if (strlen(v) >= 2 && (*v == '"' || *v == '\'') && v[strlen(v) - 1] == *v) {
			v[strlen(v) - 1] = '\0';
			v++;
		}
		if (!strncmp(section, "tier", 4)) {
			int n = section[4] - '0';

			if (!strcmp(k, "path") || !strcmp(k, "paths")) {
				/* repeated path lines append */
				if (path_tier != n)
					paths[0] = '\0';
				path_tier = n;
				if (strlen(paths) + strlen(v) + 2 >= sizeof(paths)) {
					ret = cfg_err(msg, sizeof(msg), "too many paths");
					goto out_err;
				}
				if (paths[0])
					strcat(paths, "|");
				strcat(paths, v);
				v = paths;
			}
			snprintf(full, sizeof(full), "%s_%s", section, k);
		} else {
			snprintf(full, sizeof(full), "%s", k);
		}
		if (!strcmp(full, "config")) {
			ret = cfg_err(msg, sizeof(msg), "config files do not nest");
			goto out_err;
		}
		ret = (*section && strcmp(section, "cache") && strncmp(section, "tier", 4)) ? -ENOENT
			: cache_config_set(cfg, full, v, msg, sizeof(msg));
		if (ret == -ENOENT && other) {
			char okey[96];

			/* other sections are passed as "section.key" */
			if (*section && strcmp(section, "cache"))
				snprintf(okey, sizeof(okey), "%s.%s", section, k);
			else
				snprintf(okey, sizeof(okey), "%s", k);
			ret = other(arg, okey, v, msg, sizeof(msg));
		}
		if (ret == -ENOENT)
			ret = cfg_err(msg, sizeof(msg), "unknown key: %s", k);
		if (ret < 0)
			goto out_err;
	}
	fclose(f);
	return 0;

out_err:
	fclose(f);
	if (err && errlen)
		snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
	return ret;
}

int cache_config_load(struct cache_config *cfg, const char *path, char *err, size_t errlen)
{
	return cache_config_load_cb(cfg, path, NULL, NULL, err, errlen);
}

int cache_config_check(const struct cache_config *cfg, char *err, size_t errlen)
{
	size_t n = cache_config_ntiers(cfg);

	for (size_t i = n; i < CACHE_MAX_TIERS; i++)
		if (cfg->tiers[i].npaths || cfg->tiers[i].quota)
			return cfg_err(err, errlen, "tier%zu is incomplete or tier%zu is missing: tiers need "
				       "medium, path and quota and must be numbered from tier0", i, n);
	for (size_t i = 0; i < n; i++) {
		const struct cache_tier_config *t = &cfg->tiers[i];

		if (t->low > t->high)
			return cfg_err(err, errlen, "tier%zu_low (%.2f) is above tier%zu_high (%.2f)",
				       i, t->low, i, t->high);
		if (t->quota < tier_block_bytes(cfg->block_size, TIER_KEY_MAX))
			return cfg_err(err, errlen, "tier%zu quota is smaller than one block", i);
	}
	return 0;
}
