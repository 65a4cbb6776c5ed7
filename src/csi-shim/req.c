/*
 * req.c - decode CSI requests and check every field that needs no mount:
 * required fields, absolute clean paths, paths inside their roots (lexically
 * and through symlinks of the existing ancestors), Kubernetes names, and
 * fluid_sub_path without "..". The symlink check of fluid_sub_path needs the
 * mounted volume and happens in publish.c.
 *
 * protobuf-c decodes a proto3 string into a NUL-terminated copy and keeps no
 * length, so a volume id "ab\0cd" would reach us as "ab" (and a map key
 * "fluid_path\0x" would match "fluid_path"). csi_req_parse() therefore walks
 * the raw bytes of every request once more (no_nul()) and rejects any string
 * field that holds a NUL byte before anything reads the decoded strings.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "csi.pb-c.h"
#include "src/csi-shim/csi_int.h"

bool csi_fail(struct csi_status *st, enum csi_code code, const char *fmt, ...)
{
	va_list ap;

	st->code = code;
	va_start(ap, fmt);
	vsnprintf(st->msg, sizeof(st->msg), fmt, ap);
	va_end(ap);
	return false;
}

void csi_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	n = snprintf(buf, sizeof(buf), "lazarusfs-csi: ");
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	strcat(buf, "\n");
	/* One write per line, so lines from concurrent calls do not interleave. */
	if (write(STDERR_FILENO, buf, strlen(buf)) < 0)
		return;
}

bool csi_dns_label(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return true;
}

bool csi_dns_subdomain(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 253)
		return false;
	for (i = 0; i < n; i++) {
		bool alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9');

		if (!alnum && ((s[i] != '-' && s[i] != '.') || i == 0 || i == n - 1))
			return false;
	}
	return true;
}

/* ---- decoding ------------------------------------------------------------ */

static const struct {
	const char *method;
	enum csi_op op;
	const ProtobufCMessageDescriptor *desc;
} methods[] = {
	{ "/csi.v1.Identity/GetPluginInfo", CSI_GET_PLUGIN_INFO,
	  &csi__v1__get_plugin_info_request__descriptor },
	{ "/csi.v1.Identity/GetPluginCapabilities", CSI_GET_PLUGIN_CAPABILITIES,
	  &csi__v1__get_plugin_capabilities_request__descriptor },
	{ "/csi.v1.Identity/Probe", CSI_PROBE, &csi__v1__probe_request__descriptor },
	{ "/csi.v1.Node/NodeGetInfo", CSI_NODE_GET_INFO,
	  &csi__v1__node_get_info_request__descriptor },
	{ "/csi.v1.Node/NodeGetCapabilities", CSI_NODE_GET_CAPABILITIES,
	  &csi__v1__node_get_capabilities_request__descriptor },
	{ "/csi.v1.Node/NodeStageVolume", CSI_NODE_STAGE,
	  &csi__v1__node_stage_volume_request__descriptor },
	{ "/csi.v1.Node/NodeUnstageVolume", CSI_NODE_UNSTAGE,
	  &csi__v1__node_unstage_volume_request__descriptor },
	{ "/csi.v1.Node/NodePublishVolume", CSI_NODE_PUBLISH,
	  &csi__v1__node_publish_volume_request__descriptor },
	{ "/csi.v1.Node/NodeUnpublishVolume", CSI_NODE_UNPUBLISH,
	  &csi__v1__node_unpublish_volume_request__descriptor },
	{ "/csi.v1.Node/NodeGetVolumeStats", CSI_NODE_GET_VOLUME_STATS,
	  &csi__v1__node_get_volume_stats_request__descriptor },
};

/* protobuf-c gives every map<string,string> its own entry type; all of them
 * have this layout. */
struct map_entry {
	ProtobufCMessage base;
	char *key;
	char *value;
};

/* The value of key in a map (the last one wins, as in proto3), or "". */
static const char *map_get(void *entries, size_t n, const char *key)
{
	struct map_entry **e = entries;

	while (n-- > 0)
		if (!strcmp(e[n]->key, key))
			return e[n]->value;
	return "";
}

/* Reads the varint at *p. False if it runs past end or over 10 bytes. */
static bool varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	unsigned shift;

	*v = 0;
	for (shift = 0; *p < end && shift < 64; shift += 7) {
		uint8_t b = *(*p)++;

		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

/*
 * Checks the wire bytes of a message of type desc: no string field, at any
 * depth, may hold a NUL byte. prefix names the enclosing field for the
 * message ("volume_capability.mount."). Fields named "secrets" are skipped:
 * the plugin never reads them and a secret may hold any byte. Runs after
 * protobuf-c accepted the bytes, so a structural error cannot happen; it is
 * still reported rather than trusted.
 */
static bool no_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
		   const char *prefix, struct csi_status *st)
{
	const uint8_t *end;
	const ProtobufCFieldDescriptor *f;
	char name[128];
	uint64_t tag, n;

	if (!len)	/* p may be NULL then */
		return true;
	for (end = p + len; p < end;) {
		if (!varint(&p, end, &tag))
			goto malformed;
		switch (tag & 7) {
		case 0:	/* varint */
			if (!varint(&p, end, &n))
				goto malformed;
			continue;
		case 1:	/* 64-bit */
			n = 8;
			break;
		case 2:	/* length-delimited */
			if (!varint(&p, end, &n))
				goto malformed;
			break;
		case 5:	/* 32-bit */
			n = 4;
			break;
		default:	/* groups: protobuf-c does not decode them */
			goto malformed;
		}
		if (n > (uint64_t)(end - p))
			goto malformed;
		f = (tag & 7) == 2 && tag >> 3 <= UINT32_MAX ?
		    protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3)) : NULL;
		if (f && (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)) {
			snprintf(name, sizeof(name), "%s%s", prefix, f->name);
			if (f->type == PROTOBUF_C_TYPE_STRING && memchr(p, '\0', n))
				return csi_fail(st, CSI_INVALID_ARGUMENT, "%s contains a NUL byte",
						name);
			if (f->type == PROTOBUF_C_TYPE_MESSAGE && strcmp(f->name, "secrets")) {
				strncat(name, ".", sizeof(name) - strlen(name) - 1);
				if (!no_nul(f->descriptor, p, n, name, st))
					return false;
			}
		}
		p += n;
	}
	return true;
malformed:
	return csi_fail(st, CSI_INVALID_ARGUMENT, "malformed %s request", desc->short_name);
}

static bool has_control(const char *s)
{
	const unsigned char *p;

	for (p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return true;
	return false;
}

static bool check_id(const char *id, struct csi_status *st)
{
	if (!*id)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_id is required");
	if (strlen(id) > CSI_MAX_ID)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_id is longer than %d bytes",
				CSI_MAX_ID);
	if (has_control(id))
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_id contains a control character");
	return true;
}

/* Cleans path into *out and checks it lies inside root. */
static bool check_path(const char *what, const char *path, const char *root,
		       const char *root_real, const char *root_flag, char **out,
		       struct csi_status *st)
{
	int err;

	if (!*path)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s is required", what);
	/* Paths go into log lines and fluid_path into line-based records. */
	if (has_control(path))
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s contains a control character", what);
	err = csi_path_clean(path, out);
	if (err == -EINVAL)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s must be an absolute path: %s",
				what, path);
	if (err == -EPERM)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s must not contain '..': %s",
				what, path);
	if (err)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s is invalid: %s", what,
				strerror(-err));
	err = csi_path_inside(*out, root, root_real);
	if (err == -EXDEV)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s %s is outside %s %s", what, path,
				root_flag, root);
	if (err)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "%s %s cannot be resolved: %s", what,
				path, strerror(-err));
	return true;
}

static bool check_capability(const Csi__V1__VolumeCapability *cap, bool *reader_only,
			     struct csi_status *st)
{
	Csi__V1__VolumeCapability__AccessMode__Mode mode;

	if (!cap)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_capability is required");
	if (cap->access_type_case != CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"volume_capability must be a mount volume: block volumes are not supported");
	/* Required by the spec; an access_mode without a mode says nothing either. */
	if (!cap->access_mode)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_capability access_mode is required");
	mode = cap->access_mode->mode;
	if (mode == CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__UNKNOWN)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"volume_capability access_mode mode is required");
	*reader_only = mode == CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_READER_ONLY ||
		       mode == CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__MULTI_NODE_READER_ONLY;
	return true;
}

/* Reads and checks the Fluid volume attributes. need_names: stage labels the
 * node and reads the per-dataset config, so it needs namespace and name. */
static bool check_context(struct csi *csi, void *ctx, size_t n, bool need_names,
			  struct csi_req *r, struct csi_status *st)
{
	const char *fluid_path = map_get(ctx, n, "fluid_path");
	const char *sub = map_get(ctx, n, "fluid_sub_path");
	int err;

	r->mount_type = map_get(ctx, n, "mount_type");
	r->ns = map_get(ctx, n, "runtime_namespace");
	r->name = map_get(ctx, n, "runtime_name");
	if (!*fluid_path)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "volume_context fluid_path is required");
	if (!check_path("fluid_path", fluid_path, csi->cfg.mount_root, csi->mount_root,
			"--mount-root", &r->fluid_path, st))
		return false;
	if (has_control(sub))
		return csi_fail(st, CSI_INVALID_ARGUMENT, "fluid_sub_path contains a control character");
	err = csi_subpath_clean(sub, &r->sub_path);
	if (err == -EPERM)
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"fluid_sub_path %s escapes the volume: it must not contain '..'", sub);
	if (err)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "fluid_sub_path is invalid: %s",
				strerror(-err));
	if (!need_names)
		return true;
	if (!csi_dns_label(r->ns))
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"volume_context runtime_namespace '%s' is not a valid namespace", r->ns);
	if (!csi_dns_subdomain(r->name))
		return csi_fail(st, CSI_INVALID_ARGUMENT,
				"volume_context runtime_name '%s' is not a valid name", r->name);
	return true;
}

static bool parse_fields(struct csi *csi, struct csi_req *r, struct csi_status *st)
{
	const char *kr = csi->cfg.kubelet_root, *krr = csi->kubelet_root;
	bool ro = false;

	switch (r->op) {
	case CSI_NODE_STAGE: {
		Csi__V1__NodeStageVolumeRequest *q = (void *)r->msg;

		r->volume_id = q->volume_id;
		return check_id(q->volume_id, st) &&
		       check_path("staging_target_path", q->staging_target_path, kr, krr,
				  "--kubelet-root", &r->staging, st) &&
		       check_capability(q->volume_capability, &ro, st) &&
		       check_context(csi, q->volume_context, q->n_volume_context, true, r, st);
	}
	case CSI_NODE_UNSTAGE: {
		Csi__V1__NodeUnstageVolumeRequest *q = (void *)r->msg;

		r->volume_id = q->volume_id;
		return check_id(q->volume_id, st) &&
		       check_path("staging_target_path", q->staging_target_path, kr, krr,
				  "--kubelet-root", &r->staging, st);
	}
	case CSI_NODE_PUBLISH: {
		Csi__V1__NodePublishVolumeRequest *q = (void *)r->msg;

		r->volume_id = q->volume_id;
		if (!check_id(q->volume_id, st))
			return false;
		/* We advertise STAGE_UNSTAGE_VOLUME: the spec's answer is FAILED_PRECONDITION. */
		if (!*q->staging_target_path)
			return csi_fail(st, CSI_FAILED_PRECONDITION,
					"staging_target_path is required: this plugin stages volumes, "
					"call NodeStageVolume first");
		if (!check_path("staging_target_path", q->staging_target_path, kr, krr,
				"--kubelet-root", &r->staging, st) ||
		    !check_path("target_path", q->target_path, kr, krr, "--kubelet-root",
				&r->target, st) ||
		    !check_capability(q->volume_capability, &ro, st) ||
		    !check_context(csi, q->volume_context, q->n_volume_context, false, r, st))
			return false;
		/* Fluid ignores the readonly flag; we honour it. */
		r->readonly = q->readonly || ro;
		return true;
	}
	case CSI_NODE_UNPUBLISH: {
		Csi__V1__NodeUnpublishVolumeRequest *q = (void *)r->msg;

		r->volume_id = q->volume_id;
		return check_id(q->volume_id, st) &&
		       check_path("target_path", q->target_path, kr, krr, "--kubelet-root",
				  &r->target, st);
	}
	case CSI_NODE_GET_VOLUME_STATS: {
		Csi__V1__NodeGetVolumeStatsRequest *q = (void *)r->msg;

		r->volume_id = q->volume_id;
		return check_id(q->volume_id, st) &&
		       check_path("volume_path", q->volume_path, kr, krr, "--kubelet-root",
				  &r->target, st);
	}
	default:
		return true;
	}
}

bool csi_req_parse(struct csi *csi, const char *method, const uint8_t *req,
		   size_t len, struct csi_req *r, struct csi_status *st)
{
	size_t i;

	memset(r, 0, sizeof(*r));
	for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (!strcmp(method, methods[i].method))
			break;
	if (i == sizeof(methods) / sizeof(methods[0]))
		return csi_fail(st, CSI_UNIMPLEMENTED, "method %.200s is not implemented", method);
	r->op = methods[i].op;
	r->msg = protobuf_c_message_unpack(methods[i].desc, NULL, len, req);
	if (!r->msg)
		return csi_fail(st, CSI_INVALID_ARGUMENT, "malformed %s request",
				methods[i].desc->short_name);
	if (!no_nul(methods[i].desc, req, len, "", st) || !parse_fields(csi, r, st)) {
		csi_req_free(r);
		return false;
	}
	st->code = CSI_OK;
	st->msg[0] = '\0';
	return true;
}

void csi_req_free(struct csi_req *r)
{
	if (r->msg)
		protobuf_c_message_free_unpacked(r->msg, NULL);
	free(r->target);
	free(r->staging);
	free(r->fluid_path);
	free(r->sub_path);
	memset(r, 0, sizeof(*r));
}
