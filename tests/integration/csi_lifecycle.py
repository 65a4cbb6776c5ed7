"""Checks for tests/integration/csi.sh; see there for the setup.

Every result is checked against the kernel's view in /proc/self/mountinfo
and by real file access through the published paths.
"""
import ctypes
import errno
import os
import signal
import socket
import stat
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
MNT = T + "/runtime-mnt"
KUB = T + "/kubelet"
DEMO = MNT + "/juicefs/default/demo/juicefs-fuse"
LAZY = MNT + "/juicefs/default/lazy/juicefs-fuse"
COND = MNT + "/juicefs/default/cond/juicefs-fuse"
C = Client(SRC + "/src/csi-shim/csi.proto", T + "/csi.sock")
CODE = grpc.StatusCode


def ok(msg):
    print("ok - " + msg, flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def unesc(s):
    out, i = "", 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) + 1 and s[i + 1:i + 4].isdigit():
            out += chr(int(s[i + 1:i + 4], 8))
            i += 4
        else:
            out += s[i]
            i += 1
    return out


def mounts():
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            x = line.split()
            sep = x.index("-")
            res.append(dict(id=x[0], dev=x[2], root=unesc(x[3]), point=unesc(x[4]),
                            opts=x[5].split(","), fstype=x[sep + 1]))
    return res


def at(point):
    return [m for m in mounts() if m["point"] == point]


def cap(mode="SINGLE_NODE_WRITER"):
    return {"mount": {}, "access_mode": {"mode": mode}}


def ctx(name, fluid, sub=None, **extra):
    c = {"fluid_path": fluid, "mount_type": "JuiceFS", "runtime_namespace": "default",
         "runtime_name": name}
    if sub is not None:
        c["fluid_sub_path"] = sub
    c.update(extra)
    return c


def staging(vol):
    return KUB + "/plugins/kubernetes.io/csi/fuse.csi.fluid.io/%s/globalmount" % vol


def target(pod, vol):
    return KUB + "/pods/%s/volumes/kubernetes.io~csi/%s/mount" % (pod, vol)


def stage(vol, name, fluid, **kw):
    return C.call("NodeStageVolume", volume_id=vol, staging_target_path=staging(vol),
                  volume_capability=cap(), volume_context=ctx(name, fluid), **kw)


def publish(vol, name, fluid, tgt, readonly=False, mode="SINGLE_NODE_WRITER", sub=None):
    return C.call("NodePublishVolume", volume_id=vol, staging_target_path=staging(vol),
                  target_path=tgt, volume_capability=cap(mode), readonly=readonly,
                  volume_context=ctx(name, fluid, sub))


def unpublish(vol, tgt):
    return C.call("NodeUnpublishVolume", volume_id=vol, target_path=tgt)


def unstage(vol):
    return C.call("NodeUnstageVolume", volume_id=vol, staging_target_path=staging(vol))


def expect(code, fn, *args, contains=None, **kw):
    try:
        fn(*args, **kw)
    except Error as e:
        check(e.code == code, "expected %s, got %s: %s" % (code.name, e.code.name, e.details))
        if contains:
            check(contains in e.details, "message %r lacks %r" % (e.details, contains))
        return e.details
    raise AssertionError("expected %s, call succeeded" % code.name)


# ---- identity ---------------------------------------------------------------

def test_identity():
    r = C.call("GetPluginInfo")
    check(r.name == "fuse.csi.fluid.io" and r.vendor_version, "plugin info %s" % r)
    r = C.call("GetPluginCapabilities")
    check(len(r.capabilities) == 0, "a node-only plugin has no controller capability")
    check(C.call("Probe").ready.value, "probe not ready")
    check(C.call("NodeGetInfo").node_id == "node-1", "node id")
    types = [c.rpc.type for c in C.call("NodeGetCapabilities").capabilities]
    check(types == [1, 2, 4], "node capabilities %s" % types)
    st = os.stat(T + "/csi.sock")
    check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600,
          "socket mode %o" % st.st_mode)
    ok("identity, node info, capabilities, socket mode 0600")


# ---- bad input --------------------------------------------------------------

def test_bad_input():
    IA = CODE.INVALID_ARGUMENT
    vol, tgt = "default-demo", target("bad", "default-demo")
    good = dict(volume_id=vol, staging_target_path=staging(vol), volume_capability=cap(),
                volume_context=ctx("demo", DEMO))
    cases = [
        ("NodeStageVolume", dict(good, volume_id=""), "volume_id is required"),
        ("NodeStageVolume", dict(good, staging_target_path=""), "staging_target_path is required"),
        ("NodeStageVolume", dict(good, staging_target_path="kubelet/x"), "absolute"),
        ("NodeStageVolume", dict(good, staging_target_path="/etc/x"), "outside"),
        ("NodeStageVolume", dict(good, volume_context=ctx("demo", "")), "fluid_path is required"),
        ("NodeStageVolume", dict(good, volume_context=ctx("demo", "runtime-mnt/x")), "absolute"),
        ("NodeStageVolume", dict(good, volume_context=ctx("demo", T + "/outside/x")), "outside"),
        ("NodeStageVolume", dict(good, volume_context=ctx("demo", MNT + "/../outside/x")), ".."),
        ("NodeStageVolume", dict(good, volume_context=ctx("demo", MNT)), "outside"),
        ("NodeStageVolume", dict(good, volume_context=ctx("../../x", DEMO)), "runtime_name"),
        ("NodeStageVolume", dict(good, volume_context=ctx("demo", DEMO, runtime_namespace="a/b")),
         "runtime_namespace"),
        ("NodeStageVolume", dict(good, volume_capability={"block": {}}), "block"),
        ("NodeStageVolume", dict(good, volume_capability=None), "volume_capability"),
        ("NodeUnstageVolume", dict(volume_id=vol), "staging_target_path is required"),
        ("NodeUnstageVolume", dict(staging_target_path=staging(vol)), "volume_id is required"),
        ("NodePublishVolume", dict(good, target_path=""), "target_path is required"),
        ("NodePublishVolume", dict(good, target_path="pods/x"), "absolute"),
        ("NodePublishVolume", dict(good, target_path=T + "/outside/mount"), "outside"),
        ("NodePublishVolume", dict(good, target_path=KUB), "outside"),
        ("NodePublishVolume", dict(good, target_path=KUB + "/pods/../../outside/m"), ".."),
        ("NodePublishVolume", dict(good, target_path=KUB + "/evil/mount"), "outside"),
        ("NodePublishVolume", dict(good, target_path=tgt, staging_target_path="globalmount"),
         "absolute"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_context=ctx("demo", DEMO, "../data2")),
         "escapes the volume"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_context=ctx("demo", DEMO, "sub/../../x")),
         "escapes the volume"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_context=ctx("demo", DEMO, "escape")),
         "symlink"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_context=ctx("demo", DEMO, "sub/up")),
         "symlink"),
        ("NodeUnpublishVolume", dict(volume_id=vol), "target_path is required"),
        ("NodeUnpublishVolume", dict(target_path=tgt), "volume_id is required"),
        ("NodeUnpublishVolume", dict(volume_id=vol, target_path="x/y"), "absolute"),
        ("NodeUnpublishVolume", dict(volume_id=vol, target_path="/etc"), "outside"),
        ("NodeUnpublishVolume", dict(volume_id=vol, target_path=KUB + "/evil/mount"), "outside"),
        ("NodeGetVolumeStats", dict(volume_id=vol, volume_path=""), "volume_path is required"),
        ("NodeGetVolumeStats", dict(volume_id=vol, volume_path="/"), "outside"),
        # the spec says volume_path MUST be absolute: an invalid field, not NOT_FOUND
        ("NodeGetVolumeStats", dict(volume_id=vol, volume_path="some/path"), "absolute"),
        # access_mode is REQUIRED in a volume capability
        ("NodeStageVolume", dict(good, volume_capability={"mount": {}}), "access_mode is required"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_capability={"mount": {}}),
         "access_mode is required"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_capability={
            "mount": {}, "access_mode": {"mode": "UNKNOWN"}}), "access_mode mode is required"),
        # protobuf-c cuts strings at a NUL: "ab\0cd" must not be staged as "ab"
        ("NodeStageVolume", dict(good, volume_id="ab\0cd"), "volume_id contains a NUL byte"),
        ("NodeUnstageVolume", dict(volume_id=vol + "\0x", staging_target_path=staging(vol)),
         "volume_id contains a NUL byte"),
        ("NodePublishVolume", dict(good, target_path=tgt + "\0/../../x"),
         "target_path contains a NUL byte"),
        ("NodePublishVolume", dict(good, target_path=tgt, volume_context=ctx("demo", DEMO + "\0x")),
         "volume_context.value contains a NUL byte"),
        ("NodeUnpublishVolume", dict(volume_id="ab\0cd", target_path=tgt), "NUL byte"),
        ("NodeGetVolumeStats", dict(volume_id=vol, volume_path=tgt + "\0x"), "NUL byte"),
        ("NodeStageVolume", dict(good, staging_target_path=staging(vol) + "\nx"),
         "control character"),
    ]
    before = mounts()
    for method, fields, msg in cases:
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            expect(IA, C.call, method, contains=msg, **fields)
        except AssertionError as e:
            raise AssertionError("%s %s: %s" % (method, fields, e))
    # We advertise STAGE_UNSTAGE_VOLUME, so a publish without staging_target_path
    # is FAILED_PRECONDITION (the spec's "Staging target path not set").
    expect(CODE.FAILED_PRECONDITION, C.call, "NodePublishVolume",
           contains="staging_target_path is required",
           **dict(good, target_path=tgt, staging_target_path=""))
    check(mounts() == before, "a rejected call changed the mount table")
    check(not os.path.exists(T + "/outside/mount") and not os.listdir(T + "/outside"),
          "a rejected call created something outside the kubelet root")
    check(not os.path.exists(tgt), "a rejected publish left its target behind")
    # Malformed protobuf, an unknown method, and the plugin is still alive.
    for junk in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x22\x05ab"):
        expect(IA, C.raw, "/csi.v1.Node/NodePublishVolume", junk, contains="malformed")
    expect(CODE.UNIMPLEMENTED, C.raw, "/csi.v1.Controller/CreateVolume", b"")
    check(C.call("Probe").ready.value, "plugin died on bad input")
    ok("%d invalid requests rejected with INVALID_ARGUMENT, publish without staging path "
       "FAILED_PRECONDITION; malformed bytes survived" % len(cases))


# ---- the lifecycle ----------------------------------------------------------

def lifecycle(vol, name, fluid, src_dir, ours):
    """ours: the plugin mounts fluid itself (and unmounts it at unstage)."""
    pre = at(fluid)
    stage(vol, name, fluid)
    m = at(fluid)
    check(len(m) == 1 and m[0]["fstype"].startswith("fuse"), "%s not FUSE-mounted: %s" % (fluid, m))
    if ours:
        check(m[0]["fstype"] == "fuse.lazarusfs", "plugin mounted %s" % m[0]["fstype"])
    else:
        check(pre == m, "stage replaced the existing mount")
    stage(vol, name, fluid)
    check(at(fluid) == m, "second stage changed the mount")
    dev = m[0]["dev"]
    ok("%s: stage (%s), idempotent" % (vol, "lazarusfs started" if ours else "existing mount kept"))

    rw, ro, ro2, subt = (target(p, vol) for p in ("pod-rw", "pod-ro", "pod-ro2", "pod-sub"))
    publish(vol, name, fluid, rw)
    publish(vol, name, fluid, rw)
    b = at(rw)
    check(len(b) == 1, "publish twice must leave one bind mount, found %d" % len(b))
    check(b[0]["dev"] == dev and b[0]["root"] == "/" and "rw" in b[0]["opts"], "rw bind %s" % b)
    with open(rw + "/written.txt", "w") as f:
        f.write("through the bind")
    with open(src_dir + "/written.txt") as f:
        check(f.read() == "through the bind", "write did not reach the source")
    ok("%s: publish read-write, idempotent, write reaches the dataset" % vol)

    publish(vol, name, fluid, ro, readonly=True)
    publish(vol, name, fluid, ro2, mode="MULTI_NODE_READER_ONLY")
    for t in (ro, ro2):
        b = at(t)
        check(len(b) == 1 and "ro" in b[0]["opts"] and b[0]["dev"] == dev, "ro bind %s" % b)
        with open(t + "/hello.txt" if not ours else t + "/lazy.txt") as f:
            check(f.read(), "read through the ro bind")
        try:
            open(t + "/nope.txt", "w")
            raise AssertionError("write to a read-only publish succeeded")
        except OSError as e:
            check(e.errno == errno.EROFS, "write gave %s, not EROFS" % e)
    expect(CODE.ALREADY_EXISTS, publish, vol, name, fluid, rw, readonly=True)
    # Another volume id on the same fluid_path would make an identical bind.
    expect(CODE.ALREADY_EXISTS, publish, vol + "-other", name, fluid, rw,
           contains="already holds volume " + vol)
    check(len(at(rw)) == 1, "a refused publish changed the target: %s" % at(rw))
    ok("%s: publish read-only (flag and reader-only mode): EROFS; conflicting republish refused" % vol)

    if not ours:
        publish(vol, name, fluid, subt, sub="sub")
        b = at(subt)
        check(len(b) == 1 and b[0]["root"] == "/sub" and b[0]["dev"] == dev, "subpath bind %s" % b)
        with open(subt + "/inner.txt") as f:
            check(f.read() == "inner\n", "subpath content")
        sub2 = target("pod-alias", vol)
        publish(vol, name, fluid, sub2, sub="alias")	# a symlink that stays inside
        check(at(sub2)[0]["root"] == "/sub", "symlinked subpath bind %s" % at(sub2))
        unpublish(vol, sub2)
        expect(CODE.FAILED_PRECONDITION, publish, vol, name, fluid, target("pod-x", vol),
               sub="missing")
        ok("%s: publish with fluid_sub_path (plain and via an inside symlink)" % vol)
    else:
        subt = None

    r = C.call("NodeGetVolumeStats", volume_id=vol, volume_path=rw)
    sv = os.statvfs(rw)
    units = {u.unit: u for u in r.usage}
    check(set(units) == {1, 2}, "usage units %s" % units)
    by, ino = units[1], units[2]
    check(by.total == sv.f_blocks * sv.f_frsize and by.total > 0, "bytes total %s" % by)
    check(abs(by.available - sv.f_bavail * sv.f_frsize) < 64 << 20 and by.used >= 0, "bytes %s" % by)
    check(ino.total == sv.f_files and ino.available <= ino.total, "inodes %s" % ino)
    check(not r.volume_condition.abnormal, "condition abnormal: %s" % r.volume_condition.message)
    expect(CODE.NOT_FOUND, C.call, "NodeGetVolumeStats", volume_id=vol,
           volume_path=target("pod-none", vol))
    # A published path of this volume asked about with another id: NOT_FOUND.
    expect(CODE.NOT_FOUND, C.call, "NodeGetVolumeStats", volume_id=vol + "-other",
           volume_path=rw, contains="is not published at")
    ok("%s: NodeGetVolumeStats matches statvfs, condition normal" % vol)

    unpublish(vol, rw)
    check(not at(rw) and not os.path.exists(rw), "rw target still there")
    unpublish(vol, rw)
    unpublish(vol, target("never-published", vol))
    ok("%s: unpublish, twice, and of a path that never existed" % vol)

    unstage(vol)	# ro, ro2 (and sub) still bound: must keep everything
    check(at(fluid) and at(ro), "unstage with binds left touched the volume")
    for t in (ro, ro2, subt):
        if t:
            unpublish(vol, t)
            check(not at(t) and not os.path.exists(t), "%s still there" % t)
    unstage(vol)
    unstage(vol)
    if ours:
        check(not at(fluid), "OnDemand unstage left lazarusfs mounted")
    else:
        check(at(fluid) == m, "unstage touched a mount it did not make")
    ok("%s: unstage waits for the last bind, then %s; idempotent" %
       (vol, "unmounts lazarusfs" if ours else "leaves the foreign mount"))


def test_stacked_binds():
    vol, t = "default-demo", target("pod-stacked", "default-demo")
    stage(vol, "demo", DEMO)
    os.makedirs(t)
    for _ in range(3):	# what Fluid's recovery did (fluid#5416)
        check(os.system("mount --bind '%s' '%s'" % (DEMO, t)) == 0, "mount --bind")
    check(len(at(t)) == 3, "setup: three stacked binds")
    unpublish(vol, t)
    check(not at(t) and not os.path.exists(t), "stacked binds left: %s" % at(t))
    unstage(vol)
    ok("unpublish removes three stacked bind mounts")


def test_concurrency():
    # A publish with nothing mounted and no config waits --mount-timeout (3 s).
    fluid = MNT + "/juicefs/default/ghost/juicefs-fuse"
    vol, t1, t2 = "default-ghost", target("pod-g1", "default-ghost"), target("pod-g2", "default-ghost")
    res = {}

    def slow():
        try:
            publish(vol, "ghost", fluid, t1)
        except Error as e:
            res["slow"] = e
    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.7)
    expect(CODE.ABORTED, publish, vol, "ghost", fluid, t2, contains="in progress")
    expect(CODE.ABORTED, unpublish, "other-volume", t1, contains="in progress")
    expect(CODE.ABORTED, unstage, vol, contains="in progress")
    # Another volume id on the same fluid_path shares its proxy: it waits its turn.
    expect(CODE.ABORTED, stage, vol + "-2", "ghost", fluid, contains="operation on fluid_path")
    th.join()
    check(res.get("slow") and res["slow"].code == CODE.FAILED_PRECONDITION, "slow publish %s" % res)
    expect(CODE.FAILED_PRECONDITION, stage, vol, "ghost", fluid, contains="no dataset config")
    unpublish(vol, t1)
    ok("concurrent calls on one volume, target or fluid_path: ABORTED; "
       "missing config: FAILED_PRECONDITION")


def ctl_dir(point):
    """<state_dir>/<XXH3 of the mount path> as lazarusfs names it."""
    return "%s/state/%016x" % (T, xxh3(point))


def test_condition():
    vol, tgt = "default-cond", target("pod-cond", "default-cond")
    stage(vol, "cond", COND)
    publish(vol, "cond", COND, tgt)
    d = ctl_dir(COND)
    os.makedirs(d)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(d + "/ctl.sock")
    srv.listen(4)
    asked = []

    def answer(reply):
        conn, _ = srv.accept()
        asked.append(conn.recv(64))
        conn.sendall(reply.encode())
        conn.close()

    for reply, abnormal, msg in (
            ("state: running\npid: 7\nlast_error: \n", False, ""),
            ("state: recovering\nlast_error: engine exited (signal 9)\n", True,
             "engine recovering: engine exited (signal 9)"),
            ("state: failed\nlast_error: start timeout\n", True, "engine failed: start timeout"),
            ("state: stopped\n", False, "")):
        th = threading.Thread(target=answer, args=(reply,))
        th.start()
        r = C.call("NodeGetVolumeStats", volume_id=vol, volume_path=tgt)
        th.join()
        check(r.volume_condition.abnormal == abnormal and r.volume_condition.message == msg,
              "%r gave %s" % (reply, r.volume_condition))
        check(len(r.usage) == 2, "usage missing while the engine is %s" % reply.split()[1])
    check(asked == [b"status\n"] * 4, "control requests %s" % asked)
    srv.close()
    unpublish(vol, tgt)
    unstage(vol)
    ok("volume condition follows the lazarusfs control socket (running/recovering/failed)")


def record(vol):
    """The plugin's record of a staged volume, <state_dir>/csi/<XXH3 of the id>.vol."""
    return "%s/state/csi/%016x.vol" % (T, xxh3(vol))


def xxh3(s):
    lib = ctypes.CDLL("libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lib.XXH3_64bits(s.encode(), len(s.encode()))


def lazarusfs_at(point):
    """lazarusfs processes whose command line names point."""
    res = []
    for p in our_pids("lazarusfs"):
        try:
            with open("/proc/%d/cmdline" % p, "rb") as f:
                if point.encode() + b"\0" in f.read():
                    res.append(p)
        except OSError:
            pass
    return res


def gone(fn, what, timeout=10):
    for _ in range(timeout * 10):
        if not fn():
            return
        time.sleep(0.1)
    raise AssertionError("%s still there: %s" % (what, fn()))


class FreshPlugin:
    """A second lazarusfs-csi with the flags of the first on its own socket:
    what a restarted plugin sees (nothing in memory, the state dir on disk)."""

    def __enter__(self):
        with open("/proc/%s/cmdline" % os.environ["SHIM_PID"], "rb") as f:
            args = [a.decode() for a in f.read().split(b"\0") if a]
        sock = T + "/csi-fresh.sock"
        args[args.index("--endpoint") + 1] = "unix://" + sock
        self.log = open(T + "/shim-fresh.log", "w")
        self.proc = subprocess.Popen(args, stderr=self.log)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        return Client(SRC + "/src/csi-shim/csi.proto", sock)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def test_shared_fluid_path():
    """Two volume ids on one fluid_path (two PVs of one dataset), OnDemand: the
    proxy and the records go with the last user, also across a restart."""
    v1, v2 = "default-lazy", "default-lazy-2"
    t1, t2 = target("pod-share1", v1), target("pod-share2", v2)
    stage(v1, "lazy", LAZY)
    stage(v2, "lazy", LAZY)
    m = at(LAZY)
    check(len(m) == 1 and m[0]["fstype"] == "fuse.lazarusfs", "not one lazarusfs: %s" % m)
    publish(v1, "lazy", LAZY, t1)
    publish(v2, "lazy", LAZY, t2)
    # kubelet's order: unpublish 1, unstage 1 while 2 is still bound, ...
    unpublish(v1, t1)
    unstage(v1)
    check(at(LAZY) == m and lazarusfs_at(LAZY), "unstage of %s took the proxy from %s" % (v1, v2))
    check(os.path.exists(record(v1)) and "unstaged=1" in open(record(v1)).read(),
          "the record of %s went before the last user" % v1)
    check(os.listdir(t2), "%s lost its data" % v2)
    unstage(v1)	# kubelet may repeat it
    check(at(LAZY) == m, "a repeated unstage took the proxy")
    # ... unpublish 2, unstage 2, by a restarted plugin.
    with FreshPlugin() as c2:
        c2.call("NodeUnpublishVolume", volume_id=v2, target_path=t2)
        check(at(LAZY) == m, "unpublish took the proxy")
        c2.call("NodeUnstageVolume", volume_id=v2, staging_target_path=staging(v2))
    check(not at(LAZY), "the last unstage left lazarusfs mounted: %s" % at(LAZY))
    gone(lambda: lazarusfs_at(LAZY), "lazarusfs process")
    check(not os.path.exists(record(v1)) and not os.path.exists(record(v2)),
          "records left: %s" % os.listdir(T + "/state/csi"))
    ok("two volume ids on one fluid_path: unstage of the first keeps proxy and record while "
       "the second is bound; the last unstage (after a restart) removes both")
    # A staged volume is a user even without a bind mount.
    stage(v1, "lazy", LAZY)
    stage(v2, "lazy", LAZY)
    unstage(v1)
    check(at(LAZY), "unstage of %s took the proxy from staged %s" % (v1, v2))
    unstage(v2)
    check(not at(LAZY), "lazarusfs left mounted")
    check(not os.listdir(T + "/state/csi"), "records left: %s" % os.listdir(T + "/state/csi"))
    ok("a volume staged without a bind keeps the shared proxy")


def kill_wait(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.3)


def our_pids(word):
    res = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) not in (os.getpid(), int(os.environ["SHIM_PID"])):
            try:
                with open("/proc/%s/cmdline" % p, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if word in cmd and T + "/" in cmd:
                res.append(int(p))
    return res


def stale(vol, name, fluid, pids_fn, ours):
    tgt, tgt2 = target("pod-stale", vol), target("pod-stale2", vol)
    stage(vol, name, fluid)
    publish(vol, name, fluid, tgt)
    publish(vol, name, fluid, tgt2, readonly=True)
    os.listdir(tgt)
    kill_wait(pids_fn())
    try:
        os.stat(tgt)
        raise AssertionError("mount not stale after killing engine and proxy")
    except OSError as e:
        check(e.errno == errno.ENOTCONN, "stat gave %s" % e)
    r = C.call("NodeGetVolumeStats", volume_id=vol, volume_path=tgt)
    # Without a proxy (bindfs) statfs says why; with lazarusfs its control socket does.
    why = "is not running" if ours else "not connected"
    check(r.volume_condition.abnormal and why in r.volume_condition.message,
          "stale condition %s" % r.volume_condition)
    unpublish(vol, tgt)
    check(not at(tgt) and not os.path.exists(tgt), "stale target left: %s" % at(tgt))
    unpublish(vol, tgt)
    ok("%s: engine and proxy killed: stats abnormal, unpublish cleans the stale bind, twice" % vol)
    if ours:
        # Publishing again remounts the dead volume (kubelet would not re-stage).
        t3 = target("pod-again", vol)
        publish(vol, name, fluid, t3)
        check(os.listdir(t3), "remounted volume is empty")
        check(at(fluid)[-1]["fstype"] == "fuse.lazarusfs", "not remounted %s" % at(fluid))
        unpublish(vol, t3)
        unpublish(vol, tgt2)
        unstage(vol)
        check(not at(fluid), "lazarusfs left mounted")
        ok("%s: publish after the crash remounts lazarusfs; unstage cleans up" % vol)
    else:
        expect(CODE.FAILED_PRECONDITION, stage, vol, name, fluid, contains="nothing is mounted")
        check(not at(fluid), "stage left the stale mount at fluid_path")
        unpublish(vol, tgt2)
        unstage(vol)
        ok("%s: stage detaches a stale fluid_path (no config: FAILED_PRECONDITION)" % vol)


def main():
    test_identity()
    test_bad_input()
    lifecycle("default-demo", "demo", DEMO, T + "/data", ours=False)
    test_stacked_binds()
    test_concurrency()
    test_condition()
    stale("default-demo", "demo", DEMO, lambda: [int(os.environ["BINDFS_PID"])], False)
    # The volume the plugin mounts itself needs the lazarusfs proxy.
    lazarusfs = BUILD + "/lazarusfs"
    if not os.access(lazarusfs, os.X_OK):
        raise AssertionError("%s is missing: the lazarusfs part cannot run" % lazarusfs)
    lifecycle("default-lazy", "lazy", LAZY, T + "/data2", ours=True)
    test_shared_fluid_path()
    stale("default-lazy", "lazy", LAZY, lambda: our_pids("lazarusfs") + our_pids("bindfs"), True)


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, Error) as e:
        print("not ok - %s" % e, flush=True)
        sys.exit(1)
