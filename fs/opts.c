/*
 * fs/opts.c - command line and -o option parsing.
 *
 * We split -o lists ourselves (commas escaped as "\,") so that every one of
 * our options is validated with a message naming it, before anything is
 * mounted.  Options that are not lazarusfs's own go to the block cache's
 * parser (cache_config_set) next, and only the ones it does not know
 * either are handed to libfuse, which rejects what it does not know.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs.h"
#include "fs/takeover.h"

static const char *const profile_names[] = {
	[FS_PROFILE_COMMAND] = "command",
	[FS_PROFILE_JUICEFS] = "juicefs",
	[FS_PROFILE_ALLUXIO] = "alluxio",
	[FS_PROFILE_SSHFS] = "sshfs",
	[FS_PROFILE_BINDFS] = "bindfs",
	[FS_PROFILE_S3FS] = "s3fs",
};

const char *fs_profile_name(enum fs_engine_profile p)
{
	return profile_names[p];
}

int fs_profile_parse(const char *name, enum fs_engine_profile *out)
{
	for (size_t i = 0; i < sizeof(profile_names) / sizeof(*profile_names); i++)
		if (!strcmp(name, profile_names[i])) {
			*out = i;
			return 0;
		}
	return -EINVAL;
}

void fs_opts_init(struct fs_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->profile = FS_PROFILE_COMMAND;
	o->start_timeout = 30;
	o->hang_timeout = 30;
	o->attr_timeout = 1;
	o->entry_timeout = 1;
	o->journal_mem = 8u << 20;
	o->journal_max = 64u << 20;
	o->journal_age = 5;
	o->journal = FS_JOURNAL_AUTO;
	o->meta_ttl = -1;
	o->meta_max = 64u << 20;
	cache_config_init(&o->cache);
}

/*
 * meta_ttl=-1 (not given): unbounded on an immutable dataset (immutable=1
 * or a ro mount), else off.  Where entries never expire, the kernel may
 * cache as long too: Fluid's tuning guides set attr_timeout and
 * entry_timeout to 7200 for training; timeouts given explicitly stay.
 */
void fs_opts_resolve_meta(struct fs_opts *o)
{
	if (o->meta_ttl < 0)
		o->meta_ttl = o->immutable || o->readonly ? INFINITY : 0;
	if (!isinf(o->meta_ttl))
		return;
	if (!(o->set_timeouts & 1))
		o->attr_timeout = 7200;
	if (!(o->set_timeouts & 2))
		o->entry_timeout = 7200;
	if (!(o->set_timeouts & 4))
		o->negative_timeout = 7200;
}

bool fs_opts_journals(const struct fs_opts *o)
{
	if (o->journal != FS_JOURNAL_AUTO)
		return o->journal == FS_JOURNAL_ON;
	return o->profile != FS_PROFILE_BINDFS;
}

void fs_opts_release(struct fs_opts *o)
{
	free(o->source);
	free(o->mountpoint);
	free(o->engine_cmd);
	free(o->engine_env);
	free(o->engine_opts);
	free(o->state_dir);
	cache_config_release(&o->cache);
	memset(o, 0, sizeof(*o));
}

void fs_usage(const char *prog)
{
	printf("usage: %s [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT\n"
	       "\n"
	       "A FUSE proxy that starts the real engine on first access and keeps\n"
	       "open files working across engine crashes.  See lazarusfs(8).\n"
	       "\n"
	       "  -f                     stay in the foreground\n"
	       "  -d                     debug output (implies -f)\n"
	       "  -h, --help             this help\n"
	       "  -V, --version          version\n"
	       "\n"
	       "lazarusfs options (-o):\n"
	       "  engine=PROFILE         command (default), juicefs, alluxio, sshfs,\n"
	       "                         bindfs, s3fs\n"
	       "  engine_cmd=TEMPLATE    engine argv; {source} {mnt} {id} are replaced\n"
	       "  engine_opts=OPTS       extra options handed to the engine's -o (profiles)\n"
	       "  engine_env=FILE        KEY=VALUE environment for the engine (secrets)\n"
	       "  start_timeout=SECONDS  engine must mount within this (30)\n"
	       "  idle_timeout=SECONDS   stop an idle engine after this, 0 = never (0)\n"
	       "  hang_timeout=SECONDS   kill an engine stuck this long (30)\n"
	       "  recovery_timeout=SECONDS  fail requests with EIO after waiting this\n"
	       "                         long for a restart, 0 = wait forever (0)\n"
	       "  state_dir=DIR          backend mounts, logs, control socket (%s)\n"
	       "  attr_timeout=SECONDS   kernel attribute cache (1)\n"
	       "  entry_timeout=SECONDS  kernel name cache (1)\n"
	       "  negative_timeout=SECONDS  kernel negative name cache (0)\n"
	       "  journal=auto|on|off    journal acknowledged changes for replay after an\n"
	       "                         engine crash (auto: on, off for engine=bindfs)\n"
	       "  journal_max=SIZE       unretired journal per file that forces an fsync (64M)\n"
	       "  journal_age=SECONDS    age of an unretired change that forces an fsync (5)\n"
	       "  meta_ttl=SECONDS       keep attributes, missing names and listings this\n"
	       "                         long (inf; default: inf when ro or immutable, else 0)\n"
	       "  immutable=0|1          the dataset changes only through this mount (0)\n"
	       "  takeover=on|off        a new proxy takes over the mount when this one\n"
	       "                         dies or is upgraded (on)\n"
	       "  meta_max=SIZE          memory for the metadata cache (64M)\n"
	       "\n"
	       "block cache options (-o, see lazarusfs.conf(5); no tier = no cache):\n"
	       "  tierN=MEDIUM:PATH[|PATH...]:QUOTA   e.g. tier0=MEM:/dev/shm/lz:1G\n"
	       "  tierN_medium= tierN_path= tierN_quota= tierN_high= tierN_low=\n"
	       "  block_size=SIZE  prefetch=N (8)  prefetch_depth=N  prefetch_timeout=SECONDS\n"
	       "  verify_mem=0|1\n"
	       "  config=FILE            cache settings (and lazarusfs options) from FILE\n"
	       "\n"
	       "Other -o options go to the kernel (ro, allow_other, ...).\n",
	       prog, LAZARUSFS_STATE_DIR);
}

static int parse_seconds(const char *key, const char *v, double *out,
			 char *err, size_t errlen)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(v, &end);
	if (!*v || *end || errno || !isfinite(d) || d < 0 || d > 1e7) {
		snprintf(err, errlen, "invalid value for %s: '%s' (want seconds >= 0)",
			 key, v);
		return -EINVAL;
	}
	*out = d;
	return 0;
}

static int parse_size(const char *key, const char *v, size_t *out, char *err,
		      size_t errlen)
{
	unsigned long long n;
	char *end;
	int shift = 0;

	errno = 0;
	n = strtoull(v, &end, 10);
	if (end != v && *end && !end[1]) {
		switch (*end) {
		case 'k': case 'K': shift = 10; end++; break;
		case 'm': case 'M': shift = 20; end++; break;
		case 'g': case 'G': shift = 30; end++; break;
		}
	}
	if (end == v || *end || errno || *v == '-' || n > (SIZE_MAX >> 31)) {
		snprintf(err, errlen, "invalid value for %s: '%s' (want a size like 64M)",
			 key, v);
		return -EINVAL;
	}
	*out = (size_t)n << shift;
	return 0;
}

static int set_str(char **dst, const char *key, const char *v, char *err,
		   size_t errlen)
{
	if (!*v) {
		snprintf(err, errlen, "empty value for %s", key);
		return -EINVAL;
	}
	free(*dst);
	*dst = strdup(v);
	return *dst ? 0 : -ENOMEM;
}

static int strv_push(char ***v, const char *s)
{
	size_t n = fs_strv_len(*v);
	char **nv = realloc(*v, (n + 2) * sizeof(char *));

	if (!nv)
		return -ENOMEM;
	*v = nv;
	nv[n] = strdup(s);
	nv[n + 1] = NULL;
	return nv[n] ? 0 : -ENOMEM;
}

/* One of lazarusfs's own options (v NULL: no "=").  Returns 1 when the key
 * is not one of them. */
static int parse_own(struct fs_opts *o, const char *key, const char *v,
		     bool *explicit_profile, char *err, size_t errlen)
{
	static const struct {
		const char *name;
		size_t off;
	} secs[] = {
		{ "start_timeout", offsetof(struct fs_opts, start_timeout) },
		{ "idle_timeout", offsetof(struct fs_opts, idle_timeout) },
		{ "hang_timeout", offsetof(struct fs_opts, hang_timeout) },
		{ "recovery_timeout", offsetof(struct fs_opts, recovery_timeout) },
		{ "attr_timeout", offsetof(struct fs_opts, attr_timeout) },
		{ "entry_timeout", offsetof(struct fs_opts, entry_timeout) },
		{ "negative_timeout", offsetof(struct fs_opts, negative_timeout) },
		{ "journal_age", offsetof(struct fs_opts, journal_age) },
		{ "meta_ttl", offsetof(struct fs_opts, meta_ttl) },
	};
	static const struct {
		const char *name;
		size_t off;
	} strs[] = {
		{ "engine_cmd", offsetof(struct fs_opts, engine_cmd) },
		{ "engine_env", offsetof(struct fs_opts, engine_env) },
		{ "engine_opts", offsetof(struct fs_opts, engine_opts) },
		{ "state_dir", offsetof(struct fs_opts, state_dir) },
	};
	bool ours = !strcmp(key, "engine") || !strcmp(key, "journal_mem") ||
		    !strcmp(key, "journal_max") || !strcmp(key, "journal") ||
		    !strcmp(key, "meta_max") || !strcmp(key, "immutable") ||
		    !strcmp(key, "takeover");

	for (size_t i = 0; i < sizeof(secs) / sizeof(*secs); i++)
		ours |= !strcmp(key, secs[i].name);
	for (size_t i = 0; i < sizeof(strs) / sizeof(*strs); i++)
		ours |= !strcmp(key, strs[i].name);
	if (!ours)
		return 1;
	if (!v) {
		snprintf(err, errlen, "option %s needs a value (%s=...)", key, key);
		return -EINVAL;
	}
	if (!strcmp(key, "engine")) {
		if (fs_profile_parse(v, &o->profile)) {
			snprintf(err, errlen,
				 "unknown engine profile '%s' (want command, juicefs, alluxio, sshfs, bindfs or s3fs)",
				 v);
			return -EINVAL;
		}
		*explicit_profile = true;
		return 0;
	}
	if (!strcmp(key, "journal")) {
		static const char *const modes[] = { "auto", "on", "off" };

		for (int i = 0; i < 3; i++)
			if (!strcmp(v, modes[i])) {
				o->journal = (enum fs_journal_mode)i;
				return 0;
			}
		snprintf(err, errlen, "invalid value for journal: '%s' (want auto, on or off)", v);
		return -EINVAL;
	}
	if (!strcmp(key, "takeover")) {
		if (strcmp(v, "on") && strcmp(v, "off")) {
			snprintf(err, errlen, "invalid value for takeover: '%s' (want on or off)", v);
			return -EINVAL;
		}
		o->no_takeover = v[1] == 'f';
		return 0;
	}
	if (!strcmp(key, "immutable")) {
		if (strcmp(v, "0") && strcmp(v, "1")) {
			snprintf(err, errlen, "invalid value for immutable: '%s' (want 0 or 1)", v);
			return -EINVAL;
		}
		o->immutable = v[0] == '1';
		return 0;
	}
	if (!strcmp(key, "meta_max"))
		return parse_size(key, v, &o->meta_max, err, errlen);
	if (!strcmp(key, "meta_ttl") && !strcmp(v, "inf")) {
		o->meta_ttl = INFINITY;
		return 0;
	}
	/* the kernel's caches get longer defaults on immutable datasets */
	if (!strcmp(key, "attr_timeout"))
		o->set_timeouts |= 1;
	else if (!strcmp(key, "entry_timeout"))
		o->set_timeouts |= 2;
	else if (!strcmp(key, "negative_timeout"))
		o->set_timeouts |= 4;
	/* obsolete (the journal lives in state_dir); still accepted */
	if (!strcmp(key, "journal_mem"))
		return parse_size(key, v, &o->journal_mem, err, errlen);
	if (!strcmp(key, "journal_max"))
		return parse_size(key, v, &o->journal_max, err, errlen);
	for (size_t i = 0; i < sizeof(secs) / sizeof(*secs); i++)
		if (!strcmp(key, secs[i].name))
			return parse_seconds(key, v, (double *)((char *)o + secs[i].off),
					     err, errlen);
	for (size_t i = 0; i < sizeof(strs) / sizeof(*strs); i++)
		if (!strcmp(key, strs[i].name))
			return set_str((char **)((char *)o + strs[i].off), key, v,
				       err, errlen);
	return 1;
}

struct file_ctx {
	struct fs_opts *o;
	bool *explicit_profile;
};

/* Keys of a config=FILE that are not cache keys: our own options. */
static int file_other(void *arg, const char *key, const char *value,
		      char *err, size_t errlen)
{
	struct file_ctx *x = arg;
	int ret = parse_own(x->o, key, value, x->explicit_profile, err, errlen);

	return ret == 1 ? -ENOENT : ret;
}

/*
 * One "key[=value]" option: ours, else the cache's, else (returns 1) for
 * libfuse.
 */
static int parse_one(struct fs_opts *o, const char *opt, bool *explicit_profile,
		     char *err, size_t errlen)
{
	const char *eq = strchr(opt, '=');
	size_t klen = eq ? (size_t)(eq - opt) : strlen(opt);
	const char *v = eq ? eq + 1 : NULL;
	char key[64];
	int ret;

	if (klen >= sizeof(key))
		return 1;
	memcpy(key, opt, klen);
	key[klen] = 0;
	ret = parse_own(o, key, v, explicit_profile, err, errlen);
	if (ret != 1)
		return ret;
	if (!strcmp(key, "config")) {
		struct file_ctx x = { .o = o, .explicit_profile = explicit_profile };

		if (!v || !*v) {
			snprintf(err, errlen, "option config needs a file name (config=FILE)");
			return -EINVAL;
		}
		/* the loader's errors (also -ENOENT for a missing file) name
		 * the file and line */
		ret = cache_config_load_cb(&o->cache, v, file_other, &x, err, errlen);
		return ret == -ENOMEM ? ret : ret < 0 ? -EINVAL : 0;
	}
	ret = cache_config_set(&o->cache, key, v, err, errlen);
	if (ret == -ENOENT) {
		/* a kernel option, passed on; a read-only mount is a dataset
		 * nobody writes through us */
		if (!strcmp(key, "ro"))
			o->readonly = true;
		else if (!strcmp(key, "rw"))
			o->readonly = false;
		return 1;
	}
	return ret == -ENOMEM ? ret : ret < 0 ? -EINVAL : 0;
}

/* Split an -o list on unescaped commas; "\," and "\\" are unescaped. */
static int parse_optlist(struct fs_opts *o, const char *list,
			 bool *explicit_profile, char ***rest, char *err,
			 size_t errlen)
{
	size_t len = strlen(list);
	char *buf = malloc(len + 1);
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (const char *p = list;; ) {
		size_t n = 0;

		while (*p && *p != ',') {
			if (*p == '\\' && p[1])
				p++;
			buf[n++] = *p++;
		}
		buf[n] = 0;
		if (n) {
			ret = parse_one(o, buf, explicit_profile, err, errlen);
			if (ret == 1)
				ret = strv_push(rest, buf);
			if (ret)
				break;
		}
		if (!*p)
			break;
		p++;
	}
	free(buf);
	return ret;
}

/* Join options back into one -o argument for libfuse, escaping commas. */
static char *join_opts(char **v)
{
	size_t len = 1;
	char *s, *p;

	for (size_t i = 0; v && v[i]; i++)
		len += 2 * strlen(v[i]) + 1;
	s = p = malloc(len);
	if (!s)
		return NULL;
	for (size_t i = 0; v && v[i]; i++) {
		if (i)
			*p++ = ',';
		for (const char *q = v[i]; *q; q++) {
			if (*q == ',' || *q == '\\')
				*p++ = '\\';
			*p++ = *q;
		}
	}
	*p = 0;
	return s;
}

int fs_opts_parse(struct fs_opts *o, int argc, char **argv, int *fuse_argc,
		  char ***fuse_argv, char *err, size_t errlen)
{
	bool explicit_profile = false;
	char **rest = NULL, **fargv = NULL, *joined = NULL;
	char masked[512], fsname[600], *mnt = NULL;
	const char *positional[2] = { NULL, NULL };
	int npos = 0, ret = 0;

	*fuse_argc = 0;
	*fuse_argv = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fs_usage(argv[0]);
			ret = 1;
			goto out;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("lazarusfs %s\n", PACKAGE_VERSION);
			ret = 1;
			goto out;
		} else if (!strcmp(a, "-f")) {
			o->foreground = true;
		} else if (!strcmp(a, "-d")) {
			o->foreground = o->debug = true;
		} else if (!strcmp(a, "-o") || !strncmp(a, "-o", 2)) {
			const char *list = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);

			if (!list) {
				snprintf(err, errlen, "-o needs an option list");
				ret = -EINVAL;
				goto out;
			}
			ret = parse_optlist(o, list, &explicit_profile, &rest, err,
					    errlen);
			if (ret)
				goto out;
		} else if (a[0] == '-' && a[1]) {
			snprintf(err, errlen, "unknown flag '%s' (see --help)", a);
			ret = -EINVAL;
			goto out;
		} else if (npos < 2) {
			positional[npos++] = a;
		} else {
			snprintf(err, errlen, "unexpected argument '%s' (want SOURCE MOUNTPOINT)",
				 a);
			ret = -EINVAL;
			goto out;
		}
	}
	if (npos < 2) {
		snprintf(err, errlen, "missing %s (usage: lazarusfs [-f] [-o OPTS] SOURCE MOUNTPOINT)",
			 npos ? "MOUNTPOINT" : "SOURCE and MOUNTPOINT");
		ret = -EINVAL;
		goto out;
	}
	if (o->engine_cmd && explicit_profile && o->profile != FS_PROFILE_COMMAND) {
		snprintf(err, errlen, "engine_cmd is only for engine=command, not engine=%s",
			 fs_profile_name(o->profile));
		ret = -EINVAL;
		goto out;
	}
	if (o->profile == FS_PROFILE_COMMAND && !o->engine_cmd) {
		snprintf(err, errlen,
			 "no engine: give engine=PROFILE (juicefs, alluxio, sshfs, bindfs, s3fs) or engine_cmd=TEMPLATE");
		ret = -EINVAL;
		goto out;
	}
	if (o->hang_timeout > 0 && o->hang_timeout < 1) {
		snprintf(err, errlen, "hang_timeout must be at least 1 second");
		ret = -EINVAL;
		goto out;
	}
	if (o->start_timeout <= 0) {
		snprintf(err, errlen, "start_timeout must be more than 0");
		ret = -EINVAL;
		goto out;
	}
	if (cache_config_check(&o->cache, err, errlen)) {
		ret = -EINVAL;
		goto out;
	}
	fs_opts_resolve_meta(o);
	/* a successor must not look at its own mount: nobody serves it yet */
	mnt = fs_tko_mountpoint() ? strdup(fs_tko_mountpoint()) : realpath(positional[1], NULL);
	if (!mnt) {
		ret = -errno;
		snprintf(err, errlen, "cannot use mountpoint: %s: %s", positional[1], strerror(-ret));
		goto out;
	}
	o->source = strdup(positional[0]);
	o->mountpoint = mnt;
	mnt = NULL;
	if (!o->state_dir)
		o->state_dir = strdup(LAZARUSFS_STATE_DIR);
	if (!o->source || !o->state_dir) {
		ret = -ENOMEM;
		goto out;
	}

	/* fsname shows in df and mountinfo: never the secret */
	fs_mask_secret(o->source, masked, sizeof(masked));
	snprintf(fsname, sizeof(fsname), "fsname=%s", masked);
	if ((ret = strv_push(&rest, fsname)) ||
	    (ret = strv_push(&rest, "subtype=lazarusfs")) ||
	    (ret = strv_push(&rest, "allow_other")) ||
	    (ret = strv_push(&rest, "default_permissions")))
		goto out;
	if (o->debug && (ret = strv_push(&rest, "debug")))
		goto out;
	joined = join_opts(rest);
	if (!joined || (ret = strv_push(&fargv, argv[0])) ||
	    (ret = strv_push(&fargv, "-o")) || (ret = strv_push(&fargv, joined))) {
		ret = ret ? ret : -ENOMEM;
		goto out;
	}
	*fuse_argc = fs_strv_len(fargv);
	*fuse_argv = fargv;
	fargv = NULL;
out:
	free(mnt);
	free(joined);
	fs_strv_free(rest);
	fs_strv_free(fargv);
	if (ret == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	return ret;
}
