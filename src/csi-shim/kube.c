/*
 * kube.c - set and remove a node label through the Kubernetes API with libcurl.
 *
 * In a pod the API server is https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
 * and the service account token and CA are mounted under
 * /var/run/secrets/kubernetes.io/serviceaccount. The token is read on every
 * call because projected tokens rotate. Neither the token nor the
 * Authorization header is ever logged.
 */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/csi-shim/csi.h"

#define TOKEN_MAX 16384

/* Keeps the start of the response body for error messages. */
struct body {
	char buf[256];
	size_t len;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t room = sizeof(b->buf) - 1 - b->len, len = size * n;

	memcpy(b->buf + b->len, data, len < room ? len : room);
	b->len += len < room ? len : room;
	b->buf[b->len] = '\0';
	return len;
}

static int read_token(const char *path, char *tok, size_t size)
{
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f)
		return -errno;
	n = fread(tok, 1, size - 1, f);
	fclose(f);
	while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' '))
		n--;
	tok[n] = '\0';
	return n ? 0 : -EINVAL;
}

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	return n < 0 ? NULL : s;
}

/* The API server base URL from the configuration or the pod environment. */
static char *api_url(const struct csi_config *cfg)
{
	const char *host = getenv("KUBERNETES_SERVICE_HOST");
	const char *port = getenv("KUBERNETES_SERVICE_PORT");

	if (cfg->kube_api)
		return strdup(cfg->kube_api);
	if (!host || !*host)
		return NULL;
	/* An IPv6 service address needs brackets in a URL. */
	return str_printf(strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host,
			  port && *port ? port : "443");
}

int csi_kube_label(const struct csi_config *cfg, const char *key, bool set,
		   struct csi_status *st)
{
	char *base, *url = NULL, *body = NULL, *auth = NULL;
	char *token = malloc(TOKEN_MAX);
	struct curl_slist *hdr = NULL;
	struct body resp = { .len = 0 };
	CURL *curl = NULL;
	CURLcode cc;
	long code = 0;
	int err = -EIO;

	base = api_url(cfg);
	if (!base) {
		free(token);
		return -ENOTCONN;
	}
	if (!token) {
		csi_fail(st, CSI_INTERNAL, "node label failed: out of memory");
		goto out;
	}
	/* The token must never travel in clear text. */
	if (strncmp(base, "https://", 8)) {
		csi_fail(st, CSI_INTERNAL, "node label failed: API server URL is not https: %s",
			 base);
		goto out;
	}
	err = read_token(cfg->kube_token_file, token, TOKEN_MAX);
	if (err) {
		csi_fail(st, CSI_INTERNAL, "node label failed: cannot read token %s: %s",
			 cfg->kube_token_file, strerror(-err));
		err = -EIO;
		goto out;
	}
	err = -EIO;
	/* node_id is a validated DNS subdomain and key is built from validated
	 * names, so neither needs URL or JSON escaping. */
	url = str_printf("%s/api/v1/nodes/%s", base, cfg->node_id);
	body = str_printf("{\"metadata\":{\"labels\":{\"%s\":%s}}}", key,
			  set ? "\"true\"" : "null");
	auth = str_printf("Authorization: Bearer %s", token);
	if (!url || !body || !auth) {
		csi_fail(st, CSI_INTERNAL, "node label failed: out of memory");
		goto out;
	}
	curl = curl_easy_init();
	if (!curl) {
		csi_fail(st, CSI_INTERNAL, "node label failed: cannot start libcurl");
		goto out;
	}
	hdr = curl_slist_append(hdr, auth);
	hdr = curl_slist_append(hdr, "Content-Type: application/strategic-merge-patch+json");
	hdr = curl_slist_append(hdr, "Accept: application/json");
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PATCH");
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(curl, CURLOPT_CAINFO, cfg->kube_ca_file);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 5L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, 15L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);
	cc = curl_easy_perform(curl);
	if (cc != CURLE_OK) {
		csi_fail(st, CSI_INTERNAL, "node label failed: %s: %s", url,
			 curl_easy_strerror(cc));
		goto out;
	}
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
	if (code != 200) {
		csi_fail(st, CSI_INTERNAL, "node label failed: PATCH %s: HTTP %ld: %s", url, code,
			 resp.buf);
		goto out;
	}
	err = 0;
out:
	curl_slist_free_all(hdr);
	if (curl)
		curl_easy_cleanup(curl);
	if (auth)
		explicit_bzero(auth, strlen(auth));
	if (token)
		explicit_bzero(token, TOKEN_MAX);
	free(auth);
	free(token);
	free(body);
	free(url);
	free(base);
	return err;
}
