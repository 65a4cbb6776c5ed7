/*
 * fs/profile.c - engine command lines.
 *
 * A profile turns SOURCE and the hidden backend mountpoint into the argv of
 * an engine that stays in the foreground (it is our child; we watch its
 * pidfd).  No shell is involved anywhere: templates are split into words
 * here, with shell-like quoting, and placeholders are replaced inside words.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs.h"

/* s3fs sleeps 2-4 s between tries: this is about 46 days of an outage */
#define S3FS_RETRIES "1000000"

size_t fs_strv_len(char *const *v)
{
	size_t n = 0;

	while (v && v[n])
		n++;
	return n;
}

void fs_strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

/* A growable string and a growable vector, just for this file. */
struct sbuf {
	char *s;
	size_t len, cap;
};

static int sbuf_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		char *ns;

		while (cap < b->len + n + 1)
			cap *= 2;
		ns = realloc(b->s, cap);
		if (!ns)
			return -ENOMEM;
		b->s = ns;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = 0;
	return 0;
}

static int strv_add(char ***v, size_t *n, char *s)
{
	char **nv = realloc(*v, (*n + 2) * sizeof(char *));

	if (!nv) {
		free(s);
		return -ENOMEM;
	}
	nv[(*n)++] = s;
	nv[*n] = NULL;
	*v = nv;
	return 0;
}

static int strv_add_dup(char ***v, size_t *n, const char *s)
{
	char *d = strdup(s);

	return d ? strv_add(v, n, d) : -ENOMEM;
}

/* split_words() marks a backslash-escaped '{' so that it stays literal */
#define ESCAPED_BRACE '\x01'

/*
 * Replace {source}, {mnt} and {id} in one word.  "{" + letters + "}" is a
 * placeholder and must be one of those (a typo like {Mnt} is an error);
 * other braces (awk programs, JSON, find's {}) stay as they are.
 */
static int expand_word(const char *w, const char *const vals[3], char **out,
		       char *err, size_t errlen)
{
	static const char *const keys[3] = { "source", "mnt", "id" };
	struct sbuf b = { 0 };
	int ret = sbuf_add(&b, "", 0);

	while (!ret && *w) {
		size_t n = *w == '{' ? strspn(w + 1, "abcdefghijklmnopqrstuvwxyz"
					      "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") : 0;
		size_t i;

		if (*w == ESCAPED_BRACE) {
			ret = sbuf_add(&b, "{", 1);
			w++;
			continue;
		}
		if (!n || w[n + 1] != '}') {
			ret = sbuf_add(&b, w++, 1);
			continue;
		}
		for (i = 0; i < 3; i++)
			if (strlen(keys[i]) == n && !memcmp(w + 1, keys[i], n))
				break;
		if (i == 3) {
			snprintf(err, errlen,
				 "unknown placeholder %.*s in engine_cmd (known: {source} {mnt} {id})",
				 (int)n + 2, w);
			ret = -EINVAL;
			break;
		}
		ret = sbuf_add(&b, vals[i], strlen(vals[i]));
		w += n + 2;
	}
	if (ret) {
		free(b.s);
		return ret;
	}
	*out = b.s;
	return 0;
}

/* Shell-like word splitting with quote removal; no expansion of any kind. */
static int split_words(const char *s, char ***out, size_t *nout)
{
	struct sbuf w = { 0 };
	bool inword = false;
	int ret = 0;

	for (;;) {
		char c = *s;

		if (!c || c == ' ' || c == '\t' || c == '\n') {
			if (inword) {
				if ((ret = strv_add(out, nout, w.s)))
					return ret;
				w = (struct sbuf){ 0 };
				inword = false;
			}
			if (!c)
				return 0;
			s++;
			continue;
		}
		inword = true;
		if (!w.s && (ret = sbuf_add(&w, "", 0)))
			break;
		if (c == '\'') {
			const char *close = strchr(s + 1, '\'');

			if (!close)
				goto unbalanced;
			ret = sbuf_add(&w, s + 1, close - s - 1);
			s = close + 1;
		} else if (c == '"') {
			for (s++; *s && *s != '"' && !ret; s++) {
				if (*s == '\\' && s[1] && strchr("\"\\$`", s[1]))
					s++;
				ret = sbuf_add(&w, s, 1);
			}
			if (!*s)
				goto unbalanced;
			s++;
		} else {
			if (c == '\\' && !*++s)
				goto unbalanced;
			if (c == '\\' && *s == '{') {
				char mark = ESCAPED_BRACE;

				ret = sbuf_add(&w, &mark, 1);
				s++;
			} else {
				ret = sbuf_add(&w, s++, 1);
			}
		}
		if (ret)
			break;
	}
	free(w.s);
	return ret;
unbalanced:
	free(w.s);
	return -EINVAL;
}

int fs_template_expand(const char *tmpl, const char *source, const char *mnt,
		       const char *id, char ***out, char *err, size_t errlen)
{
	const char *vals[3] = { source, mnt, id };
	char **words = NULL, **v = NULL;
	size_t n = 0, nv = 0;
	int ret = split_words(tmpl, &words, &n);

	if (ret == -EINVAL)
		snprintf(err, errlen, "unbalanced quote or trailing backslash in engine_cmd");
	if (!ret && !n) {
		snprintf(err, errlen, "engine_cmd is empty");
		ret = -EINVAL;
	}
	for (size_t i = 0; !ret && i < n; i++) {
		char *x;

		if (!(ret = expand_word(words[i], vals, &x, err, errlen)))
			ret = strv_add(&v, &nv, x);
	}
	fs_strv_free(words);
	if (ret) {
		fs_strv_free(v);
		if (ret == -ENOMEM)
			snprintf(err, errlen, "out of memory");
		return ret;
	}
	*out = v;
	return 0;
}

/*
 * Split "scheme://user:password@host/..." into the URL without the password
 * and the password (same rules as fs_mask_secret: the userinfo ends at the
 * last '@' before the path).  Returns 1 when there was a password.
 */
static int split_url_password(const char *url, char **bare, char **password)
{
	const char *auth = strstr(url, "://"), *end, *at = NULL, *colon;

	if (!auth)
		return 0;
	auth += 3;
	end = strchr(auth, '/');
	if (!end)
		end = auth + strlen(auth);
	for (const char *p = auth; p < end; p++)
		if (*p == '@')
			at = p;
	colon = at ? memchr(auth, ':', at - auth) : NULL;
	if (!colon)
		return 0;
	*password = strndup(colon + 1, at - colon - 1);
	if (asprintf(bare, "%.*s%s", (int)(colon - url), url, at) < 0)
		*bare = NULL;
	return 1;
}

/* Append the words of an options string ("-o a,b" style or plain flags). */
static int add_words(char ***v, size_t *n, const char *words, char *err,
		     size_t errlen)
{
	char **w = NULL;
	int ret;

	if (!words || !*words)
		return 0;
	ret = fs_template_expand(words, "", "", "", &w, err, errlen);
	if (ret)
		return ret;
	for (size_t i = 0; w[i]; i++)
		if ((ret = strv_add_dup(v, n, w[i])))
			break;
	fs_strv_free(w);
	return ret;
}

/*
 * s3fs takes SOURCE in its own syntax, "bucket[:/path]".  Checked here so
 * that a typo (an s3:// URL, a path without its bucket) is a mount-time
 * error with a reason instead of an engine that exits on first access.
 */
static int check_s3fs_source(const char *src, char *err, size_t errlen)
{
	size_t n = strcspn(src, ":");
	char shown[256];

	if (n && src[0] != '-' && src[0] != '.' &&
	    strspn(src, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		   "0123456789.-_") == n &&
	    (!src[n] || (src[n + 1] == '/' && src[n + 2] != '/')))
		return 0;
	fs_mask_secret(src, shown, sizeof(shown));
	snprintf(err, errlen, "engine=s3fs wants SOURCE as bucket[:/path], not '%s'",
		 shown);
	return -EINVAL;
}

int fs_profile_argv(const struct fs_opts *o, const char *mnt, const char *id,
		    char ***argv, char ***env_extra, char *err, size_t errlen)
{
	char **v = NULL, **env = NULL, *bare = NULL, *password = NULL;
	size_t n = 0, ne = 0;
	int ret = 0;

	*argv = NULL;
	*env_extra = NULL;
	switch (o->profile) {
	case FS_PROFILE_COMMAND:
		return fs_template_expand(o->engine_cmd, o->source, mnt, id, argv,
					  err, errlen);
	case FS_PROFILE_BINDFS:
		/* bindfs is single threaded unless told otherwise */
		if ((ret = strv_add_dup(&v, &n, "bindfs")) ||
		    (ret = strv_add_dup(&v, &n, "-f")) ||
		    (ret = strv_add_dup(&v, &n, "--multithreaded")) ||
		    (ret = add_words(&v, &n, o->engine_opts, err, errlen)) ||
		    (ret = strv_add_dup(&v, &n, o->source)) ||
		    (ret = strv_add_dup(&v, &n, mnt)))
			goto out;
		break;
	case FS_PROFILE_SSHFS:
		/*
		 * No sshfs "reconnect": a dead transport must surface as a dead
		 * engine, which we restart and recover from with every handle.
		 */
		if ((ret = strv_add_dup(&v, &n, "sshfs")) ||
		    (ret = strv_add_dup(&v, &n, "-f")) ||
		    (ret = strv_add_dup(&v, &n, o->source)) ||
		    (ret = strv_add_dup(&v, &n, mnt)) ||
		    (ret = strv_add_dup(&v, &n, "-o")) ||
		    (ret = strv_add_dup(&v, &n,
					"ServerAliveInterval=15,ServerAliveCountMax=3,BatchMode=yes")) ||
		    (ret = add_words(&v, &n, o->engine_opts, err, errlen)))
			goto out;
		break;
	case FS_PROFILE_JUICEFS:
		/*
		 * `juicefs mount META-URL MOUNTPOINT` stays in the foreground
		 * without -d.  The meta password goes through META_PASSWORD so
		 * it is not in anybody's argv.  xattrs on, since we pass them.
		 */
		if (split_url_password(o->source, &bare, &password)) {
			char *kv;

			if (!bare || !password || asprintf(&kv, "META_PASSWORD=%s", password) < 0) {
				ret = -ENOMEM;
				goto out;
			}
			if ((ret = strv_add(&env, &ne, kv)))
				goto out;
		}
		if ((ret = strv_add_dup(&v, &n, "juicefs")) ||
		    (ret = strv_add_dup(&v, &n, "mount")) ||
		    (ret = strv_add_dup(&v, &n, "--no-usage-report")) ||
		    (ret = strv_add_dup(&v, &n, "--enable-xattr")) ||
		    (ret = add_words(&v, &n, o->engine_opts, err, errlen)) ||
		    (ret = strv_add_dup(&v, &n, bare ? bare : o->source)) ||
		    (ret = strv_add_dup(&v, &n, mnt)))
			goto out;
		break;
	case FS_PROFILE_S3FS:
		/*
		 * s3fs-fuse: `s3fs BUCKET[:/PATH] MOUNTPOINT -f`.  Credentials
		 * come from the environment (engine_env with AWS_ACCESS_KEY_ID
		 * and AWS_SECRET_ACCESS_KEY), never from argv.  allow_other,
		 * or s3fs shows its root as 0700 and we would pass that on.
		 * An endpoint that does not answer makes s3fs sleep and retry,
		 * and after `retries` (5) tries it answers EIO while it keeps
		 * running, so the application would get EIO from every cached
		 * file too.  With retries this high it keeps trying instead:
		 * an outage is a hung engine, which the hang watch restarts,
		 * and meanwhile files in the block cache are served without it
		 * and other requests wait up to recovery_timeout.  s3fs logs to
		 * stdout through a stdio buffer, so the lines of an s3fs we
		 * kill (the ones that say why it hung) would be lost: with a
		 * logfile it flushes every line, here into engine.log.
		 * nomixupload: s3fs 1.90 rewrites a changed large object with
		 * server-side copies of its unchanged parts, which puts the
		 * mount path of a bucket:/path source in front of the key once
		 * per retry, and which servers such as s3rver refuse (501);
		 * either way a flush (a journal replay's too) never finishes.
		 * engine_opts come last, so they can override the others.
		 */
		if ((ret = check_s3fs_source(o->source, err, errlen)) ||
		    (ret = strv_add_dup(&v, &n, "s3fs")) ||
		    (ret = strv_add_dup(&v, &n, o->source)) ||
		    (ret = strv_add_dup(&v, &n, mnt)) ||
		    (ret = strv_add_dup(&v, &n, "-f")) ||
		    (ret = strv_add_dup(&v, &n, "-o")) ||
		    (ret = strv_add_dup(&v, &n, "allow_other,retries=" S3FS_RETRIES
					",logfile=/dev/stderr,nomixupload")) ||
		    (ret = add_words(&v, &n, o->engine_opts, err, errlen)))
			goto out;
		break;
	case FS_PROFILE_ALLUXIO:
		/*
		 * Alluxio 2.x: `alluxio-fuse mount -n [-o OPTS] MOUNTPOINT
		 * ALLUXIO_PATH`; -n keeps it in the foreground (Fluid's image
		 * entrypoint runs it the same way).  SOURCE is the Alluxio path.
		 */
		if ((ret = strv_add_dup(&v, &n, "alluxio-fuse")) ||
		    (ret = strv_add_dup(&v, &n, "mount")) ||
		    (ret = strv_add_dup(&v, &n, "-n")) ||
		    (ret = add_words(&v, &n, o->engine_opts, err, errlen)) ||
		    (ret = strv_add_dup(&v, &n, mnt)) ||
		    (ret = strv_add_dup(&v, &n, o->source)))
			goto out;
		break;
	}
	*argv = v;
	*env_extra = env;
	v = env = NULL;
out:
	free(bare);
	if (password) {
		memset(password, 0, strlen(password));
		free(password);
	}
	fs_strv_free(v);
	fs_strv_free(env);
	if (ret == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	return ret;
}

int fs_envfile_read(const char *path, char ***out, char *err, size_t errlen)
{
	char *line = NULL, **v = NULL;
	size_t cap = 0, n = 0;
	unsigned lineno = 0;
	ssize_t len;
	FILE *f;
	int ret = 0;

	*out = NULL;
	f = fopen(path, "re");
	if (!f) {
		ret = -errno;
		snprintf(err, errlen, "cannot read engine_env file: %s: %s", path, strerror(-ret));
		return ret;
	}
	while ((len = getline(&line, &cap, f)) >= 0) {
		char *s = line, *eq, *val, *kv;
		size_t vl;

		lineno++;
		while (len && (s[len - 1] == '\n' || s[len - 1] == '\r'))
			s[--len] = 0;
		while (*s == ' ' || *s == '\t')
			s++;
		if (!*s || *s == '#')
			continue;
		if (!strncmp(s, "export ", 7))
			s += 7;
		eq = strchr(s, '=');
		if (!eq || eq == s || strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
		    (size_t)(eq - s)) {
			snprintf(err, errlen, "engine_env %s line %u: want KEY=VALUE", path,
				 lineno);
			ret = -EINVAL;
			goto out;
		}
		val = eq + 1;
		vl = strlen(val);
		if (vl >= 2 && (val[0] == '"' || val[0] == '\'') && val[vl - 1] == val[0]) {
			val++;
			vl -= 2;
		}
		if (asprintf(&kv, "%.*s=%.*s", (int)(eq - s), s, (int)vl, val) < 0 ||
		    (ret = strv_add(&v, &n, kv))) {
			ret = -ENOMEM;
			snprintf(err, errlen, "out of memory");
			goto out;
		}
	}
	*out = v;
	v = NULL;
out:
	if (line) {
		memset(line, 0, cap);
		free(line);
	}
	fclose(f);
	fs_strv_free(v);
	return ret;
}
