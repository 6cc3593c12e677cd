#!/usr/bin/python3
"""pcp-mpi with 1, 2 and 4 ranks against pcp -r and cp -r on compare.py's two trees.

    benchmarks/compare_mpi.py [--build DIR] [--before DIR] [--rounds N] [--dir DIR] [--idle-load L] [--json FILE]

The trees are compare.py's (4,000 files of 256 B-128 KiB in 20 directories; 20,000 files of
0-64 KiB in 400 directories), made once and kept in --dir. Every target copies the tree into a
fresh name; the previous copy is removed and everything written back (sync) before each run,
untimed. A warm-up round, then --rounds rounds (default 5), the targets round-robin with the
starting one rotating; medians, and ratios of medians against cp -r (above 1: faster than cp).
The 1-minute load average is printed at the start of every round, after waiting up to
--idle-timeout seconds for it to fall below --idle-load.

As root, the copies go to a fresh ext4 with a journal on a loop device over a file in
/dev/shm (compare.py's journaled_ext4: removing a copy costs the next run nothing there), else
to --dir itself. The mpirun rows are wall times of the whole command, launch included; the
launch alone (`mpirun -n N true`) and the copy as the ranks timed it (--report's seconds, rank
0's walk included) are printed beside them.

BUILD holds examples/pcp (or pcp) and pcp-mpi: the release preset's build/release by default.
--before DIR adds another build's pcp-mpi (an earlier commit's, say) to the same rounds, as
"pcp-mpi before -n N": a change measured against what it replaces, interleaved.

Beside each pcp-mpi row, from --report (medians): the copy as the ranks timed it and rank 0's
walk; the files per rank; the batches; how far apart the ranks ended; and the time a rank had no
work in hand, summed over the ranks: waiting for the walk to find some, and waiting for the
queue to hand over what it had (builds that report them).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402  (the trees, and the journaled ext4 on a loop device)

# --bind-to none: every rank runs a pool of threads; Open MPI binds each rank to one core by
# default (up to 2 ranks), which halves a rank's copying here.
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader", "--mca",
          "btl_vader_single_copy_mechanism", "none"]
if os.geteuid() == 0:
    MPIRUN.insert(1, "--allow-run-as-root")


def wait_idle(limit, timeout):
    deadline = time.monotonic() + timeout
    while compare.load1() >= limit and time.monotonic() < deadline:
        time.sleep(2)
    return compare.loadavg()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(os.path.dirname(HERE), "build", "release"))
    ap.add_argument("--before", help="another build directory whose pcp-mpi runs in the same rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=os.path.join(os.path.dirname(HERE), "build", "bench-data"))
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--idle-load", type=float, default=1.5)
    ap.add_argument("--idle-timeout", type=float, default=120)
    ap.add_argument("--json", help="write the samples here")
    a = ap.parse_args()
    pcp = next((p for p in (os.path.join(a.build, "examples", "pcp"), os.path.join(a.build, "pcp")) if os.path.exists(p)), None)
    pcp_mpi = os.path.join(a.build, "pcp-mpi")
    if not pcp or not os.path.exists(pcp_mpi) or not shutil.which("mpirun"):
        sys.exit("compare_mpi: need pcp and pcp-mpi in %s and mpirun on PATH" % a.build)
    ranks = [int(n) for n in a.ranks.split(",")]
    os.makedirs(a.dir, exist_ok=True)
    for label, name, nfiles, ndirs, lo, hi, deep in compare.TREES:
        compare.make_tree(os.path.join(a.dir, name), nfiles, ndirs, lo, hi, deep, seed=len(name))

    class loop_args:
        tmpfs_dir = "/dev/shm/pidring-bench"
    loop = compare.journaled_ext4(loop_args)
    where = loop[0] if loop else a.dir
    results = {}
    try:
        for label, name, nfiles, *_ in compare.TREES:
            # The source on the same file system as the copies (copy_file_range within it).
            src = os.path.join(where, name)
            if not os.path.exists(src):
                shutil.copytree(os.path.join(a.dir, name), src, symlinks=True)
            out = os.path.join(where, "copies-%d" % os.getpid())
            os.makedirs(out, exist_ok=True)
            count = [0]
            last = []
            reports = {}

            def fresh():
                count[0] += 1
                p = os.path.join(out, "c%d" % count[0])
                last.append(p)
                return p

            def before(_):
                for p in last:
                    shutil.rmtree(p, ignore_errors=True)
                last.clear()
                subprocess.run(["sync"], check=True)

            def timed(argv_of, report_to=None):
                def fn():
                    dst = fresh()
                    argv = argv_of(dst)
                    t0 = time.perf_counter()
                    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
                    t = time.perf_counter() - t0
                    if r.returncode != 0:
                        raise RuntimeError("%s: exit %d: %s" % (argv, r.returncode, r.stderr.strip()))
                    if report_to is not None:
                        with open(dst + ".json") as f:
                            report_to.append(json.load(f))
                        os.unlink(dst + ".json")
                    return t
                return fn

            targets = [("cp -r", timed(lambda d: ["cp", "-r", src, d])),
                       ("pcp -r", timed(lambda d: [pcp, "--no-progress", "-r", src, d]))]
            builds = [("pcp-mpi", pcp_mpi)]
            if a.before:
                builds.append(("pcp-mpi before", os.path.join(a.before, "pcp-mpi")))
            for n in ranks:
                for name, binary in builds:
                    reports[(name, n)] = []
                    targets.append(("%s -n %d" % (name, n), timed(
                        lambda d, n=n, binary=binary: MPIRUN + ["-n", str(n), binary, "--no-progress", "-r", "--report", d + ".json",
                                                               src, d],
                        reports[(name, n)])))
                targets.append(("mpirun -n %d true" % n, timed(lambda d, n=n: MPIRUN + ["-n", str(n), "true"])))
            print("%s (copies on %s)" % (label, "a journaled ext4 on a loop device" if loop else where), flush=True)
            samples = {t: [] for t, _ in targets}
            loads = []
            for r in range(1 + a.rounds):
                loads.append(wait_idle(a.idle_load, a.idle_timeout))
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for t, fn in order:
                    before(t)
                    v = fn()
                    if r > 0:
                        samples[t].append(v)
                print("  round %d/%d%s, load %s" % (r + 1, 1 + a.rounds, " (warm-up)" if r == 0 else "", loads[-1]),
                      flush=True)
            before(None)
            med = {t: statistics.median(v) for t, v in samples.items()}
            cp = med["cp -r"]
            print("  %-20s %9s %9s  %s" % ("", "median s", "cp / it", "as the ranks timed it (copy s; files per rank)"))
            for t, _ in targets:
                extra = ""
                if t.startswith("pcp-mpi"):
                    n = int(t.split()[-1])
                    reps = reports[(t.rsplit(" -n", 1)[0], n)][-a.rounds:]
                    copy = statistics.median(x["seconds"] for x in reps)
                    walk = statistics.median(x["walk_seconds"] for x in reps)
                    shares = [statistics.median(x["per_rank"][k]["files"] for x in reps) for k in range(n)]
                    batches = statistics.median(x["queue_batches"] for x in reps)
                    # How far apart the ranks ended: rank 0's clock where the report has it, else the
                    # last rank's copy seconds minus the first's.
                    spread = statistics.median(
                        x["end_spread_seconds"] if "end_spread_seconds" in x
                        else max(p["seconds"] for p in x["per_rank"]) - min(p["seconds"] for p in x["per_rank"]) for x in reps)
                    idle = ""
                    if "walk_wait_seconds" in reps[0]["per_rank"][0]:
                        walk_wait = statistics.median(sum(p["walk_wait_seconds"] for p in x["per_rank"]) for x in reps)
                        queue_wait = statistics.median(sum(p["queue_wait_seconds"] for p in x["per_rank"]) for x in reps)
                        idle = "; idle %.3f for the walk + %.3f for the queue" % (walk_wait, queue_wait)
                    extra = "%.3f (walk %.3f); %s; %d batches; ranks end %.3f s apart%s" % (
                        copy, walk, "/".join("%d" % s for s in shares), batches, spread, idle)
                    med[t + " (copy)"] = copy
                print("  %-20s %9.3f %8.2fx  %s" % (t, med[t], cp / med[t], extra), flush=True)
            results[label] = {"files": nfiles, "median": med, "samples": samples, "loads": loads,
                              "reports": {"%s -n %d" % k: v for k, v in reports.items()}}
            shutil.rmtree(out, ignore_errors=True)
            if loop:
                shutil.rmtree(src, ignore_errors=True)
    finally:
        if loop:
            loop[1]()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
