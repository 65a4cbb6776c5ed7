"""The application side of test_takeover.sh: one process that holds the
test's descriptors on a lazarusfs mount while the shell that started it
kills the proxy (the worker that serves the FUSE connection) or upgrades
it.  Any error the application sees fails the scenario.  Run with
/usr/bin/python3.

  takeover.py read    MNT SRC   a 256 MiB file read through one fd, 3 kills
  takeover.py write   MNT SRC   256 MiB written through one fd, 3 kills,
                                then compared on the engine's storage SRC
  takeover.py readdir MNT SRC   3000 entries listed through one directory fd
                                with getdents64 in 4 KiB pieces, 3 kills
  takeover.py unlink  MNT SRC   an unlinked-open file read and written, 3 kills
  takeover.py lock    MNT SRC   a POSIX lock held across 3 kills
  takeover.py engine  MNT SRC   the engine is adopted: same pid, 3 kills
  takeover.py meta    MNT SRC   threads create/mkdir/rename/link/symlink/
                                unlink/rmdir while the proxy is killed twice
  takeover.py late    MNT SRC   the same calls, done by an engine that
                                answers 1 s late, in flight at 2 kills
  takeover.py upgrade MNT SRC   20 upgrades while a reader verifies a file
  takeover.py probe   FILE      (run by the shell) who holds a lock on FILE
  takeover.py late-paths        (for the shell) the paths the late engine delays

The kills are NOT sent from here: a process that signals the proxy must
not hold the test's descriptors (a child that inherited and closed them
would make the kernel send FLUSH, which retires the write journal and
hides what a takeover must carry).  This process never forks.  It asks the
shell over two fifos ($TKO_REQ, $TKO_REP), one line each way:

  kill-proxy [SIG] -> "SENT pid" as soon as kill -SIG (KILL) is sent, then
                    "OK k=v ..." once status shows a new proxy_pid (or "ERR why")
  status         -> "OK k=v ..." (the fields of lazarusctl status)
  probe FILE     -> "OK <output of takeover.py probe FILE>"
  upgrade N      -> "OK k=v ..." after N upgrades, each seen in status

Between "SENT" and "OK" the scenario keeps doing I/O, so requests are in
flight while the proxy dies and while its successor takes over.
TKO_MIB=N and TKO_FILES=N shrink the files and the listing (the kills stay
at the same fractions).
"""
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import random
import select
import struct
import sys
import threading
import time

MIB = 1 << 20
SIZE_MIB = int(os.environ.get("TKO_MIB", "256"))
NFILES = int(os.environ.get("TKO_FILES", "3000"))


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def block(i):
    """1 MiB of data that depends on the block number, no shorter period."""
    return random.Random(i).randbytes(MIB)


def scale(n, full, size):
    return n * size // full


class Shell:
    """The shell on the other side of the fifos (see the module doc)."""

    def __init__(self):
        self.w = os.open(os.environ["TKO_REQ"], os.O_WRONLY)
        self.r = os.open(os.environ["TKO_REP"], os.O_RDONLY)
        self.buf = b""
        self.pending = 0        # replies to kill-proxy still to come
        self.kills = 0
        self.last = {}          # fields of the last takeover

    def send(self, *words):
        os.write(self.w, (" ".join(words) + "\n").encode())

    def reply(self, timeout=None):
        """The next reply, or None after timeout s; fails on ERR."""
        while b"\n" not in self.buf:
            if not select.select([self.r], [], [], timeout)[0]:
                return None
            chunk = os.read(self.r, 4096)
            if not chunk:
                fail("the shell closed the reply fifo")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.decode()
        if line.startswith("ERR"):
            fail("shell: " + line[4:])
        return line

    def ask(self, *words):
        self.settle()
        self.send(*words)
        return self.reply()

    def status(self):
        return fields(self.ask("status"))

    def kill_proxy(self, sig="KILL"):
        """Ask for a kill and return at once: the caller goes on with its
        I/O while the proxy dies; poll() or settle() collect the replies."""
        self.settle()
        self.send("kill-proxy", sig)
        self.kills += 1
        self.pending = 2        # SENT, then OK

    def poll(self, timeout=0):
        """Handle the replies that have come (waiting up to timeout s)."""
        while self.pending:
            line = self.reply(timeout)
            if line is None:
                return
            self.pending -= 1
            print("kill %d: %s" % (self.kills, line), flush=True)
            if line.startswith("OK"):
                self.last = fields(line)
            timeout = 0

    def settle(self):
        while self.pending:
            self.poll(None)

    def kill_and_wait(self, sig="KILL"):
        self.kill_proxy(sig)
        self.settle()
        return self.last


def fields(line):
    """'OK a=1 b=x' -> {'a': '1', 'b': 'x'}"""
    return dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)


def make_source(path, blocks):
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(blocks):
            b = block(i)
            h.update(b)
            f.write(b)
    return h.hexdigest()


def read_full(fd, n, what):
    data = b""
    while len(data) < n:
        try:
            chunk = os.read(fd, n - len(data))
        except OSError as e:
            fail("%s: read: %s" % (what, e))
        if not chunk:
            fail("%s: early EOF after %d bytes" % (what, len(data)))
        data += chunk
    return data


def io_ok(what, fn, *args):
    """fn(*args), failing the scenario with the errno the application saw."""
    try:
        return fn(*args)
    except OSError as e:
        fail("%s: %s" % (what, e))


# ---------------------------------------------------------------- scenarios

def read_scenario(sh, mnt, src):
    """Stream one file through one fd; 3 kills while reads are in flight."""
    blocks = SIZE_MIB
    want = make_source(os.path.join(src, "stream.bin"), blocks)
    kills = [scale(k, 256, blocks) for k in (40, 120, 200)]
    fd = io_ok("open", os.open, os.path.join(mnt, "stream.bin"), os.O_RDONLY)
    h = hashlib.sha256()
    stall = 0.0
    for i in range(blocks):
        if i in kills:
            sh.kill_proxy()
        sh.poll()
        t0 = time.time()
        data = read_full(fd, MIB, "block %d" % i)
        stall = max(stall, time.time() - t0)
        if data != block(i):
            fail("block %d read through the fd differs from the source" % i)
        h.update(data)
    if io_ok("read at EOF", os.read, fd, 1):
        fail("data past the end of the file")
    sh.settle()
    os.close(fd)
    if h.hexdigest() != want:
        fail("sha256 of what was read %s != source %s" % (h.hexdigest(), want))
    print("read %d MiB, sha256 matches the source; longest read %.2f s"
          % (blocks, stall))


def write_scenario(sh, mnt, src):
    """Write through one fd while the proxy dies; check the engine's storage."""
    blocks = SIZE_MIB
    kills = [scale(k, 256, blocks) for k in (30, 110, 230)]
    name = "written.bin"
    fd = io_ok("create", os.open, os.path.join(mnt, name),
               os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stall = 0.0
    for i in range(blocks):
        if i in kills:
            sh.kill_proxy()
        sh.poll()
        data = block(i)
        off = 0
        t0 = time.time()
        while off < MIB:
            off += io_ok("write of block %d" % i, os.write, fd, data[off:])
        stall = max(stall, time.time() - t0)
    sh.settle()
    io_ok("close after the writes", os.close, fd)
    # every byte on the engine's own storage, right after close
    got = hashlib.sha256()
    with open(os.path.join(src, name), "rb") as f:
        for i in range(blocks):
            data = f.read(MIB)
            got.update(data)
            if data != block(i):
                fail("block %d of %s on the engine's storage differs (%d bytes there)"
                     % (i, name, len(data)))
        if f.read(1):
            fail("%s on the engine's storage is longer than %d MiB" % (name, blocks))
    print("wrote %d MiB through one fd; the engine's storage holds every byte "
          "(sha256 %s); longest write %.2f s" % (blocks, got.hexdigest()[:16], stall))


SYS_getdents64 = 217            # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


def getdents(fd, size=4096):
    """One getdents64 call: the names it returned (without . and ..)."""
    buf = ctypes.create_string_buffer(size)
    n = _libc.syscall(SYS_getdents64, fd, buf, size)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    names, off, raw = [], 0, buf.raw[:n]
    while off < n:
        reclen = struct.unpack_from("H", raw, off + 16)[0]
        name = raw[off + 19:off + reclen].split(b"\0", 1)[0].decode()
        if name not in (".", ".."):
            names.append(name)
        off += reclen
    return names


def readdir_scenario(sh, mnt, src):
    """List through one directory fd in pieces; kill between pieces."""
    n = NFILES
    d = os.path.join(src, "many")
    os.mkdir(d)
    for i in range(n):
        open(os.path.join(d, "f%05d" % i), "w").close()
    kills = [scale(k, 3000, n) for k in (700, 1500, 2300)]
    fd = io_ok("open of the directory", os.open, os.path.join(mnt, "many"),
               os.O_RDONLY | os.O_DIRECTORY)
    seen, calls = [], 0
    while True:
        if kills and len(seen) >= kills[0]:
            kills.pop(0)
            sh.kill_and_wait()
        try:
            got = getdents(fd)
        except OSError as e:
            fail("getdents64 after %d names: %s" % (len(seen), e))
        calls += 1
        if not got:
            break
        for name in got[::10]:      # lookups through the mount too
            io_ok("lstat of " + name, os.lstat, os.path.join(mnt, "many", name))
        seen += got
    os.close(fd)
    if kills:
        fail("the listing ended (%d names) before kill at %d" % (len(seen), kills[0]))
    want = {"f%05d" % i for i in range(n)}
    dups = sorted({x for x in seen if seen.count(x) > 1}) if len(seen) != len(set(seen)) else []
    missing = sorted(want - set(seen))
    extra = sorted(set(seen) - want)
    if dups or missing or extra:
        fail("listing: %d names in %d getdents64 calls; %d duplicated %s, "
             "%d missing %s, %d unexpected %s"
             % (len(seen), calls, len(dups), dups[:5], len(missing), missing[:5],
                len(extra), extra[:5]))
    print("listed %d names exactly once in %d getdents64 calls" % (n, calls))


def silly_left(d):
    return [x for x in os.listdir(d) if x.startswith(".lazarusfs-silly")]


def unlink_scenario(sh, mnt, src):
    path = os.path.join(mnt, "doomed.bin")
    a, b, c = b"A" * 10000, b"B" * 5000, b"C" * 3000
    fd = io_ok("create", os.open, path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    io_ok("write", os.write, fd, a)
    io_ok("unlink", os.unlink, path)
    if os.path.exists(path):
        fail("the unlinked file is still visible")
    if silly_left(mnt):
        fail("a silly name is visible in the mount's listing")
    sh.kill_and_wait()
    if io_ok("pread after kill 1", os.pread, fd, 10000, 0) != a:
        fail("reading the unlinked fd after kill 1")
    io_ok("pwrite after kill 1", os.pwrite, fd, b, 10000)
    io_ok("fsync after kill 1", os.fsync, fd)
    if io_ok("pread", os.pread, fd, 15000, 0) != a + b:
        fail("read back after a write to the unlinked fd")
    sh.kill_and_wait()
    if io_ok("fstat after kill 2", os.fstat, fd).st_size != 15000:
        fail("size of the unlinked fd after kill 2: %d" % os.fstat(fd).st_size)
    io_ok("pwrite after kill 2", os.pwrite, fd, c, 15000)
    sh.kill_and_wait()
    if io_ok("pread after kill 3", os.pread, fd, 20000, 0) != a + b + c:
        fail("reading the unlinked fd after kill 3")
    io_ok("close", os.close, fd)
    deadline = time.time() + 10
    while silly_left(src) and time.time() < deadline:  # release is asynchronous
        time.sleep(0.1)
    if silly_left(src) or os.path.exists(os.path.join(src, "doomed.bin")):
        fail("left on the engine's storage after close: %s" % silly_left(src))
    print("unlinked-open file read and written across 3 kills; nothing left behind")


def kernel_lock_pids(path):
    """pids with a POSIX lock on path's inode in /proc/locks (kernel-local)."""
    st = os.stat(path)
    ident = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    with open("/proc/locks") as f:
        for line in f:
            w = line.split()
            if w[1] == "POSIX" and w[5] == ident:
                pids.append(int(w[4]))
    return pids


def lock_scenario(sh, mnt, src):
    path = os.path.join(mnt, "locked.bin")
    fd = io_ok("create", os.open, path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    io_ok("write", os.pwrite, fd, b"L" * 4096, 0)
    io_ok("F_SETLK", fcntl.lockf, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    me = "locked-by %d" % os.getpid()
    local = os.getpid() in kernel_lock_pids(path)
    print("POSIX locks are %s" % ("kept by the kernel (the lock is in /proc/locks)"
                                  if local else "passed to lazarusfs (not in /proc/locks)"))
    probe = sh.ask("probe", path)[3:]
    if probe != me:
        fail("before any kill another process sees %r, want %r" % (probe, me))
    for k in range(1, 4):
        sh.kill_and_wait()
        probe = sh.ask("probe", path)[3:]
        if probe != me:
            fail("after kill %d another process sees %r, want %r" % (k, probe, me))
        if local and os.getpid() not in kernel_lock_pids(path):
            fail("after kill %d the lock is gone from /proc/locks" % k)
        io_ok("pwrite under the lock after kill %d" % k, os.pwrite, fd, b"%d" % k, k)
        if io_ok("pread", os.pread, fd, 4, 0) != b"L" + b"123"[:k] + b"L" * (3 - k):
            fail("read back under the lock after kill %d" % k)
    io_ok("unlock", fcntl.lockf, fd, fcntl.LOCK_UN)
    probe = sh.ask("probe", path)[3:]
    if probe != "free":
        fail("after unlock another process sees %r, want 'free'" % probe)
    os.close(fd)
    print("the lock held across 3 kills (another process saw it each time), then released")


PROBE_FAIL = 3


def probe(path):
    """Print who holds a write lock on path: 'locked-by PID' or 'free'
    (then take and drop it, to prove it is really free)."""
    fd = os.open(path, os.O_RDWR)
    lk = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    got = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, lk))
    if got[0] == fcntl.F_UNLCK:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            print("F_GETLK says free but F_SETLK fails: %s" % e)
            sys.exit(PROBE_FAIL)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        print("free")
    else:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("F_GETLK names pid %d but F_SETLK succeeds" % got[4])
            sys.exit(PROBE_FAIL)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        print("locked-by %d" % got[4])
    os.close(fd)


def engine_scenario(sh, mnt, src):
    """A proxy kill adopts the engine: same pid, alive, its mount kept.
    The second kill is SIGABRT (an abort; not SIGSEGV: under ASan, which
    tests/run uses, a SEGV is reported as a sanitizer error)."""
    path = os.path.join(mnt, "adopt.bin")
    fd = io_ok("create", os.open, path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    io_ok("write", os.pwrite, fd, b"E" * 4096, 0)
    s0 = sh.status()
    if s0.get("state") != "running" or s0.get("pid", "0") == "0":
        fail("the engine is not running after the first write: %s" % s0)
    epid = s0["pid"]
    for k, sig in ((1, "KILL"), (2, "ABRT"), (3, "KILL")):
        t = sh.kill_and_wait(sig)
        s = sh.status()
        if s.get("pid") != epid:
            fail("after kill %d the engine pid is %s, was %s (restarted, not adopted)"
                 % (k, s.get("pid"), epid))
        if not os.path.exists("/proc/%s" % epid):
            fail("after kill %d the engine %s is gone" % (k, epid))
        if s.get("state") != "running":
            fail("after kill %d the engine state is %s" % (k, s.get("state")))
        if s.get("holder_pid") != s0.get("holder_pid"):
            fail("after kill %d holder_pid is %s, was %s"
                 % (k, s.get("holder_pid"), s0.get("holder_pid")))
        if s.get("backend") and not any(l.split()[1] == s["backend"]
                                        for l in open("/proc/mounts")):
            fail("after kill %d the engine's backend %s is no longer mounted"
                 % (k, s["backend"]))
        io_ok("pwrite after kill %d" % k, os.pwrite, fd, b"%d" % k, 4096 + k)
        print("kill %d: engine %s adopted (took %s ms)" % (k, epid, t.get("ms")))
    if io_ok("pread", os.pread, fd, 4100, 0) != b"E" * 4096 + b"\x00123":
        fail("read back through the fd after 3 kills")
    os.close(fd)
    s = sh.status()
    d = {k: int(s.get(k, "0")) - int(s0.get(k, "0"))
         for k in ("proxy_restarts", "restarts", "recoveries", "proxy_upgrades")}
    print("after 3 kills: proxy_restarts +%(proxy_restarts)d, engine restarts "
          "+%(restarts)d, recoveries +%(recoveries)d, proxy_upgrades +%(proxy_upgrades)d" % d)
    if d["proxy_restarts"] != 3:
        fail("proxy_restarts went up by %d for 3 kills" % d["proxy_restarts"])
    if d["restarts"] != 0:
        fail("the engine was restarted %d times by proxy kills" % d["restarts"])
    if d["proxy_upgrades"] != 0:
        fail("proxy_upgrades went up by %d (kills are not upgrades)" % d["proxy_upgrades"])


META_THREADS = 4
META_ITERS = int(os.environ.get("TKO_META_ITERS", "250"))
KILLS_SENT = [0]                # for the errors: how many kills before them


def meta_ops(root, t, count, errors):
    """Thread t's non-idempotent operations under root/t<t>; each failure
    is recorded as (op, path, errno name, kills sent before it)."""
    base = os.path.join(root, "t%d" % t)

    def op(name, fn, *args):
        try:
            r = fn(*args)
        except OSError as e:
            errors.append((name, args[0], errno.errorcode.get(e.errno, e.errno),
                           "after %d kills" % KILLS_SENT[0]))
            r = None
        count[t] += 1
        return r

    op("mkdir", os.mkdir, base)
    for i in range(META_ITERS):
        f = os.path.join(base, "f%03d" % i)
        d = os.path.join(base, "d%03d" % i)
        fd = op("create-excl", os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        if fd is not None:
            op("write", os.write, fd, b"%d-%d" % (t, i))
            op("close", os.close, fd)
        op("mkdir", os.mkdir, d)
        op("rename", os.rename, f, os.path.join(d, "g"))
        if i % 2 == 0:
            op("unlink", os.unlink, os.path.join(d, "g"))
            # rmdir of a directory that never held a file: d may still
            # hold g's silly name until the kernel's RELEASE of g arrives
            x = os.path.join(base, "x%03d" % i)
            op("mkdir", os.mkdir, x)
            op("rmdir", os.rmdir, x)
        else:
            if i % 7 == 0:
                op("link", os.link, os.path.join(d, "g"), os.path.join(base, "h%03d" % i))
            if i % 3 == 0:
                op("rename-dir", os.rename, d, os.path.join(base, "e%03d" % i))
        if i % 5 == 0:
            op("symlink", os.symlink, "d%03d/g" % i, os.path.join(base, "s%03d" % i))


def meta_run(root):
    count = [0] * META_THREADS
    errors = []
    th = [threading.Thread(target=meta_ops, args=(root, t, count, errors))
          for t in range(META_THREADS)]
    for x in th:
        x.start()
    return th, count, errors


def silly_names(top):
    return [os.path.join(d, n) for d, _, files in os.walk(top)
            for n in files if n.startswith(".lazarusfs-silly")]


def tree(root, contents=True):
    """{relative path: file contents (or 'file'), 'dir', or '-> target'}"""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            elif not contents:
                out[rel] = "file"
            else:
                with open(p, "rb") as f:
                    out[rel] = f.read()
    return out


def tree_diff(a, b):
    keys = sorted(set(a) | set(b))
    return ["%s: %r vs %r" % (k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def meta_scenario(sh, mnt, src):
    ref = os.environ["TKO_REF"]     # a local directory for the reference run
    th, count, errors = meta_run(ref)
    for x in th:
        x.join()
    if errors:
        fail("the reference run on local disk had errors: %s" % errors[:5])
    want = tree(ref)
    total = sum(count)
    root = os.path.join(mnt, "meta")
    io_ok("mkdir", os.mkdir, root)
    th, count, errors = meta_run(root)
    for k in (1, 2):            # at 1/5 and 2/5: a takeover may take 0.5 s
        while sum(count) < total * k // 5 and any(x.is_alive() for x in th):
            time.sleep(0.001)
        if not any(x.is_alive() for x in th):
            fail("the operations ended before kill %d (%d of %d)" % (k, sum(count), total))
        at = sum(count)
        KILLS_SENT[0] = k
        sh.kill_and_wait()          # the threads go on while it dies
        print("kill %d: after %d operations, %d done when the takeover was seen"
              % (k, at, sum(count)))
    for x in th:
        x.join()
    if errors:
        fail("%d operations failed across the kills (a duplicate execution "
             "answers EEXIST or ENOENT): %s" % (len(errors), errors[:8]))
    deadline = time.time() + 10     # releases are asynchronous
    while silly_names(os.path.join(src, "meta")) and time.time() < deadline:
        time.sleep(0.1)
    for where, top in (("the mount", root), ("the engine's storage", os.path.join(src, "meta"))):
        d = tree_diff(tree(top), want)
        if d:
            fail("%s differs from the reference run in %d entries: %s" % (where, len(d), d[:8]))
    print("%d operations from %d threads across 2 kills: every call succeeded; "
          "the mount and the engine's storage equal the reference tree (%d entries)"
          % (total, META_THREADS, len(want)))


# Case 7's deterministic part: 7 calls at once, each in a directory of its
# own (the kernel serializes calls on one directory), on an engine whose
# answers to these calls come 1 s late (strace delays the syscall's return
# in the engine for the paths LATE_PATHS only), and the proxy killed 0.3 s
# in.  The proxy's threads wait
# for the engine's answers (the kernel waits for a FUSE request the
# engine has read) and die without answering the application, so the
# kernel resends each call to the next proxy, which finds it done.
LATE_SETUP = {"op2/from": b"F", "op3/victim": b"V", "op4/empty": None,
              "op5/target": b"T"}
LATE_PATHS = ["op0/new", "op1/dir", "op2/from", "op2/to", "op2/back", "op3/victim",
              "op4/empty", "op5/target", "op5/hard", "op6/sym", "op6/sym2"]


def late_rounds(root):
    def p(rel):
        return os.path.join(root, rel)

    def create(rel):
        os.close(os.open(p(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    return [
        [("create-excl", create, "op0/new"),
         ("mkdir", lambda r: os.mkdir(p(r)), "op1/dir"),
         ("rename", lambda r: os.rename(p("op2/from"), p(r)), "op2/to"),
         ("unlink", lambda r: os.unlink(p(r)), "op3/victim"),
         ("rmdir", lambda r: os.rmdir(p(r)), "op4/empty"),
         ("link", lambda r: os.link(p("op5/target"), p(r)), "op5/hard"),
         ("symlink", lambda r: os.symlink("target", p(r)), "op6/sym")],
        [("unlink", lambda r: os.unlink(p(r)), "op0/new"),
         ("rmdir", lambda r: os.rmdir(p(r)), "op1/dir"),
         ("rename", lambda r: os.rename(p("op2/to"), p(r)), "op2/back"),
         ("create-excl", create, "op3/victim"),
         ("mkdir", lambda r: os.mkdir(p(r)), "op4/empty"),
         ("unlink", lambda r: os.unlink(p(r)), "op5/target"),
         ("rename", lambda r: os.rename(p("op6/sym"), p(r)), "op6/sym2")]]


def late_setup(root):
    for i in range(7):
        os.makedirs(os.path.join(root, "op%d" % i))
    for rel, data in LATE_SETUP.items():
        if data is None:
            os.mkdir(os.path.join(root, rel))
        else:
            with open(os.path.join(root, rel), "wb") as f:
                f.write(data)


def late_scenario(sh, mnt, src):
    ref = os.environ["TKO_REF"]
    late_setup(ref)
    for rnd in late_rounds(ref):
        for _, fn, rel in rnd:
            fn(rel)
    late_setup(src)             # behind the mount's back: no call is slow
    errors = []
    for k, rnd in enumerate(late_rounds(mnt), 1):
        done = {}

        def run(name, fn, rel):
            try:
                fn(rel)
                done[rel] = ("ok", time.time())
            except OSError as e:
                done[rel] = (errno.errorcode.get(e.errno, e.errno), time.time())
        th = [threading.Thread(target=run, args=x) for x in rnd]
        for x in th:
            x.start()
        time.sleep(0.3)
        t_kill = time.time()
        sh.kill_and_wait()
        for x in th:
            x.join()
        early = [rel for _, _, rel in rnd if done[rel][1] < t_kill]
        if early:
            fail("round %d: %s returned before the kill: the engine did not answer late"
                 % (k, early))
        errors += ["%s %s: %s" % (name, rel, done[rel][0])
                   for name, _, rel in rnd if done[rel][0] != "ok"]
        print("round %d: 7 calls in flight at the kill: %s" % (
            k, ", ".join("%s %s" % (name, done[rel][0]) for name, _, rel in rnd)))
    if errors:
        fail("calls in flight at a kill failed (run twice?): %s" % "; ".join(errors))
    # (no file opened through the mount: that would be answered late too)
    for where, got, want in (("the mount", tree(mnt, False), tree(ref, False)),
                             ("the engine's storage", tree(src), tree(ref))):
        d = tree_diff(got, want)
        if d:
            fail("%s differs from the reference run in %d entries: %s" % (where, len(d), d[:8]))
    print("14 calls carried out by the engine but answered after the proxy's death: "
          "each succeeded once; the mount and the engine's storage equal the reference")


UPGRADES = 20   # the figure: 20 in a row under a verifying reader


def upgrade_scenario(sh, mnt, src):
    """Read with verification (O_DIRECT, so each read reaches the proxy)
    while the shell upgrades the proxy UPGRADES times."""
    blocks = min(SIZE_MIB, 64)
    make_source(os.path.join(src, "upg.bin"), blocks)
    want = [block(i) for i in range(blocks)]
    fd = io_ok("open", os.open, os.path.join(mnt, "upg.bin"), os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MIB)
    s0 = sh.status()
    sh.send("upgrade", str(UPGRADES))
    done, passes, reads, stall = None, 0, 0, 0.0
    while True:
        for i in range(blocks):
            t0 = time.time()
            got = io_ok("pread of block %d in pass %d" % (i, passes + 1),
                        os.preadv, fd, [buf], i * MIB)
            stall = max(stall, time.time() - t0)
            reads += 1
            if got != MIB or buf[:] != want[i]:
                fail("block %d in pass %d: %d bytes, %s" % (
                    i, passes + 1, got, "differ" if got == MIB else "short"))
            if done is None:
                done = sh.reply(0)
        passes += 1
        if done is not None:
            break
    os.close(fd)
    print("upgrades: %s" % done)
    s = sh.status()
    d = {k: int(s.get(k, "0")) - int(s0.get(k, "0"))
         for k in ("proxy_upgrades", "proxy_restarts", "restarts")}
    print("%d verified reads (%d passes over %d MiB) across %d upgrades, 0 errors; "
          "longest read %.2f s; proxy_upgrades +%d, proxy_restarts +%d, engine restarts +%d"
          % (reads, passes, blocks, UPGRADES, stall, d["proxy_upgrades"], d["proxy_restarts"], d["restarts"]))
    if d["proxy_upgrades"] != UPGRADES:
        fail("proxy_upgrades went up by %d for %d upgrades" % (d["proxy_upgrades"], UPGRADES))
    if d["proxy_restarts"] != 0:
        fail("proxy_restarts went up by %d during upgrades" % d["proxy_restarts"])
    if s.get("pid") != s0.get("pid") or d["restarts"]:
        fail("the engine changed across upgrades: pid %s -> %s" % (s0.get("pid"), s.get("pid")))


SCENARIOS = {"read": read_scenario, "write": write_scenario,
             "readdir": readdir_scenario, "unlink": unlink_scenario,
             "lock": lock_scenario, "engine": engine_scenario,
             "meta": meta_scenario, "late": late_scenario,
             "upgrade": upgrade_scenario}

if __name__ == "__main__":
    if sys.argv[1] == "probe":
        probe(sys.argv[2])
        sys.exit(0)
    if sys.argv[1] == "late-paths":
        print(" ".join(LATE_PATHS))
        sys.exit(0)
    scen, mnt, src = sys.argv[1:4]
    SCENARIOS[scen](Shell(), mnt, src)
