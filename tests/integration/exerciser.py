"""Differential file-system exerciser for lazarusfs.  Run with /usr/bin/python3.

  exerciser.py [options] A B [OPS [SEED]]
  exerciser.py --probe DIR

Runs one seeded random sequence of file operations on tree A (a lazarusfs
mount) and on tree B (a plain local directory that starts as a copy of the
engine's source) and compares, operation by operation, the return value or
errno and the state it leaves: file contents, mode, size, uid/gid, nlink,
explicitly set mtimes, xattrs, symlink targets and directory listings.  Some
operations run as an unprivileged user (--uid/--gid, default 1000, with
supplementary group 1001; saved uid 0), so that the kernel's permission
checks (default_permissions on A) and the owner of what that user creates
are compared too, on A and in the engine's source.  At the end
the whole of A, and the engine's source directory (--src), are compared
with B.  On the first difference it prints the operation's index, the
operation and both results, and exits 1.

What legitimately differs and is never compared: st_ino, st_dev, atime,
ctime, st_blocks, directory sizes, and mtimes that were not set explicitly
with utime (an mtime is compared while B still holds the value last set).
Names starting with .lazarusfs-silly- (files unlinked while open) must never
appear in A; in the engine's source they may exist only while a file is
open, and must be gone once every file is closed.

Some engines lack features a local file system has.  --probe DIR tries them
on a plain engine mount (not through lazarusfs) and prints the options that
restrict this exerciser to what the engine does support:
  --no-xattr --no-chown --no-link --no-exchange --no-noreplace
  --no-lchown       chown of a symlink changes its target (sshfs): chown
                    then always follows, and symlink owners are not compared
                    (the target's owner still is)
  --no-nlink        the engine does not report file link counts
  --no-dir-nlink    ... nor directory link counts
  --mtime-seconds   the engine keeps whole seconds of mtime only
  --no-lutime       no utime on a symlink itself
  --no-dotdot-links readlink fails for targets with ".." (sshfs)
  --create-mask M   mode bits the engine drops at create/mkdir time
  --errno-alias B:A the engine reports errno A where a local FS says B
  --meta-after-close  a file written through an open fd keeps showing the
                    owner, mode and mtime it had until its last close (s3fs
                    1.90: chown, chmod and utime take effect, but show only
                    after the upload): no chown/chmod/utime of such a file,
                    no operations as another user (the proxy gives a new
                    file its creator's ownership with a chown), and no
                    setgid bit (a new file's group is then a chown too)
  --no-rdonly-trunc the engine refuses O_RDONLY|O_TRUNC (s3fs: EACCES)
  --sync-writes     the engine's stat of a file with writes it has not
                    uploaded yet is unreliable (s3fs 1.90, with or without
                    lazarusfs: an ftruncate does not show, a new file
                    vanishes once another fd of it is closed): every open,
                    pwrite and ftruncate through an fd is followed by an
                    fsync of that fd, in both trees
--no-link also stands for hard links whose names the engine does not keep
coherent (it caches attributes per name, so a change made through one name
is not seen through the other for a while: bindfs and sshfs with their
default attribute caches).  Such an engine would fail permission checks
and reads against stale attributes, and the trees would drift apart for a
reason that is not the proxy's.
"""
import argparse
import ctypes
import errno
import os
import random
import socket
import stat
import sys
import time

SILLY = ".lazarusfs-silly-"
VOCAB = [list("abcdefg"), list("abcde"), list("abc")]
XNAMES = ["user.a", "user.b", "user.c"]
IDS = [-1, 0, 1000, 1001]
MODES = [0o755, 0o777, 0o700, 0o644, 0o600, 0o555, 0o444, 0o000, 0o1777,
         0o2775, 0o4755, 0o6755, 0o2755, 0o711]
UMASKS = [0, 0, 0o22, 0o77, 0o2, 0o27]
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags):
    if hasattr(_libc, "renameat2"):
        r = _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD,
                            os.fsencode(new), ctypes.c_uint(flags))
    else:                       # x86_64 syscall number
        r = _libc.syscall(316, AT_FDCWD, os.fsencode(old), AT_FDCWD,
                          os.fsencode(new), ctypes.c_uint(flags))
    if r:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


class St:
    """The comparable part of an lstat/fstat."""
    __slots__ = ("kind", "mode", "size", "uid", "gid", "nlink", "mtime", "ino")

    def __init__(self, s):
        self.kind = stat.S_IFMT(s.st_mode)
        self.mode = stat.S_IMODE(s.st_mode)
        self.size = s.st_size
        self.uid, self.gid, self.nlink = s.st_uid, s.st_gid, s.st_nlink
        self.mtime, self.ino = s.st_mtime_ns, (s.st_dev, s.st_ino)

    def __repr__(self):
        k = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}
        return "St(%s %04o size=%d %d:%d nlink=%d mtime=%d)" % (
            k.get(self.kind, oct(self.kind)), self.mode, self.size, self.uid,
            self.gid, self.nlink, self.mtime)


def res(fn):
    """("ok", value) or ("err", "ENOENT")."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, str(e.errno)))


def lst(path, follow=False):
    try:
        return St(os.stat(path, follow_symlinks=follow))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, str(e.errno)))


class Mismatch(Exception):
    pass


def short(v, limit=2000):
    """repr() with long byte strings summarized."""
    def fix(x):
        if isinstance(x, bytes) and len(x) > 48:
            nz = len(x) - x.count(0)
            return "<%d bytes, %d non-zero, %s...>" % (len(x), nz, x[:16].hex())
        if isinstance(x, tuple):
            return tuple(fix(y) for y in x)
        if isinstance(x, list):
            return [fix(y) for y in x]
        if isinstance(x, dict):
            return {k: fix(y) for k, y in x.items()}
        return x
    r = repr(fix(v))
    return r if len(r) <= limit else r[:limit] + "...(%d chars)" % len(r)


class Exerciser:
    def __init__(self, a):
        self.a = a
        self.roots = {"A": a.A, "B": a.B}
        self.rng = random.Random(a.seed)
        self.slots = {}         # slot id -> {"A": fd, "B": fd, "path": path}
        self.next_slot = 0
        self.explicit = {}      # B inode -> mtime_ns set by utime
        self.names = None       # B's entries, refreshed after namespace ops
        self.ctl = None
        self.groups = os.getgroups()
        self.user = False

    # ------------------------------------------------------------ helpers

    def p(self, side, rel):
        return os.path.join(self.roots[side], rel) if rel else self.roots[side]

    def same(self, x, y, ctx):
        """Compare A's value x with B's value y; raise Mismatch."""
        if isinstance(y, St):
            if not isinstance(x, St):
                raise Mismatch(ctx)
            fields = ["kind", "mode", "uid", "gid"]
            if y.kind == stat.S_IFLNK and self.a.no_lchown:
                fields = ["kind", "mode"]
            if y.kind != stat.S_IFDIR:
                fields.append("size")
            if y.kind == stat.S_IFDIR:
                if not self.a.no_dir_nlink:
                    fields.append("nlink")
            elif not self.a.no_nlink:
                fields.append("nlink")
            if self.explicit.get(y.ino) == y.mtime:
                fields.append("mtime")
            for f in fields:
                if getattr(x, f) != getattr(y, f):
                    raise Mismatch("%s: %s differs" % (ctx, f))
            return
        if isinstance(y, (tuple, list)):
            if not isinstance(x, (tuple, list)) or len(x) != len(y):
                raise Mismatch(ctx)
            if len(y) == 2 and y[0] == x[0] == "err" and (y[1], x[1]) in self.a.alias:
                return
            for u, v in zip(x, y):
                self.same(u, v, ctx)
            return
        if isinstance(y, dict):
            if not isinstance(x, dict) or sorted(x) != sorted(y):
                raise Mismatch("%s: keys %s vs %s" % (
                    ctx, sorted(set(x) - set(y)), sorted(set(y) - set(x))))
            for k in y:
                self.same(x[k], y[k], "%s %s" % (ctx, k))
            return
        if isinstance(y, bytes) and isinstance(x, bytes) and x != y:
            n = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            raise Mismatch("%s: data differs from byte %d on (sizes %d and %d)" % (
                ctx, n, len(x), len(y)))
        if x != y:
            raise Mismatch(ctx)

    def set_user(self, on):
        if on == self.user:
            return
        if on:
            os.setgroups([self.a.gid, 1001])
            os.setresgid(self.a.gid, self.a.gid, 0)
            os.setresuid(self.a.uid, self.a.uid, 0)
        else:
            os.setresuid(0, 0, 0)
            os.setresgid(0, 0, 0)
            os.setgroups(self.groups)
        self.user = on

    # ------------------------------------------------------------ choices

    def refresh_names(self):
        """B's entries by kind: "any", "file", "dir", "link"."""
        names = {"any": [], "file": [], "dir": [], "link": []}
        kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}
        for d, dirs, files in os.walk(self.a.B):
            rel = os.path.relpath(d, self.a.B)
            for n in dirs + files:
                p = n if rel == "." else os.path.join(rel, n)
                names["any"].append(p)
                names[kinds[stat.S_IFMT(os.lstat(os.path.join(d, n)).st_mode)]].append(p)
        for v in names.values():
            v.sort()
        self.names = names

    def path(self, kind="any"):
        """A path: mostly an existing entry of `kind` ("new": a new name in
        an existing directory), else any name (missing, or below a file)."""
        if self.names is None:
            self.refresh_names()
        r, names, dirs = self.rng.random(), self.names["any"], self.names["dir"]
        if kind == "new":
            r = 0.8 if r < 0.6 else 0.9
        mine = self.names.get(kind)
        if mine and r < 0.65:
            return self.rng.choice(mine)
        if names and r < 0.75:
            return self.rng.choice(names)
        if r < 0.87:
            base = self.rng.choice(dirs) if dirs and self.rng.random() < 0.8 else ""
            depth = base.count("/") + 1 if base else 0
            if depth < len(VOCAB):
                return (base + "/" if base else "") + self.rng.choice(VOCAB[depth])
        depth = self.rng.choice([1, 1, 2, 2, 3])
        return "/".join(self.rng.choice(VOCAB[i]) for i in range(depth))

    def link_target(self):
        """A relative symlink target: "n", "n/m" or "n/../m".  It resolves
        below the link's own directory wherever the link is renamed to, so
        nothing outside the trees is ever reached (a "../m" target would
        escape once its link moves up)."""
        t = "/".join(self.rng.choice(VOCAB[i]) for i in range(self.rng.randint(1, 2)))
        if not self.a.no_dotdot_links and "/" in t and self.rng.random() < 0.4:
            t = t.replace("/", "/../")
        return t

    def mode(self, umask=None):
        """A mode for chmod, or for creation under `umask`."""
        if self.rng.random() < 0.8:
            m = self.rng.choice(MODES)
        else:
            m = self.rng.randrange(0o10000)
        # Setgid without group execute: a write by someone outside the group
        # clears it on a local file system (Linux >= 6.0), but the kernel's
        # FUSE client clears setgid only with group execute (fuse_setattr),
        # on any FUSE file system.  Not the proxy's doing: leave it out.
        kept = m if umask is None else m & ~umask & ~self.a.create_mask
        if kept & 0o2010 == 0o2000 or self.a.meta_after_close:
            m &= ~0o2000
        return m

    def written_open(self, path, follow=True):
        """Is B's `path` a file that a slot has open and has written to
        (or created)?  See --meta-after-close."""
        try:
            st = os.stat(self.p("B", path), follow_symlinks=follow)
        except OSError:
            return False
        for sl in self.slots.values():
            if sl.get("written") and "B" in sl:
                f = os.fstat(sl["B"])
                if (f.st_dev, f.st_ino) == (st.st_dev, st.st_ino):
                    return True
        return False

    def data(self):
        n = self.rng.choice([0, 1, 7, 100, 512, 4096, 5000, self.rng.randrange(20000)])
        return self.rng.randbytes(n)

    def offset(self):
        r = self.rng.random()
        if r < 0.1:
            return 0
        if r < 0.9:
            return self.rng.randrange(12000)
        return self.rng.randrange(1 << 20)   # a big hole

    def size(self):
        return self.offset() if self.rng.random() < 0.9 else 0

    def mtime_ns(self):
        ns = self.rng.randrange(10 ** 9, 2 * 10 ** 18)
        if self.a.mtime_seconds:
            ns -= ns % 10 ** 9
        return ns

    def slot(self):
        return self.rng.choice(sorted(self.slots)) if self.slots else None

    # ------------------------------------------------------------ the ops

    def gen_op(self):
        """A random operation: (name, args, run as user)."""
        ops = [("create", 10), ("open", 7), ("close", 6), ("pwrite", 9),
               ("pread", 7), ("fstat", 3), ("ftruncate", 3), ("fsync", 2),
               ("write_path", 4), ("read_path", 4), ("truncate", 3),
               ("mkdir", 4), ("rmdir", 4), ("unlink", 5), ("rename", 8),
               ("chmod", 4), ("stat", 4), ("listdir", 4), ("symlink", 3),
               ("readlink", 2), ("open_unlink", 3), ("utime", 3)]
        if not self.a.no_link:
            ops.append(("link", 4))
        if not self.a.no_chown:
            ops.append(("chown", 3))
        if not self.a.no_xattr:
            ops += [("setxattr", 4), ("getxattr", 3), ("listxattr", 2),
                    ("removexattr", 2)]
        name = self.rng.choices([o[0] for o in ops], [o[1] for o in ops])[0]
        rng = self.rng
        if name in ("pwrite", "pread", "fstat", "ftruncate", "fsync", "close") \
                and not self.slots:
            name = "open"
        if name == "open" and len(self.slots) >= 6:
            name = "close"
        if name == "create":
            umask = rng.choice(UMASKS)
            args = dict(path=self.path("new"), mode=self.mode(umask), umask=umask,
                        excl=rng.random() < 0.3, trunc=rng.random() < 0.2,
                        keep=rng.random() < 0.4)
        elif name == "open":
            acc = rng.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR])
            flags = acc
            for f, p in ((os.O_CREAT, 0.2), (os.O_TRUNC, 0.1), (os.O_APPEND, 0.1),
                         (os.O_NOFOLLOW, 0.05), (os.O_DIRECTORY, 0.05)):
                if rng.random() < p:
                    flags |= f
            if flags & os.O_CREAT and rng.random() < 0.3:
                flags |= os.O_EXCL
            if self.a.no_rdonly_trunc and acc == os.O_RDONLY:
                flags &= ~os.O_TRUNC
            umask = rng.choice(UMASKS)
            args = dict(path=self.path("file"), flags=flags, mode=self.mode(umask),
                        umask=umask)
        elif name in ("close", "fstat", "fsync"):
            args = dict(slot=self.slot())
            # Known lazarusfs limitation (README): a directory removed while
            # open has no path left, so fstat/fsync of its fd give ESTALE
            # where a local file system reports nlink 0.  Close it instead.
            if name != "close" and self.removed_dir(args["slot"]):
                name = "close"
        elif name == "pwrite":
            args = dict(slot=self.slot(), off=self.offset(), data=self.data())
        elif name == "pread":
            args = dict(slot=self.slot(), off=self.offset(),
                        n=rng.choice([1, 100, 4096, 30000]))
        elif name == "ftruncate":
            args = dict(slot=self.slot(), size=self.size())
        elif name == "write_path":
            args = dict(path=self.path("file"), off=self.offset(), data=self.data(),
                        append=rng.random() < 0.2)
        elif name in ("read_path", "unlink", "open_unlink"):
            args = dict(path=self.path("file"))
        elif name in ("rmdir", "listdir"):
            args = dict(path=self.path("dir"))
        elif name == "readlink":
            args = dict(path=self.path("link"))
        elif name == "listxattr":
            args = dict(path=self.path())
        elif name == "truncate":
            args = dict(path=self.path("file"), size=self.size())
        elif name == "mkdir":
            umask = rng.choice(UMASKS)
            args = dict(path=self.path("new"), mode=self.mode(umask), umask=umask)
        elif name == "rename":
            flags = 0
            r = rng.random()
            if r < 0.15 and not self.a.no_noreplace:
                flags = RENAME_NOREPLACE
            elif r < 0.3 and not self.a.no_exchange:
                flags = RENAME_EXCHANGE
            args = dict(src=self.path(), dst=self.path(), flags=flags)
        elif name == "link":
            args = dict(src=self.path(), dst=self.path())
        elif name == "symlink":
            args = dict(path=self.path("new"), target=self.link_target())
        elif name == "chmod":
            args = dict(path=self.path(), mode=self.mode())
        elif name == "chown":
            args = dict(path=self.path(), uid=rng.choice(IDS), gid=rng.choice(IDS),
                        follow=self.a.no_lchown or rng.random() < 0.7)
        elif name == "stat":
            args = dict(path=self.path(), follow=rng.random() < 0.3)
        elif name == "utime":
            follow = self.a.no_lutime or rng.random() < 0.8
            args = dict(path=self.path(), follow=follow,
                        ns=None if rng.random() < 0.15 else
                        (self.mtime_ns(), self.mtime_ns()))
        elif name == "setxattr":
            args = dict(path=self.path(rng.choice(["file", "dir"])), name=rng.choice(XNAMES),
                        value=rng.randbytes(rng.choice([0, 3, 40, 200])),
                        flags=rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]),
                        follow=rng.random() < 0.8)
        elif name in ("getxattr", "removexattr"):
            args = dict(path=self.path(rng.choice(["file", "dir"])), name=rng.choice(XNAMES),
                        follow=rng.random() < 0.8)
        user = rng.random() < 0.3 and not self.a.meta_after_close
        if self.a.meta_after_close and name in ("chmod", "chown", "utime") and \
                self.written_open(args["path"], args.get("follow", True)):
            name, args = "stat", dict(path=args["path"], follow=args.get("follow", True))
        return name, args, user

    def run_op(self, i, name, args, user):
        """Run one op on A, then B; compare."""
        desc = "%s %s%s" % (name, args if name not in ("pwrite", "write_path") else
                            {**args, "data": "<%d bytes>" % len(args["data"])},
                            " as uid %d" % self.a.uid if user else "")
        paths = [args[k] for k in ("path", "src", "dst") if k in args]
        slots = [args["slot"]] if "slot" in args and name != "close" else []
        before = set(self.slots)
        out = {}
        for side in ("A", "B"):
            fn = getattr(self, "op_" + name)
            if "umask" in args:
                os.umask(args["umask"])
            self.set_user(user)
            try:
                r = fn(side, **args)
            finally:
                self.set_user(False)
                os.umask(0)
            # the state the op leaves, looked at as root
            post = []
            for rel in paths:
                post.append(lst(self.p(side, rel)))
                if rel:
                    post.append(lst(self.p(side, os.path.dirname(rel))))
            for s in slots:
                if s in self.slots and not self.removed_dir(s):
                    post.append(res(lambda: St(os.fstat(self.slots[s][side]))))
            out[side] = (r, post)
        # which slots hold written files (--meta-after-close and
        # --src-after-close), conservatively: any write or truncate, and any
        # open that may have created or truncated the file
        for sl in set(self.slots) - before:
            if name in ("create", "open_unlink") or \
                    args.get("flags", 0) & (os.O_CREAT | os.O_TRUNC):
                self.slots[sl]["written"] = True
        if name in ("pwrite", "ftruncate") and args["slot"] in self.slots:
            self.slots[args["slot"]]["written"] = True
        if name == "utime" and out["B"][0][0] == "ok" and args["ns"]:
            st = lst(self.p("B", args["path"]), args["follow"])
            if isinstance(st, St):
                self.explicit[st.ino] = st.mtime
        try:
            self.same(out["A"][0], out["B"][0], "result")
            self.same(out["A"][1], out["B"][1], "state after the op (lstat of its "
                      "paths and their parents, fstat of its fd)")
        except Mismatch as e:
            self.report(i, desc, out, str(e))
        if self.a.src and name in ("create", "open", "mkdir", "symlink", "link",
                                   "rename", "chown", "chmod"):
            # what the proxy made must be what the engine's source holds,
            # owner included (files of uid 1000 belong to uid 1000)
            got = [lst(os.path.join(self.a.src, rel)) for rel in paths]
            want = [lst(self.p("B", rel)) for rel in paths]
            try:
                self.same(got, want, "engine source after the op")
            except Mismatch as e:
                self.report(i, desc, {"A": got, "B": want}, str(e), "engine source")
        if name in ("create", "mkdir", "rmdir", "unlink", "rename", "link",
                    "symlink", "open", "open_unlink", "write_path"):
            self.names = None
        if name == "close":
            self.settle_close(i, desc)
        if self.a.verbose:
            r = out["B"][0]
            r = "ok" if isinstance(r, St) or r[0] == "ok" else r[1]
            print("%5d %s -> %s" % (i, desc, r), flush=True)
        return desc

    def report(self, i, desc, out, why, aname=None):
        print("MISMATCH at op %d (seed %d): %s" % (i, self.a.seed, desc))
        print("  what: %s" % why)
        print("  %s (%s): %s" % (aname or "A", self.a.src if aname else self.a.A,
                                 short(out["A"])))
        print("  B (%s): %s" % (self.a.B, short(out["B"])))
        print("  (-v lists every operation and B's result)")
        sys.stdout.flush()
        self.set_user(False)
        for s in list(self.slots):
            for side in ("A", "B"):
                try:
                    os.close(self.slots[s][side])
                except OSError:
                    pass
        sys.exit(1)

    # Each op_X(side, **args) runs on one tree and returns a comparable
    # value; errors come back as ("err", "ERRNO") through res().

    def op_create(self, side, path, mode, umask, excl, trunc, keep):
        flags = os.O_CREAT | os.O_RDWR | (os.O_EXCL if excl else 0) | \
            (os.O_TRUNC if trunc else 0)
        r = res(lambda: os.open(self.p(side, path), flags,
                                mode & ~self.a.create_mask))
        return self._opened(side, r, path, keep)

    def op_open(self, side, path, flags, mode, umask):
        r = res(lambda: os.open(self.p(side, path), flags,
                                mode & ~self.a.create_mask))
        return self._opened(side, r, path, True)

    def _opened(self, side, r, path, keep):
        if r[0] != "ok":
            return r
        fd = r[1]
        if self.a.sync_writes:
            os.fsync(fd)
        st = res(lambda: St(os.fstat(fd)))
        if keep:
            if side == "A":
                self.slots[self.next_slot] = {"A": fd, "path": path}
            else:
                self.slots.setdefault(self.next_slot, {"A": -1, "path": path})["B"] = fd
                self.next_slot += 1
            return ("ok", "fd", st)
        os.close(fd)
        return ("ok", "closed", st)

    def removed_dir(self, slot):
        """Is the slot a directory fd whose directory was removed?  lazarusfs
        cannot stat those (known limitation, see README): skip them."""
        st = os.fstat(self.slots[slot]["B"])
        return stat.S_ISDIR(st.st_mode) and st.st_nlink == 0

    def op_close(self, side, slot):
        s = self.slots[slot]
        r = res(lambda: os.close(s[side]))
        if side == "B":
            del self.slots[slot]
        return r

    def op_fstat(self, side, slot):
        return res(lambda: St(os.fstat(self.slots[slot][side])))

    def op_fsync(self, side, slot):
        return res(lambda: os.fsync(self.slots[slot][side]))

    def synced(self, fd, fn):
        """fn(), then (--sync-writes) an fsync of fd."""
        r = fn()
        if self.a.sync_writes:
            os.fsync(fd)
        return r

    def op_pwrite(self, side, slot, off, data):
        fd = self.slots[slot][side]
        return res(lambda: self.synced(fd, lambda: os.pwrite(fd, data, off)))

    def op_pread(self, side, slot, off, n):
        return res(lambda: os.pread(self.slots[slot][side], n, off))

    def op_ftruncate(self, side, slot, size):
        fd = self.slots[slot][side]
        return res(lambda: self.synced(fd, lambda: os.ftruncate(fd, size)))

    def op_write_path(self, side, path, off, data, append):
        def go():
            fd = os.open(self.p(side, path), os.O_WRONLY | (os.O_APPEND if append else 0))
            try:
                return os.pwrite(fd, data, off) if not append else os.write(fd, data)
            finally:
                os.close(fd)
        return res(go)

    def op_read_path(self, side, path):
        def go():
            fd = os.open(self.p(side, path), os.O_RDONLY)
            try:
                chunks = []
                while True:
                    b = os.read(fd, 1 << 16)
                    if not b:
                        break
                    chunks.append(b)
                return b"".join(chunks)
            finally:
                os.close(fd)
        return res(go)

    def op_truncate(self, side, path, size):
        return res(lambda: os.truncate(self.p(side, path), size))

    def op_mkdir(self, side, path, mode, umask):
        return res(lambda: os.mkdir(self.p(side, path), mode & ~self.a.create_mask))

    def op_rmdir(self, side, path):
        return res(lambda: os.rmdir(self.p(side, path)))

    def op_unlink(self, side, path):
        return res(lambda: os.unlink(self.p(side, path)))

    def op_open_unlink(self, side, path):
        """Open a file read-write, unlink it, then use the fd."""
        r = res(lambda: os.open(self.p(side, path), os.O_RDWR))
        if r[0] != "ok":
            return r
        fd = r[1]
        if side == "A":
            self.slots[self.next_slot] = {"A": fd, "path": path}
        else:
            self.slots.setdefault(self.next_slot, {"A": -1, "path": path})["B"] = fd
            self.next_slot += 1
        u = res(lambda: os.unlink(self.p(side, path)))
        w = res(lambda: os.pwrite(fd, b"after unlink", 3))
        rd = res(lambda: os.pread(fd, 64, 0))
        return ("ok", u, w, rd)

    def op_rename(self, side, src, dst, flags):
        if flags:
            return res(lambda: renameat2(self.p(side, src), self.p(side, dst), flags))
        return res(lambda: os.rename(self.p(side, src), self.p(side, dst)))

    def op_link(self, side, src, dst):
        return res(lambda: os.link(self.p(side, src), self.p(side, dst),
                                   follow_symlinks=False))

    def op_symlink(self, side, path, target):
        return res(lambda: os.symlink(target, self.p(side, path)))

    def op_readlink(self, side, path):
        return res(lambda: os.readlink(self.p(side, path)))

    def op_chmod(self, side, path, mode):
        return res(lambda: os.chmod(self.p(side, path), mode))

    def op_chown(self, side, path, uid, gid, follow):
        return res(lambda: os.chown(self.p(side, path), uid, gid,
                                    follow_symlinks=follow))

    def op_utime(self, side, path, ns, follow):
        if ns is None:
            return res(lambda: os.utime(self.p(side, path), follow_symlinks=follow))
        return res(lambda: os.utime(self.p(side, path), ns=ns, follow_symlinks=follow))

    def op_stat(self, side, path, follow):
        return lst(self.p(side, path), follow)

    def op_listdir(self, side, path):
        return res(lambda: sorted(os.listdir(self.p(side, path))))

    def op_setxattr(self, side, path, name, value, flags, follow):
        return res(lambda: os.setxattr(self.p(side, path), name, value, flags,
                                       follow_symlinks=follow))

    def op_getxattr(self, side, path, name, follow):
        return res(lambda: os.getxattr(self.p(side, path), name,
                                       follow_symlinks=follow))

    def op_listxattr(self, side, path):
        return res(lambda: sorted(os.listxattr(self.p(side, path),
                                               follow_symlinks=False)))

    def op_removexattr(self, side, path, name, follow):
        return res(lambda: os.removexattr(self.p(side, path), name,
                                          follow_symlinks=follow))

    # ------------------------------------------------- proxy-side checks

    def ctl_status(self):
        """lazarusfs's status for mount A, or None without --state-dir."""
        if not self.a.state_dir:
            return None
        want = os.path.realpath(self.a.A)
        cands = [self.ctl] if self.ctl else [
            os.path.join(self.a.state_dir, d, "ctl.sock")
            for d in sorted(os.listdir(self.a.state_dir))]
        for path in cands:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(10)
                    s.connect(path)
                    s.sendall(b"status\n")
                    data = b""
                    while True:
                        b = s.recv(4096)
                        if not b:
                            break
                        data += b
            except OSError:
                continue
            st = dict(l.split(": ", 1) for l in data.decode().splitlines() if ": " in l)
            if st.get("mountpoint") == want:
                self.ctl = path
                return st
        sys.exit("FAIL: no lazarusfs control socket for %s under %s" % (want, self.a.state_dir))

    def silly_names(self):
        found = []
        if self.a.src:
            for d, dirs, files in os.walk(self.a.src):
                found += [os.path.join(d, n) for n in dirs + files if n.startswith(SILLY)]
        return found

    def settle_close(self, i, desc):
        """After close: FUSE sends release asynchronously.  Wait until the
        proxy has released the handle, and once nothing is open any more,
        until no silly-renamed file is left in the engine's source."""
        end = time.monotonic() + 5
        if self.a.state_dir:
            while True:
                st = self.ctl_status()
                if int(st["open_handles"]) <= len(self.slots):
                    break
                if time.monotonic() > end:
                    self.report(i, desc, {"A": st["open_handles"], "B": len(self.slots)},
                                "proxy still holds handles after close")
                time.sleep(0.002)
        if not self.slots:
            while True:
                left = self.silly_names()
                if not left:
                    break
                if time.monotonic() > end:
                    self.report(i, desc, {"A": left, "B": []},
                                "silly-renamed files left in the engine's source "
                                "after every file was closed")
                time.sleep(0.002)

    # ------------------------------------------------------- whole trees

    def walk(self, root, silly_ok):
        """relpath -> (St, content/target, xattrs) for a whole tree."""
        out = {}
        for d, dirs, files in os.walk(root):
            for n in sorted(dirs + files):
                full = os.path.join(d, n)
                rel = os.path.relpath(full, root)
                if n.startswith(SILLY):
                    if silly_ok:
                        continue
                    out[rel] = ("silly name", n)
                    continue
                st = St(os.lstat(full))
                if st.kind == stat.S_IFLNK:
                    body = os.readlink(full)
                elif st.kind == stat.S_IFREG:
                    with open(full, "rb") as f:
                        body = f.read()
                else:
                    body = None
                x = None
                if not self.a.no_xattr and st.kind != stat.S_IFLNK:
                    x = res(lambda: sorted((k, os.getxattr(full, k))
                                           for k in os.listxattr(full)))
                out[rel] = (st, body, x)
        return out

    def compare_trees(self, i, what):
        b = self.walk(self.a.B, False)
        trees = [("A", self.a.A, self.walk(self.a.A, False))]
        if self.a.src:
            src = self.walk(self.a.src, bool(self.slots))
            trees.append(("the engine's source", self.a.src, src))
        for name, root, t in trees:
            # the engine's source is a local directory: link counts are
            # exact, once no open file holds a silly-renamed extra name
            saved = self.a.no_nlink, self.a.no_dir_nlink
            if root == self.a.src and not self.slots and not self.a.src_via_engine:
                self.a.no_nlink = self.a.no_dir_nlink = False
            try:
                for rel in sorted(set(t) | set(b)):
                    x, y = t.get(rel, "missing"), b.get(rel, "missing")
                    try:
                        self.same(x, y, "%s: %s vs B: %s" % (what, name, rel))
                    except Mismatch as e:
                        self.report(i, what, {"A": x, "B": y}, str(e),
                                    None if root == self.a.A else "engine source")
            finally:
                self.a.no_nlink, self.a.no_dir_nlink = saved

    def run(self):
        print("exerciser: seed %d, %d ops, A=%s B=%s src=%s" % (
            self.a.seed, self.a.ops, self.a.A, self.a.B, self.a.src), flush=True)
        os.umask(0)
        self.ctl_status()
        counts = {}
        t0 = time.monotonic()
        for i in range(self.a.ops):
            name, args, user = self.gen_op()
            counts[name] = counts.get(name, 0) + 1
            self.run_op(i, name, args, user)
            if i % 500 == 499:
                self.compare_trees(i, "tree check after op %d" % i)
        for s in sorted(self.slots):
            self.run_op(self.a.ops, "close", {"slot": s}, False)
        self.compare_trees(self.a.ops, "final tree check")
        took = time.monotonic() - t0
        print("exerciser: %d ops in %.1f s, no differences (%s)" % (
            self.a.ops, took, " ".join("%s=%d" % kv for kv in sorted(counts.items()))))


# ---------------------------------------------------------------- probing

def probe(d):
    """Try features on a plain engine mount DIR; print exerciser options
    for the ones it lacks."""
    opts = []
    os.umask(0)
    base = os.path.join(d, "probe.%d" % os.getpid())
    os.mkdir(base, 0o777)
    f, g = os.path.join(base, "f"), os.path.join(base, "g")
    os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o644))
    try:
        os.setxattr(f, "user.probe", b"1")
        if os.getxattr(f, "user.probe") != b"1":
            raise OSError(errno.EIO, "xattr value lost")
    except OSError:
        opts.append("--no-xattr")
    try:
        os.chown(f, 1000, 1001)
        s = os.stat(f)
        if (s.st_uid, s.st_gid) != (1000, 1001):
            raise OSError(errno.EPERM, "owner not kept")
        os.chown(f, 0, 0)
    except OSError:
        opts.append("--no-chown")
    try:
        os.link(f, g)
        nlink = os.stat(g).st_nlink == 2
        if not nlink:
            opts.append("--no-nlink")
        # a change through one name, seen through the other at once?
        os.stat(f)
        with open(g, "wb") as fh:
            fh.write(b"0123456789")
        size = os.stat(f).st_size
        os.unlink(g)
        if size != 10 or (nlink and os.stat(f).st_nlink != 1):
            opts.append("--no-link")
        os.truncate(f, 0)
    except OSError:
        opts.append("--no-link")
    sub = os.path.join(base, "d")
    os.mkdir(sub, 0o777)
    os.mkdir(os.path.join(sub, "e"), 0o777)
    if os.stat(sub).st_nlink != 3:
        opts.append("--no-dir-nlink")
    # sftp has no "directory not empty" status: sshfs renames say EPERM
    os.mkdir(os.path.join(base, "empty"), 0o777)
    for fn in (lambda: os.rmdir(sub), lambda: os.rename(os.path.join(base, "empty"), sub)):
        try:
            fn()
            sys.exit("probe: removed a non-empty directory on %s" % d)
        except OSError as e:
            alias = "--errno-alias=ENOTEMPTY:%s" % errno.errorcode[e.errno]
            if e.errno != errno.ENOTEMPTY and alias not in opts:
                opts.append(alias)
    # (the kernel itself fails NOREPLACE onto a name it knows exists: the
    # engine sees only renames to new names)
    h = os.path.join(base, "h")
    try:
        renameat2(f, h, RENAME_NOREPLACE)
        os.rename(h, f)
    except OSError:
        opts.append("--no-noreplace")
    os.close(os.open(h, os.O_CREAT | os.O_WRONLY, 0o644))
    try:
        renameat2(f, h, RENAME_EXCHANGE)
        renameat2(f, h, RENAME_EXCHANGE)
    except OSError:
        opts.append("--no-exchange")
    os.unlink(h)
    # (a directory too, across a rename: s3fs copies its object anew)
    md = os.path.join(base, "md")
    os.mkdir(md, 0o777)
    try:
        for p in (f, md):
            os.utime(p, ns=(1234567890123456789, 1234567890123456789))
        os.rename(md, md + "2")
        ms = {os.stat(f).st_mtime_ns, os.stat(md + "2").st_mtime_ns}
        if 1234567890000000000 in ms and "--mtime-seconds" not in opts:
            opts.append("--mtime-seconds")
        elif ms - {1234567890000000000, 1234567890123456789}:
            raise OSError(errno.EIO, "mtime not kept")
    except OSError:
        sys.exit("probe: utime does not work on %s" % d)
    os.rmdir(md + "2")
    ln = os.path.join(base, "l")
    os.symlink("f", ln)
    try:
        os.chown(ln, 1000, 1000, follow_symlinks=False)
        s, t = os.lstat(ln), os.stat(f)
        if (s.st_uid, t.st_uid) != (1000, 0):
            raise OSError(errno.EPERM, "chowned the target")
        os.chown(ln, 0, 0, follow_symlinks=False)
    except OSError:
        os.chown(f, 0, 0)
        if "--no-chown" not in opts:
            opts.append("--no-lchown")
    for target in ("../x", "x/../y"):
        p = os.path.join(sub, "dotdot")
        os.symlink(target, p)
        try:
            if os.readlink(p) != target:
                raise OSError(errno.EIO, "target changed")
        except OSError:
            if "--no-dotdot-links" not in opts:
                opts.append("--no-dotdot-links")
        os.unlink(p)
    try:
        os.utime(ln, ns=(10 ** 18, 10 ** 18), follow_symlinks=False)
        if os.lstat(ln).st_mtime_ns // 10 ** 9 != 10 ** 9:
            raise OSError(errno.EIO, "not kept")
    except OSError:
        opts.append("--no-lutime")
    try:
        os.close(os.open(f, os.O_RDONLY | os.O_TRUNC))
    except OSError:
        opts.append("--no-rdonly-trunc")
    # a file open with written data: metadata changes (s3fs shows them
    # only after the last close), and a truncate (s3fs shows it only once
    # the data was uploaded)
    wf = os.path.join(base, "w")
    fd = os.open(wf, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"0123456789")
        os.ftruncate(fd, 3)
        if os.fstat(fd).st_size != 3:
            opts.append("--sync-writes")
        os.chmod(wf, 0o600)
        if stat.S_IMODE(os.stat(wf).st_mode) != 0o600:
            opts.append("--meta-after-close")
    finally:
        os.close(fd)
    os.unlink(wf)
    # mode bits dropped at creation (an engine-side umask, setuid bits);
    # Linux's mkdir drops setuid and setgid itself (outside setgid parents)
    mask = 0
    for i, mode in enumerate((0o777, 0o6777, 0o1777)):
        p = os.path.join(base, "m%d" % i)
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, mode))
        mask |= mode & ~stat.S_IMODE(os.stat(p).st_mode)
        os.mkdir(p + "d", mode)
        mask |= mode & 0o1777 & ~stat.S_IMODE(os.stat(p + "d").st_mode)
    if mask:
        opts.append("--create-mask=0%o" % mask)
    for d2, dirs, files in os.walk(base, topdown=False):
        for n in files:
            os.unlink(os.path.join(d2, n))
        for n in dirs:
            p = os.path.join(d2, n)
            (os.unlink if os.path.islink(p) else os.rmdir)(p)
    os.rmdir(base)
    print(" ".join(opts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("A", nargs="?")
    ap.add_argument("B", nargs="?")
    ap.add_argument("ops", nargs="?", type=int, default=3000)
    ap.add_argument("seed", nargs="?", type=int)
    ap.add_argument("--probe", metavar="DIR")
    ap.add_argument("--src", help="the engine's source directory")
    ap.add_argument("--src-via-engine", action="store_true",
                    help="--src is seen through a plain mount of the engine "
                    "(an object store's bucket): its link counts are as "
                    "the engine reports them, not exact")
    ap.add_argument("--state-dir", help="lazarusfs state_dir (for open_handles)")
    ap.add_argument("--uid", type=int, default=1000)
    ap.add_argument("--gid", type=int, default=1000)
    ap.add_argument("-v", "--verbose", action="store_true")
    for f in ("no-xattr", "no-chown", "no-lchown", "no-link", "no-nlink",
              "no-dir-nlink", "no-exchange", "no-noreplace", "mtime-seconds",
              "no-lutime", "no-dotdot-links", "meta-after-close", "sync-writes",
              "no-rdonly-trunc"):
        ap.add_argument("--" + f, action="store_true")
    ap.add_argument("--create-mask", type=lambda s: int(s, 8), default=0)
    ap.add_argument("--errno-alias", action="append", default=[], metavar="B:A",
                    help="the engine reports errno A where a local file system says B")
    a = ap.parse_args()
    if a.probe:
        return probe(a.probe)
    if not a.A or not a.B:
        ap.error("A and B are required")
    a.alias = set(tuple(x.split(":")) for x in a.errno_alias)
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "little")
    if os.geteuid() != 0:
        sys.exit("exerciser.py must run as root (it switches to --uid for some ops)")
    Exerciser(a).run()


if __name__ == "__main__":
    main()
