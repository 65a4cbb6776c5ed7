#!/usr/bin/python3
"""A training-style epoch over a tree of small files.

  bench/epoch.py make DIR [--dirs 100] [--files 40] [--size 131072]
  bench/epoch.py run  DIR [--threads 4] [--seed N] [--json]

`make` writes the tree (dirs x files of size bytes, random content).
`run` walks the tree (os.walk: listing and stat of every entry, as a data
loader's dataset index does), then reads every file whole in a shuffled
order with --threads reader threads, and prints files/s and MiB/s of the
whole epoch (walk included) and of the read phase.  The caller drops the
page cache before a cold epoch.
"""
import argparse
import json
import os
import random
import sys
import threading
import time


def make(a):
    rnd = random.Random(1)
    for d in range(a.dirs):
        p = os.path.join(a.dir, "d%03d" % d)
        os.makedirs(p, exist_ok=True)
        for f in range(a.files):
            with open(os.path.join(p, "f%04d.bin" % f), "wb") as fh:
                fh.write(rnd.randbytes(a.size))


def run(a):
    t0 = time.monotonic()
    files = []
    walk_errors = []  # os.walk skips directories it cannot list: count them
    for root, dirs, names in os.walk(a.dir, onerror=walk_errors.append):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(root, n)
            st = os.stat(p)
            files.append((p, st.st_size))
    t_walk = time.monotonic() - t0
    random.Random(a.seed).shuffle(files)
    lock = threading.Lock()
    for e in walk_errors:
        print("epoch: %s" % e, file=sys.stderr)
    state = {"i": 0, "bytes": 0, "errors": len(walk_errors)}

    def reader():
        while True:
            with lock:
                if state["i"] >= len(files):
                    return
                p, size = files[state["i"]]
                state["i"] += 1
            try:
                with open(p, "rb", buffering=0) as fh:
                    got = 0
                    while True:
                        b = fh.read(1 << 20)
                        if not b:
                            break
                        got += len(b)
                if got != size:
                    raise OSError("short read %d of %d" % (got, size))
                with lock:
                    state["bytes"] += got
            except OSError as e:
                with lock:
                    state["errors"] += 1
                print("epoch: %s: %s" % (p, e), file=sys.stderr)

    t1 = time.monotonic()
    th = [threading.Thread(target=reader) for _ in range(a.threads)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    t_end = time.monotonic()
    total = t_end - t0
    res = {
        "files": len(files), "bytes": state["bytes"], "errors": state["errors"],
        "walk_s": t_walk, "read_s": t_end - t1, "total_s": total,
        "files_per_s": len(files) / total, "mib_per_s": state["bytes"] / total / 2**20,
    }
    if a.json:
        print(json.dumps(res))
    else:
        print("%d files, %.1f MiB: walk %.2f s, read %.2f s, %.0f files/s, %.1f MiB/s, %d errors"
              % (res["files"], res["bytes"] / 2**20, t_walk, res["read_s"],
                 res["files_per_s"], res["mib_per_s"], res["errors"]))
    return 1 if state["errors"] else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["make", "run"])
    ap.add_argument("dir")
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--size", type=int, default=128 * 1024)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.cmd == "make":
        make(a)
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
