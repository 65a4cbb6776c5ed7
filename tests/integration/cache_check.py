"""Block cache checks for test_cache.sh; run with /usr/bin/python3.

  cache_check.py frozen MNT SRC STATE LIMIT FILE...
      Open FILEs (relative to MNT), then SIGSTOP the engine's process group,
      drop the page cache and read every file completely through the open
      fds: the data must equal SRC/FILE and the whole pass must take less
      than LIMIT seconds (so it was served by the cache, not the frozen
      engine).  SIGCONT, then kill -9 the engine and do the same pass again
      while the proxy restarts it.  Reads stay inside the file sizes taken
      before the engine was frozen, and start after the kernel's attributes
      expired (attr_timeout 1 s): reads must not need the engine for them.

  cache_check.py stat MNT STATE KEY
      Print one field of `lazarusctl stats --json` ("hits", or
      "tier1.checksum_failures" for a tier's field).

  cache_check.py corrupt DIR
      Flip one data byte in one block file under the tier directory DIR;
      prints the block file's name.
"""
import json
import os
import signal
import subprocess
import sys
import time

LAZARUSCTL = os.path.join(os.environ.get("BUILD_DIR", "."), "lazarusctl")
FOOTER = 80


def ctl(state, *args):
    return subprocess.run([LAZARUSCTL, "--state-dir", state] + list(args),
                          capture_output=True, text=True, check=True).stdout


def status(mnt, state):
    out = ctl(state, "status", mnt)
    return dict(l.split(": ", 1) for l in out.splitlines() if ": " in l)


def engine_pid(mnt, state, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        st = status(mnt, state)
        if st["state"] == "running" and st["pid"] != "0":
            return int(st["pid"])
        time.sleep(0.05)
    sys.exit("FAIL: engine not running within %ss: %s" % (timeout, status(mnt, state)))


def signal_engine(pid, sig):
    try:
        os.killpg(pid, sig)     # sshfs and its ssh transport too
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass                # the watchdog killed it: the timing says so


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_all(fds, sizes, expect):
    for name, fd in fds.items():
        data = bytearray()
        while len(data) < sizes[name]:
            chunk = os.pread(fd, min(1 << 20, sizes[name] - len(data)), len(data))
            if not chunk:
                sys.exit("FAIL: %s: early EOF at %d of %d" % (name, len(data), sizes[name]))
            data += chunk
        if data != expect[name]:
            sys.exit("FAIL: %s: data differs from the source" % name)


def frozen(mnt, src, state, limit, files):
    limit = float(limit)
    expect = {}
    for name in files:
        with open(os.path.join(src, name), "rb") as f:
            expect[name] = f.read()
    fds = {name: os.open(os.path.join(mnt, name), os.O_RDONLY) for name in files}
    sizes = {name: os.fstat(fd).st_size for name, fd in fds.items()}
    for name in files:
        if sizes[name] != len(expect[name]):
            sys.exit("FAIL: %s: size %d through the mount, %d in the source"
                     % (name, sizes[name], len(expect[name])))
    pid = engine_pid(mnt, state)
    total = sum(sizes.values())

    signal_engine(pid, signal.SIGSTOP)
    try:
        drop_caches()
        time.sleep(1.5)         # past attr_timeout: reads must not need attributes
        t0 = time.time()
        read_all(fds, sizes, expect)
        el = time.time() - t0
    finally:
        signal_engine(pid, signal.SIGCONT)
    print("engine stopped: read %.1f MiB from the cache in %.3f s"
          % (total / 1048576, el), flush=True)
    if el >= limit:
        sys.exit("FAIL: reads with a stopped engine took %.1f s (limit %s s)" % (el, limit))

    signal_engine(pid, signal.SIGKILL)
    drop_caches()
    t0 = time.time()
    read_all(fds, sizes, expect)
    el = time.time() - t0
    print("engine killed: read %.1f MiB from the cache in %.3f s (state now %s)"
          % (total / 1048576, el, status(mnt, state)["state"]), flush=True)
    if el >= limit:
        sys.exit("FAIL: reads with a killed engine took %.1f s (limit %s s)" % (el, limit))
    # the proxy restarts the engine and the handles keep working
    engine_pid(mnt, state)
    read_all(fds, sizes, expect)
    for fd in fds.values():
        os.close(fd)


def stat(mnt, state, key):
    st = json.loads(ctl(state, "stats", mnt, "--json"))
    if key.startswith("tier") and "." in key:
        t, field = key.split(".", 1)
        print(st["tiers"][int(t[4:])][field])
    elif "." in key:                      # e.g. engine.bytes
        group, field = key.split(".", 1)
        print(st[group][field])
    else:
        print(st[key])


def corrupt(tdir):
    for root, _, names in sorted(os.walk(tdir)):
        for n in sorted(names):
            if n.startswith(".") or n.endswith(".tmp"):
                continue
            path = os.path.join(root, n)
            size = os.path.getsize(path)
            if size <= FOOTER + 4096:
                continue
            with open(path, "r+b") as f:
                f.seek(1000)
                b = f.read(1)
                f.seek(1000)
                f.write(bytes([b[0] ^ 0xff]))
            print(path)
            return
    sys.exit("FAIL: no block file under %s" % tdir)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "frozen" and len(args) >= 5:
        frozen(args[0], args[1], args[2], args[3], args[4:])
    elif cmd == "stat" and len(args) == 3:
        stat(*args)
    elif cmd == "corrupt" and len(args) == 1:
        corrupt(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
