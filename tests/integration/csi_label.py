"""Checks for tests/integration/csi-label.sh; see there for the setup."""
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from csi_grpc import Client, Error  # noqa: E402
import grpc  # noqa: E402

T = os.environ["T"]
BUILD = os.environ["BUILD_DIR"]
SRC = os.environ["SRC_DIR"]
LONG = os.environ["LONG"]
TOKEN = open(T + "/token").read().strip()
UID = "5e1c2a9e-0d3b-4c47-9a56-1f0e4d2b7a11"
REQUESTS = []
FAIL_WITH = {}	# node name -> HTTP status to answer


class Api(http.server.BaseHTTPRequestHandler):
    def do_PATCH(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        REQUESTS.append(dict(method="PATCH", path=self.path,
                             auth=self.headers.get("Authorization"),
                             ctype=self.headers.get("Content-Type"), body=json.loads(body)))
        code = FAIL_WITH.get(self.path.rsplit("/", 1)[-1], 200)
        reply = json.dumps({"kind": "Node"} if code == 200 else
                           {"kind": "Status", "message": "nodes is forbidden"}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def serve():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(T + "/server.crt", T + "/server.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Plugin:
    """One lazarusfs-csi process on its own socket."""
    n = 0

    def __init__(self, node, ca, api=None, env=None):
        Plugin.n += 1
        self.sock = "%s/csi-%d.sock" % (T, Plugin.n)
        args = [BUILD + "/lazarusfs-csi", "--endpoint", "unix://" + self.sock,
                "--nodeid", node, "--mount-root", T + "/runtime-mnt",
                "--kubelet-root", T + "/kubelet", "--config-dir", T + "/etc",
                "--state-dir", T + "/state", "--lazarusfs", BUILD + "/lazarusfs",
                "--kube-token-file", T + "/token", "--kube-ca-file", ca]
        if api:
            args += ["--kube-api", api]
        e = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        e.update(env or {})
        self.log = open("%s/plugin-%d.log" % (T, Plugin.n), "w+")
        self.proc = subprocess.Popen(args, env=e, stderr=self.log)
        for _ in range(100):
            if os.path.exists(self.sock):
                break
            time.sleep(0.05)
        self.c = Client(SRC + "/src/csi-shim/csi.proto", self.sock)

    def call(self, method, name, **kw):
        vol = "default-" + name
        fields = dict(volume_id=vol, staging_target_path=T +
                      "/kubelet/plugins/x/%s/globalmount" % vol)
        if method == "NodeStageVolume":
            fields["volume_capability"] = {"mount": {}, "access_mode": {"mode": 1}}
            fields["volume_context"] = {
                "fluid_path": T + "/runtime-mnt/juicefs/default/%s/juicefs-fuse" % name,
                "mount_type": "JuiceFS", "runtime_namespace": "default", "runtime_name": name}
        return self.c.call(method, **fields)

    def logged(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def patch(node, key, value):
    return dict(method="PATCH", path="/api/v1/nodes/" + node, auth="Bearer " + TOKEN,
                ctype="application/strategic-merge-patch+json",
                body={"metadata": {"labels": {key: value}}})


def test_shared_label(api):
    """Two volume ids on one fluid_path share its node label: kubelet's order
    (unpublish 1, unstage 1 while 2 is bound, unpublish 2, unstage 2) removes
    it with the last one only, also when the plugin restarts in between."""
    fluid = T + "/runtime-mnt/juicefs/default/demo/juicefs-fuse"
    vols = ("default-demo", "default-demo-2")
    tgt = {v: T + "/kubelet/pods/%s/volumes/kubernetes.io~csi/%s/mount" % (v, v) for v in vols}
    cap = {"mount": {}, "access_mode": {"mode": 1}}
    vctx = {"fluid_path": fluid, "mount_type": "JuiceFS", "runtime_namespace": "default",
            "runtime_name": "demo"}

    def staging(v):
        return T + "/kubelet/plugins/x/%s/globalmount" % v

    del REQUESTS[:]
    p = Plugin("node-1", T + "/ca.crt", api)
    for v in vols:
        p.c.call("NodeStageVolume", volume_id=v, staging_target_path=staging(v),
                 volume_capability=cap, volume_context=vctx)
        p.c.call("NodePublishVolume", volume_id=v, staging_target_path=staging(v),
                 target_path=tgt[v], volume_capability=cap, volume_context=vctx)
    check(REQUESTS == [patch("node-1", "fluid.io/f-default-demo", "true")] * 2,
          "stages sent %s" % REQUESTS)
    p.c.call("NodeUnpublishVolume", volume_id=vols[0], target_path=tgt[vols[0]])
    p.c.call("NodeUnstageVolume", volume_id=vols[0], staging_target_path=staging(vols[0]))
    check(REQUESTS[2:] == [], "unstage of %s while %s is bound sent %s" % (vols[0], vols[1],
                                                                       REQUESTS[2:]))
    p.stop()
    p = Plugin("node-1", T + "/ca.crt", api)
    p.c.call("NodeUnpublishVolume", volume_id=vols[1], target_path=tgt[vols[1]])
    p.c.call("NodeUnstageVolume", volume_id=vols[1], staging_target_path=staging(vols[1]))
    check(REQUESTS[2:] == [patch("node-1", "fluid.io/f-default-demo", None)],
          "the last unstage sent %s" % REQUESTS[2:])
    check(not [f for f in os.listdir(T + "/state/csi") if f.endswith(".vol")],
          "records left: %s" % os.listdir(T + "/state/csi"))
    # A staged volume uses the label even with no bind mount left.
    del REQUESTS[:]
    for v in vols:
        p.c.call("NodeStageVolume", volume_id=v, staging_target_path=staging(v),
                 volume_capability=cap, volume_context=vctx)
    p.c.call("NodeUnstageVolume", volume_id=vols[0], staging_target_path=staging(vols[0]))
    check(REQUESTS[2:] == [], "unstage of %s while %s is staged sent %s" % (vols[0], vols[1],
                                                                        REQUESTS[2:]))
    p.c.call("NodeUnstageVolume", volume_id=vols[1], staging_target_path=staging(vols[1]))
    check(REQUESTS[2:] == [patch("node-1", "fluid.io/f-default-demo", None)],
          "the last unstage sent %s" % REQUESTS[2:])
    p.stop()
    print("ok - two volume ids on one fluid_path: the label goes with the last unstage, "
          "across a plugin restart and with no bind mount", flush=True)


def main():
    port = serve()
    api = "https://127.0.0.1:%d" % port
    p = Plugin("node-1", T + "/ca.crt", api)

    p.call("NodeStageVolume", "demo")
    check(REQUESTS == [patch("node-1", "fluid.io/f-default-demo", "true")],
          "stage sent %s" % REQUESTS)
    p.call("NodeUnstageVolume", "demo")
    check(REQUESTS[1:] == [patch("node-1", "fluid.io/f-default-demo", None)],
          "unstage sent %s" % REQUESTS[1:])
    print("ok - stage sets fluid.io/f-default-demo=true, unstage sets it to null", flush=True)

    del REQUESTS[:]
    p.call("NodeStageVolume", LONG)
    check(REQUESTS == [patch("node-1", "fluid.io/f-" + UID, "true")], "long name sent %s" % REQUESTS)
    p.call("NodeUnstageVolume", LONG)
    check(REQUESTS[1:] == [patch("node-1", "fluid.io/f-" + UID, None)], "long unstage %s" % REQUESTS)
    del REQUESTS[:]
    p.call("NodeStageVolume", "nouid-" + LONG)
    check(REQUESTS == [], "a key too long without dataset_uid must not be sent: %s" % REQUESTS)
    check("no dataset_uid" in p.logged(), "no log line for the skipped label")
    p.call("NodeUnstageVolume", "nouid-" + LONG)
    check(REQUESTS == [], "unstage sent %s" % REQUESTS)
    print("ok - long names use fluid.io/f-<dataset_uid>, or skip the label with a log line",
          flush=True)
    p.stop()
    test_shared_label(api)

    FAIL_WITH["node-denied"] = 403
    p = Plugin("node-denied", T + "/ca.crt", api)
    try:
        p.call("NodeStageVolume", "demo")
        raise AssertionError("stage succeeded although the API server said 403")
    except Error as e:
        check(e.code == grpc.StatusCode.INTERNAL and "HTTP 403" in e.details, "403: %s" % e)
    check(TOKEN not in p.logged(), "the token appeared in the log")
    p.stop()
    del REQUESTS[:]
    p = Plugin("node-1", T + "/other-ca.crt", api)
    try:
        p.call("NodeStageVolume", "demo")
        raise AssertionError("stage trusted a server its CA did not sign")
    except Error as e:
        check(e.code == grpc.StatusCode.INTERNAL and "node label failed" in e.details,
              "bad CA: %s" % e)
    check(REQUESTS == [], "a request went through an unverified connection")
    p.stop()
    print("ok - API errors and an untrusted server certificate fail the stage", flush=True)

    p = Plugin("node-2", T + "/ca.crt",
               env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)})
    p.call("NodeStageVolume", "demo")
    check(REQUESTS == [patch("node-2", "fluid.io/f-default-demo", "true")],
          "in-cluster env sent %s" % REQUESTS)
    p.call("NodeUnstageVolume", "demo")
    p.stop()
    print("ok - the API server comes from KUBERNETES_SERVICE_HOST/PORT", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, Error) as e:
        print("not ok - %s" % e, flush=True)
        sys.exit(1)
