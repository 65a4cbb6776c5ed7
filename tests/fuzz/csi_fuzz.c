/*
 * csi_fuzz.c - fuzz the decoding and validation of CSI requests.
 *
 * An input is one selector byte (which method) followed by the protobuf
 * payload, fed to csi_req_parse(), the code that sees every byte kubelet (or
 * anyone who reaches the socket) sends before any mount happens. Whenever a
 * request is accepted, the paths it carries must satisfy the safety rules;
 * a violation aborts. The selector value past the method list feeds the
 * mountinfo line parser instead.
 *
 * Built by `make check` this is a deterministic mutation fuzzer: it packs a
 * valid request of every kind and a few that break exactly one rule (a NUL in
 * a string, no access_mode, no staging_target_path, a relative volume_path),
 * then mutates (flip, insert, delete, truncate, splice, varint bombs) for a
 * bounded number of rounds:
 *   tests/fuzz/csi_fuzz [ITERATIONS [SEED]]      (default 200000 1)
 * Built with clang -fsanitize=fuzzer,address -DCSI_LIBFUZZER (link libcsi.la
 * and its libraries) it is a libFuzzer target.
 */
#include "config.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "csi.pb-c.h"
#include "src/csi-shim/csi.h"

static const char *methods[] = {
	"/csi.v1.Node/NodeStageVolume", "/csi.v1.Node/NodeUnstageVolume",
	"/csi.v1.Node/NodePublishVolume", "/csi.v1.Node/NodeUnpublishVolume",
	"/csi.v1.Node/NodeGetVolumeStats", "/csi.v1.Node/NodeGetInfo",
	"/csi.v1.Node/NodeGetCapabilities", "/csi.v1.Identity/GetPluginInfo",
	"/csi.v1.Identity/Probe", "/csi.v1.Identity/GetPluginCapabilities",
};
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

static struct csi csi;
static char root[64];
static unsigned long accepted;	/* requests that passed validation */

static void teardown(void)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/runtime-mnt", root);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/kubelet", root);
	rmdir(path);
	rmdir(root);
	csi_release(&csi);
}

static void setup(void)
{
	struct csi_config cfg = {
		.driver_name = "fuse.csi.fluid.io", .node_id = "node-1",
		.config_dir = "/nonexistent", .state_dir = "/nonexistent",
		.lazarusfs = "/bin/false", .mount_timeout = 1,
	};
	static char mnt[96], kub[96];
	struct csi_status st;

	snprintf(root, sizeof(root), "/tmp/csi-fuzz.XXXXXX");
	if (!mkdtemp(root))
		abort();
	snprintf(mnt, sizeof(mnt), "%s/runtime-mnt", root);
	snprintf(kub, sizeof(kub), "%s/kubelet", root);
	if (mkdir(mnt, 0755) || mkdir(kub, 0755))
		abort();
	cfg.mount_root = mnt;
	cfg.kubelet_root = kub;
	if (csi_init(&csi, &cfg, &st))
		abort();
	atexit(teardown);
}

/* An accepted path must be clean and strictly inside its root. */
static void check_inside(const char *path, const char *top)
{
	size_t n = strlen(top);

	if (!path)
		return;
	assert(!strncmp(path, top, n) && path[n] == '/' && path[n + 1]);
	assert(!strstr(path, "/../") && !strstr(path, "//") && !strstr(path, "/./"));
	assert(strcmp(path + strlen(path) - 3, "/..") && path[strlen(path) - 1] != '/');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct csi_status st;
	struct csi_req r;

	if (!csi.mount_root)
		setup();
	if (size == 0)
		return 0;
	if (data[0] % (NMETHODS + 1) == NMETHODS) {
		char *line = strndup((const char *)data + 1, size - 1);
		struct csi_mount m;

		if (line && csi_mount_parse(line, &m) == 0) {
			assert(m.root && m.point && m.fstype && m.source);
			free(m.root);
			free(m.point);
			free(m.fstype);
			free(m.source);
		}
		free(line);
		return 0;
	}
	if (!csi_req_parse(&csi, methods[data[0] % (NMETHODS + 1)], data + 1, size - 1, &r, &st)) {
		assert(st.code != CSI_OK && st.msg[0]);
		return 0;
	}
	check_inside(r.target, csi.cfg.kubelet_root);
	check_inside(r.staging, csi.cfg.kubelet_root);
	check_inside(r.fluid_path, csi.cfg.mount_root);
	if (r.sub_path) {
		assert(r.sub_path[0] != '/');
		assert(strcmp(r.sub_path, "..") && strncmp(r.sub_path, "../", 3) &&
		       !strstr(r.sub_path, "/../"));
		assert(strlen(r.sub_path) < 3 || strcmp(r.sub_path + strlen(r.sub_path) - 3, "/.."));
	}
	if (r.op == CSI_NODE_STAGE)
		assert(csi_dns_label(r.ns) && csi_dns_subdomain(r.name));
	if (r.op == CSI_NODE_STAGE || r.op == CSI_NODE_PUBLISH) {
		const Csi__V1__VolumeCapability *cap = r.op == CSI_NODE_STAGE ?
			((Csi__V1__NodeStageVolumeRequest *)r.msg)->volume_capability :
			((Csi__V1__NodePublishVolumeRequest *)r.msg)->volume_capability;

		assert(cap && cap->access_mode && cap->access_mode->mode);
	}
	if (r.op == CSI_NODE_PUBLISH)
		assert(r.staging);
	accepted++;
	csi_req_free(&r);
	return 0;
}

#ifndef CSI_LIBFUZZER
static uint64_t rng;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

struct seed {
	uint8_t buf[1024];
	size_t len;
};

/* Packs msg behind selector byte sel. */
static void add_seed(struct seed *s, uint8_t sel, const ProtobufCMessage *msg)
{
	s->buf[0] = sel;
	s->len = 1 + protobuf_c_message_pack(msg, s->buf + 1);
}

static size_t make_seeds(struct seed *seeds)
{
	Csi__V1__VolumeCapability__MountVolume mv = CSI__V1__VOLUME_CAPABILITY__MOUNT_VOLUME__INIT;
	Csi__V1__VolumeCapability__AccessMode am = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__INIT;
	Csi__V1__VolumeCapability cap = CSI__V1__VOLUME_CAPABILITY__INIT;
	Csi__V1__NodeStageVolumeRequest__VolumeContextEntry se[5];
	Csi__V1__NodeStageVolumeRequest__VolumeContextEntry *sep[5];
	Csi__V1__NodePublishVolumeRequest__VolumeContextEntry pe[2];
	Csi__V1__NodePublishVolumeRequest__VolumeContextEntry *pep[2];
	Csi__V1__NodeStageVolumeRequest stage = CSI__V1__NODE_STAGE_VOLUME_REQUEST__INIT;
	Csi__V1__NodePublishVolumeRequest pub = CSI__V1__NODE_PUBLISH_VOLUME_REQUEST__INIT;
	Csi__V1__NodeUnpublishVolumeRequest unpub = CSI__V1__NODE_UNPUBLISH_VOLUME_REQUEST__INIT;
	Csi__V1__NodeUnstageVolumeRequest unstage = CSI__V1__NODE_UNSTAGE_VOLUME_REQUEST__INIT;
	Csi__V1__NodeGetVolumeStatsRequest stats = CSI__V1__NODE_GET_VOLUME_STATS_REQUEST__INIT;
	static const char *keys[5] = { "fluid_path", "mount_type", "runtime_namespace",
				       "runtime_name", "fluid_sub_path" };
	char fluid[128], target[128], staging[128];
	const char *vals[5] = { fluid, "JuiceFS", "default", "demo", "a/b" };
	size_t i, n = 0;

	snprintf(fluid, sizeof(fluid), "%s/juicefs/default/demo/juicefs-fuse", csi.cfg.mount_root);
	snprintf(target, sizeof(target), "%s/pods/uid/volumes/kubernetes.io~csi/pv/mount",
		 csi.cfg.kubelet_root);
	snprintf(staging, sizeof(staging), "%s/plugins/kubernetes.io/csi/pv/globalmount",
		 csi.cfg.kubelet_root);
	for (i = 0; i < 5; i++) {
		csi__v1__node_stage_volume_request__volume_context_entry__init(&se[i]);
		se[i].key = (char *)keys[i];
		se[i].value = (char *)vals[i];
		sep[i] = &se[i];
	}
	for (i = 0; i < 2; i++) {
		csi__v1__node_publish_volume_request__volume_context_entry__init(&pe[i]);
		pe[i].key = (char *)keys[i ? 4 : 0];
		pe[i].value = (char *)vals[i ? 4 : 0];
		pep[i] = &pe[i];
	}
	am.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__MULTI_NODE_READER_ONLY;
	cap.access_type_case = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT;
	cap.mount = &mv;
	cap.access_mode = &am;
	stage.volume_id = "default-demo";
	stage.staging_target_path = staging;
	stage.volume_capability = &cap;
	stage.n_volume_context = 5;
	stage.volume_context = sep;
	add_seed(&seeds[n++], 0, &stage.base);
	unstage.volume_id = "default-demo";
	unstage.staging_target_path = staging;
	add_seed(&seeds[n++], 1, &unstage.base);
	pub.volume_id = "default-demo";
	pub.staging_target_path = staging;
	pub.target_path = target;
	pub.volume_capability = &cap;
	pub.readonly = 1;
	pub.n_volume_context = 2;
	pub.volume_context = pep;
	add_seed(&seeds[n++], 2, &pub.base);
	unpub.volume_id = "default-demo";
	unpub.target_path = target;
	add_seed(&seeds[n++], 3, &unpub.base);
	stats.volume_id = "default-demo";
	stats.volume_path = target;
	add_seed(&seeds[n++], 4, &stats.base);
	seeds[n].len = (size_t)snprintf((char *)seeds[n].buf, sizeof(seeds[n].buf), "%c%s", (int)NMETHODS,
		"36 35 98:0 /mnt\\0401 /mnt2 rw,noatime master:1 - ext3 /dev/root rw");
	n++;
	return n;
}

/*
 * Seeds one mutation away from acceptance, each rejected for one rule: a NUL
 * in a string (appended as a second volume_id, which proto3 lets override
 * the first), a capability without access_mode, a publish without
 * staging_target_path, a relative volume_path. Returns how many; each must be
 * rejected with its code.
 */
static size_t make_reject_seeds(struct seed *seeds, enum csi_code *codes)
{
	Csi__V1__VolumeCapability__MountVolume mv = CSI__V1__VOLUME_CAPABILITY__MOUNT_VOLUME__INIT;
	Csi__V1__VolumeCapability cap = CSI__V1__VOLUME_CAPABILITY__INIT;
	Csi__V1__NodeStageVolumeRequest__VolumeContextEntry e[3], *ep[3];
	Csi__V1__NodePublishVolumeRequest__VolumeContextEntry pe =
		CSI__V1__NODE_PUBLISH_VOLUME_REQUEST__VOLUME_CONTEXT_ENTRY__INIT, *pep = &pe;
	Csi__V1__NodeStageVolumeRequest stage = CSI__V1__NODE_STAGE_VOLUME_REQUEST__INIT;
	Csi__V1__NodeUnpublishVolumeRequest unpub = CSI__V1__NODE_UNPUBLISH_VOLUME_REQUEST__INIT;
	Csi__V1__NodePublishVolumeRequest pub = CSI__V1__NODE_PUBLISH_VOLUME_REQUEST__INIT;
	Csi__V1__VolumeCapability__AccessMode am = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__INIT;
	Csi__V1__NodeGetVolumeStatsRequest stats = CSI__V1__NODE_GET_VOLUME_STATS_REQUEST__INIT;
	static const uint8_t nul_id[] = { 0x0a, 0x05, 'a', 'b', 0, 'c', 'd' };
	static const char *keys[3] = { "fluid_path", "runtime_namespace", "runtime_name" };
	char fluid[128], target[128], staging[128];
	const char *vals[3] = { fluid, "default", "demo" };
	size_t i, n = 0;

	snprintf(fluid, sizeof(fluid), "%s/juicefs/default/demo/juicefs-fuse", csi.cfg.mount_root);
	snprintf(target, sizeof(target), "%s/pods/uid/volumes/kubernetes.io~csi/pv/mount",
		 csi.cfg.kubelet_root);
	snprintf(staging, sizeof(staging), "%s/plugins/kubernetes.io/csi/pv/globalmount",
		 csi.cfg.kubelet_root);
	unpub.volume_id = "default-demo";
	unpub.target_path = target;
	add_seed(&seeds[n], 3, &unpub.base);
	memcpy(seeds[n].buf + seeds[n].len, nul_id, sizeof(nul_id));
	seeds[n].len += sizeof(nul_id);
	codes[n++] = CSI_INVALID_ARGUMENT;
	for (i = 0; i < 3; i++) {
		csi__v1__node_stage_volume_request__volume_context_entry__init(&e[i]);
		e[i].key = (char *)keys[i];
		e[i].value = (char *)vals[i];
		ep[i] = &e[i];
	}
	cap.access_type_case = CSI__V1__VOLUME_CAPABILITY__ACCESS_TYPE_MOUNT;
	cap.mount = &mv;
	stage.volume_id = "default-demo";
	stage.staging_target_path = staging;
	stage.volume_capability = &cap;	/* no access_mode */
	stage.n_volume_context = 3;
	stage.volume_context = ep;
	add_seed(&seeds[n], 0, &stage.base);
	codes[n++] = CSI_INVALID_ARGUMENT;
	am.mode = CSI__V1__VOLUME_CAPABILITY__ACCESS_MODE__MODE__SINGLE_NODE_WRITER;
	cap.access_mode = &am;
	pub.volume_id = "default-demo";
	pub.target_path = target;	/* no staging_target_path */
	pub.volume_capability = &cap;
	pe.key = "fluid_path";
	pe.value = fluid;
	pub.n_volume_context = 1;
	pub.volume_context = &pep;
	add_seed(&seeds[n], 2, &pub.base);
	codes[n++] = CSI_FAILED_PRECONDITION;
	stats.volume_id = "default-demo";
	stats.volume_path = "some/path";
	add_seed(&seeds[n], 4, &stats.base);
	codes[n++] = CSI_INVALID_ARGUMENT;
	return n;
}

static size_t mutate(uint8_t *b, size_t len, size_t cap, const struct seed *other)
{
	size_t pos = len ? next() % len : 0, n, i;

	switch (next() % 7) {
	case 0:	/* flip bits */
		for (i = 1 + next() % 4; i > 0 && len; i--)
			b[next() % len] ^= (uint8_t)(1u << (next() % 8));
		break;
	case 1:	/* insert random bytes */
		n = 1 + next() % 8;
		if (len + n > cap)
			break;
		memmove(b + pos + n, b + pos, len - pos);
		for (i = 0; i < n; i++)
			b[pos + i] = (uint8_t)next();
		len += n;
		break;
	case 2:	/* delete a range */
		n = len - pos ? 1 + next() % (len - pos) : 0;
		memmove(b + pos, b + pos + n, len - pos - n);
		len -= n;
		break;
	case 3:	/* truncate */
		len = pos;
		break;
	case 4:	/* overwrite with interesting bytes (varint extremes, '/', '.') */
		if (len) {
			static const uint8_t v[] = { 0xff, 0x80, 0x7f, 0x00, '/', '.', 0x0a, 0x12 };
			b[pos] = v[next() % sizeof(v)];
		}
		break;
	case 5:	/* splice in the tail of another seed */
		n = other->len - 1 > 0 ? next() % other->len : 0;
		if (pos + other->len - n <= cap && n < other->len) {
			memcpy(b + pos, other->buf + n, other->len - n);
			len = pos + other->len - n;
		}
		break;
	default:	/* a huge length varint */
		if (len + 10 <= cap) {
			memmove(b + pos + 10, b + pos, len - pos);
			memcpy(b + pos, "\x22\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10);
			len += 10;
		}
		break;
	}
	return len;
}

int main(int argc, char **argv)
{
	struct seed seeds[12];
	enum csi_code codes[4];
	uint8_t buf[4096];
	unsigned long iters = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000, i;
	size_t nseeds, nreject, len, j;

	rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
	if (!rng)
		rng = 1;
	setup();
	nseeds = make_seeds(seeds);
	/* The seeds themselves must be accepted, or we fuzz only the error paths. */
	for (j = 0; j + 1 < nseeds; j++)
		LLVMFuzzerTestOneInput(seeds[j].buf, seeds[j].len);
	if (accepted != nseeds - 1) {
		fprintf(stderr, "csi_fuzz: only %lu of %zu seeds accepted\n", accepted, nseeds - 1);
		return 1;
	}
	accepted = 0;
	nreject = make_reject_seeds(seeds + nseeds, codes);
	for (j = 0; j < nreject; j++) {
		struct csi_status st;
		struct csi_req r;
		const struct seed *s = &seeds[nseeds + j];

		if (csi_req_parse(&csi, methods[s->buf[0]], s->buf + 1, s->len - 1, &r, &st) ||
		    st.code != codes[j]) {
			fprintf(stderr, "csi_fuzz: reject seed %zu gave code %d, not %d\n", j,
				st.code, codes[j]);
			return 1;
		}
	}
	nseeds += nreject;
	for (i = 0; i < iters; i++) {
		const struct seed *s = &seeds[next() % nseeds];
		unsigned k, rounds = 1 + next() % 4;

		memcpy(buf, s->buf, s->len);
		len = s->len;
		for (k = 0; k < rounds; k++)
			len = mutate(buf, len, sizeof(buf), &seeds[next() % nseeds]);
		LLVMFuzzerTestOneInput(buf, len);
	}
	printf("csi_fuzz: %lu inputs, %lu accepted, no crash\n", iters, accepted);
	return 0;
}
#endif
