#!/usr/bin/python3
"""Process trees against their peers, side by side: run_pipeline and spawning into a cgroup.

    benchmarks/compare_trees.py BUILD_DIR [--rounds N] [--mib M] [--spawns N] [--cgroup-parent DIR]

BUILD_DIR holds benchmarks/bench_pipeline and benchmarks/bench_cgroup_spawn (configure with
-DPIDRING_BUILD_BENCHMARKS=ON, e.g. the release preset). Two workloads, each target run once per
round, round-robin with the starting target rotating, medians over the rounds, ratios of
medians (peer / pidring: above 1 means pidring is faster), and the 1-minute load average every
round started at:

  pipeline  `cat | cat | cat` moving M MiB (default 256)
            - from memory into memory: run_pipeline with run_options::input and capture (on
              io_uring and on epoll) vs a subprocess.Popen chain fed by a thread and read to its
              end, and vs subprocess.run("cat | cat | cat", shell=True, input=...) (both
              benchmarks/pipeline_popen.py, timed inside Python);
            - from a file into a file (both on /dev/shm): `bench_pipeline M 3 IN OUT`
              (spawn.in/spawn.out are the shell's < and >) vs `bash -c 'cat | cat | cat' <IN >OUT`,
              both timed from outside as the whole command's wall time.
  cgroup    spawn + wait of /bin/true into a fresh cgroup, mean per child over N (default 200):
            clone3(CLONE_INTO_CGROUP) vs the child writing cgroup.procs itself (Linux < 5.7),
            vs the parent writing cgroup.procs after the spawn (what most runtimes do), vs no
            cgroup at all, vs `systemd-run --scope` per child where systemd runs.

As root; a cgroup2 hierarchy is mounted on a temporary directory where none is (cgroup v1 hosts).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def wall(cmd, stdin=None, stdout=None, env=None):
    t0 = time.perf_counter()
    subprocess.run(cmd, stdin=stdin, stdout=stdout, env=env, check=True)
    return time.perf_counter() - t0


def printed(cmd, env=None):
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.split()[-1])


def interleave(targets, rounds, loads):
    names = list(targets)
    got = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up and is not kept
        loads.append(load())
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            v = targets[n]()
            if r > 0:
                got[n].append(v)
    return got


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            if tail.startswith("cgroup2 ") and head.split()[3] == "/":
                return head.split()[4], False
    point = tempfile.mkdtemp(prefix="pidring-bench-cgroup2-")
    subprocess.run(["mount", "-t", "cgroup2", "none", point], check=True)
    return point, True


def env_with(backend):
    e = dict(os.environ)
    e["PIDRING_BACKEND"] = backend
    return e


def table(title, got, base, unit, scale, loads):
    print(f"\n{title}  (medians of {len(next(iter(got.values())))} rounds; ratio = target / {base})")
    b = statistics.median(got[base])
    for n, v in got.items():
        m = statistics.median(v)
        print(f"  {n:34s} {m * scale:10.3f} {unit}   {m / b:6.2f}x   (min {min(v) * scale:.3f}, max {max(v) * scale:.3f})")
    print("  load average (1, 5, 15 min) at the start of each round: " + "; ".join(" ".join(l) for l in loads))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--spawns", type=int, default=200)
    ap.add_argument("--cgroup-parent")
    ap.add_argument("--only", choices=["pipeline", "cgroup"])
    ap.add_argument("--json")
    a = ap.parse_args()
    bench = os.path.join(a.build, "benchmarks")
    here = os.path.dirname(os.path.abspath(__file__))
    results = {}

    if a.only in (None, "pipeline"):
        tmp = tempfile.mkdtemp(prefix="pidring-bench-", dir="/dev/shm")
        src, dst = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        with open(src, "wb") as f:
            f.write(b"x" * (a.mib << 20))
        pl = os.path.join(bench, "bench_pipeline")
        m = str(a.mib)

        # The last round's output is truncated before the clock starts, for both: freeing 256 MiB
        # of tmpfs pages is not the pipeline's work.
        def pidring_file(backend):
            os.truncate(dst, 0) if os.path.exists(dst) else None
            return wall([pl, m, "3", src, dst], stdout=subprocess.DEVNULL, env=env_with(backend))

        def bash_file():
            with open(src, "rb") as i, open(dst, "wb") as o:
                return wall(["bash", "-c", "cat | cat | cat"], stdin=i, stdout=o)

        targets = {
            "pidring io_uring, memory->memory": lambda: printed([pl, m, "3"], env_with("io_uring")),
            "pidring epoll, memory->memory": lambda: printed([pl, m, "3"], env_with("epoll")),
            "Python Popen chain, memory->memory": lambda: printed(["/usr/bin/python3", os.path.join(here, "pipeline_popen.py"), m, "3"]),
            "Python run(shell=True), memory->memory": lambda: printed(["/usr/bin/python3", os.path.join(here, "pipeline_popen.py"), m, "3", "shell"]),
            "pidring io_uring, file->file": lambda: pidring_file("io_uring"),
            "pidring epoll, file->file": lambda: pidring_file("epoll"),
            "bash, file->file": bash_file,
        }
        loads = []
        got = interleave(targets, a.rounds, loads)
        shutil.rmtree(tmp)
        results["pipeline"] = {"samples": got, "loads": loads, "mib": a.mib}
        table(f"run_pipeline: cat | cat | cat moving {a.mib} MiB", got, "pidring io_uring, memory->memory", "s", 1, loads)
        med = {n: statistics.median(v) for n, v in got.items()}
        print(f"  pidring vs Python (memory->memory): {med['Python Popen chain, memory->memory'] / med['pidring io_uring, memory->memory']:.2f}x io_uring, "
              f"{med['Python Popen chain, memory->memory'] / med['pidring epoll, memory->memory']:.2f}x epoll (target >= 1.5x)")
        print(f"  pidring vs Python run('cat | cat | cat', shell=True): {med['Python run(shell=True), memory->memory'] / med['pidring io_uring, memory->memory']:.2f}x io_uring, "
              f"{med['Python run(shell=True), memory->memory'] / med['pidring epoll, memory->memory']:.2f}x epoll")
        print(f"  pidring vs bash (file->file):       {med['bash, file->file'] / med['pidring io_uring, file->file']:.2f}x io_uring, "
              f"{med['bash, file->file'] / med['pidring epoll, file->file']:.2f}x epoll (target >= 1.0x)")

    if a.only in (None, "cgroup"):
        mounted = False
        if a.cgroup_parent:
            parent = a.cgroup_parent
        else:
            root, mounted = cgroup2_root()
            parent = os.path.join(root, f"pidring-bench-{os.getpid()}")
            os.mkdir(parent)
        cg = os.path.join(bench, "bench_cgroup_spawn")
        n = str(a.spawns)
        targets = {mode: (lambda mode=mode: printed([cg, mode, parent, n]))
                   for mode in ["clone3", "child-writes", "parent-writes", "none"]}
        sd = shutil.which("systemd-run")
        sd_ok = sd and subprocess.run([sd, "--scope", "--quiet", "/bin/true"], capture_output=True).returncode == 0
        if sd_ok:
            k = max(10, a.spawns // 10)

            def systemd_run():
                t0 = time.perf_counter()
                for _ in range(k):
                    subprocess.run([sd, "--scope", "--quiet", "/bin/true"], check=True)
                return (time.perf_counter() - t0) / k
            targets["systemd-run --scope"] = systemd_run
        else:
            print("\ncgroup: systemd-run --scope is not usable here (systemd is not running as PID 1): that peer is left out")
        loads = []
        got = interleave(targets, a.rounds, loads)
        if not a.cgroup_parent:
            os.rmdir(parent)
        if mounted:
            subprocess.run(["umount", root], check=True)
            os.rmdir(root)
        results["cgroup"] = {"samples": got, "loads": loads, "spawns": a.spawns}
        table(f"spawn + wait of /bin/true into a cgroup (mean per child of {a.spawns})", got, "clone3", "ms", 1e3, loads)

    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
