#!/usr/bin/python3
"""Small helpers for bench/run and bench/chaos (Debian's /usr/bin/python3, stdlib only).

Subcommands:
  fio JSONFILE read|write
      Sum a fio --output-format=json result over its jobs. Prints one line:
        "<MiB/s> <IOPS> <ios-per-job,comma-separated> <errors> <bytes>"
      Aggregate bandwidth = sum(io_bytes) / max(job runtime): the jobs run
      concurrently, so this is what the application as a whole got.
  meta JSONLINES
      Prints "op ops_per_s errors" lines from bench/metaops output.
  stalls LATLOG... --stall-ms MS
      Reads fio latency logs (--write_lat_log, --log_avg_msec=0: one line per
      I/O, "msec, latency_ns, ddir, bs, ..."), prints
        "<ios> <stalls> <stall_median_ms> <stall_max_ms> <p50_ms> <p99_ms> <max_ms>"
      A stall is one I/O whose total latency (fio's lat = submission +
      completion) is at least MS milliseconds.
  report TSV NOTES OUTDIR STEM --mode M --reps N [--meta K] [...]
      Medians over repetitions, the Markdown report, the gnuplot chart.
"""
import json
import os
import statistics
import subprocess
import sys


def fio_summary(path, ddir):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON object.
    data = json.loads(text[text.index("{"):])
    total_bytes = 0
    total_ios = 0
    max_rt = 0
    per_job = []
    errors = 0
    for job in data["jobs"]:
        d = job[ddir]
        total_bytes += d["io_bytes"]
        total_ios += d["total_ios"]
        max_rt = max(max_rt, d["runtime"])
        per_job.append(str(d["total_ios"]))
        errors += job.get("total_err", 0) or (1 if job.get("error") else 0)
    if max_rt <= 0:
        print("NA NA %s %d %d" % (",".join(per_job), errors, total_bytes))
        return
    secs = max_rt / 1000.0
    print("%.1f %.1f %s %d %d" % (total_bytes / secs / 1048576.0, total_ios / secs,
                                  ",".join(per_job), errors, total_bytes))


def meta_summary(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            print("%s %.1f %d" % (d["op"], d["ops"], d["errors"]))


def stalls(paths, stall_ms):
    lats = []
    for p in paths:
        with open(p) as f:
            for line in f:
                parts = line.split(",")
                if len(parts) < 2:
                    continue
                lats.append(int(parts[1]) / 1e6)
    if not lats:
        print("0 0 NA NA NA NA NA")
        return
    lats.sort()
    st = [x for x in lats if x >= stall_ms]
    med = "%.1f" % statistics.median(st) if st else "0"
    mx = "%.1f" % max(st) if st else "0"
    print("%d %d %s %s %.2f %.2f %.1f" % (
        len(lats), len(st), med, mx, lats[len(lats) // 2],
        lats[min(len(lats) - 1, int(len(lats) * 0.99))], lats[-1]))


# ---------------------------------------------------------------- report --

# (metric, label, unit, higher_is_better)
METRICS = [
    ("seqread1_cold", "seq read 1 MiB, 1 job, cold", "MiB/s", True),
    ("seqread4_cold", "seq read 1 MiB, 4 jobs, cold", "MiB/s", True),
    ("seqread1_warm", "seq read 1 MiB, 1 job, warm", "MiB/s", True),
    ("seqread4_warm", "seq read 1 MiB, 4 jobs, warm", "MiB/s", True),
    ("seqwrite1", "seq write 1 MiB, 1 job", "MiB/s", True),
    ("seqwrite4", "seq write 1 MiB, 4 jobs", "MiB/s", True),
    ("randread1_cold", "rand read 4 KiB, 1 job, cold", "IOPS", True),
    ("randread4_cold", "rand read 4 KiB, 4 jobs, cold", "IOPS", True),
    ("randread1_warm", "rand read 4 KiB, 1 job, warm", "IOPS", True),
    ("randread4_warm", "rand read 4 KiB, 4 jobs, warm", "IOPS", True),
    ("meta_create", "create (open O_CREAT + close)", "ops/s", True),
    ("meta_stat", "stat", "ops/s", True),
    ("meta_restat", "stat again (no cache drop)", "ops/s", True),
    ("meta_openclose", "open + close", "ops/s", True),
    ("meta_unlink", "unlink", "ops/s", True),
]
SHORT = {
    "seqread1_cold": "seqR1 cold", "seqread4_cold": "seqR4 cold",
    "seqread1_warm": "seqR1 warm", "seqread4_warm": "seqR4 warm",
    "seqwrite1": "seqW1", "seqwrite4": "seqW4",
    "randread1_cold": "rndR1 cold", "randread4_cold": "rndR4 cold",
    "randread1_warm": "rndR1 warm", "randread4_warm": "rndR4 warm",
    "meta_create": "create", "meta_stat": "stat", "meta_restat": "stat again",
    "meta_openclose": "open/close", "meta_unlink": "unlink",
}
SYSTEMS = ["engine", "lazarusfs", "rclone", "local", "lzcache"]
EPOCHS = [("epoch1_files_s", "epoch 1"), ("epoch2_files_s", "epoch 2")]
# sequential read jobs with CPU samples (bench/run cpu_rec): METRIC_proxy_cpu,
# METRIC_engine_cpu, CPU seconds per GiB read
CPU_JOBS = ["seqread1_cold", "seqread4_cold", "seqread1_warm", "seqread4_warm"]
EXTRA = [
    ("mount_ms", "mount time (spawn to mounted)", "ms"),
    ("first_access_ms", "first access (stat of a file after mount)", "ms"),
    ("ready_ms", "ready: mount time + first access", "ms"),
    ("first_access_minus_engine_ms",
     "first access minus the engine's own start (its ready time)", "ms"),
    ("idle_rss_kib", "RSS after mount, before the engine starts", "MiB"),
    ("peak_rss_kib", "peak RSS under load (VmHWM)", "MiB"),
]


def load_tsv(path):
    """-> {(engine, system, metric): [values]}"""
    vals = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 5:
                continue
            _rep, eng, sysname, metric, value = parts[:5]
            try:
                v = float(value)
            except ValueError:
                continue
            vals.setdefault((eng, sysname, metric), []).append(v)
    return vals


def med(vals, key):
    v = vals.get(key)
    if not v:
        return None
    return statistics.median(v)


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if unit == "MiB":
        return "%.1f" % (v / 1024.0)
    if abs(v) >= 1000:
        return "%.0f" % v
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "n/a" if r is None else "%.2f" % r


def spread(vals, key):
    v = vals.get(key)
    if not v or len(v) < 2:
        return ""
    return " (%s–%s)" % (fmt(min(v)), fmt(max(v)))


def status(ok):
    return "not measured" if ok is None else ("met" if ok else "**MISSED**")


def issue14_targets(w, vals, engines, reps):
    """The epoch and proxy-CPU targets of issue 14, met or missed."""
    rows = []  # (target, measured, ok)
    goals = {"bindfs": (0.8, 1.2), "sshfs": (1.0, 2.0)}
    for eng in [e for e in ("bindfs", "sshfs") if e in engines]:
        g1, g2 = goals[eng]
        for m, sysname, goal, label in [
                ("epoch1_files_s", "engine", g1, "epoch 1 ≥ %.1f× %s alone" % (g1, eng)),
                ("epoch2_files_s", "engine", g2, "epoch 2 ≥ %.1f× %s alone" % (g2, eng)),
                ("epoch2_files_s", "local", 0.7, "epoch 2 ≥ 0.7× local disk")]:
            r = ratio(med(vals, (eng, "lzcache", m)), med(vals, (eng, sysname, m)))
            rows.append(("lazarusfs+cache (ro) over %s: %s" % (eng, label), fmt_ratio(r),
                         None if r is None else r >= goal))
    for eng in engines:
        for sysname, name in [("lazarusfs", "lazarusfs"), ("lzcache", "lazarusfs+cache")]:
            if not any(k[:2] == (eng, sysname) for k in vals):
                continue
            for kind in ("cold", "warm"):
                got, oks = [], []
                for m in ("seqread1_" + kind, "seqread4_" + kind):
                    lz = med(vals, (eng, sysname, m + "_proxy_cpu"))
                    rc = med(vals, (eng, "rclone", m + "_proxy_cpu"))
                    got.append("%s vs %s" % (fmt(lz), fmt(rc)))
                    if lz is not None and rc is not None:
                        oks.append(lz < rc)
                rows.append(("%s over %s: proxy CPU s/GiB, %s seq read 1 / 4 jobs, < rclone's"
                             % (name, eng, kind), "; ".join(got),
                             all(oks) if oks else None))
    if not rows:
        return
    w("## Epoch and proxy CPU targets (issue 14; median of %d run%s)"
      % (reps, "" if reps == 1 else "s"))
    w("")
    w("Epoch targets need a run with `--cache-opts`. CPU: lazarusfs's figure vs rclone's, "
      "1 job then 4 jobs.")
    w("")
    w("| target | measured | status |")
    w("|---|---|---|")
    for text, v, ok in rows:
        w("| %s | %s | %s |" % (text, v, status(ok)))
    w("")


def epoch_table(w, vals, engines, reps, info):
    if not any(k[2] == m for k in vals for m, _ in EPOCHS):
        return
    w("## Training epoch (files/s, median of %d run%s)" % (reps, "" if reps == 1 else "s"))
    w("")
    w("%s; walked, then read whole in shuffled order by 4 threads (`bench/epoch.py`). "
      "Every system mounted afresh for the epoch, lazarusfs+cache read-only (`ro`); "
      "epoch 1 cold, epoch 2 on the same mount; page, dentry and inode caches dropped "
      "before each. local disk reads the whole tree." % (info or "the epoch tree"))
    w("")
    w("| engine | epoch | engine | lazarusfs | lazarusfs+cache | rclone | local "
      "| lz/engine | +cache/engine | rclone/engine | lz/local | +cache/local |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for eng in engines:
        for m, label in EPOCHS:
            v = {s: med(vals, (eng, s, m)) for s in SYSTEMS}
            w("| %s | %s | %s | %s%s | %s%s | %s | %s | %s | %s | %s | %s | %s |" % (
                eng, label, fmt(v["engine"]), fmt(v["lazarusfs"]),
                spread(vals, (eng, "lazarusfs", m)), fmt(v["lzcache"]),
                spread(vals, (eng, "lzcache", m)), fmt(v["rclone"]), fmt(v["local"]),
                fmt_ratio(ratio(v["lazarusfs"], v["engine"])),
                fmt_ratio(ratio(v["lzcache"], v["engine"])),
                fmt_ratio(ratio(v["rclone"], v["engine"])),
                fmt_ratio(ratio(v["lazarusfs"], v["local"])),
                fmt_ratio(ratio(v["lzcache"], v["local"]))))
    w("")


def cpu_table(w, vals, eng, has_cache):
    """CPU seconds per GiB of the serving processes over the sequential reads."""
    if not any(k[0] == eng and k[2].endswith("_cpu") for k in vals):
        return
    cols = [("engine", "engine", "engine alone"),
            ("lazarusfs", "proxy", "lazarusfs"), ("lazarusfs", "engine", "its engine")]
    if has_cache:
        cols += [("lzcache", "proxy", "lazarusfs+cache"), ("lzcache", "engine", "its engine")]
    cols.append(("rclone", "proxy", "rclone"))
    if eng == "bindfs":
        cols.append(("rclone", "engine", "bindfs under rclone"))
    w("CPU seconds per GiB read by the serving processes (lower is better; proxy and "
      "the engine it started apart, see the method):")
    w("")
    w("| job | %s | lz/rclone |%s" % (" | ".join(c[2] for c in cols),
                                     " +cache/rclone |" if has_cache else ""))
    w("|---|%s---:|%s" % ("---:|" * len(cols), "---:|" if has_cache else ""))
    for m in CPU_JOBS:
        def cpu(sysname, what):
            return med(vals, (eng, sysname, "%s_%s_cpu" % (m, what)))
        rc = cpu("rclone", "proxy")
        w("| %s | %s | %s |%s" % (
            SHORT[m], " | ".join(fmt(cpu(s, x)) for s, x, _ in cols),
            fmt_ratio(ratio(cpu("lazarusfs", "proxy"), rc)),
            (" %s |" % fmt_ratio(ratio(cpu("lzcache", "proxy"), rc))) if has_cache else ""))
    w("")


def report(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="benchlib report")
    ap.add_argument("tsv")
    ap.add_argument("notes")
    ap.add_argument("outdir")
    ap.add_argument("stem")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--engines", default="bindfs,sshfs,s3fs")
    ap.add_argument("--header", default="")
    ap.add_argument("--chaos", default="")
    ap.add_argument("--profiles", default="")
    ap.add_argument("--method", default="")
    ap.add_argument("--missed-out", default="")
    ap.add_argument("--epoch-info", default="")
    a = ap.parse_args(argv)

    vals = load_tsv(a.tsv)
    engines = [e for e in a.engines.split(",") if e]
    notes = []
    if os.path.exists(a.notes):
        with open(a.notes) as f:
            notes = [l.rstrip("\n") for l in f if l.strip()]

    out = []
    w = out.append
    if a.header and os.path.exists(a.header):
        with open(a.header) as f:
            out.append(f.read().rstrip("\n"))
    w("")

    # ---- targets
    targets = []  # (text, value, ok, metric-for-profile)
    if "bindfs" in engines:
        def lzb(m):
            return ratio(med(vals, ("bindfs", "lazarusfs", m)),
                         med(vals, ("bindfs", "engine", m)))
        for m, label in [("seqread1_cold", "cold seq read, 1 job"),
                         ("seqread4_cold", "cold seq read, 4 jobs"),
                         ("seqwrite1", "seq write, 1 job"),
                         ("seqwrite4", "seq write, 4 jobs")]:
            r = lzb(m)
            targets.append(("lazarusfs/bindfs %s ≥ 0.9" % label, fmt_ratio(r),
                            None if r is None else r >= 0.9, m))
        for m in ["meta_create", "meta_stat", "meta_restat", "meta_openclose", "meta_unlink"]:
            r = lzb(m)
            targets.append(("lazarusfs/bindfs metadata %s ≥ 0.8" % SHORT[m],
                            fmt_ratio(r), None if r is None else r >= 0.8, m))
    mts = [med(vals, (e, "lazarusfs", "mount_ms")) for e in engines]
    mts = [x for x in mts if x is not None]
    mt = max(mts) if mts else None
    targets.append(("lazarusfs mount time < 50 ms", fmt(mt) + " ms" if mt is not None else "n/a",
                    None if mt is None else mt < 50, "mount_ms"))
    rss = [med(vals, (e, "lazarusfs", "idle_rss_kib")) for e in engines]
    rss = [x for x in rss if x is not None]
    r = max(rss) if rss else None
    targets.append(("lazarusfs idle RSS < 10 MiB", fmt(r, "MiB") + " MiB" if r is not None else "n/a",
                    None if r is None else r < 10 * 1024, "idle_rss_kib"))

    w("## Targets (median of %d run%s)" % (a.reps, "" if a.reps == 1 else "s"))
    w("")
    w("| target | measured | status |")
    w("|---|---|---|")
    missed = []
    for text, v, ok, m in targets:
        if ok is False:
            missed.append(m)
        w("| %s | %s | %s |" % (text, v, status(ok)))
    w("")
    if a.missed_out:
        with open(a.missed_out, "w") as f:
            f.write("\n".join(missed) + ("\n" if missed else ""))

    # ---- block-cache targets (the cache issue): lazarusfs+cache over sshfs
    # against sshfs alone, rclone and local disk; cold sequential over bindfs.
    # Only when the run had --cache-opts.  1-job figures, as in the issue.
    ctargets = []
    if "sshfs" in engines and any(k[:2] == ("sshfs", "lzcache") for k in vals):
        def lzc(m, sysname, eng="sshfs"):
            return ratio(med(vals, (eng, "lzcache", m)), med(vals, (eng, sysname, m)))
        for m, sysname, goal, label in [
                ("seqread1_cold", "engine", 1.0, "cold seq read ≥ %.1f× sshfs alone"),
                ("seqread1_cold", "rclone", 2.5, "cold seq read ≥ %.1f× rclone"),
                ("seqread1_warm", "rclone", 1.5, "warm seq read ≥ %.1f× rclone"),
                ("seqread1_warm", "local", 0.7, "warm seq read ≥ %.1f× local disk"),
                ("randread1_warm", "rclone", 1.5, "warm rand read 4 KiB ≥ %.1f× rclone")]:
            r = lzc(m, sysname)
            ctargets.append(("lazarusfs+cache/sshfs " + label % goal, fmt_ratio(r),
                             None if r is None else r >= goal))
    if "bindfs" in engines and any(k[:2] == ("bindfs", "lzcache") for k in vals):
        r = ratio(med(vals, ("bindfs", "lzcache", "seqread1_cold")),
                  med(vals, ("bindfs", "engine", "seqread1_cold")))
        ctargets.append(("lazarusfs+cache/bindfs cold seq read ≥ 0.9× bindfs alone",
                         fmt_ratio(r), None if r is None else r >= 0.9))
    if ctargets:
        w("## Block-cache targets (median of %d run%s, 1 job, page cache dropped before each job)"
          % (a.reps, "" if a.reps == 1 else "s"))
        w("")
        w("| target | measured | status |")
        w("|---|---|---|")
        for text, v, ok in ctargets:
            w("| %s | %s | %s |" % (text, v, status(ok)))
        w("")

    issue14_targets(w, vals, engines, a.reps)
    epoch_table(w, vals, engines, a.reps, a.epoch_info)

    w("![lazarusfs ratios: over the engine, over rclone, over local disk](%s.svg)" % a.stem)
    w("")

    # ---- per engine tables
    chart_rows = []
    for eng in engines:
        rname = {"bindfs": "rclone (local remote over bindfs)",
                 "s3fs": "rclone (its S3 backend against the same s3rver)"}.get(
                     eng, "rclone (sftp remote)")
        w("## Engine: %s" % eng)
        w("")
        w("Systems: **engine** = %s mounted alone; **lazarusfs** = lazarusfs over %s; "
          "**rclone** = `rclone mount --vfs-cache-mode full`, %s; **local** = the source "
          "directory on local disk. Median of %d run%s%s." % (
              eng, eng, rname.split("(", 1)[1].rstrip(")"), a.reps,
              "" if a.reps == 1 else "s",
              "; lazarusfs min–max in parentheses" if a.reps > 1 else ""))
        w("")
        w("| workload | unit | engine | lazarusfs | rclone | local | lz/engine | lz/rclone | lz/local |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for m, label, unit, _ in METRICS:
            v = {s: med(vals, (eng, s, m)) for s in SYSTEMS}
            r1 = ratio(v["lazarusfs"], v["engine"])
            r2 = ratio(v["lazarusfs"], v["rclone"])
            r3 = ratio(v["lazarusfs"], v["local"])
            w("| %s | %s | %s | %s%s | %s | %s | %s | %s | %s |" % (
                label, unit, fmt(v["engine"]), fmt(v["lazarusfs"]),
                spread(vals, (eng, "lazarusfs", m)), fmt(v["rclone"]), fmt(v["local"]),
                fmt_ratio(r1), fmt_ratio(r2), fmt_ratio(r3)))
            chart_rows.append((eng, SHORT[m], r1, r2, r3,
                               ratio(v["lzcache"], v["engine"])))
        for m, label in EPOCHS:
            v = {s: med(vals, (eng, s, m)) for s in SYSTEMS}
            chart_rows.append((eng, label, ratio(v["lazarusfs"], v["engine"]),
                               ratio(v["lazarusfs"], v["rclone"]),
                               ratio(v["lazarusfs"], v["local"]),
                               ratio(v["lzcache"], v["engine"])))
        w("")
        has_cache = any(k[0] == eng and k[1] == "lzcache" for k in vals)
        if has_cache:
            w("lazarusfs **with its block cache** (`--cache-opts`, see the header), same workloads:")
            w("")
            w("| workload | unit | lazarusfs+cache | +cache/engine | +cache/lazarusfs | +cache/rclone | +cache/local |")
            w("|---|---|---:|---:|---:|---:|---:|")
            for m, label, unit, _ in METRICS:
                v = {s: med(vals, (eng, s, m)) for s in SYSTEMS}
                c = v["lzcache"]
                w("| %s | %s | %s%s | %s | %s | %s | %s |" % (
                    label, unit, fmt(c), spread(vals, (eng, "lzcache", m)),
                    fmt_ratio(ratio(c, v["engine"])), fmt_ratio(ratio(c, v["lazarusfs"])),
                    fmt_ratio(ratio(c, v["rclone"])), fmt_ratio(ratio(c, v["local"]))))
            w("")
        w("| startup and memory | unit | engine | lazarusfs | rclone |%s" % (
            " lazarusfs+cache |" if has_cache else ""))
        w("|---|---|---:|---:|---:|%s" % ("---:|" if has_cache else ""))
        for m, label, unit in EXTRA:
            v = {s: med(vals, (eng, s, m)) for s in SYSTEMS}
            w("| %s | %s | %s | %s%s | %s |%s" % (
                label, unit, fmt(v["engine"], unit), fmt(v["lazarusfs"], unit),
                spread(vals, (eng, "lazarusfs", m)) if unit != "MiB" else "",
                fmt(v["rclone"], unit),
                (" %s |" % fmt(v["lzcache"], unit)) if has_cache else ""))
        w("")
        cpu_table(w, vals, eng, has_cache)

    if a.chaos and os.path.exists(a.chaos):
        with open(a.chaos) as f:
            out.append(f.read().rstrip("\n"))
        w("")
    if a.profiles and os.path.exists(a.profiles):
        with open(a.profiles) as f:
            out.append(f.read().rstrip("\n"))
        w("")
    if notes:
        w("## Problems during this run")
        w("")
        for n in notes:
            w("- " + n)
        w("")
    if a.method and os.path.exists(a.method):
        with open(a.method) as f:
            out.append(f.read().rstrip("\n"))
        w("")

    md = os.path.join(a.outdir, a.stem + ".md")
    with open(md, "w") as f:
        f.write("\n".join(out).rstrip("\n") + "\n")

    # ---- chart: ratios, log scale, one panel per engine
    dat = os.path.join(a.outdir, a.stem + ".dat")
    with open(dat, "w") as f:
        for eng in engines:
            f.write("# %s\n" % eng)
            for e, label, r1, r2, r3, r4 in chart_rows:
                if e != eng:
                    continue
                f.write('"%s" %s %s %s %s\n' % (label, *[("%.4f" % x) if x else "NaN"
                                                        for x in (r1, r2, r3, r4)]))
            f.write("\n\n")
    svg = os.path.join(a.outdir, a.stem + ".svg")
    gp = os.path.join(a.outdir, a.stem + ".gp")
    n = len(engines)
    with open(gp, "w") as f:
        f.write("""set terminal svg size 1100,%d dynamic font 'sans,11' background '#ffffff'
set output '%s'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y 10
set yrange [0.02:50]
set ytics ("0.05" 0.05, "0.1" 0.1, "0.2" 0.2, "0.5" 0.5, "0.8" 0.8, "1" 1, "2" 2, "5" 5, "10" 10, "20" 20)
set grid ytics lc rgb '#dddddd'
set xtics rotate by -30 nomirror
set key top right horizontal
set ylabel 'ratio (higher = lazarusfs faster)'
set multiplot layout %d,1
""" % (380 * n, svg, n))
        for i, eng in enumerate(engines):
            f.write("""set title 'lazarusfs ratios over %s (median of %d, %s run); 1 = parity, dashed = 0.9 target'
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead lc rgb '#444444' lw 1
set arrow 2 from graph 0, first 0.9 to graph 1, first 0.9 nohead lc rgb '#cc0000' dt 2 lw 1
plot '%s' index %d using 2:xtic(1) title 'lazarusfs/%s' lc rgb '#1f77b4', \\
     '' index %d using 3 title 'lazarusfs/rclone' lc rgb '#ff7f0e', \\
     '' index %d using 4 title 'lazarusfs/local' lc rgb '#2ca02c'%s
""" % (eng, a.reps, a.mode, dat, i, eng, i, i,
       (", \\\n     '' index %d using 5 title 'lazarusfs+cache/%s' lc rgb '#9467bd'" % (i, eng))
       if any(r[0] == eng and r[5] for r in chart_rows) else ""))
        f.write("unset multiplot\n")
    if not any(x for row in chart_rows for x in row[2:]):
        # nothing to plot (no lazarusfs figures): leave a placeholder chart
        with open(gp, "w") as f:
            f.write("set terminal svg size 600,120 background '#ffffff'\nset output '%s'\n"
                    "unset border; unset tics; unset key\n"
                    "set label 'no lazarusfs figures in this run' at graph 0.5,0.5 center\n"
                    "plot [0:1][0:1] NaN\n" % svg)
    r = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write("gnuplot failed: %s\n" % r.stderr)
        return 1
    return 0


def main():
    if len(sys.argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    cmd = sys.argv[1]
    if cmd == "fio":
        fio_summary(sys.argv[2], sys.argv[3])
    elif cmd == "meta":
        meta_summary(sys.argv[2])
    elif cmd == "stalls":
        args = sys.argv[2:]
        ms = 100.0
        if "--stall-ms" in args:
            i = args.index("--stall-ms")
            ms = float(args[i + 1])
            del args[i:i + 2]
        stalls(args, ms)
    elif cmd == "report":
        return report(sys.argv[2:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
