/* main.c - lazarusfs-csi: command line, then serve CSI until SIGTERM. */
#include "config.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/csi-shim/csi.h"

#define SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lazarusfs-csi --endpoint unix:///csi/csi.sock --nodeid NODE [options]\n"
		"  --driver-name NAME      CSI driver name (fuse.csi.fluid.io)\n"
		"  --mount-root DIR        fluid_path must be inside (/runtime-mnt)\n"
		"  --kubelet-root DIR      target paths must be inside (/var/lib/kubelet)\n"
		"  --config-dir DIR        per-dataset <ns>-<name>.conf (/etc/lazarusfs)\n"
		"  --state-dir DIR         lazarusfs state directory (%s)\n"
		"  --lazarusfs PATH        proxy program to start (lazarusfs, found on PATH)\n"
		"  --launcher \"CMD ARGS\"   start the proxy through this command, so that it\n"
		"                          lives outside the plugin's pod; {id} is the mount id\n"
		"  --clean-policy POLICY   OnRuntimeDeleted or OnDemand (OnRuntimeDeleted)\n"
		"  --mount-timeout SEC     wait for a FUSE mount this long (30)\n"
		"  --kube-api URL          API server (https://$KUBERNETES_SERVICE_HOST:PORT)\n"
		"  --kube-token-file FILE  bearer token (" SA_DIR "/token)\n"
		"  --kube-ca-file FILE     API server CA (" SA_DIR "/ca.crt)\n"
		"  --version, --help\n", LAZARUSFS_STATE_DIR);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "endpoint", required_argument, NULL, 'e' },
		{ "nodeid", required_argument, NULL, 'n' },
		{ "driver-name", required_argument, NULL, 'd' },
		{ "mount-root", required_argument, NULL, 'm' },
		{ "kubelet-root", required_argument, NULL, 'k' },
		{ "config-dir", required_argument, NULL, 'c' },
		{ "state-dir", required_argument, NULL, 's' },
		{ "lazarusfs", required_argument, NULL, 'l' },
		{ "launcher", required_argument, NULL, 'L' },
		{ "clean-policy", required_argument, NULL, 'p' },
		{ "mount-timeout", required_argument, NULL, 't' },
		{ "kube-api", required_argument, NULL, 'a' },
		{ "kube-token-file", required_argument, NULL, 'T' },
		{ "kube-ca-file", required_argument, NULL, 'C' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct csi_config cfg = {
		.driver_name = "fuse.csi.fluid.io",
		.mount_root = "/runtime-mnt",
		.kubelet_root = "/var/lib/kubelet",
		.config_dir = "/etc/lazarusfs",
		.state_dir = LAZARUSFS_STATE_DIR,
		.lazarusfs = "lazarusfs",
		.clean_policy = CSI_CLEAN_ON_RUNTIME_DELETED,
		.mount_timeout = 30,
		.kube_token_file = SA_DIR "/token",
		.kube_ca_file = SA_DIR "/ca.crt",
	};
	const char *endpoint = NULL;
	struct csi_status st;
	struct csi csi;
	sigset_t sigs;
	char *end;
	int c, err;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'e': endpoint = optarg; break;
		case 'n': cfg.node_id = optarg; break;
		case 'd': cfg.driver_name = optarg; break;
		case 'm': cfg.mount_root = optarg; break;
		case 'k': cfg.kubelet_root = optarg; break;
		case 'c': cfg.config_dir = optarg; break;
		case 's': cfg.state_dir = optarg; break;
		case 'l': cfg.lazarusfs = optarg; break;
		case 'L': cfg.launcher = optarg; break;
		case 'a': cfg.kube_api = optarg; break;
		case 'T': cfg.kube_token_file = optarg; break;
		case 'C': cfg.kube_ca_file = optarg; break;
		case 'p':
			if (!strcmp(optarg, "OnDemand"))
				cfg.clean_policy = CSI_CLEAN_ON_DEMAND;
			else if (!strcmp(optarg, "OnRuntimeDeleted"))
				cfg.clean_policy = CSI_CLEAN_ON_RUNTIME_DELETED;
			else {
				fprintf(stderr, "lazarusfs-csi: unknown clean policy: %s\n", optarg);
				return 2;
			}
			break;
		case 't':
			errno = 0;
			cfg.mount_timeout = (int)strtol(optarg, &end, 10);
			if (errno || *end || cfg.mount_timeout <= 0) {
				fprintf(stderr, "lazarusfs-csi: bad mount timeout: %s\n", optarg);
				return 2;
			}
			break;
		case 'V':
			printf("lazarusfs-csi %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || !endpoint || !cfg.node_id) {
		fprintf(stderr, "lazarusfs-csi: --endpoint and --nodeid are required\n");
		usage(stderr);
		return 2;
	}
	if (csi_init(&csi, &cfg, &st)) {
		fprintf(stderr, "lazarusfs-csi: %s\n", st.msg);
		return 1;
	}
	/* Before any thread exists: the signal thread alone takes these. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	err = csi_server_run(&csi, endpoint);
	curl_global_cleanup();
	csi_release(&csi);
	return err ? 1 : 0;
}
