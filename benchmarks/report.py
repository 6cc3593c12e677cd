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

PIDRING = "pidring (WAITID)"
PIDRING_POLL = "pidring (pidfd poll)"
FLOOR = "posix_spawn + waitpid (C floor)"
AUTO = "pidring automatic (default parallelism)"


def fmt(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


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
            rows.append((f"spawn+wait /bin/true, {k} in flight", f"vs {peer}", fmt(r) + "×",
                         f"≥ {need}×", None if r is None else r >= need))
    cpu = R.get("spawn_cpu", {})
    for k in ("1", "64"):
        m = cpu.get(k, {})
        mine = m.get(PIDRING)
        for peer in ("asyncio (default watcher)", "asyncio (PidfdChildWatcher)", "Node child_process.spawn"):
            r = ratio(m.get(peer), mine)
            if r is not None:
                rows.append((f"spawn+wait /bin/true, {k} in flight", f"parent CPU: {peer} / pidring (context)",
                             fmt(r) + "×", "—", None))
    h = R.get("heap", {}).get("pidring-waitid")
    if h:
        r = h["big"] / h["small"]
        rows.append(("spawn latency, 2 GiB parent", "pidring: 2 GiB parent / small parent", fmt(r) + "×",
                     "≤ 1.2×", r <= 1.2))
    fe = R.get("heap", {}).get("fork-exec")
    if fe:
        rows.append(("spawn latency, 2 GiB parent", "fork+execve: 2 GiB parent / small parent (context)",
                     fmt(fe["big"] / fe["small"]) + "×", "—", None))
    ex = R.get("exit", {})
    if ex.get(PIDRING) and ex.get("thread blocked in waitpid"):
        r = ex[PIDRING] / ex["thread blocked in waitpid"]
        rows.append(("exit → resume latency", "pidring median / blocked waitpid median", fmt(r) + "×",
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
        r = ratio(rc.get("Python subprocess.run(capture_output=True)"), rc.get("pidring run()"))
        rows.append((f"run(cat), {R['config'].get('cat_mib')} MiB in and out", "vs Python subprocess.run",
                     fmt(r) + "×", "≥ 1.5×", None if r is None else r >= 1.5))
    for key, c in R.get("copy", {}).items():
        res = c["results"]
        need = 1.0 if c["cache"] == "warm" else 1.3
        for mine, what in ((AUTO, "copy_file automatic (default parallelism) vs cp"), ("pcp", "pcp vs cp")):
            if mine not in res:
                continue
            r = ratio(res.get("cp"), res.get(mine))
            rows.append((f"copy {key}", what, fmt(r) + "×", f"≥ {need}×", None if r is None else r >= need))
        mine = {k: v for k, v in res.items() if k.startswith("pidring") and v is not None}
        if mine:
            best = min(mine, key=mine.get)
            rows.append((f"copy {key}", f"best pidring setting ({best[len('pidring '):]}) vs cp (context)",
                         fmt(ratio(res.get("cp"), mine[best])) + "×", "—", None))
    for fs, res in R.get("copysmall", {}).items():
        if res.get("pcp") is not None and res.get("cp") is not None:
            d = (res["pcp"] - res["cp"]) * 1e3
            rows.append((f"copy of a 4 KiB file, {fs}", "pcp − cp (wall, exec to exit)", f"{d:+.2f} ms",
                         "≤ +1 ms", d <= 1.0))
    for label, res in R.get("copyheap", {}).items():
        sm, bg = res.get("automatic small"), res.get("automatic big")
        r = ratio(bg, sm)
        rows.append((f"copy_file of {label}, {R['config'].get('heap_mib')} MiB resident",
                     "big process / small process", fmt(r) + "×", "≤ 1.1×", None if r is None else r <= 1.1))
        fr = ratio(res.get("floor big"), res.get("floor small"))
        if fr is not None:
            rows.append((f"copy_file of {label}, {R['config'].get('heap_mib')} MiB resident",
                         "the floor (ring + thread + copy_file_range), big / small (context)", fmt(fr) + "×", "—", None))
    for label, t in R.get("tree", {}).items():
        res = t["results"]
        for mine, need in (("pcp -r", 1.8), ("pcp -r -j 1", 1.2)):
            r = ratio(res.get("cp -r"), res.get(mine))
            rows.append((f"tree: {label}", f"{mine} vs cp -r", fmt(r) + "×", f"≥ {need}×", None if r is None else r >= need))
        for peer in ("rsync -a", "tar c | tar x"):
            if res.get(peer) is not None:
                rows.append((f"tree: {label}", f"pcp -r vs {peer} (context)", fmt(ratio(res[peer], res.get("pcp -r"))) + "×",
                             "—", None))
    for fs, s in R.get("sparse", {}).items():
        t = s["results"].get("pidring copy_file (automatic)")
        rows.append((f"sparse 1 TiB copy, {fs}", "pidring time (vs cp --sparse=auto)",
                     f"{fmt(t, 3)} s ({fmt(ratio(s['results'].get('cp --sparse=auto'), t))}×)", "< 1 s",
                     None if t is None else t < 1.0))
    return rows


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Plots


def gnuplot(script):
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def bars(path, title, ylabel, labels, series, logscale=False):
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
set key top right
set xtics rotate by -30 scale 0 nomirror
set bmargin 9
set rmargin 8
set yrange [0:*]
{"set logscale y; set yrange [*:*]" if logscale else ""}
plot {", ".join(plots)}
""")
    os.unlink(data)


def make_plots(R, d):
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
        p = os.path.join(d, "exit_latency.png")
        bars(p, "child _exit → waiter running (median), lower is better", "microseconds", labels,
             [("median", [ex[l] for l in labels])])
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
        labels = list(next(iter(tr.values()))["results"].keys())
        ser = [(label, [None if t["results"].get(l) is None else t["files"] / t["results"][l] for l in labels])
               for label, t in tr.items()]
        p = os.path.join(d, "copy_tree.png")
        bars(p, "tree copy on ext4 (warm), by program and pcp worker count, higher is better", "files per second",
             labels, ser)
        made["tree"] = p
    return made


# --------------------------------------------------------------------------------------------


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
             "Absolute times on a shared machine drift; ratios taken side by side drift much less.\n")
    L.append("Reproduce with `benchmarks/compare` (it installs the peers from Debian's packages, builds the "
             "release preset with `PIDRING_BUILD_BENCHMARKS=ON`, runs everything, and rewrites this file and "
             "the plots); `benchmarks/compare --help` lists the sizes it can scale.\n")
    L.append("## Machine\n")
    L.append(md_table(["", ""], [
        ("CPU", f"{m['cpu']}, {m['cores']} cores"), ("Memory", m["memory"]), ("Kernel", m["kernel"]),
        ("Distribution", m["distro"]), ("Compiler", m["compiler"] + " (release preset, -O3)"),
        ("liburing", m["liburing"]), ("Boost (Process v2, Asio)", m["boost"]),
        ("Google Benchmark", m["benchmark"]), ("Python", m["python"]), ("Node", m["node"]),
        ("cp", m["coreutils"]), ("ext4 file system", "`" + m["disk"] + "`"),
        ("tmpfs", "/dev/shm"), ("Run", f"{m['date']}, {R.get('duration_s', 0) / 60:.0f} min"),
        ("Load average (1, 5, 15 min)", f"before {R.get('load_before')}, after {R.get('load_after')}"),
        ("pidring", R.get("git", "?")),
    ]))
    L.append("")
    L.append("## Targets\n")
    L.append("Ratios are \"times as fast as the peer\" (above 1: pidring is faster) unless the row says "
             "otherwise.\n")
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
                 "start-up is not counted). In brackets, the peer's time over pidring's (WAITID path). The "
                 "parent's CPU per child is the spawning process's own user + system time (getrusage "
                 "RUSAGE_SELF, process.cpuUsage for Node; all its threads, none of the children's) divided by "
                 "the number of children.\n")
        rows = []
        cpu = R.get("spawn_cpu", {})

        def cpu_of(k, peer):
            v = cpu.get(k, {}).get(peer)
            return "n/a" if v is None else f"{v / n * 1e3:.2f} ms"

        for peer in sp["1"]:
            rows.append((peer, *[f"{n / sp[k][peer]:.0f}/s ({fmt(ratio(sp[k][peer], sp[k].get(PIDRING)))}×)"
                                 if sp[k].get(peer) else "n/a" for k in ("1", "64")],
                         cpu_of("1", peer), cpu_of("64", peer)))
        L.append(md_table(["Program", "1 in flight (pidring ×)", "64 in flight (pidring ×)",
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
                          [(k, f"{v['small'] * 1e3:.2f} ms", f"{v['big'] * 1e3:.2f} ms", fmt(v["big"] / v["small"]) + "×")
                           for k, v in h.items()]))
        L.append("")
        if "heap" in plots:
            L.append(f"![spawn latency by parent size]({rel(plots['heap'])})\n")
    ex = R.get("exit")
    if ex:
        L.append("## Exit → resume latency\n")
        L.append(f"The child (forked, {c['exit_n']} per round, each sleeping 1 ms first so that the parent is "
                 "already waiting) writes CLOCK_MONOTONIC to shared memory just before `_exit`; the parent "
                 "reads the clock as soon as its waiter runs (the coroutine after `co_await child.wait()`, "
                 "the thread after `waitpid` returns, or after `epoll_wait` + `waitid`). Both ends reap the "
                 "child before reading the clock. Median per round, then median of rounds.\n")
        base = ex.get("thread blocked in waitpid")
        L.append(md_table(["Waiter", "median", "/ waitpid"],
                          [(k, f"{v:.0f} µs", fmt(ratio(v, base))) for k, v in ex.items()]))
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
    rc = R.get("runcat")
    if rc:
        L.append(f"## run(cat) with {c['cat_mib']} MiB in and out\n")
        L.append(md_table(["Program", "median", "pidring ×"],
                          [(k, f"{v:.3f} s", fmt(ratio(v, rc.get('pidring run()')))) for k, v in rc.items()]))
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
                 "inside Python. Cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before every run (tmpfs has "
                 "no cold case: its pages are the file). The memcpy ceiling is one memcpy between two "
                 "resident buffers (at most 256 MiB, scaled). `reflink` is n/a where the file system has no "
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
        rows = []
        for label, res in ch.items():
            for name in ("automatic", "floor"):
                sm, bg = res.get(f"{name} small"), res.get(f"{name} big")
                rows.append((label, "copy_file" if name == "automatic" else "floor: ring + thread + copy_file_range",
                             f"{sm * 1e3:.2f} ms" if sm else "n/a", f"{bg * 1e3:.2f} ms" if bg else "n/a",
                             fmt(ratio(bg, sm)) + "×"))
        L.append(md_table(["File", "What", "small process", f"{c['heap_mib']} MiB process", "big / small"], rows))
        L.append("")
    tr = R.get("tree")
    if tr:
        L.append("## Trees\n")
        L.append("On ext4, page cache warm (the first round reads the tree in), each copy into a fresh name; the "
                 "previous copies are removed and written back (`sync`) before every run, untimed. Timed from "
                 "outside, exec to exit. In brackets, cp -r's time over the program's.\n")
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
    prof = R.get("profile")
    if prof:
        L.append("## Profiles\n")
        L.append("Taken by the same run, to explain the figures above: software counters (this VM exposes no "
                 "hardware counters), system call counts (`strace -c -f` follows the children, and its times include "
                 "ptrace stops: read the counts), and Google Benchmark's micro benchmarks of the "
                 "runtime's fixed costs (its DEBUG warning is about Debian's build of the library, not ours).\n")
        for k, v in prof.items():
            L.append(f"`{k}`\n\n```\n{v}\n```\n")
    with open(doc, "w") as f:
        f.write("\n".join(L))


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
    rows = targets(R)
    w = [max(len(str(r[i])) for r in rows) for i in range(4)] if rows else [0] * 4
    print(f"{'Workload':<{w[0]}}  {'Measure':<{w[1]}}  {'Result':<{w[2]}}  {'Target':<{w[3]}}  Verdict")
    for r in rows:
        v = "n/a" if r[4] is None else ("met" if r[4] else "MISSED")
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {v}")
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
