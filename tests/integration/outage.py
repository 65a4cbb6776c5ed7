"""A training-style reader for test_s3_outage.sh; run with /usr/bin/python3.

  outage.py make SRC NCACHED NUNCACHED
      Write the dataset under SRC: cached/dK/fN.bin (NCACHED files of
      128 KiB in 4 directories) and uncached/uN.bin, each file's bytes a
      function of its name.
  outage.py read MNT LOG
      The reader: 4 threads read every file of MNT/cached in shuffled order,
      epoch after epoch (open, read all, close, compare), while the main
      thread keeps one cached file open from start to end and reads it
      through that one fd every 0.1 s.  Every read is a JSON line in LOG:
      {"name", "t0", "t1", "err"} (wall clock seconds; err: null or the
      errno name).  Stops when LOG.stop exists.
  outage.py probe MNT NAME
      Read MNT/NAME once; print "ok SECONDS" or "ERRNO SECONDS".
  outage.py report LOG T_STOP T_NOTICED T_BACK T_RECOVERED
      Sort the reads of LOG into the phases the times delimit and print
      them as JSON (see test_s3_outage.sh).

The reader never starts a process: a fork would close (and so flush) its
open files.
"""
import errno
import hashlib
import json
import os
import random
import sys
import threading
import time

SIZE = 128 << 10


def content(name):
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


def make(src, ncached, nuncached):
    for i in range(int(ncached)):
        d = os.path.join(src, "cached", "d%d" % (i % 4))
        os.makedirs(d, exist_ok=True)
        name = "cached/d%d/f%d.bin" % (i % 4, i)
        with open(os.path.join(src, name), "wb") as f:
            f.write(content(name))
    os.makedirs(os.path.join(src, "uncached"), exist_ok=True)
    for i in range(int(nuncached)):
        name = "uncached/u%d.bin" % i
        with open(os.path.join(src, name), "wb") as f:
            f.write(content(name))


def read_file(mnt, name):
    """None, or the errno name of the failure ("DATA": wrong bytes)."""
    try:
        with open(os.path.join(mnt, name), "rb") as f:
            data = f.read()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return None if data == content(name) else "DATA"


def read(mnt, log):
    names = sorted(os.path.relpath(os.path.join(d, n), mnt)
                   for d, _, files in os.walk(os.path.join(mnt, "cached"))
                   for n in files)
    if not names:
        sys.exit("FAIL: no files under %s/cached" % mnt)
    out = open(log, "a", buffering=1)
    lock = threading.Lock()
    stop = log + ".stop"

    def record(name, t0, err):
        with lock:
            out.write(json.dumps({"name": name, "t0": t0, "t1": time.time(),
                                  "err": err}) + "\n")

    def reader(k):
        rng = random.Random(k)
        while not os.path.exists(stop):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                if os.path.exists(stop):
                    return
                t0 = time.time()
                record(name, t0, read_file(mnt, name))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    held = names[0]
    fd = os.open(os.path.join(mnt, held), os.O_RDONLY)
    for t in threads:
        t.start()
    while not os.path.exists(stop):
        t0 = time.time()
        try:
            err = None if os.pread(fd, SIZE, 0) == content(held) else "DATA"
        except OSError as e:
            err = errno.errorcode.get(e.errno, str(e.errno))
        record("fd:" + held, t0, err)
        time.sleep(0.1)
    for t in threads:
        t.join()
    os.close(fd)


def probe(mnt, name):
    t0 = time.time()
    err = read_file(mnt, name)
    print("%s %.2f" % (err or "ok", time.time() - t0))


def report(log, t_stop, t_noticed, t_back, t_recovered):
    t_stop, t_noticed, t_back, t_recovered = map(
        float, (t_stop, t_noticed, t_back, t_recovered))
    phases = {"before": [], "unnoticed": [], "offline": [], "back": [], "after": []}
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            t0 = r["t0"]
            ph = ("before" if t0 < t_stop else "unnoticed" if t0 < t_noticed else
                  "offline" if t0 < t_back else "back" if t0 < t_recovered else "after")
            phases[ph].append(r)
    out = {}
    for ph, rs in phases.items():
        ok = [r for r in rs if not r["err"]]
        bad = [r for r in rs if r["err"]]
        out[ph] = {
            "reads": len(rs), "ok": len(ok),
            "errors": sorted(set("%s %s" % (r["name"], r["err"]) for r in bad)),
            "fd_errors": len([r for r in bad if r["name"].startswith("fd:")]),
            "max_ok_s": round(max((r["t1"] - r["t0"] for r in ok), default=0), 2),
            "max_s": round(max((r["t1"] - r["t0"] for r in rs), default=0), 2),
        }
    print(json.dumps(out, indent=1, sort_keys=True))


def main():
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    fns = {"make": (make, 3), "read": (read, 2), "probe": (probe, 2), "report": (report, 5)}
    if cmd not in fns or len(args) != fns[cmd][1]:
        sys.exit(__doc__)
    fns[cmd][0](*args)


if __name__ == "__main__":
    main()
