"""Randomized crash-differential test of lazarusfs's per-file journal.
Run with /usr/bin/python3 (used by test_crashdiff.sh).

  crashdiff.py --mnt MNT --src SRC --ref REF --state STATE --engine NAME
               [--seed N] [--ops N] [--kills N] [--no-fixed] [--no-random]
               [--slow-rename SECONDS] [--skip KINDS] [--hardlinks] [--verbose]

MNT is a lazarusfs mount whose engine keeps its files in the local
directory SRC (bindfs, mergerfs and bufengine over SRC, sshfs against a
local sshd serving SRC); REF is an empty local directory, the model.
Every operation is applied to MNT and to REF with the same syscall, and
its results (value or errno) must agree.  At random points the engine is
killed with kill -9 of its process group; after each recovery every file
is compared byte for byte and by size with the model, through each open
descriptor (pread, fstat) and through a fresh open (O_DIRECT too, where
the engine takes it), and after a kill that no operation raced with, the
engine's own storage (SRC) as well: the replay after a restart ends with
an fsync, so it must hold the model exactly.  At the end, with every
descriptor closed, SRC must equal REF.

The rule under test (issue 12): after any number of engine crashes a file
holds exactly what a local file system would hold after the same sequence
of acknowledged operations, across every descriptor and path of the file.

The kills come from a killer process forked before any test file is
opened, taking orders over a pipe: a process that inherits the test's
descriptors flushes them when it closes them (the kernel sends FLUSH for
every close), which empties the journal and would hide exactly the bugs
this test is for.  For the same reason this process never runs a
subprocess while its files are open.

Kinds of kills: "sync" (between two operations, the test waits for the
recovery), "async" (after a random delay while operations go on, so that
some of them meet the dead engine and are retried) and "double" (the new
engine is killed again as soon as lazarusfs logged that it mounted, so
mostly while lazarusfs replays the journals and reopens the handles).

Operations: pwrite, pread (checked), ftruncate, truncate by path,
fallocate in each mode the engine supports (probed through MNT),
copy_file_range, fsync, fdatasync, close and reopen (O_RDWR, O_WRONLY,
O_RDONLY, sometimes O_CREAT or O_TRUNC), rename of one file over another.
Hard links are left out (--hardlinks adds them): the names of a hard-linked
file are not one node in lazarusfs yet.

Fixed cases run first: issue 12's scenarios (two descriptors, the newer
data fsynced, or only closed, through B while A stays open with older
unflushed data at the same offset; a write then a hole, a zeroed range, a
mode-0 extension or a keep-size preallocation through one descriptor),
and a truncate at open (O_TRUNC) after another descriptor's unflushed
write.  With --slow-rename (an engine that answers renames late) only the
cases of a rename in flight at the kill run instead.

--skip leaves out kinds of operations, to narrow a difference down; the
test itself always runs them all.

On a difference it prints the first differing offset, both sizes, the seed
and the last 20 operations, and exits 1.  Figures go to stdout as
"<engine>: N operations, K kills (...), R replays seen".
"""
import argparse
import collections
import ctypes
import errno
import mmap
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

KEEP_SIZE = 0x01
PUNCH_HOLE = 0x02
ZERO_RANGE = 0x10
MODES = [(0, "mode0"), (KEEP_SIZE, "keep_size"),
         (PUNCH_HOLE | KEEP_SIZE, "punch_hole"), (ZERO_RANGE, "zero_range"),
         (ZERO_RANGE | KEEP_SIZE, "zero_range_keep_size")]
MODE_NAME = dict(MODES)
FUSE_HIDDEN = ".fuse_hidden"
KIB = 1024
MAXOFF = 320 * KIB              # offsets and sizes stay below this
NAMES = ["f0", "f1", "f2"]
MAXDESC = 9
RECOVERY_TIMEOUT = 60

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def fallocate(fd, mode, off, length):
    """fallocate(2) itself (os.posix_fallocate is mode 0 only, and glibc
    emulates it by writing where the file system lacks it)."""
    if _libc.fallocate(fd, mode, off, length):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Fail(Exception):
    pass


# ------------------------------------------------------------- the killer

def killer_main(orders, answers, ctl, state, mnt):
    """The killer process: holds none of the test's descriptors.  Orders,
    one a line:
      status             -> "status ENGINE_LOG" (the path)
      kill KIND DELAY    -> kills the running engine's process group.
                            KIND sync: at once, answers "killed PID";
                            async: answers "armed" at once and kills after
                            DELAY seconds; double: kills, then kills the
                            next engine as soon as it has mounted (during
                            its replay, if it comes in time) and answers
                            "killed PID PID".
      recover            -> waits until the engine runs again with a pid
                            it did not kill and a new recovery counted;
                            "recovered PID SECONDS HIT" (HIT 1: lazarusfs
                            logged "engine lost again": a kill landed
                            while it replayed or reopened)
    """
    rf = os.fdopen(orders, "r")
    wf = os.fdopen(answers, "w", buffering=1)
    killed, rec0, t_kill, log, log_end = set(), 0, 0.0, None, 0

    def status():
        p = subprocess.run([ctl, "--state-dir", state, "status", mnt],
                           capture_output=True, text=True)
        return dict(l.split(": ", 1) for l in p.stdout.splitlines() if ": " in l)

    def running(timeout):
        end = time.time() + timeout
        while time.time() < end:
            st = status()
            if st.get("state") == "running" and st.get("pid", "0") != "0":
                return st
            time.sleep(0.02)
        return None

    def wait_mounted(log, start, killed):
        """The pid of the first engine not in `killed` that the log says
        mounted after offset `start`."""
        end = time.time() + RECOVERY_TIMEOUT
        while time.time() < end:
            with open(log, "rb") as f:
                f.seek(start)
                for l in f.read().decode(errors="replace").splitlines():
                    m = re.search(r"engine pid (\d+) mounted at", l)
                    if m and int(m.group(1)) not in killed:
                        return int(m.group(1))
            time.sleep(0.001)
        return 0

    def lost_again(log, start):
        with open(log, "rb") as f:
            f.seek(start)
            return int(b"engine lost again" in f.read())

    def killpg(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    for line in rf:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "status":
            wf.write("status %s\n" % status().get("engine_log", "-"))
        elif cmd[0] == "kill":
            kind, delay = cmd[1], float(cmd[2])
            st = running(RECOVERY_TIMEOUT)
            if not st:
                wf.write("error engine not running: %s\n" % status())
                continue
            pid, rec0 = int(st["pid"]), int(st["recoveries"])
            log = os.path.join(os.path.dirname(st["engine_log"]), "lazarusfs.log")
            log_end = os.path.getsize(log)
            if kind == "async":
                wf.write("armed\n")
                time.sleep(delay)
            killpg(pid)
            t_kill = time.time()
            killed.add(pid)
            pids = [pid]
            if kind == "double":
                # kill the next engine as soon as lazarusfs saw it mount:
                # it then replays the journals and reopens the handles
                npid = wait_mounted(log, log_end, killed)
                if npid:
                    killpg(npid)
                    killed.add(npid)
                    pids.append(npid)
            if kind != "async":
                wf.write("killed %s\n" % " ".join(map(str, pids)))
        elif cmd[0] == "recover":
            end = time.time() + RECOVERY_TIMEOUT
            st = {}
            while time.time() < end:
                st = status()
                if (st.get("state") == "running" and st.get("pid", "0") != "0" and
                        int(st["pid"]) not in killed and int(st["recoveries"]) > rec0):
                    break
                time.sleep(0.02)
            else:
                wf.write("error no recovery within %ds: %s\n" % (RECOVERY_TIMEOUT, st))
                continue
            wf.write("recovered %s %.3f %d\n" % (st["pid"], time.time() - t_kill,
                                                  lost_again(log, log_end)))
        elif cmd[0] == "quit":
            break
    os._exit(0)


class Killer:
    def __init__(self, ctl, state, mnt):
        o_r, o_w = os.pipe()
        a_r, a_w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(o_w)
            os.close(a_r)
            try:
                killer_main(o_r, a_w, ctl, state, mnt)
            finally:
                os._exit(1)
        os.close(o_r)
        os.close(a_w)
        self.pid = pid
        self.w = os.fdopen(o_w, "w", buffering=1)
        self.r = os.fdopen(a_r, "r")

    def ask(self, line, want):
        self.w.write(line + "\n")
        ans = self.r.readline().split()
        if not ans or ans[0] != want:
            raise Fail("killer: %s: %s" % (line, " ".join(ans) or "no answer"))
        return ans[1:]

    def close(self):
        self.w.write("quit\n")
        self.w.close()
        os.waitpid(self.pid, 0)


# ------------------------------------------------------------ the world

def read_all(fd):
    """The whole file through fd (pread from 0 to EOF)."""
    out = []
    off = 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            return b"".join(out)
        out.append(b)
        off += len(b)


def read_direct(path):
    """The whole file through a fresh O_DIRECT descriptor (aligned buffer)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 1 << 20)
        out, off = [], 0
        while True:
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                return b"".join(out)
            out.append(buf[:n])
            off += n
    finally:
        os.close(fd)


def read_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_all(fd), os.fstat(fd).st_size
    finally:
        os.close(fd)


def first_diff(a, b):
    n = min(len(a), len(b))
    lo, hi = 0, n
    if a[:n] == b[:n]:
        return n if len(a) != len(b) else -1
    # the first differing byte, by bisection on equal prefixes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class Desc:
    def __init__(self, label, name, flags, mfd, rfd):
        self.label, self.name, self.flags = label, name, flags
        self.mfd, self.rfd = mfd, rfd

    def readable(self):
        return self.flags & os.O_ACCMODE != os.O_WRONLY

    def writable(self):
        return self.flags & os.O_ACCMODE != os.O_RDONLY

    def __str__(self):
        acc = {os.O_RDONLY: "RO", os.O_WRONLY: "WO", os.O_RDWR: "RW"}[self.flags & os.O_ACCMODE]
        return "%s(%s,%s)" % (self.label, self.name, acc)


class World:
    def __init__(self, a):
        self.a = a
        self.mnt, self.ref, self.src = a.mnt, a.ref, a.src
        self.descs = []
        self.seq = 0
        self.history = collections.deque(maxlen=20)
        self.ops = 0
        self.kills = collections.Counter()
        self.recovery_max = 0.0
        self.hits = 0
        self.modes = []
        self.cfr = False
        self.direct = False
        self.seed = a.seed

    # --- bookkeeping
    def note(self, s):
        self.history.append("#%d %s" % (self.ops, s))
        if self.a.verbose:
            print("  #%d %s" % (self.ops, s), flush=True)

    def fail(self, what):
        lines = ["MISMATCH on %s: %s" % (self.a.engine, what),
                 "seed %d; last %d operations:" % (self.seed, len(self.history))]
        lines += ["  " + h for h in self.history]
        raise Fail("\n".join(lines))

    def both(self, desc, fm, fr):
        """Run fm on the mount and fr on the model; results must agree."""
        res = []
        for f in (fm, fr):
            try:
                res.append(("ok", f()))
            except OSError as e:
                res.append(("err", errno.errorcode.get(e.errno, e.errno)))
        self.ops += 1
        self.note("%s -> %s" % (desc, res[0][1] if res[0] == res[1] else res))
        if res[0] != res[1]:
            try:        # a hint for the report: does it fail again?
                again = ("ok", fm())
            except OSError as e:
                again = ("err", errno.errorcode.get(e.errno, e.errno))
            self.fail("%s: lazarusfs %s (once more: %s), model %s"
                      % (desc, res[0], again, res[1]))
        return res[0]

    def compare(self, where, got, want, size_got=None, size_want=None):
        size_got = len(got) if size_got is None else size_got
        size_want = len(want) if size_want is None else size_want
        if got == want and size_got == size_want:
            return
        off = first_diff(got, want)
        self.fail("%s: first difference at offset %d; size %d (read %d bytes), model %d"
                  % (where, off, size_got, len(got), size_want))

    # --- operations (each on the mount and on the model)
    def open(self, name, flags, label=None):
        if label is None:
            self.seq += 1
            label = "d%d" % self.seq
        mode = 0o644
        fds = []
        r = self.both("open %s %s %s" % (label, name, flags_str(flags)),
                      lambda: fds.append(os.open(os.path.join(self.mnt, name), flags, mode)),
                      lambda: fds.append(os.open(os.path.join(self.ref, name), flags, mode)))
        if r[0] != "ok":
            return None
        d = Desc(label, name, flags, fds[0], fds[1])
        self.descs.append(d)
        return d

    def close(self, d):
        self.descs.remove(d)
        self.both("close %s" % d, lambda: os.close(d.mfd), lambda: os.close(d.rfd))

    def pwrite(self, d, data, off):
        return self.both("pwrite %s off=%d len=%d" % (d, off, len(data)),
                         lambda: os.pwrite(d.mfd, data, off),
                         lambda: os.pwrite(d.rfd, data, off))

    def pread(self, d, n, off):
        got = []
        r = self.both("pread %s off=%d len=%d" % (d, off, n),
                      lambda: got.append(os.pread(d.mfd, n, off)) or len(got[-1]),
                      lambda: got.append(os.pread(d.rfd, n, off)) or len(got[-1]))
        if r[0] == "ok":
            self.compare("pread %s off=%d len=%d" % (d, off, n), got[0], got[1])

    def ftruncate(self, d, size):
        return self.both("ftruncate %s size=%d" % (d, size),
                         lambda: os.ftruncate(d.mfd, size),
                         lambda: os.ftruncate(d.rfd, size))

    def truncate(self, name, size):
        return self.both("truncate path %s size=%d" % (name, size),
                         lambda: os.truncate(os.path.join(self.mnt, name), size),
                         lambda: os.truncate(os.path.join(self.ref, name), size))

    def fallocate(self, d, mode, off, length):
        return self.both("fallocate %s %s off=%d len=%d" % (d, MODE_NAME[mode], off, length),
                         lambda: fallocate(d.mfd, mode, off, length),
                         lambda: fallocate(d.rfd, mode, off, length))

    def copy(self, din, dout, n, off_in, off_out):
        return self.both("copy_file_range %s off=%d -> %s off=%d len=%d"
                         % (din, off_in, dout, off_out, n),
                         lambda: os.copy_file_range(din.mfd, dout.mfd, n, off_in, off_out),
                         lambda: os.copy_file_range(din.rfd, dout.rfd, n, off_in, off_out))

    def sync(self, d, data_only=False):
        f = os.fdatasync if data_only else os.fsync
        return self.both("%s %s" % (f.__name__, d), lambda: f(d.mfd), lambda: f(d.rfd))

    def rename(self, old, new):
        r = self.both("rename %s over %s" % (old, new),
                      lambda: os.rename(os.path.join(self.mnt, old), os.path.join(self.mnt, new)),
                      lambda: os.rename(os.path.join(self.ref, old), os.path.join(self.ref, new)))
        if r[0] == "ok":
            for d in self.descs:
                if d.name == new:
                    d.name = "(was %s)" % new
            for d in self.descs:
                if d.name == old:
                    d.name = new
        return r

    def link(self, old, new):
        return self.both("link %s %s" % (old, new),
                         lambda: os.link(os.path.join(self.mnt, old), os.path.join(self.mnt, new)),
                         lambda: os.link(os.path.join(self.ref, old), os.path.join(self.ref, new)))

    def unlink(self, name):
        return self.both("unlink %s" % name,
                         lambda: os.unlink(os.path.join(self.mnt, name)),
                         lambda: os.unlink(os.path.join(self.ref, name)))

    def names(self):
        return sorted(os.listdir(self.ref))

    # --- kills
    def ask(self, killer, line, want):
        try:
            return killer.ask(line, want)
        except Fail as e:
            self.fail(str(e))

    def kill(self, kind, killer, delay=0.0):
        self.kills[kind] += 1
        if kind == "async":
            self.ask(killer, "kill async %.3f" % delay, "armed")
            self.note("KILL armed, in %.0f ms" % (delay * 1000))
        else:
            pids = self.ask(killer, "kill %s 0" % kind, "killed")
            self.note("KILL %s pid %s" % (kind, " ".join(pids)))

    def recover(self, killer):
        pid, took, hit = self.ask(killer, "recover", "recovered")
        self.recovery_max = max(self.recovery_max, float(took))
        self.hits += int(hit)
        self.note("RECOVERED pid %s in %s s%s" % (pid, took, " (killed during recovery)" if int(hit) else ""))

    # --- checks
    def check(self, storage):
        """Compare every file with the model: by name (fresh open, O_DIRECT
        too), through each descriptor, and on the engine's storage."""
        names = self.names()
        mnames = sorted(os.listdir(self.mnt))
        if mnames != names:
            self.fail("listing of the mount %s, model %s%s" % (mnames, names,
                                                             hidden_hint(mnames, names)))
        for n in names:
            want, wsize = read_path(os.path.join(self.ref, n))
            got, gsize = read_path(os.path.join(self.mnt, n))
            self.compare("%s through a fresh open" % n, got, want, gsize, wsize)
            st = os.stat(os.path.join(self.mnt, n)).st_size
            self.compare("%s: stat" % n, got, want, st, wsize)
            if self.direct:
                self.compare("%s through a fresh O_DIRECT open" % n,
                             read_direct(os.path.join(self.mnt, n)), want)
            if storage:
                got, gsize = read_path(os.path.join(self.src, n))
                self.compare("%s on the engine's storage" % n, got, want, gsize, wsize)
        for d in self.descs:
            wsize = os.fstat(d.rfd).st_size
            want = read_all(d.rfd) if d.readable() else b""
            got = read_all(d.mfd) if d.readable() else b""
            self.compare("%s through its descriptor" % d, got, want, os.fstat(d.mfd).st_size, wsize)
        self.note("check ok%s" % (" (storage too)" if storage else ""))

    def check_storage_final(self):
        names = self.names()
        end = time.time() + 10
        while True:     # release (and a silly file's removal) is asynchronous
            snames = sorted(os.listdir(self.src))
            if snames == names or time.time() > end:
                break
            time.sleep(0.1)
        if snames != names:
            self.fail("engine's storage holds %s, model %s%s" % (snames, names,
                                                               hidden_hint(snames, names)))
        for n in names:
            want, wsize = read_path(os.path.join(self.ref, n))
            got, gsize = read_path(os.path.join(self.src, n))
            self.compare("%s on the engine's storage at the end" % n, got, want, gsize, wsize)


def hidden_hint(got, want):
    extra = set(got) - set(want)
    if extra and all(n.startswith(FUSE_HIDDEN) for n in extra) and set(want) <= set(got):
        return (" (the engine's libfuse hid a file that lazarusfs removed or renamed"
                " over while the engine still had it open, its release not yet"
                " processed, and the kill left the hidden file behind)")
    return ""


def flags_str(flags):
    s = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}[flags & os.O_ACCMODE]
    for f, n in ((os.O_CREAT, "O_CREAT"), (os.O_TRUNC, "O_TRUNC")):
        if flags & f:
            s += "|" + n
    return s


# ------------------------------------------------------------- probing

def probe(w):
    """Which fallocate modes, copy_file_range and O_DIRECT work through the
    mount (lazarusfs passes fallocate to the engine; copy_file_range it does
    itself, by read and journaled write)."""
    p = os.path.join(w.mnt, "probe")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, b"p" * 65536, 0)
        for mode, _ in MODES:
            try:
                fallocate(fd, mode, 4096, 8192 if mode != 0 else 70000)
                w.modes.append(mode)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        g = os.open(p, os.O_RDONLY)
        try:
            w.cfr = os.copy_file_range(g, fd, 4096, 0, 100000) == 4096
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EINVAL):
                raise
        finally:
            os.close(g)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        w.direct = len(read_direct(p)) > 0
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    os.unlink(p)
    print("%s supports: fallocate %s; copy_file_range %s; O_DIRECT %s" %
          (w.a.engine, " ".join(MODE_NAME[m] for m in w.modes) or "none",
           "yes" if w.cfr else "no", "yes" if w.direct else "no"), flush=True)


# --------------------------------------------------------- fixed cases

def expect(w, d, name, want):
    """The file holds `want` through d, a fresh open, O_DIRECT and storage."""
    w.compare("%s through %s" % (name, d), read_all(d.mfd), want, os.fstat(d.mfd).st_size)
    got, size = read_path(os.path.join(w.mnt, name))
    w.compare("%s through a fresh open" % name, got, want, size)
    if w.direct:
        w.compare("%s through a fresh O_DIRECT open" % name,
                  read_direct(os.path.join(w.mnt, name)), want)
    got, size = read_path(os.path.join(w.src, name))
    w.compare("%s on the engine's storage" % name, got, want, size)


def kill_and_expect(w, killer, d, name, want):
    """Kill the engine, wait for the recovery, check `name` (and the rest),
    close d and remove the file."""
    w.kill("sync", killer)
    w.recover(killer)
    expect(w, d, name, want)
    w.check(storage=True)
    w.close(d)
    w.unlink(name)


def fixed_two_fds(w, killer):
    """Issue 12, case 1: B's newer data, fsynced or only closed, survives a
    kill while A, with older unflushed data at the same offset, stays open."""
    for fsync_b in (True, False):
        name = "fixed-two-fds-%s" % ("fsync" if fsync_b else "close")
        w.note("fixed case: %s" % name)
        a = w.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, "A")
        w.pwrite(a, b"O" * 8 * KIB, 0)
        b = w.open(name, os.O_RDWR, "B")
        w.pwrite(b, b"N" * 8 * KIB, 0)
        if fsync_b:
            w.sync(b)
        w.close(b)
        kill_and_expect(w, killer, a, name, b"N" * 8 * KIB)
        print("fixed case ok: A writes O, B writes N, %s, kill: N" %
              ("fsync B, close B" if fsync_b else "close B only"), flush=True)


def fixed_open_trunc(w, killer):
    """A truncate at open (O_TRUNC) is a truncate too: A's older write must
    not come back over it."""
    name = "fixed-open-trunc"
    w.note("fixed case: %s" % name)
    a = w.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, "A")
    w.pwrite(a, b"O" * 8 * KIB, 0)
    b = w.open(name, os.O_WRONLY | os.O_TRUNC, "B")
    w.pwrite(b, b"N" * 4 * KIB, 0)
    w.close(b)
    kill_and_expect(w, killer, a, name, b"N" * 4 * KIB)
    print("fixed case ok: A writes O, B opens with O_TRUNC, writes N, close B, kill: N only",
          flush=True)


def fixed_fallocate(w, killer):
    """Issue 12, case 2: a write, then a hole, a zeroed range or a new size
    through the same descriptor, then a kill."""
    base = b"W" * 64 * KIB
    cases = [
        ("punch_hole", PUNCH_HOLE | KEEP_SIZE, 16 * KIB, 16 * KIB,
         base[:16 * KIB] + bytes(16 * KIB) + base[32 * KIB:]),
        ("zero_range", ZERO_RANGE, 8 * KIB, 16 * KIB + 100,
         base[:8 * KIB] + bytes(16 * KIB + 100) + base[24 * KIB + 100:]),
        ("zero_range_keep_size", ZERO_RANGE | KEEP_SIZE, 60 * KIB, 16 * KIB,
         base[:60 * KIB] + bytes(4 * KIB)),
        ("mode0", 0, 32 * KIB, 96 * KIB, base + bytes(64 * KIB)),
        ("keep_size", KEEP_SIZE, 32 * KIB, 96 * KIB, base),
    ]
    for label, mode, off, length, want in cases:
        if mode not in w.modes:
            print("fixed case skipped: write then fallocate %s: the engine does not support it"
                  % label, flush=True)
            continue
        name = "fixed-fallocate-%s" % label
        w.note("fixed case: %s" % name)
        a = w.open(name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, "A")
        w.pwrite(a, base, 0)
        w.fallocate(a, mode, off, length)
        kill_and_expect(w, killer, a, name, want)
        print("fixed case ok: write, fallocate %s, kill" % label, flush=True)


def fixed_rename_inflight(w, killer, delay):
    """A rename of a file with unflushed writes that the engine has done but
    not yet answered when it dies.  Over a closed file that is one rename;
    over an open one lazarusfs first moves that file aside (a silly rename),
    and the kill lands in either.  Needs an engine whose rename replies come
    `delay` seconds late (--slow-rename)."""
    old, new = "fixed-rename-from", "fixed-rename-to"
    for victim_open, at in ((False, 0.3), (True, 0.3), (True, 1.3)):
        what = "over a%s file, kill in its %s rename" % (
            "n open" if victim_open else " closed",
            "first" if at < 1 else "second")
        w.note("fixed case: rename in flight %s" % what)
        a = w.open(old, os.O_RDWR | os.O_CREAT | os.O_TRUNC, "A")
        w.pwrite(a, b"X" * 8 * KIB, 0)
        v = w.open(new, os.O_RDWR | os.O_CREAT | os.O_TRUNC, "V")
        w.pwrite(v, b"V" * 4 * KIB, 0)
        w.sync(v)
        if not victim_open:
            w.close(v)
            time.sleep(0.2)     # lazarusfs's release comes after close()
        res = []

        def rename():
            try:
                res.append(("ok", os.rename(os.path.join(w.mnt, old), os.path.join(w.mnt, new))))
            except OSError as e:
                res.append(("err", errno.errorcode.get(e.errno, e.errno)))
        t = threading.Thread(target=rename)
        t.start()
        time.sleep(delay * at)          # the rename is done, its reply late
        w.kill("sync", killer)
        t.join()
        os.rename(os.path.join(w.ref, old), os.path.join(w.ref, new))
        w.ops += 1
        w.note("rename %s over %s, in flight at the kill -> %s" % (old, new, res[0]))
        if res[0] != ("ok", None):
            w.fail("rename %s over %s, in flight at the kill: lazarusfs %s, model ok"
                   % (old, new, res[0]))
        a.name = new
        w.recover(killer)
        if victim_open:
            v.name = "(was %s)" % new
            w.close(v)
        expect(w, a, new, b"X" * 8 * KIB)
        w.check(storage=True)
        w.close(a)
        w.unlink(new)
        print("fixed case ok: rename in flight %s" % what, flush=True)


# -------------------------------------------------------- random part

def rand_size(rng):
    r = rng.random()
    if r < 0.35:
        return rng.randint(1, 4096)
    if r < 0.65:
        return rng.choice([4096, 8192, 16384, 32768, 65536])
    if r < 0.9:
        return rng.randint(4096, 65536)
    return rng.randint(65536, 192 * KIB)


def rand_off(rng, limit=MAXOFF - 192 * KIB):
    if rng.random() < 0.5:
        return rng.randrange(0, limit, 4096)
    return rng.randrange(0, limit)


def random_part(w, killer, rng):
    a = w.a
    # the starting descriptors: each file by several kinds of descriptor
    for n in NAMES:
        w.open(n, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    for n, fl in (("f0", os.O_WRONLY), ("f1", os.O_WRONLY), ("f0", os.O_RDONLY),
                  ("f2", os.O_RDONLY), ("f1", os.O_RDWR)):
        w.open(n, fl)
    kill_at = set(rng.sample(range(20, a.ops), a.kills)) if a.kills else set()
    pending = None      # ops left before an armed async kill is waited for
    ops = [("write", 30), ("read", 10), ("ftruncate", 6), ("truncate", 4),
           ("fallocate", 8 if w.modes else 0), ("copy", 6 if w.cfr else 0),
           ("fsync", 2), ("fdatasync", 1), ("reopen", 6), ("rename", 2),
           ("link", 2 if a.hardlinks else 0), ("check", 1)]
    ops = [(k, 0 if k in a.skip else v) for k, v in ops]
    kinds, weights = zip(*ops)
    for i in range(a.ops):
        if pending is not None:
            pending -= 1
            if pending <= 0:
                w.recover(killer)
                w.check(storage=False)
                pending = None
        if i in kill_at:
            if pending is not None:     # finish the last one first
                w.recover(killer)
                w.check(storage=False)
                pending = None
            r = rng.random()
            if r < 0.45:
                w.kill("sync", killer)
                w.recover(killer)
                w.check(storage=True)
            elif r < 0.85:
                w.kill("async", killer, rng.uniform(0, 0.05))
                pending = rng.randint(1, 12)
            else:
                w.kill("double", killer)
                w.recover(killer)
                w.check(storage=True)
        op = rng.choices(kinds, weights)[0]
        wr = [d for d in w.descs if d.writable()]
        rd = [d for d in w.descs if d.readable()]
        names = w.names()
        if op == "write" and wr:
            d = rng.choice(wr)
            w.pwrite(d, rng.randbytes(rand_size(rng)), rand_off(rng))
        elif op == "read" and rd:
            d = rng.choice(rd)
            w.pread(d, rand_size(rng), rand_off(rng, MAXOFF))
        elif op == "ftruncate" and wr:
            w.ftruncate(rng.choice(wr), rand_trunc(rng))
        elif op == "truncate" and names:
            w.truncate(rng.choice(names), rand_trunc(rng))
        elif op == "fallocate" and wr:
            off, length = rand_off(rng, MAXOFF - 64 * KIB), rng.randint(1, 64 * KIB)
            if rng.random() < 0.5:
                off, length = off & ~4095, (length + 4095) & ~4095
            w.fallocate(rng.choice(wr), rng.choice(w.modes), off, length)
        elif op == "copy" and wr and rd:
            din, dout = rng.choice(rd), rng.choice(wr)
            w.copy(din, dout, rand_size(rng), rand_off(rng), rand_off(rng))
        elif op in ("fsync", "fdatasync") and w.descs:
            w.sync(rng.choice(w.descs), op == "fdatasync")
        elif op == "reopen":
            if len(w.descs) >= MAXDESC or (w.descs and rng.random() < 0.5):
                w.close(rng.choice(w.descs))
            n = rng.choice(NAMES)
            fl = rng.choice([os.O_RDWR, os.O_RDWR, os.O_WRONLY, os.O_RDONLY])
            if n not in names:
                fl |= os.O_CREAT
                if fl & os.O_ACCMODE == os.O_RDONLY:
                    fl = os.O_RDWR | os.O_CREAT
            elif fl != os.O_RDONLY and rng.random() < 0.1 and "otrunc" not in a.skip:
                fl |= os.O_TRUNC
            w.open(n, fl)
        elif op == "rename" and names:
            old = rng.choice(names)
            new = rng.choice([n for n in NAMES if n != old])
            w.rename(old, new)
        elif op == "link" and names:
            old = rng.choice(names)
            new = "l%d" % rng.randrange(3)
            if new in names:
                w.unlink(new)
            w.link(old, new)
        elif op == "check":
            w.check(storage=False)
        if not any(d.writable() for d in w.descs):
            n = rng.choice(NAMES)
            w.open(n, os.O_RDWR | (0 if n in w.names() else os.O_CREAT))
    if pending is not None:
        w.recover(killer)
    w.check(storage=False)


def rand_trunc(rng):
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.5:
        return rng.randrange(0, MAXOFF, 4096)
    return rng.randrange(0, MAXOFF)


def count_replays(log):
    try:
        with open(log, errors="replace") as f:
            return sum(1 for l in f if "journaled changes" in l and "replayed " in l)
    except OSError:
        return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnt", required=True)
    p.add_argument("--src", required=True, help="the engine's storage")
    p.add_argument("--ref", required=True, help="an empty local directory: the model")
    p.add_argument("--state", required=True, help="lazarusfs state_dir")
    p.add_argument("--engine", required=True, help="a name for the output")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--ops", type=int, default=2000)
    p.add_argument("--kills", type=int, default=25)
    p.add_argument("--no-fixed", action="store_true")
    p.add_argument("--no-random", action="store_true")
    p.add_argument("--slow-rename", type=float, default=0, metavar="SECONDS",
                   help="the engine answers renames this late: run only the "
                   "fixed case of a rename in flight at the kill")
    p.add_argument("--hardlinks", action="store_true",
                   help="also hard links (not yet one node in lazarusfs)")
    p.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(),
                   help="leave out kinds of operation (comma separated: write, read, "
                   "ftruncate, truncate, fallocate, copy, fsync, fdatasync, reopen, "
                   "rename, otrunc (O_TRUNC at open), check), to find which one a "
                   "difference needs")
    p.add_argument("--verbose", action="store_true", help="print every operation")
    a = p.parse_args()
    ctl = os.path.join(os.environ.get("BUILD_DIR", "."), "lazarusctl")

    # before any test file is opened
    killer = Killer(ctl, a.state, a.mnt)
    w = World(a)
    t0 = time.time()
    try:
        (log,) = killer.ask("status", "status")
        log = os.path.join(os.path.dirname(log), "lazarusfs.log")
        replays0 = count_replays(log)
        probe(w)
        if a.slow_rename:
            fixed_rename_inflight(w, killer, a.slow_rename)
        elif not a.no_fixed:
            fixed_two_fds(w, killer)
            if "otrunc" not in a.skip:
                fixed_open_trunc(w, killer)
            fixed_fallocate(w, killer)
        if not a.no_random and not a.slow_rename:
            random_part(w, killer, random.Random(a.seed))
        for d in list(w.descs):
            w.close(d)
        w.check(storage=False)
        w.check_storage_final()
    except Fail as e:
        print(e, flush=True)
        killer.close()
        return 1
    killer.close()
    kills = sum(w.kills.values())
    print("%s: %d operations, %d kills (%s; %d during recovery), %d replays seen, "
          "longest recovery %.2f s, %.0f s, seed %d" %
          (a.engine, w.ops, kills,
           ", ".join("%d %s" % (v, k) for k, v in sorted(w.kills.items())),
           w.hits, count_replays(log) - replays0, w.recovery_max, time.time() - t0, a.seed),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
