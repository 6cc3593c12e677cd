#!/usr/bin/python3
"""Turns the results of benchmarks/compare.py into a table of ratios (stdout), docs/BENCHMARKS.md
and the gnuplot PNGs under docs/bench/.

    report.py RESULTS.json [--doc docs/BENCHMARKS.md] [--plots docs/bench] [--notes FILE]

Every ratio is "how many times faster pidring is" (the peer's median time over pidring's), so
above 1 is better for pidring, except where a row says otherwise (latency ratios, bytes).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Target names of benchmarks/compare.py: pidring's default options on each backend.
PIDRING = "pidring io_uring"
PIDRING_POLL = "pidring io_uring (pidfd poll)"
EPOLL = "pidring epoll"
BACKENDS = ((PIDRING, "io_uring"), (EPOLL, "epoll"))
FLOOR = "posix_spawn + waitpid (C floor)"
WAITPID = "thread blocked in waitpid"
PYRUN = "Python subprocess.run(capture_output=True)"
POLL_FLOOR = "poll() loop in C (floor)"
AUTO = "pidring automatic (default parallelism)"


def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def fx(x):
    """A ratio as "1.23×", or n/a."""
    return "n/a" if x is None else f"{x:.2f}×"


def ratio(peer, mine):
    if peer is None or mine is None or mine == 0:
        return None
    return peer / mine


def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def targets(R):
    """[(workload, what, ratio text, target text, ok)] for the headline table."""
    rows = []
    sp = R.get("spawn", {})
    for k in ("1", "64"):
        m = sp.get(k, {})
        mine = m.get(PIDRING)
        for peer, need in ((FLOOR, 0.95), ("Boost.Process v2 async_wait", 1.2),
                           ("asyncio (default watcher)", 2.0), ("asyncio (PidfdChildWatcher)", 2.0),
                           ("Node child_process.spawn", 2.0)):
            r = ratio(m.get(peer), mine)
            rows.append((f"spawn+wait /bin/true, {k} in flight", f"vs {peer}", fx(r),
                         f"≥ {need}×", None if r is None else r >= need))
    cpu = R.get("spawn_cpu", {})
    for k in ("1", "64"):
        m = cpu.get(k, {})
        mine = m.get(PIDRING)
        for peer in ("asyncio (default watcher)", "asyncio (PidfdChildWatcher)", "Node child_process.spawn"):
            r = ratio(m.get(peer), mine)
            if r is not None:
                rows.append((f"spawn+wait /bin/true, {k} in flight", f"parent CPU: {peer} / pidring (context)",
                             fx(r), "—", None))
    h = R.get("heap", {}).get("pidring-waitid")
    big = f"{R.get('config', {}).get('heap_mib', 2048)} MiB parent"
    if h:
        r = h["big"] / h["small"]
        rows.append((f"spawn latency, {big}", f"pidring: {big} / small parent", fx(r),
                     "≤ 1.2×", r <= 1.2))
    fe = R.get("heap", {}).get("fork-exec")
    if fe:
        rows.append((f"spawn latency, {big}", f"fork+execve: {big} / small parent (context)",
                     fx(fe["big"] / fe["small"]), "—", None))
    ex = R.get("exit", {})
    if ex.get(PIDRING) and ex.get(WAITPID):
        r = ex[PIDRING] / ex[WAITPID]
        rows.append(("exit → resume latency", "pidring median / blocked waitpid median", fx(r),
                     "≤ 1.5×", r <= 1.5))
    mn = R.get("many", {}).get(PIDRING)
    if mn:
        n = R.get("config", {}).get("many_n")
        rows.append((f"{n} children waiting", "parent RSS growth per child", f"{mn['bytes_per_child']:.0f} B",
                     "≤ 2048 B", mn["bytes_per_child"] <= 2048))
        rows.append((f"{n} children waiting", "threads while waiting (before)",
                     f"{mn['threads']} ({mn['threads_before']})", "no helper thread",
                     mn["threads"] == mn["threads_before"]))
    rc = R.get("runcat", {})
    if rc:
        r = ratio(rc.get(PYRUN), rc.get(PIDRING))
        rows.append((f"run(cat), {R['config'].get('cat_mib')} MiB in and out", "vs Python subprocess.run",
                     fx(r), "≥ 1.5×", None if r is None else r >= 1.5))
    for key, c in R.get("copy", {}).items():
        res = c["results"]
        need = 1.0 if c["cache"] == "warm" else 1.3
        for mine, what in ((AUTO, "copy_file automatic (default parallelism) vs cp"), ("pcp", "pcp vs cp")):
            if mine not in res:
                continue
            r = ratio(res.get("cp"), res.get(mine))
            rows.append((f"copy {key}", what, fx(r), f"≥ {need}×", None if r is None else r >= need))
        mine = {k: v for k, v in res.items() if k.startswith("pidring") and v is not None}
        if mine:
            best = min(mine, key=mine.get)
            rows.append((f"copy {key}", f"best pidring setting ({best[len('pidring '):]}) vs cp (context)",
                         fx(ratio(res.get("cp"), mine[best])), "—", None))
    for fs, res in R.get("copysmall", {}).items():
        if res.get("pcp") is not None and res.get("cp") is not None:
            d = (res["pcp"] - res["cp"]) * 1e3
            rows.append((f"copy of a 4 KiB file, {fs}", "pcp − cp (wall, exec to exit)", f"{d:+.2f} ms",
                         "≤ +1 ms", d <= 1.0))
    for label, res in R.get("copyheap", {}).items():
        sm, bg = res.get("automatic small"), res.get("automatic big")
        r = ratio(bg, sm)
        rows.append((f"copy_file of {label}, {R['config'].get('heap_mib')} MiB resident",
                     "big process / small process", fx(r), "≤ 1.1×", None if r is None else r <= 1.1))
        fr = ratio(res.get("floor big"), res.get("floor small"))
        if fr is not None:
            rows.append((f"copy_file of {label}, {R['config'].get('heap_mib')} MiB resident",
                         "the floor (ring + thread + copy_file_range), big / small (context)", fx(fr), "—", None))
        ar = ratio(res.get("again big"), res.get("again small"))
        if ar is not None:
            rows.append((f"copy_file of {label}, {R['config'].get('heap_mib')} MiB resident",
                         "each copy after the first in one io_context, big / small (context)", fx(ar), "—", None))
    trees = R.get("tree", {})
    judged = tree_rows_judged(trees)
    for label, t in trees.items():
        res = t["results"]
        for mine, need in (("pcp -r", 1.8), ("pcp -r -j 1", 1.2)):
            r = ratio(res.get("cp -r"), res.get(mine))
            if label in judged:
                rows.append((f"tree: {label}", f"{mine} vs cp -r", fx(r), f"≥ {need}×", None if r is None else r >= need))
            else:
                rows.append((f"tree: {label}", f"{mine} vs cp -r (context: ext4 without a journal)", fx(r), "—", None))
        for peer in ("rsync -a", "tar c | tar x"):
            if res.get(peer) is not None:
                rows.append((f"tree: {label}", f"pcp -r vs {peer} (context)", fx(ratio(res[peer], res.get("pcp -r"))),
                             "—", None))
        for floor in ("floor, 2 threads", "floor, 1 thread"):
            if res.get(floor) is not None:
                rows.append((f"tree: {label}", f"{floor} (the least work) vs cp -r (context)",
                             fx(ratio(res.get("cp -r"), res[floor])), "—", None))
    for fs, s in R.get("sparse", {}).items():
        t = s["results"].get("pidring copy_file (automatic)")
        rows.append((f"sparse 1 TiB copy, {fs}", "pidring time (vs cp --sparse=auto)",
                     f"{fmt(t, 3)} s ({fmt(ratio(s['results'].get('cp --sparse=auto'), t))}×)", "< 1 s",
                     None if t is None else t < 1.0))
    return rows


def load_of(R, keys):
    """(max 1-minute load at the start of the rounds of these workloads, rounds under load)."""
    recs = [x for k in keys for x in R.get("rounds", {}).get(k, [])]
    if not recs:
        return None, 0
    return max(x["load1"] for x in recs), sum(1 for x in recs if x.get("under_load"))


def load_text(R, keys):
    mx, under = load_of(R, keys)
    if mx is None:
        return "n/a"
    return f"{mx:.2f}" + (f" ({under} under load)" if under else "")


def issue13(R):
    """Issue 13's targets with both backends side by side: [(workload, measure, io_uring result,
    epoll result, target, io_uring verdict, epoll verdict, max load of the rounds)]. A verdict is
    True/False, None (not measured) or "—" (the target is not the io_uring backend's: context)."""
    rows = []
    ctx = "—"
    sp = R.get("spawn", {})
    for k in ("1", "64"):
        m = sp.get(k)
        if not m:
            continue
        w = f"spawn + wait /bin/true, {k} in flight"
        ld = load_text(R, [f"spawn {k}"])
        r = ratio(m.get(PIDRING), m.get(EPOLL))
        rows.append((w, "epoll backend vs io_uring backend (io_uring time / epoll time)", "1 (reference)",
                     fx(r), "epoll ≥ 0.95×", ctx, None if r is None else r >= 0.95, ld))
        ri, re_ = ratio(m.get(FLOOR), m.get(PIDRING)), ratio(m.get(FLOOR), m.get(EPOLL))
        rows.append((w, "vs posix_spawn + waitpid (C floor)", fx(ri), fx(re_), "epoll ≥ 1.0×",
                     ctx, None if re_ is None else re_ >= 1.0, ld))
    for key, child in (("exit_exec", "program child"), ("exit", "forked (callable) child")):
        ex = R.get(key, {})
        if ex:
            ri, re_ = ratio(ex.get(PIDRING), ex.get(WAITPID)), ratio(ex.get(EPOLL), ex.get(WAITPID))
            rows.append((f"exit → resume latency, {child}", "median / a thread blocked in waitpid", fx(ri),
                         fx(re_), "epoll ≤ 1.05×", ctx, None if re_ is None else re_ <= 1.05,
                         load_text(R, ["exit"])))
    mn = R.get("many", {})
    if mn.get(PIDRING) or mn.get(EPOLL):
        n = R.get("config", {}).get("many_n")
        w = f"{n:,} children waiting" if isinstance(n, int) else f"{n} children waiting"
        ld = load_text(R, ["many"])
        cell = {b: mn.get(name) for name, b in BACKENDS}
        rows.append((w, "parent RSS growth per child",
                     *[f"{c['bytes_per_child']:.0f} B" if c else "n/a" for c in cell.values()], "≤ 2048 B",
                     *[None if not c else c["bytes_per_child"] <= 2048 for c in cell.values()], ld))
        rows.append((w, "threads while waiting (before)",
                     *[f"{c['threads']} ({c['threads_before']})" if c else "n/a" for c in cell.values()],
                     "no helper thread", *[None if not c else c["threads"] == c["threads_before"] for c in cell.values()],
                     ld))
    rc = R.get("runcat", {})
    if rc:
        w = f"run(cat), {R.get('config', {}).get('cat_mib')} MiB in and out"
        ld = load_text(R, ["runcat"])
        for peer, what, need in ((PYRUN, "vs Python subprocess.run", 1.5), (POLL_FLOOR, "vs a poll() loop in C (floor)", 0.9)):
            ri, re_ = ratio(rc.get(peer), rc.get(PIDRING)), ratio(rc.get(peer), rc.get(EPOLL))
            rows.append((w, what, fx(ri), fx(re_), f"≥ {need}× (both)",
                         None if ri is None else ri >= need, None if re_ is None else re_ >= need, ld))
    return rows


def verdict13(v):
    return v if v == "—" else verdict(v)


def load_rows(R):
    """[(workload, rounds, load1 min / median / max, how the gate opened, waited, others' CPU,
    others' run queue)] from the idle gate's record of every round."""
    import statistics
    rows = []
    for key, recs in R.get("rounds", {}).items():
        if not recs:
            continue
        l1 = [x["load1"] for x in recs]
        busy = [x["cpu_busy"] for x in recs if x.get("cpu_busy") is not None]
        runq = [x["runq"] for x in recs if x.get("runq") is not None]
        gates = [x.get("gate") or ("timeout" if x.get("under_load") else "load") for x in recs]
        opened = ", ".join(f"{gates.count(g)} {g}" for g in ("load", "run queue", "timeout") if gates.count(g))
        rows.append((key, len(recs), f"{min(l1):.2f} / {statistics.median(l1):.2f} / {max(l1):.2f}", opened,
                     f"{sum(x['waited_s'] for x in recs):.0f} s",
                     f"{statistics.median(busy) * 100:.0f} %" if busy else "n/a",
                     f"{statistics.median(runq):.2f}" if runq else "n/a"))
    return rows


def gate_summary(R):
    g = R.get("idle_gate")
    if not g:
        return "none (results from before the idle gate)"
    recs = [x for v in R.get("rounds", {}).values() for x in v]
    under = sum(1 for x in recs if x.get("under_load"))
    rq = g.get("runq")
    return (f"each round waits for a 1-minute load average < {g['load']}"
            + (f" or a run queue < {rq} for 10 s" if rq else "")
            + f" (at most {g['timeout_s']:.0f} s; {g['budget_s']:.0f} s in all): waited {g['waited_s']:.0f} s in "
            f"all; {under} of {len(recs)} rounds started under load (timeout)")


def tree_rows_judged(trees):
    """The tree rows the targets are judged on: those copied on a file system with a journal
    where a run has any (compare.py's "journal"), else all of them (older results)."""
    return {label for label, t in trees.items() if t.get("journal")} or set(trees)


def md_table(header, rows):
    def cell(c):
        return str(c).replace("|", "\\|")  # "tar c | tar x" is one cell
    out = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Plots


def gnuplot(script):
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def bars(path, title, ylabel, labels, series, logscale=False, key="top right"):
    """labels: x categories; series: [(name, [values])]. Writes a PNG of clustered bars."""
    data = path + ".dat"
    with open(data, "w") as f:
        for i, lab in enumerate(labels):
            vals = ["NaN" if s[1][i] is None else f"{s[1][i]:.6g}" for s in series]
            f.write('"' + lab.replace('"', "'") + '" ' + " ".join(vals) + "\n")
    plots = []
    for j, (name, _) in enumerate(series):
        using = f"{j + 2}:xtic(1)" if j == 0 else f"{j + 2}"
        plots.append(f"'{data}' using {using} title '{name}'")
    gnuplot(f"""
set terminal pngcairo size 1000,560 font 'sans,10' noenhanced
set output '{path}'
set title '{title}'
set ylabel '{ylabel}'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key {key} opaque
set xtics rotate by -30 scale 0 nomirror
set bmargin 9
set rmargin 8
set yrange [0:*]
{"set logscale y; set yrange [*:*]" if logscale else ""}
plot {", ".join(plots)}
""")
    os.unlink(data)


def make_plots(R, d):
    import shutil
    if not shutil.which("gnuplot"):
        print("report: gnuplot not installed (gnuplot-nox); no plots", file=sys.stderr)
        return {}
    os.makedirs(d, exist_ok=True)
    made = {}
    sp = R.get("spawn")
    if sp:
        n = R["config"]["spawn_n"]
        labels = list(sp["1"].keys())
        ser = [(f"{k} in flight", [None if sp[k].get(l) is None else n / sp[k][l] for l in labels]) for k in ("1", "64")]
        p = os.path.join(d, "spawn.png")
        bars(p, f"spawn + wait of /bin/true ({n} children), higher is better", "children per second", labels, ser)
        made["spawn"] = p
    h = R.get("heap")
    if h:
        labels = list(h.keys())
        mib = R["config"]["heap_mib"]
        ser = [("small parent", [h[l]["small"] * 1e3 for l in labels]),
               (f"{mib} MiB resident parent", [h[l]["big"] * 1e3 for l in labels])]
        p = os.path.join(d, "spawn_heap.png")
        bars(p, "spawn + wait latency by parent size, lower is better", "ms per spawn", labels, ser)
        made["heap"] = p
    ex = R.get("exit")
    if ex:
        labels = list(ex.keys())
        ser = [("forked child", [ex[l] for l in labels])]
        exe = R.get("exit_exec", {})
        if all(l in exe for l in labels):
            ser.append(("program child", [exe[l] for l in labels]))
        p = os.path.join(d, "exit_latency.png")
        bars(p, "child _exit → waiter running (median), lower is better", "microseconds", labels, ser,
             key="top left")
        made["exit"] = p
    cp = R.get("copy", {})
    groups = {}
    for key, c in cp.items():
        groups.setdefault((c["fs"], c["cache"]), []).append(c)
    for (fs, cache), cs in groups.items():
        cs.sort(key=lambda c: c["mib"])
        labels = list(cs[0]["results"].keys())
        ser = [(f"{c['mib']} MiB", [None if c["results"].get(l) is None else c["mib"] / c["results"][l] for l in labels])
               for c in cs]
        p = os.path.join(d, f"copy_{fs}_{cache}.png")
        bars(p, f"copy on {fs}, {cache} page cache, higher is better (log scale)", "MiB/s", labels, ser, logscale=True)
        made[f"copy {fs} {cache}"] = p
    tr = R.get("tree", {})
    if tr:
        labels = list(dict.fromkeys(k for t in tr.values() for k in t["results"]))
        ser = [(label, [None if t["results"].get(l) is None else t["files"] / t["results"][l] for l in labels])
               for label, t in tr.items()]
        p = os.path.join(d, "copy_tree.png")
        bars(p, "tree copy (warm), by program, pcp worker count and file system, higher is better", "files per second",
             labels, ser, key="below")
        made["tree"] = p
    return made


# --------------------------------------------------------------------------------------------


# A section of the document written by hand (a rerun, a quick comparison) has this line right
# under its "## " heading; rewriting the document carries such sections over, in their order,
# before "## Load during the run" (or at the end).
KEPT = "<!-- written by hand: benchmarks/report.py carries this section over -->"


def kept_sections(doc):
    if not os.path.exists(doc):
        return []
    sections, cur = [], None
    with open(doc) as f:
        for line in f.read().split("\n"):
            if line.startswith("## "):
                if cur:
                    sections.append(cur)
                cur = [line]
            elif cur is not None:
                cur.append(line)
    if cur:
        sections.append(cur)
    return ["\n".join(s).rstrip() + "\n" for s in sections if len(s) > 1 and s[1].strip() == KEPT]


def document(R, plots, notes, doc):
    m = R["machine"]
    c = R["config"]
    rel = lambda p: os.path.relpath(p, os.path.dirname(doc))
    L = []
    L.append("# Benchmarks\n")
    L.append("pidring against what you would use instead, on one machine, in one run. Every figure below is a "
             "**ratio of medians measured in the same run**: the programs of a workload run round-robin (the "
             "first of each round rotates), the first round is a warm-up and is thrown away, and each program's "
             f"median over the next {c['rounds']} rounds is kept ({c['copy_rounds']} for the copies). "
             "Absolute times on a shared machine drift; ratios taken side by side drift much less. Before "
             "every round (the warm-up included) the run waits for the machine to be idle (1-minute load "
             "average below a threshold) and records the load each round started at: see "
             "[Load during the run](#load-during-the-run).\n")
    L.append("pidring runs on two backends, io_uring and epoll (where io_uring is blocked); the workloads of "
             "issue 13 measure both in the same rounds (`pidring io_uring` and `pidring epoll`: the same "
             "program with `PIDRING_BACKEND` set in its environment, every run checked to have used that "
             "backend). Elsewhere `pidring` is the default (automatic: "
             f"{' '.join(R.get('backend_automatic') or ['?'])} here).\n")
    L.append("Reproduce with `benchmarks/compare` (it installs the peers from Debian's packages, builds the "
             "release preset with `PIDRING_BUILD_BENCHMARKS=ON`, runs everything, and rewrites this file and "
             "the plots, keeping the sections marked as written by hand); `benchmarks/compare --help` lists the sizes it can scale.\n")
    L.append("## Machine\n")
    L.append(md_table(["", ""], [
        ("CPU", f"{m['cpu']}, {m['cores']} cores"), ("Memory", m["memory"]), ("Kernel", m["kernel"]),
        ("Distribution", m["distro"]), ("Compiler", m["compiler"] + (" (release preset, -O3)" if c.get("preset", "release") == "release"
                                       else f" ({c.get('preset')} preset)")),
        ("liburing", m["liburing"]), ("Boost (Process v2, Asio)", m["boost"]),
        ("Google Benchmark", m["benchmark"]), ("Python", m["python"]), ("Node", m["node"]),
        ("cp", m["coreutils"]), ("ext4 file system", "`" + m["disk"] + "`"),
        ("tmpfs", "/dev/shm"), ("Run", f"{m['date']}, {R.get('duration_s', 0) / 60:.0f} min"),
        ("Load average (1, 5, 15 min)", f"before {R.get('load_before')}, after {R.get('load_after')}"),
        ("Idle gate", gate_summary(R)),
        ("pidring", R.get("git", "?")),
    ]))
    L.append("")
    rows13 = issue13(R)
    if rows13:
        L.append("## Both backends (issue 13)\n")
        L.append("Ratios are \"times as fast as the peer\" (above 1: pidring is faster) except the latency "
                 "(pidring's over waitpid's: below 1 is better). A target that starts with \"epoll\" is issue "
                 "13's for the epoll backend, and the io_uring column beside it is there to compare with (the "
                 "io_uring backend's own targets, from issue 8, are in the next table); the waiting children's "
                 "and run(cat)'s targets hold for both backends. The last column is the highest 1-minute load "
                 "average any round of the workload started at, and how many rounds started under load.\n")
        L.append(md_table(["Workload", "Measure", "io_uring", "epoll", "Target", "io_uring verdict",
                           "epoll verdict", "max load₁"],
                          [(w, m_, a, b, t, verdict13(va), verdict13(vb), ld)
                           for w, m_, a, b, t, va, vb, ld in rows13]))
        L.append("")
        seen = R.get("backends_seen", {})
        if seen:
            L.append("Which backend every run used, as its io_context reported it (`io_context::backend()`, "
                     "and `waitid` where child waits are IORING_OP_WAITID); for the waiting children also "
                     "the fds seen from outside in /proc/PID/fd:\n")
            by_target = {}
            for key, by in seen.items():
                for name, said in by.items():
                    t = by_target.setdefault(name, {"said": [], "where": []})
                    t["said"] += [x for x in said if x not in t["said"]]
                    t["where"].append(key)
            rows = [(name, ", ".join(t["said"]), ", ".join(t["where"]),
                     ", ".join(R.get("many", {}).get(name, {}).get("fds_seen") or ["—"]))
                    for name, t in by_target.items()]
            L.append(md_table(["Target", "reported", "workloads", "fds seen (waiting children)"], rows))
            L.append("")
    L.append("## Targets\n")
    L.append("Issues 8 and 12 (pidring's default backend, io_uring). Ratios are \"times as fast as the peer\" "
             "(above 1: pidring is faster) unless the row says otherwise.\n")
    L.append(md_table(["Workload", "Measure", "Result", "Target", "Verdict"],
                      [(a, b, r, t, verdict(ok)) for a, b, r, t, ok in targets(R)]))
    L.append("")
    if notes:
        L.append(notes.strip() + "\n")

    sp = R.get("spawn")
    if sp:
        n = c["spawn_n"]
        L.append(f"## spawn + wait of `/bin/true`\n")
        L.append(f"{n} children, one at a time and 64 in flight. Each program times its own loop (interpreter "
                 "start-up is not counted). In brackets, the program's time over pidring's on io_uring / on "
                 "epoll (above 1: pidring is faster). The "
                 "parent's CPU per child is the spawning process's own user + system time (getrusage "
                 "RUSAGE_SELF, process.cpuUsage for Node; all its threads, none of the children's) divided by "
                 "the number of children.\n")
        rows = []
        cpu = R.get("spawn_cpu", {})

        def cpu_of(k, peer):
            v = cpu.get(k, {}).get(peer)
            return "n/a" if v is None else f"{v / n * 1e3:.2f} ms"

        for peer in sp["1"]:
            rows.append((peer, *[f"{n / sp[k][peer]:.0f}/s ({fmt(ratio(sp[k][peer], sp[k].get(PIDRING)))}× / "
                                 f"{fmt(ratio(sp[k][peer], sp[k].get(EPOLL)))}×)"
                                 if sp[k].get(peer) else "n/a" for k in ("1", "64")],
                         cpu_of("1", peer), cpu_of("64", peer)))
        L.append(md_table(["Program", "1 in flight (× io_uring / × epoll)", "64 in flight (× io_uring / × epoll)",
                           "parent CPU per child, 1", "parent CPU per child, 64"], rows))
        L.append("")
        if "spawn" in plots:
            L.append(f"![spawn throughput]({rel(plots['spawn'])})\n")
    h = R.get("heap")
    if h:
        L.append("## Spawn latency from a big parent\n")
        L.append(f"{c['heap_n']} sequential spawn + wait of `/bin/true` per round from a small parent and from "
                 f"one with {c['heap_mib']} MiB of 4 KiB pages resident (written, transparent huge pages off for "
                 "it). One process per parent size runs all three methods round-robin; the small and big "
                 "parents alternate twice and the median of all rounds is kept.\n")
        L.append(md_table(["Method", "small parent", f"{c['heap_mib']} MiB parent", "big / small"],
                          [(k, f"{v['small'] * 1e3:.2f} ms", f"{v['big'] * 1e3:.2f} ms", fx(v["big"] / v["small"]))
                           for k, v in h.items()]))
        L.append("")
        if "heap" in plots:
            L.append(f"![spawn latency by parent size]({rel(plots['heap'])})\n")
    ex = R.get("exit")
    if ex:
        L.append("## Exit → resume latency\n")
        L.append(f"The child ({c['exit_n']} per waiter per round, each sleeping 1 ms first so that the "
                 "parent is already waiting) writes CLOCK_MONOTONIC to shared memory just before `_exit`; the "
                 "parent reads the clock as soon as its waiter runs (the coroutine after `co_await child.wait()`, "
                 "the thread after `waitpid` returns, or after `epoll_wait` + `waitid`). Both ends reap the "
                 "child before reading the clock. Every waiter runs in one process (`bench_exit_latency "
                 "interleaved`), sample by sample in rotating order, with every io_context open throughout: most "
                 "of the latency is the child tearing down its copy of the parent's address space, which "
                 "drifts over minutes and grows with what the parent has mapped, so only waiters measured side "
                 "by side from the same parent compare. Median per round, then median of rounds.\n")
        L.append("Two kinds of child, in alternate runs. *Forked*: a callable child (`spawn(io, fn)`, and "
                 "`fork()` for the peers); after a fork every page of the parent is copy-on-write, so each page "
                 "a waiter writes for the first time after it costs a page fault on the way to the clock "
                 "(on this VM about 19 µs each). *Program*: the benchmark itself re-executed as the child, "
                 "started the way pidring starts a command and posix_spawn starts any program "
                 "(`clone(CLONE_VM | CLONE_VFORK)`, nothing made copy-on-write): the waiters alone, as a "
                 "build tool or test runner sees them.\n")
        base = ex.get(WAITPID)
        exe = R.get("exit_exec", {})
        base_e = exe.get(WAITPID)
        L.append(md_table(["Waiter", "forked child", "/ waitpid", "program child", "/ waitpid"],
                          [(k, f"{v:.0f} µs", fmt(ratio(v, base)),
                            f"{exe[k]:.0f} µs" if k in exe else "—", fmt(ratio(exe.get(k), base_e)))
                           for k, v in ex.items()]))
        L.append("")
        if "exit" in plots:
            L.append(f"![exit to resume latency]({rel(plots['exit'])})\n")
    mn = R.get("many")
    if mn:
        L.append(f"## {c['many_n']} children waiting at once\n")
        L.append(f"{c['many_n']} children (`sleep 3600`, killed once measured) all awaited at once; the "
                 "parent's VmRSS growth from before the first spawn, divided by the number of children, and "
                 "its thread count (from /proc/self/status) while they wait.\n")
        L.append(md_table(["Program", "parent RSS per child", "threads while waiting", "threads before"],
                          [(k, f"{v['bytes_per_child']:.0f} B", v["threads"], v["threads_before"]) for k, v in mn.items()]))
        L.append("")
        L.append(f"{c.get('many_rounds', 1)} round(s), the programs in rotating order; the median per program "
                 "(threads: the most seen).")
        L.append("")
    rc = R.get("runcat")
    if rc:
        L.append(f"## run(cat) with {c['cat_mib']} MiB in and out\n")
        L.append("`run()` of `cat` with the input as a string and stdout captured, against `subprocess.run(..., "
                 "input=..., capture_output=True)` and the loop anyone would write by hand in C (posix_spawn, two "
                 "pipes, `poll()`, non-blocking writes and reads into a buffer sized up front). Each program "
                 "times itself; building the input is not timed.\n")
        L.append(md_table(["Program", "median", "pidring io_uring ×", "pidring epoll ×"],
                          [(k, "n/a" if v is None else f"{v:.3f} s", fmt(ratio(v, rc.get(PIDRING))),
                            fmt(ratio(v, rc.get(EPOLL)))) for k, v in rc.items()]))
        L.append("")
    cp = R.get("copy")
    if cp:
        L.append("## File copy\n")
        L.append("Each program copies a file of random bytes to a new destination (deleted, untimed, before "
                 "every run). Native programs (pidring's `bench_copy`, `cp`, `io_uring-cp`, the "
                 "`copy_file_range` loop) are timed from outside, exec to exit, minus the median time the "
                 "same program takes to copy an empty file (its start-up: exec, dynamic linking, the "
                 "io_context; milliseconds on this VM, see the last table), so that the figures compare "
                 "copying rather than loading libstdc++ against loading libc. `shutil.copyfile` is timed "
                 "inside Python. The programs run in a new random order each round (cold copies carry over "
                 "to the next program: a fixed rotation would give each the same predecessor every time). "
                 "Cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every run (tmpfs has "
                 "no cold case: its pages are the file). The memcpy ceiling is one memcpy between two "
                 "resident buffers (at most 256 MiB, scaled; the median of 3, taken after the copiers' "
                 "rounds, not among them: the memory it frees made the next copier's run slow). `reflink` is n/a where the file system has no "
                 "reflink (ext4, tmpfs). Figures are MiB/s and, in brackets, cp's time over the program's.\n")
        for key, cc in cp.items():
            res = cc["results"]
            L.append(f"### {key}\n")
            L.append(md_table(["Program", "MiB/s (× cp)"],
                              [(k, "n/a" if v is None else f"{cc['mib'] / v:.0f} ({fmt(ratio(res.get('cp'), v))})")
                               for k, v in res.items()]))
            L.append("")
        for k, p in plots.items():
            if k.startswith("copy"):
                L.append(f"![{k}]({rel(p)})\n")
        st = R.get("copy_startup")
        if st:
            L.append("### Start-up of each copier (an empty file), subtracted above\n")
            fss = list(st.keys())
            L.append(md_table(["Program"] + fss,
                              [(k, *[("n/a" if st[f].get(k) is None else f"{st[f][k] * 1e3:.1f} ms") for f in fss])
                               for k in st[fss[0]]]))
            L.append("")
    cs = R.get("copysmall")
    if cs:
        L.append("## A 4 KiB file: pcp against cp\n")
        L.append(f"Timed from outside, exec to exit, start-up included (what a user waits for), each into a "
                 f"fresh name, {c.get('small_rounds')} rounds.\n")
        L.append(md_table(["File system", "pcp", "cp", "pcp − cp"],
                          [(fs, f"{r['pcp'] * 1e3:.2f} ms", f"{r['cp'] * 1e3:.2f} ms",
                            f"{(r['pcp'] - r['cp']) * 1e3:+.2f} ms") for fs, r in cs.items()
                           if r.get("pcp") is not None and r.get("cp") is not None]))
        L.append("")
    ch = R.get("copyheap")
    if ch:
        L.append("## copy_file from inside a big process\n")
        L.append(f"On tmpfs, timed inside the process around `copy_file` (io_context set-up included), from a "
                 f"small process and from one with {c['heap_mib']} MiB resident, round-robin. No process is "
                 "created to copy, so the resident set should not matter.\n")
        what = {"automatic": "copy_file", "floor": "floor: ring + thread + copy_file_range",
                "again": f"copy_file after a first one (median of {R.get('copyheap_again')}, one io_context)"}

        def duration(v):
            return "n/a" if v is None else f"{v * 1e6:.0f} µs" if v < 1e-3 else f"{v * 1e3:.2f} ms"
        rows = []
        for label, res in ch.items():
            for name in ("automatic", "floor", "again"):
                sm, bg = res.get(f"{name} small"), res.get(f"{name} big")
                if sm is None and bg is None:
                    continue
                rows.append((label, what[name], duration(sm), duration(bg), fx(ratio(bg, sm))))
        L.append(md_table(["File", "What", "small process", f"{c['heap_mib']} MiB process", "big / small"], rows))
        L.append("")
    tr = R.get("tree")
    if tr:
        L.append("## Trees\n")
        plain = [t.get("journal") for label, t in tr.items() if not label.endswith("journaled ext4")]
        if plain and plain[0] is False:
            where = ("this machine's ext4, which has no journal (without one ext4 will not reuse an inode freed in "
                     "the last 60-360 s and scans every such inode on each creat: the rounds slow down 3-5× over a "
                     "run, unevenly, so these rows are context)")
        elif plain and plain[0] is True:
            where = "this machine's file system under `--ext4-dir`, which keeps a journal"
        else:
            where = "the file system under `--ext4-dir`"
        L.append("Page cache warm (the first round reads the tree in), each copy into a fresh name, the last run's "
                 "copy removed and everything written back (`sync`) before each run, untimed. Two file systems: "
                 + where + "; and, in the rows marked "
                 "*journaled ext4*, a fresh ext4 as `mkfs.ext4` makes it (with a journal, as users have it) on a "
                 "loop device over a file in tmpfs, where removing the previous copy costs the next run nothing. "
                 "The targets are judged on the rows of file systems with a journal. `floor, N threads` is `benchmarks/bench_tree_floor`: the "
                 "least work of a copier built like pcp (one walk, then open, create, copy_file_range and close "
                 "per file; with 2 threads copying overlaps the walk, with 1 the walk ends first; no checks, "
                 "modes, links or atomic rename). Timed from outside, exec to exit. In brackets, cp -r's time over "
                 "the program's.\n")
        for label, t in tr.items():
            res = t["results"]
            L.append(f"### {label}\n")
            L.append(md_table(["Program", "median", "files per second", "× cp -r"],
                              [(k, "n/a" if v is None else f"{v:.3f} s", "n/a" if v is None else f"{t['files'] / v:.0f}",
                                fmt(ratio(res.get("cp -r"), v))) for k, v in res.items()]))
            L.append("")
        if "tree" in plots:
            L.append(f"![tree copies]({rel(plots['tree'])})\n")
    sp = R.get("sparse")
    if sp:
        L.append("## Sparse 1 TiB file with two 4 KiB data blocks\n")
        rows = []
        for fs, s in sp.items():
            for k, v in s["results"].items():
                rows.append((fs, k, f"{fmt(v, 3)} s", f"{s['allocated'].get(k)} B"))
        L.append(md_table(["File system", "Program", "median", "destination allocated"], rows))
        L.append("")
    lr = load_rows(R)
    if lr:
        L.append("## Load during the run\n")
        L.append(f"Idle gate: {gate_summary(R)}. For every workload: its rounds (warm-up included), the 1-minute "
                 "load average each round started at, what let each round start (`load`: the average was below "
                 "the threshold; `run queue`: the average was still falling from the benchmark's own previous "
                 "round, 64 children exec'ing at once push it far above 100 here, but nobody else had tasks "
                 "waiting to run for 10 s; `timeout`: taken under load), the time waited, and the machine's CPU "
                 f"use and run queue (tasks runnable or in D state) in the {R.get('idle_gate', {}).get('sample_s', '?')} s "
                 "just before each round, while nothing of the benchmark ran, so everyone else's: medians of "
                 "the rounds.\n")
        L.append(md_table(["Workload", "rounds", "load₁ min / median / max", "gate opened by", "waited",
                           "others' CPU", "others' run queue"], lr))
        L.append("")
    prof = R.get("profile")
    if prof:
        L.append("## Profiles\n")
        L.append("Taken by the same run, to explain the figures above: software counters (this VM exposes no "
                 "hardware counters), system call counts (`strace -c -f` follows the children, and its times include "
                 "ptrace stops: read the counts), and Google Benchmark's micro benchmarks of the "
                 "runtime's fixed costs (its DEBUG warning is about Debian's build of the library, not ours).\n")
        for k, v in prof.items():
            L.append(f"`{k}`\n\n```\n{v}\n```\n")
    # The compile-time benchmark (issue 14) runs on its own (benchmarks/compile_cost, ~10 minutes);
    # its last published tables are kept in benchmarks/compile_cost.results.md and carried along.
    compile_results = os.path.join(ROOT, "benchmarks", "compile_cost.results.md")
    if os.path.exists(compile_results):
        with open(compile_results) as f:
            L.append(f.read().strip() + "\n")
    kept = kept_sections(doc)
    at = next((i for i, x in enumerate(L) if x.startswith("## Load during the run")), len(L))
    L[at:at] = kept
    with open(doc, "w") as f:
        f.write("\n".join(L))


def print_table(header, rows):
    rows = [[str(c) for c in r] for r in rows]
    w = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    print("  ".join(f"{h:<{w[i]}}" for i, h in enumerate(header)).rstrip())
    for r in rows:
        print("  ".join(f"{c:<{w[i]}}" for i, c in enumerate(r)).rstrip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--plots", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--notes", default="")
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    with open(a.results) as f:
        R = json.load(f)
    def text(v):
        return v if v == "—" else ("n/a" if v is None else ("met" if v else "MISSED"))

    rows13 = issue13(R)
    if rows13:
        print("Issue 13: both backends side by side")
        print_table(["Workload", "Measure", "io_uring", "epoll", "Target", "io_uring", "epoll", "max load1"],
                    [(w, m, a_, b, t, text(va), text(vb), ld) for w, m, a_, b, t, va, vb, ld in rows13])
        print()
    print("Issues 8 and 12 (default backend)")
    print_table(["Workload", "Measure", "Result", "Target", "Verdict"],
                [(w, m, r, t, text(ok)) for w, m, r, t, ok in targets(R)])
    lr = load_rows(R)
    if lr:
        print()
        print(f"Load: {gate_summary(R)}")
        print_table(["Workload", "rounds", "load1 min/med/max", "gate opened by", "waited", "others' CPU",
                     "others' runq"], lr)
    if a.no_doc:
        return
    plots = make_plots(R, a.plots)
    notes = ""
    if a.notes and os.path.exists(a.notes):
        with open(a.notes) as f:
            notes = f.read()
    document(R, plots, notes, a.doc)
    print(f"wrote {os.path.relpath(a.doc, ROOT)} and {len(plots)} plots in {os.path.relpath(a.plots, ROOT)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
