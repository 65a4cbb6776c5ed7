"""Crash scenarios for lazarusfs: an application keeps working through one
open fd while the engine behind the proxy is killed (kill -9 of its whole
process group) or frozen (SIGSTOP).  Any error the application sees fails
the scenario.  Used by test_crash.sh; run with /usr/bin/python3.

  crash.py read    MNT SRC STATE   stream a 256 MiB file, kill 3 times
  crash.py write   MNT SRC STATE   write 256 MiB through one fd, kill 3 times
  crash.py readdir MNT SRC STATE   list 3000 entries, kill partway
  crash.py unlink  MNT SRC STATE   open, unlink, kill, read+write the fd, close
  crash.py hang    MNT SRC STATE   SIGSTOP the engine during reads (64 MiB)

SRC is the engine's source directory (for s3fs: the bucket seen through a
plain s3fs mount).  CRASH_MIB=N makes the read, write and hang files N MiB
and CRASH_FILES=N the listing N entries, the kills at the same fractions,
for engines too slow for the full sizes (s3fs against s3rver).
"""
import ast
import hashlib
import os
import signal
import subprocess
import sys
import time

MIB = 1 << 20
SIZE_MIB = int(os.environ.get("CRASH_MIB", "256"))
NFILES = int(os.environ.get("CRASH_FILES", "3000"))
LAZARUSCTL = os.path.join(os.environ.get("BUILD_DIR", "."), "lazarusctl")


class Killer:
    """A process forked before any test file is opened, which asks
    lazarusctl for the engine's state and signals the engine on orders
    over a pipe.  A child of ours that inherited the test's descriptors
    would close them before exec, the kernel would send FLUSH for each, the
    journal would be retired, and the kill would find nothing to replay."""

    def __init__(self):
        r1, self.w = os.pipe()
        self.r, w2 = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.w)
            os.close(self.r)
            self._serve(os.fdopen(r1, "r"), os.fdopen(w2, "w"))
            os._exit(0)
        os.close(r1)
        os.close(w2)
        self.out = os.fdopen(self.w, "w")
        self.inp = os.fdopen(self.r, "r")

    @staticmethod
    def _status(mnt, state):
        out = subprocess.run([LAZARUSCTL, "--state-dir", state, "status", mnt],
                             capture_output=True, text=True, check=True).stdout
        return dict(l.split(": ", 1) for l in out.splitlines() if ": " in l)

    def _serve(self, inp, out):
        for line in inp:
            cmd, mnt, state, arg = line.rstrip("\n").split("\t")
            try:
                if cmd == "status":
                    reply = repr(self._status(mnt, state))
                else:           # kill SIG: wait for a running engine, signal it
                    end = time.time() + 30
                    st = self._status(mnt, state)
                    while not (st["state"] == "running" and st["pid"] != "0"):
                        if time.time() > end:
                            raise RuntimeError("engine not running within 30s: %s" % st)
                        time.sleep(0.05)
                        st = self._status(mnt, state)
                    pid = int(st["pid"])
                    try:
                        os.killpg(pid, int(arg))  # with its helpers (ssh for sshfs)
                    except ProcessLookupError:
                        os.kill(pid, int(arg))
                    reply = str(pid)
            except Exception as e:  # report, do not die: the test decides
                reply = "ERROR " + str(e).replace("\n", " ")
            out.write(reply + "\n")
            out.flush()

    def ask(self, cmd, mnt, state, arg=""):
        self.out.write("%s\t%s\t%s\t%s\n" % (cmd, mnt, state, arg))
        self.out.flush()
        reply = self.inp.readline().rstrip("\n")
        if reply.startswith("ERROR "):
            sys.exit("FAIL: " + reply[6:])
        return reply


KILLER = None


def status(mnt, state):
    return ast.literal_eval(KILLER.ask("status", mnt, state))


def kill_engine(mnt, state, sig=signal.SIGKILL):
    pid = int(KILLER.ask("kill", mnt, state, str(int(sig))))
    print("sent signal %d to engine %d" % (sig, pid), flush=True)
    return pid


def scale(n, full, size):
    """Position n of a scenario of `full` blocks or entries, for `size`."""
    return n * size // full


def block(i):
    """1 MiB of data that depends on the block number."""
    seed = hashlib.sha256(b"lazarus%d" % i).digest()
    return (seed * (MIB // len(seed)))


def make_source(path, blocks):
    if os.path.exists(path) and os.path.getsize(path) == blocks * MIB:
        return
    with open(path, "wb") as f:
        for i in range(blocks):
            f.write(block(i))


def read_scenario(mnt, src, state):
    blocks = SIZE_MIB
    make_source(os.path.join(src, "stream.bin"), blocks)
    kills = {scale(k, 256, blocks) for k in (40, 120, 200)}
    fd = os.open(os.path.join(mnt, "stream.bin"), os.O_RDONLY)
    for i in range(blocks):
        if i in kills:
            kill_engine(mnt, state)
        data = b""
        while len(data) < MIB:
            chunk = os.read(fd, MIB - len(data))
            if not chunk:
                sys.exit("FAIL: early EOF at block %d" % i)
            data += chunk
        if data != block(i):
            sys.exit("FAIL: block %d differs" % i)
    if os.read(fd, 1):
        sys.exit("FAIL: data past the end")
    os.close(fd)
    return len(kills)


def write_scenario(mnt, src, state):
    blocks = SIZE_MIB
    kills = {scale(k, 256, blocks) for k in (30, 110, 230)}
    name = "written.bin"
    fd = os.open(os.path.join(mnt, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(blocks):
        if i in kills:
            kill_engine(mnt, state)
        data = block(i)
        off = 0
        while off < MIB:
            off += os.write(fd, data[off:])
    os.close(fd)
    # the engine's own storage must hold every byte
    with open(os.path.join(src, name), "rb") as f:
        for i in range(blocks):
            if f.read(MIB) != block(i):
                sys.exit("FAIL: block %d of %s on the engine's storage differs" % (i, name))
        if f.read(1):
            sys.exit("FAIL: %s too long on the engine's storage" % name)
    return len(kills)


def readdir_scenario(mnt, src, state):
    d = os.path.join(src, "many")
    n = NFILES
    if not os.path.isdir(d):
        os.mkdir(d)
        for i in range(n):
            open(os.path.join(d, "f%05d" % i), "w").close()
    seen = []
    killed = False
    with os.scandir(os.path.join(mnt, "many")) as it:
        for e in it:
            seen.append(e.name)
            e.stat()    # touches the backend per entry
            if len(seen) == scale(700, 3000, n) and not killed:
                kill_engine(mnt, state)
                killed = True
    want = sorted("f%05d" % i for i in range(n))
    if sorted(seen) != want:
        dup = len(seen) - len(set(seen))
        sys.exit("FAIL: listing has %d names (%d duplicates), want %d" % (len(seen), dup, n))
    if not killed:
        sys.exit("FAIL: the listing ended before the kill")
    return 1


def unlink_scenario(mnt, src, state):
    path = os.path.join(mnt, "doomed.txt")
    with open(path, "wb") as f:
        f.write(b"A" * 10000)
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)
    if os.path.exists(path):
        sys.exit("FAIL: unlinked file still visible")
    if [x for x in os.listdir(mnt) if x.startswith(".lazarusfs-silly")]:
        sys.exit("FAIL: silly name visible in a listing")
    kill_engine(mnt, state)
    if os.pread(fd, 10000, 0) != b"A" * 10000:
        sys.exit("FAIL: reading the unlinked fd after the crash")
    os.pwrite(fd, b"B" * 5000, 10000)
    os.fsync(fd)
    if os.pread(fd, 15000, 0) != b"A" * 10000 + b"B" * 5000:
        sys.exit("FAIL: read back after write to the unlinked fd")
    kill_engine(mnt, state)
    if os.fstat(fd).st_size != 15000:
        sys.exit("FAIL: size of the unlinked fd after the second crash")
    os.close(fd)
    left = [x for x in os.listdir(src) if x.startswith(".lazarusfs-silly")]
    deadline = time.time() + 10
    while left and time.time() < deadline:    # release is asynchronous
        time.sleep(0.1)
        left = [x for x in os.listdir(src) if x.startswith(".lazarusfs-silly")]
    if left or os.path.exists(os.path.join(src, "doomed.txt")):
        sys.exit("FAIL: left behind on the engine's storage: %s" % left)
    return 2


def hang_scenario(mnt, src, state):
    blocks = min(64, SIZE_MIB)
    make_source(os.path.join(src, "hang.bin"), blocks)
    hang_timeout = float(os.environ.get("HANG_TIMEOUT", "3"))
    fd = os.open(os.path.join(mnt, "hang.bin"), os.O_RDONLY | os.O_DIRECT)
    buf = bytearray(MIB)
    stall = 0.0
    for i in range(blocks):
        if i == scale(20, 64, blocks):
            kill_engine(mnt, state, signal.SIGSTOP)
        t0 = time.time()
        m = memoryview(buf)
        got = os.preadv(fd, [m], i * MIB)
        stall = max(stall, time.time() - t0)
        if got != MIB or bytes(buf) != block(i):
            sys.exit("FAIL: block %d after the hang" % i)
    os.close(fd)
    stall_max = float(os.environ.get("STALL_MAX", hang_timeout + 10))
    print("longest stall %.1f s (hang_timeout %.0f s, at most %.0f s)"
          % (stall, hang_timeout, stall_max))
    if stall > stall_max:
        sys.exit("FAIL: recovery from the hang took %.1f s" % stall)
    return 1


SCENARIOS = {"read": read_scenario, "write": write_scenario,
             "readdir": readdir_scenario, "unlink": unlink_scenario,
             "hang": hang_scenario}

if __name__ == "__main__":
    scen, mnt, src, state = sys.argv[1:5]
    KILLER = Killer()           # before any file of the test is open
    before = int(status(mnt, state)["recoveries"])
    kills = SCENARIOS[scen](mnt, src, state)
    after = int(status(mnt, state)["recoveries"])
    if after - before < kills:
        sys.exit("FAIL: %d recoveries for %d kills" % (after - before, kills))
    print("ok %s: %d recoveries, no application error" % (scen, after - before))
