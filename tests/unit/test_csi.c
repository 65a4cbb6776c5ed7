/* test_csi.c - request validation, path checks and parsers of lazarusfs-csi. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>
#include <cmocka.h>

#include "csi.pb-c.h"
#include "src/csi-shim/csi_int.h"

static char tmp[64];
static char mnt[128], kub[128];
static struct csi csi;

static int setup(void **state)
{
	struct csi_config cfg = {
		.driver_name = "fuse.csi.fluid.io", .node_id = "node-1",
		.config_dir = "/nonexistent", .state_dir = "/nonexistent",
		.lazarusfs = "/bin/false", .mount_timeout = 1,
	};
	struct csi_status st;
	char path[256];

	snprintf(tmp, sizeof(tmp), "/tmp/test_csi.XXXXXX");
	assert_non_null(mkdtemp(tmp));
	snprintf(mnt, sizeof(mnt), "%s/runtime-mnt", tmp);
	snprintf(kub, sizeof(kub), "%s/kubelet", tmp);
	assert_int_equal(mkdir(mnt, 0755), 0);
	assert_int_equal(mkdir(kub, 0755), 0);
	snprintf(path, sizeof(path), "%s/outside", tmp);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/pods", kub);
	assert_int_equal(mkdir(path, 0755), 0);
	/* kubelet/evil -> outside, kubelet/fine -> kubelet/pods */
	snprintf(path, sizeof(path), "%s/evil", kub);
	assert_int_equal(symlink("../outside", path), 0);
	snprintf(path, sizeof(path), "%s/fine", kub);
	assert_int_equal(symlink("pods", path), 0);
	cfg.mount_root = mnt;
	cfg.kubelet_root = kub;
	assert_int_equal(csi_init(&csi, &cfg, &st), 0);
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	csi_release(&csi);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	assert_int_equal(system(cmd), 0);
	return 0;
}

/* ---- path helpers ---------------------------------------------------------- */

static void expect_clean(const char *in, int err, const char *out)
{
	char *got = NULL;

	assert_int_equal(csi_path_clean(in, &got), err);
	if (!err)
		assert_string_equal(got, out);
	free(got);
}

static void test_path_clean(void **state)
{
	expect_clean("/a/b", 0, "/a/b");
	expect_clean("//a///b/", 0, "/a/b");
	expect_clean("/a/./b/.", 0, "/a/b");
	expect_clean("/", 0, "/");
	expect_clean("/./", 0, "/");
	expect_clean("", -EINVAL, NULL);
	expect_clean("a/b", -EINVAL, NULL);
	expect_clean("./a", -EINVAL, NULL);
	expect_clean("/a/../b", -EPERM, NULL);
	expect_clean("/a/..", -EPERM, NULL);
	expect_clean("/a/..b/c..", 0, "/a/..b/c..");
}

static void expect_sub(const char *in, int err, const char *out)
{
	char *got = NULL;

	assert_int_equal(csi_subpath_clean(in, &got), err);
	if (!err)
		assert_string_equal(got, out);
	free(got);
}

static void test_subpath_clean(void **state)
{
	expect_sub("", 0, "");
	expect_sub("/", 0, "");
	expect_sub("a/b/", 0, "a/b");
	expect_sub("/a//./b", 0, "a/b");
	expect_sub("..", -EPERM, NULL);
	expect_sub("a/../../etc", -EPERM, NULL);
	expect_sub("a/..", -EPERM, NULL);
}

static void test_path_inside(void **state)
{
	char p[256];

	snprintf(p, sizeof(p), "%s/pods/x/mount", kub);
	assert_int_equal(csi_path_inside(p, kub, csi.kubelet_root), 0);
	/* through a symlink that stays inside */
	snprintf(p, sizeof(p), "%s/fine/x/mount", kub);
	assert_int_equal(csi_path_inside(p, kub, csi.kubelet_root), 0);
	/* through a symlink that leads out, also when the rest does not exist */
	snprintf(p, sizeof(p), "%s/evil/mount", kub);
	assert_int_equal(csi_path_inside(p, kub, csi.kubelet_root), -EXDEV);
	snprintf(p, sizeof(p), "%s/evil/a/b/c", kub);
	assert_int_equal(csi_path_inside(p, kub, csi.kubelet_root), -EXDEV);
	/* the root itself, a sibling with the root as prefix, and outside */
	assert_int_equal(csi_path_inside(kub, kub, csi.kubelet_root), -EXDEV);
	snprintf(p, sizeof(p), "%s2/x", kub);
	assert_int_equal(csi_path_inside(p, kub, csi.kubelet_root), -EXDEV);
	assert_int_equal(csi_path_inside("/etc/passwd", kub, csi.kubelet_root), -EXDEV);
	/* "/" as the root */
	assert_int_equal(csi_path_inside("/x", "/", "/"), 0);
	assert_int_equal(csi_path_below("/a/b", "/a"), 0);
	assert_int_equal(csi_path_below("/a", "/a"), 0);
	assert_int_equal(csi_path_below("/ab", "/a"), -EXDEV);
}

static void test_names(void **state)
{
	assert_true(csi_dns_label("default"));
	assert_true(csi_dns_label("a-1"));
	assert_false(csi_dns_label(""));
	assert_false(csi_dns_label("-a"));
	assert_false(csi_dns_label("A"));
	assert_false(csi_dns_label("a.b"));
	assert_false(csi_dns_label("../x"));
	assert_false(csi_dns_label("0123456789012345678901234567890123456789012345678901234567890123"));
	assert_true(csi_dns_subdomain("my.data-set"));
	assert_false(csi_dns_subdomain("a/b"));
	assert_false(csi_dns_subdomain(".."));
	assert_false(csi_dns_subdomain("a."));
}

/* ---- request decoding -------------------------------------------------------- */

struct kv {
	const char *k, *v;
};

/* Packs a publish request; NULL strings are left unset, and so is access_mode
 * when mode is negative. */
static size_t pack_publish(uint8_t *buf, const char *vol, const char *staging,
			   const char *target, const struct kv *ctx, size_t nctx, int access,
			   int mode, bool readonly)
{
	Csi__V1__NodePublishVolumeRequest q = CSI__V1__NODE_PUBLISH_VOLUME_REQUEST__INIT;
	Csi__V1__VolumeCapability cap = CSI__V1__VOLUME_CAPABILITY__INIT;
	Csi__V1__VolumeCapability__MountVolume mv = CSI__V1__VOLUME_CAPABILITY__MOUNT_VOLUME__INIT;
	Csi__V1__VolumeCapability__BlockVolume bv = CSI__V1__VOLUME_CAPABILITY__BLOCK_VOLUME__INIT;
	Csi__V1__VolumeCapability__AccessMode am = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__INIT;
	Csi__V1__NodePublishVolumeRequest__VolumeContextEntry e[8], *ep[8];
	size_t i;

	q.volume_id = (char *)(vol ? vol : "");
	q.staging_target_path = (char *)(staging ? staging : "");
	q.target_path = (char *)(target ? target : "");
	for (i = 0; i < nctx; i++) {
		csi__v1__node_publish_volume_request__volume_context_entry__init(&e[i]);
		e[i].key = (char *)ctx[i].k;
		e[i].value = (char *)ctx[i].v;
		ep[i] = &e[i];
	}
	q.n_volume_context = nctx;
	q.volume_context = ep;
	if (access) {
		cap.access_type_case = access;
		if (access == CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT)
			cap.mount = &mv;
		else
			cap.block = &bv;
		am.mode = mode;
		if (mode >= 0)
			cap.access_mode = &am;
		q.volume_capability = &cap;
	}
	q.readonly = readonly;
	return protobuf_c_message_pack(&q.base, buf);
}

struct pub {
	const char *vol, *staging, *target;
	struct kv ctx[4];
	size_t nctx;
	int access, mode;
	bool readonly;
};

static void defaults(struct pub *p)
{
	static char staging[256], target[256], fluid[256];

	snprintf(staging, sizeof(staging), "%s/plugins/x/globalmount", kub);
	snprintf(target, sizeof(target), "%s/pods/uid/volumes/v/mount", kub);
	snprintf(fluid, sizeof(fluid), "%s/juicefs/default/demo/juicefs-fuse", mnt);
	memset(p, 0, sizeof(*p));
	p->vol = "default-demo";
	p->staging = staging;
	p->target = target;
	p->ctx[0] = (struct kv){ "fluid_path", fluid };
	p->nctx = 1;
	p->access = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT;
	p->mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_WRITER;
}

/* Parses p as a publish; returns the status code and keeps the request in r. */
static enum csi_code parse_pub(const struct pub *p, struct csi_req *r, struct csi_status *st)
{
	uint8_t buf[4096];
	size_t n = pack_publish(buf, p->vol, p->staging, p->target, p->ctx, p->nctx, p->access,
				p->mode, p->readonly);

	st->code = CSI_OK;
	if (!csi_req_parse(&csi, "/csi.v1.Node/NodePublishVolume", buf, n, r, st))
		assert_int_not_equal(st->code, CSI_OK);
	return st->code;
}

static void expect_status(const struct pub *p, enum csi_code code, const char *msg)
{
	struct csi_status st;
	struct csi_req r;

	assert_int_equal(parse_pub(p, &r, &st), code);
	if (!strstr(st.msg, msg))
		fail_msg("message '%s' lacks '%s'", st.msg, msg);
}

static void expect_invalid(const struct pub *p, const char *msg)
{
	expect_status(p, CSI_INVALID_ARGUMENT, msg);
}

static void test_publish_valid(void **state)
{
	struct csi_status st;
	struct csi_req r;
	struct pub p;
	char want[256];

	defaults(&p);
	p.ctx[1] = (struct kv){ "fluid_sub_path", "/a//b/" };
	p.nctx = 2;
	assert_int_equal(parse_pub(&p, &r, &st), CSI_OK);
	assert_int_equal(r.op, CSI_NODE_PUBLISH);
	assert_string_equal(r.volume_id, "default-demo");
	assert_string_equal(r.target, p.target);
	assert_string_equal(r.sub_path, "a/b");
	assert_false(r.readonly);
	csi_req_free(&r);

	/* readonly from the flag or from either reader-only access mode */
	p.readonly = true;
	assert_int_equal(parse_pub(&p, &r, &st), CSI_OK);
	assert_true(r.readonly);
	csi_req_free(&r);
	p.readonly = false;
	p.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__MULTI_NODE_READER_ONLY;
	assert_int_equal(parse_pub(&p, &r, &st), CSI_OK);
	assert_true(r.readonly);
	csi_req_free(&r);
	p.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_READER_ONLY;
	assert_int_equal(parse_pub(&p, &r, &st), CSI_OK);
	assert_true(r.readonly);
	csi_req_free(&r);
	p.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__MULTI_NODE_MULTI_WRITER;
	assert_int_equal(parse_pub(&p, &r, &st), CSI_OK);
	assert_false(r.readonly);
	csi_req_free(&r);

	/* a map key given twice: the last value wins, as in proto3 */
	snprintf(want, sizeof(want), "%s/other", mnt);
	p.ctx[2] = (struct kv){ "fluid_path", want };
	p.nctx = 3;
	assert_int_equal(parse_pub(&p, &r, &st), CSI_OK);
	assert_string_equal(r.fluid_path, want);
	csi_req_free(&r);
}

static void test_publish_invalid(void **state)
{
	char path[256];
	struct pub p;

	defaults(&p);
	p.vol = NULL;
	expect_invalid(&p, "volume_id is required");
	defaults(&p);
	p.vol = "bad\nid";
	expect_invalid(&p, "control character");
	/* We advertise STAGE_UNSTAGE_VOLUME: the spec asks for FAILED_PRECONDITION. */
	defaults(&p);
	p.staging = NULL;
	expect_status(&p, CSI_FAILED_PRECONDITION, "staging_target_path is required");
	defaults(&p);
	p.staging = "plugins/x";	/* a bad one is still invalid */
	expect_invalid(&p, "staging_target_path must be an absolute path");
	defaults(&p);
	p.target = NULL;
	expect_invalid(&p, "target_path is required");
	defaults(&p);
	p.target = "pods/x";
	expect_invalid(&p, "must be an absolute path");
	defaults(&p);
	p.target = "/etc/cron.d";
	expect_invalid(&p, "is outside --kubelet-root");
	defaults(&p);
	snprintf(path, sizeof(path), "%s/pods/../../outside/m", kub);
	p.target = path;
	expect_invalid(&p, "must not contain '..'");
	defaults(&p);
	snprintf(path, sizeof(path), "%s/evil/m", kub);
	p.target = path;
	expect_invalid(&p, "is outside --kubelet-root");
	defaults(&p);
	p.nctx = 0;
	expect_invalid(&p, "fluid_path is required");
	defaults(&p);
	p.ctx[0].v = "/etc";
	expect_invalid(&p, "is outside --mount-root");
	defaults(&p);
	p.ctx[0].v = mnt;	/* the root itself is not a volume */
	expect_invalid(&p, "is outside --mount-root");
	defaults(&p);
	p.ctx[0].v = "runtime-mnt/x";
	expect_invalid(&p, "must be an absolute path");
	defaults(&p);
	p.ctx[1] = (struct kv){ "fluid_sub_path", "a/../../b" };
	p.nctx = 2;
	expect_invalid(&p, "escapes the volume");
	defaults(&p);
	p.access = 0;
	expect_invalid(&p, "volume_capability is required");
	defaults(&p);
	p.access = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_BLOCK;
	expect_invalid(&p, "block volumes are not supported");
	/* access_mode is required, and a mode of UNKNOWN says nothing */
	defaults(&p);
	p.mode = -1;
	expect_invalid(&p, "volume_capability access_mode is required");
	defaults(&p);
	p.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__UNKNOWN;
	expect_invalid(&p, "volume_capability access_mode mode is required");
	/* control characters would end up in log lines and line-based records */
	defaults(&p);
	snprintf(path, sizeof(path), "%s/pods/a\nstarted=1/mount", kub);
	p.target = path;
	expect_invalid(&p, "target_path contains a control character");
	defaults(&p);
	snprintf(path, sizeof(path), "%s/juicefs/x\ny", mnt);
	p.ctx[0].v = path;
	expect_invalid(&p, "fluid_path contains a control character");
	defaults(&p);
	p.ctx[1] = (struct kv){ "fluid_sub_path", "a\tb" };
	p.nctx = 2;
	expect_invalid(&p, "fluid_sub_path contains a control character");
}

/* Appends field number num with wire type 2 and n bytes of data (n < 128). */
static size_t put_field(uint8_t *buf, size_t len, unsigned num, const void *data, size_t n)
{
	assert_true(n < 128);
	buf[len++] = (uint8_t)(num << 3 | 2);
	buf[len++] = (uint8_t)n;
	memcpy(buf + len, data, n);
	return len + n;
}

/* Parses a publish of defaults() with extra raw fields appended (in proto3
 * a repeated scalar field overrides, and map entries add up). */
static enum csi_code parse_pub_plus(const uint8_t *extra, size_t n, struct csi_status *st)
{
	uint8_t buf[4096];
	struct csi_req r;
	struct pub p;
	size_t len;

	defaults(&p);
	len = pack_publish(buf, p.vol, p.staging, p.target, p.ctx, p.nctx, p.access, p.mode,
			   p.readonly);
	memcpy(buf + len, extra, n);
	st->code = CSI_OK;
	if (csi_req_parse(&csi, "/csi.v1.Node/NodePublishVolume", buf, len + n, &r, st))
		csi_req_free(&r);
	return st->code;
}

static void expect_nul(const uint8_t *extra, size_t n, const char *field)
{
	struct csi_status st;
	char want[128];

	assert_int_equal(parse_pub_plus(extra, n, &st), CSI_INVALID_ARGUMENT);
	snprintf(want, sizeof(want), "%s contains a NUL byte", field);
	assert_string_equal(st.msg, want);
}

/* protobuf-c cuts a decoded string at its first NUL: "ab\0cd" must be rejected,
 * not served as "ab". */
static void test_nul_bytes(void **state)
{
	static const char vol[] = "ab\0cd", key[] = "fluid_path\0x", fs[] = "ext\0004";
	uint8_t extra[512], entry[256], mount[64];
	char path[256];
	size_t n, e, m;
	struct csi_status st;
	struct csi_req r;

	n = put_field(extra, 0, 1, vol, sizeof(vol) - 1);	/* volume_id */
	expect_nul(extra, n, "volume_id");
	n = snprintf(path, sizeof(path), "%s/pods/x", kub);
	path[n++] = '\0';
	n += snprintf(path + n, sizeof(path) - n, "/../../../etc");
	expect_nul(extra, put_field(extra, 0, 4, path, n), "target_path");
	expect_nul(extra, put_field(extra, 0, 3, path, n), "staging_target_path");
	/* a map key "fluid_path\0x" must not match "fluid_path", nor a value pass */
	e = put_field(entry, 0, 1, key, sizeof(key) - 1);
	e = put_field(entry, e, 2, "/etc", 4);
	expect_nul(extra, put_field(extra, 0, 8, entry, e), "volume_context.key");
	e = put_field(entry, 0, 1, "fluid_path", 10);
	e = put_field(entry, e, 2, path, n);
	expect_nul(extra, put_field(extra, 0, 8, entry, e), "volume_context.value");
	/* nested: volume_capability.mount.fs_type */
	m = put_field(mount, 0, 1, fs, sizeof(fs) - 1);
	e = put_field(entry, 0, 2, mount, m);
	expect_nul(extra, put_field(extra, 0, 5, entry, e), "volume_capability.mount.fs_type");
	/* secrets are never read, and a secret may hold any byte */
	e = put_field(entry, 0, 1, "key", 3);
	e = put_field(entry, e, 2, vol, sizeof(vol) - 1);
	assert_int_equal(parse_pub_plus(extra, put_field(extra, 0, 7, entry, e), &st), CSI_OK);
	/* the same on another request: unstage "ab\0cd" is not unstage "ab" */
	n = put_field(extra, 0, 1, vol, sizeof(vol) - 1);
	n = put_field(extra, n, 2, path, strlen(path));
	assert_false(csi_req_parse(&csi, "/csi.v1.Node/NodeUnstageVolume", extra, n, &r, &st));
	assert_int_equal(st.code, CSI_INVALID_ARGUMENT);
	assert_string_equal(st.msg, "volume_id contains a NUL byte");
	n = put_field(extra, 0, 1, "ab", 2);
	n = put_field(extra, n, 2, path, strlen(path));
	assert_true(csi_req_parse(&csi, "/csi.v1.Node/NodeUnstageVolume", extra, n, &r, &st));
	csi_req_free(&r);
}

/* NodeGetVolumeStats: the spec says volume_path MUST be absolute, so a
 * relative one is an invalid field (see lazarusfs-csi(8)), like everywhere. */
static void test_stats_request(void **state)
{
	uint8_t buf[512];
	char path[256];
	struct csi_status st;
	struct csi_req r;
	size_t n;

	n = put_field(buf, 0, 1, "default-demo", 12);
	n = put_field(buf, n, 2, "some/path", 9);
	assert_false(csi_req_parse(&csi, "/csi.v1.Node/NodeGetVolumeStats", buf, n, &r, &st));
	assert_int_equal(st.code, CSI_INVALID_ARGUMENT);
	assert_non_null(strstr(st.msg, "volume_path must be an absolute path"));
	snprintf(path, sizeof(path), "%s/pods/uid/volumes/v/mount", kub);
	n = put_field(buf, 0, 1, "default-demo", 12);
	n = put_field(buf, n, 2, path, strlen(path));
	assert_true(csi_req_parse(&csi, "/csi.v1.Node/NodeGetVolumeStats", buf, n, &r, &st));
	assert_string_equal(r.volume_id, "default-demo");
	assert_string_equal(r.target, path);
	csi_req_free(&r);
}

static void test_stage_names(void **state)
{
	Csi__V1__NodeStageVolumeRequest q = CSI__V1__NODE_STAGE_VOLUME_REQUEST__INIT;
	Csi__V1__VolumeCapability cap = CSI__V1__VOLUME_CAPABILITY__INIT;
	Csi__V1__VolumeCapability__MountVolume mv = CSI__V1__VOLUME_CAPABILITY__MOUNT_VOLUME__INIT;
	Csi__V1__VolumeCapability__AccessMode am = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__INIT;
	Csi__V1__NodeStageVolumeRequest__VolumeContextEntry e[3], *ep[3];
	const char *names[][2] = { { "default", "demo" }, { "default", "../../etc" },
				   { "Default", "demo" }, { "", "demo" } };
	char staging[256], fluid[256];
	uint8_t buf[2048];
	struct csi_status st;
	struct csi_req r;
	size_t i, n;

	snprintf(staging, sizeof(staging), "%s/plugins/x/globalmount", kub);
	snprintf(fluid, sizeof(fluid), "%s/x/y", mnt);
	cap.access_type_case = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT;
	cap.mount = &mv;
	am.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_WRITER;
	cap.access_mode = &am;
	q.volume_id = "v";
	q.staging_target_path = staging;
	q.volume_capability = &cap;
	for (i = 0; i < 3; i++) {
		csi__v1__node_stage_volume_request__volume_context_entry__init(&e[i]);
		ep[i] = &e[i];
	}
	q.n_volume_context = 3;
	q.volume_context = ep;
	e[0].key = "fluid_path";
	e[0].value = fluid;
	e[1].key = "runtime_namespace";
	e[2].key = "runtime_name";
	for (i = 0; i < 4; i++) {
		e[1].value = (char *)names[i][0];
		e[2].value = (char *)names[i][1];
		n = protobuf_c_message_pack(&q.base, buf);
		if (i == 0) {
			assert_true(csi_req_parse(&csi, "/csi.v1.Node/NodeStageVolume", buf, n, &r, &st));
			assert_string_equal(r.ns, "default");
			assert_string_equal(r.name, "demo");
			csi_req_free(&r);
		} else {
			assert_false(csi_req_parse(&csi, "/csi.v1.Node/NodeStageVolume", buf, n, &r, &st));
			assert_int_equal(st.code, CSI_INVALID_ARGUMENT);
		}
	}
	/* stage needs access_mode as publish does */
	e[1].value = "default";
	e[2].value = "demo";
	cap.access_mode = NULL;
	n = protobuf_c_message_pack(&q.base, buf);
	assert_false(csi_req_parse(&csi, "/csi.v1.Node/NodeStageVolume", buf, n, &r, &st));
	assert_int_equal(st.code, CSI_INVALID_ARGUMENT);
	assert_string_equal(st.msg, "volume_capability access_mode is required");
}

static void test_decode_errors(void **state)
{
	static const uint8_t junk[] = { 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f };
	struct csi_status st;
	struct csi_req r;

	assert_false(csi_req_parse(&csi, "/csi.v1.Node/NodeUnpublishVolume", junk, sizeof(junk),
				   &r, &st));
	assert_int_equal(st.code, CSI_INVALID_ARGUMENT);
	assert_non_null(strstr(st.msg, "malformed"));
	assert_false(csi_req_parse(&csi, "/csi.v1.Controller/CreateVolume", NULL, 0, &r, &st));
	assert_int_equal(st.code, CSI_UNIMPLEMENTED);
	/* an empty message is a valid (empty) request */
	assert_true(csi_req_parse(&csi, "/csi.v1.Identity/Probe", NULL, 0, &r, &st));
	csi_req_free(&r);
}

static void test_handle_identity(void **state)
{
	Csi__V1__GetPluginInfoResponse *info;
	Csi__V1__NodeGetCapabilitiesResponse *caps;
	struct csi_status st;
	uint8_t *resp;
	size_t len;

	csi_handle(&csi, "/csi.v1.Identity/GetPluginInfo", NULL, 0, &resp, &len, &st);
	assert_int_equal(st.code, CSI_OK);
	info = csi__v1__get_plugin_info_response__unpack(NULL, len, resp);
	assert_non_null(info);
	assert_string_equal(info->name, "fuse.csi.fluid.io");
	assert_string_equal(info->vendor_version, PACKAGE_VERSION);
	csi__v1__get_plugin_info_response__free_unpacked(info, NULL);
	free(resp);
	csi_handle(&csi, "/csi.v1.Node/NodeGetCapabilities", NULL, 0, &resp, &len, &st);
	assert_int_equal(st.code, CSI_OK);
	caps = csi__v1__node_get_capabilities_response__unpack(NULL, len, resp);
	assert_non_null(caps);
	assert_int_equal(caps->n_capabilities, 3);
	assert_int_equal(caps->capabilities[0]->rpc->type,
			 CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__STAGE_UNSTAGE_VOLUME);
	assert_int_equal(caps->capabilities[1]->rpc->type,
			 CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__GET_VOLUME_STATS);
	assert_int_equal(caps->capabilities[2]->rpc->type,
			 CSI__V1__NODE_SERVICE_CAPABILITY__RPC__TYPE__VOLUME_CONDITION);
	csi__v1__node_get_capabilities_response__free_unpacked(caps, NULL);
	free(resp);
	/* a failed call returns no body */
	csi_handle(&csi, "/csi.v1.Node/NodeUnpublishVolume", NULL, 0, &resp, &len, &st);
	assert_int_equal(st.code, CSI_INVALID_ARGUMENT);
	assert_null(resp);
}

/* ---- parsers --------------------------------------------------------------- */

static void test_mount_parse(void **state)
{
	struct csi_mount m;

	assert_int_equal(csi_mount_parse("36 35 98:0 /mnt1 /mnt\\0402 rw,nosuid,nodev,noatime "
					 "master:1 shared:2 - fuse.lazarusfs /src\\040x rw,user_id=0\n",
					 &m), 0);
	assert_int_equal(m.major, 98);
	assert_int_equal(m.minor, 0);
	assert_string_equal(m.root, "/mnt1");
	assert_string_equal(m.point, "/mnt 2");
	assert_string_equal(m.fstype, "fuse.lazarusfs");
	assert_string_equal(m.source, "/src x");
	assert_int_equal(m.flags, MS_NOSUID | MS_NODEV | MS_NOATIME);
	assert_true(csi_mount_is_fuse(&m));
	free(m.root);
	free(m.point);
	free(m.fstype);
	free(m.source);
	assert_int_equal(csi_mount_parse("1 2 0:5 / /x ro - tmpfs tmpfs rw", &m), 0);
	assert_int_equal(m.flags, MS_RDONLY);
	assert_false(csi_mount_is_fuse(&m));
	free(m.root);
	free(m.point);
	free(m.fstype);
	free(m.source);
	assert_int_equal(csi_mount_parse("1 2 0:5 / /x ro shared:1", &m), -EINVAL);
	assert_int_equal(csi_mount_parse("1 2 zz / /x ro - a b c", &m), -EINVAL);
	assert_int_equal(csi_mount_parse("", &m), -EINVAL);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_dataset(void **state)
{
	struct csi_dataset ds;
	struct csi_status st;
	char path[256];

	snprintf(path, sizeof(path), "%s/ds.conf", tmp);
	write_file(path, "# comment\n\n source = redis://h:6379/1 \nengine=juicefs\n"
			 "options=engine_env=/e,idle_timeout=60\ndataset_uid=1234-ab\n");
	assert_int_equal(csi_dataset_load(path, &ds, &st), 0);
	assert_string_equal(ds.source, "redis://h:6379/1");
	assert_string_equal(ds.engine, "juicefs");
	assert_string_equal(ds.options, "engine_env=/e,idle_timeout=60");
	assert_string_equal(ds.dataset_uid, "1234-ab");
	csi_dataset_free(&ds);
	write_file(path, "source=x\nsorce=typo\n");
	assert_int_equal(csi_dataset_load(path, &ds, &st), -EINVAL);
	assert_non_null(strstr(st.msg, ":2: unknown key 'sorce'"));
	write_file(path, "engine=bindfs\n");
	assert_int_equal(csi_dataset_load(path, &ds, &st), -EINVAL);
	assert_non_null(strstr(st.msg, "source= is required"));
	write_file(path, "source\n");
	assert_int_equal(csi_dataset_load(path, &ds, &st), -EINVAL);
	snprintf(path, sizeof(path), "%s/none.conf", tmp);
	assert_int_equal(csi_dataset_load(path, &ds, &st), -ENOENT);
	assert_string_equal(csi_engine_for("JuiceFS"), "juicefs");
	assert_string_equal(csi_engine_for("fuse.alluxio-fuse"), "alluxio");
	assert_null(csi_engine_for("GooseFS"));
}

static void test_label_key(void **state)
{
	char *key = NULL, name[64];

	assert_int_equal(csi_label_key("default", "demo", NULL, &key), 0);
	assert_string_equal(key, "fluid.io/f-default-demo");
	free(key);
	/* Fluid's rule: the whole key must be shorter than 63 characters.
	 * "fluid.io/f-default-" is 19, so a 43-character name still fits. */
	memset(name, 'n', 43);
	name[43] = '\0';
	assert_int_equal(csi_label_key("default", name, NULL, &key), 0);
	assert_int_equal(strlen(key), 62);
	free(key);
	strcat(name, "n");
	assert_int_equal(csi_label_key("default", name, NULL, &key), -ENAMETOOLONG);
	assert_int_equal(csi_label_key("default", name, "", &key), -ENAMETOOLONG);
	assert_int_equal(csi_label_key("default", name, "6c3f-11ee", &key), 0);
	assert_string_equal(key, "fluid.io/f-6c3f-11ee");
	free(key);
	assert_int_equal(csi_label_key("default", name, "bad\"uid", &key), -EINVAL);
}

/* A fake lazarusfs control socket that answers one "status" request. */
static void *ctl_server(void *arg)
{
	int lfd = *(int *)arg, fd;
	char buf[64];
	const char *reply = "state: recovering\npid: 42\nlast_error: engine exited with status 1\n";

	fd = accept(lfd, NULL, NULL);
	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf)) == 7 && !memcmp(buf, "status\n", 7) &&
		    write(fd, reply, strlen(reply)) < 0)
			buf[0] = '\0';
		close(fd);
	}
	return NULL;
}

static void test_ctl_status(void **state)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char point[] = "/runtime-mnt/juicefs/default/demo/juicefs-fuse";
	char dir[256], st[64], err[128];
	pthread_t th;
	int lfd;

	assert_int_equal(csi_ctl_status(tmp, point, st, sizeof(st), err, sizeof(err)), -ENOENT);
	snprintf(dir, sizeof(dir), "%s/%016llx", tmp,
		 (unsigned long long)XXH3_64bits(point, strlen(point)));
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_true(snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/ctl.sock", dir) <
		    (int)sizeof(sa.sun_path));
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 1), 0);
	assert_int_equal(pthread_create(&th, NULL, ctl_server, &lfd), 0);
	assert_int_equal(csi_ctl_status(tmp, point, st, sizeof(st), err, sizeof(err)), 0);
	pthread_join(th, NULL);
	close(lfd);
	assert_string_equal(st, "recovering");
	assert_string_equal(err, "engine exited with status 1");
}

/* The records under <state_dir>/csi that unstage and stats rely on. */
static void test_records(void **state)
{
	struct csi rc = csi;
	struct csi_vol vs, *v;
	char dir[256], path[PATH_MAX], owner[CSI_MAX_ID + 1];
	size_t n;

	snprintf(dir, sizeof(dir), "%s/state", tmp);
	rc.cfg.state_dir = dir;
	assert_int_equal(csi_vol_list(&rc, "/mnt/a", &v, &n), 0);	/* no directory yet */
	assert_int_equal(n, 0);
	memset(&vs, 0, sizeof(vs));
	strcpy(vs.fluid_path, "/mnt/a");
	strcpy(vs.label, "fluid.io/f-default-a");
	vs.started = true;
	assert_int_equal(csi_vol_save(&rc, "v1", &vs), 0);
	vs.started = false;
	vs.unstaged = true;
	assert_int_equal(csi_vol_save(&rc, "v2", &vs), 0);
	strcpy(vs.fluid_path, "/mnt/b");
	assert_int_equal(csi_vol_save(&rc, "v3", &vs), 0);
	assert_int_equal(csi_vol_load(&rc, "v1", &vs), 0);
	assert_string_equal(vs.volume_id, "v1");
	assert_string_equal(vs.fluid_path, "/mnt/a");
	assert_string_equal(vs.label, "fluid.io/f-default-a");
	assert_true(vs.started);
	assert_false(vs.unstaged);
	assert_int_equal(csi_vol_list(&rc, "/mnt/a", &v, &n), 0);
	assert_int_equal(n, 2);
	assert_true((!strcmp(v[0].volume_id, "v1") && !strcmp(v[1].volume_id, "v2") &&
		     !v[0].unstaged && v[1].unstaged) ||
		    (!strcmp(v[0].volume_id, "v2") && !strcmp(v[1].volume_id, "v1") &&
		     v[0].unstaged && !v[1].unstaged));
	free(v);
	/* a record from before "unstaged" existed; one for another id under v4's
	 * name (a hash collision), which neither loads nor counts; a damaged one */
	csi_vol_path(&rc, "old", path);
	write_file(path, "volume_id=old\nfluid_path=/mnt/a\nlabel=\nstarted=1\n");
	assert_int_equal(csi_vol_load(&rc, "old", &vs), 0);
	assert_true(vs.started && !vs.unstaged && !vs.label[0]);
	csi_vol_path(&rc, "v4", path);
	write_file(path, "volume_id=v5\nfluid_path=/mnt/a\n");
	assert_int_equal(csi_vol_load(&rc, "v4", &vs), -ENOENT);
	csi_vol_path(&rc, "v6", path);
	write_file(path, "volume_id=v6\n");
	assert_int_equal(csi_vol_load(&rc, "v6", &vs), -EINVAL);
	assert_int_equal(csi_vol_load(&rc, "none", &vs), -ENOENT);
	assert_int_equal(csi_vol_list(&rc, "/mnt/a", &v, &n), 0);
	assert_int_equal(n, 3);	/* v1, v2 and old */
	free(v);
	assert_int_equal(csi_vol_remove(&rc, "v1"), 0);
	assert_int_equal(csi_vol_remove(&rc, "v1"), 0);
	assert_int_equal(csi_vol_load(&rc, "v1", &vs), -ENOENT);

	assert_int_equal(csi_pub_load(&rc, "/k/pods/t", owner), -ENOENT);
	assert_int_equal(csi_pub_save(&rc, "/k/pods/t", "v2"), 0);
	assert_int_equal(csi_pub_load(&rc, "/k/pods/t", owner), 0);
	assert_string_equal(owner, "v2");
	assert_int_equal(csi_pub_load(&rc, "/k/pods/u", owner), -ENOENT);
	assert_int_equal(csi_pub_remove(&rc, "/k/pods/t"), 0);
	assert_int_equal(csi_pub_load(&rc, "/k/pods/t", owner), -ENOENT);
}

/* Canonical forms: the last component is never resolved, missing ancestors
 * are kept as they are, symlinks of existing ones are resolved. */
static void test_canonical(void **state)
{
	char p[256], out[PATH_MAX], want[PATH_MAX];

	snprintf(p, sizeof(p), "%s/fine/a/b/mount", kub);	/* fine -> pods */
	assert_int_equal(csi_path_canonical(p, csi.kubelet_root, out), 0);
	snprintf(want, sizeof(want), "%s/pods/a/b/mount", csi.kubelet_root);
	assert_string_equal(out, want);
	snprintf(p, sizeof(p), "%s/fine", kub);	/* the last component stays */
	assert_int_equal(csi_path_canonical(p, csi.kubelet_root, out), 0);
	snprintf(want, sizeof(want), "%s/fine", csi.kubelet_root);
	assert_string_equal(out, want);
	snprintf(p, sizeof(p), "%s/evil/x/mount", kub);	/* evil -> outside */
	assert_int_equal(csi_path_canonical(p, csi.kubelet_root, out), -EXDEV);
	assert_int_equal(csi_path_canonical("/x", "/", out), 0);
	assert_string_equal(out, "/x");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_clean),
		cmocka_unit_test(test_subpath_clean),
		cmocka_unit_test(test_path_inside),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_publish_valid),
		cmocka_unit_test(test_publish_invalid),
		cmocka_unit_test(test_stage_names),
		cmocka_unit_test(test_nul_bytes),
		cmocka_unit_test(test_stats_request),
		cmocka_unit_test(test_decode_errors),
		cmocka_unit_test(test_handle_identity),
		cmocka_unit_test(test_mount_parse),
		cmocka_unit_test(test_dataset),
		cmocka_unit_test(test_label_key),
		cmocka_unit_test(test_ctl_status),
		cmocka_unit_test(test_records),
		cmocka_unit_test(test_canonical),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
