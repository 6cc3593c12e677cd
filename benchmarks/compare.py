#!/usr/bin/python3
"""Runs pidring's benchmarks side by side with the peers and writes docs/BENCHMARKS.md.

Called by benchmarks/compare (which installs the peers and builds the programs first); run
`benchmarks/compare --help` for the options. The defaults are issue 8's workloads, the spawns
scaled for a 2-core VM where a page fault costs tens of microseconds and an exec of /bin/true
several milliseconds (2,000 -> 100 spawns; copies of 64 MiB, 256 MiB and 1 GiB where issue 8
had 64 MiB, 1 and 4 GiB); the 10,000 waiting children and the 256 MiB through cat are issue 13's
sizes. The flags marked "issue 8" restore the full sizes. Every figure is a ratio of two medians measured in
the same run: the targets of one workload run round-robin (the starting target rotates each
round), the first round is a warm-up and is discarded, and each target's median over the
remaining rounds is kept. Absolute times on a shared machine drift; the ratios much less.

pidring is measured on both of its backends in the same rounds (issue 13): the targets named
"pidring io_uring..." and "pidring epoll" are the same program run with PIDRING_BACKEND=io_uring
or =epoll in its environment, and every such run must say on stderr which backend its
io_context really used (PIDRING_BENCH_SHOW_BACKEND=1), or the run stops.

Before every round (the warm-up included) an idle gate waits until the 1-minute load average is
below --idle-load, or, since that average still carries this script's own previous round, until
the run queue itself (everyone else's runnable tasks) has stayed below --idle-runq for 10 s; for
at most --idle-timeout seconds per round (and --idle-budget in all): a round that starts on the
timeout is recorded as taken under load. The load average, the time waited, what opened the
gate, and the machine's CPU use and run queue in the --idle-sample seconds just before each round
(when this script and its children are idle, so: other people's work) are kept in the results.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def out_of(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout.strip()


def try_out(cmd, timeout=60, env=None):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def printed_seconds(cmd):
    """A program that prints its own measurement as the first number on stdout."""
    return float(out_of(cmd).split()[0])


def printed_pair(cmd):
    """A program that prints two numbers (seconds, its own CPU seconds)."""
    v = out_of(cmd).split()
    return float(v[0]), float(v[1])


def wall_seconds(cmd):
    """A program timed from outside (cp, io_uring-cp): start to exit, as a user sees it.
    Returns None when the program says the method is not supported here (exit 4 or 5)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0
    if r.returncode in (4, 5):
        return None
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {r.returncode}: {r.stderr.strip()}")
    return t


def interleave(targets, rounds, before=None, warmup=1, key=None, settle=False, shuffle=False):
    """targets: list of (name, fn). Returns {name: median or None} and {name: [samples]}.
    key: the name under which the idle gate records the load of every round. settle: after the
    gate, every target runs once unmeasured before the round (for samples of a few ms: the gate
    leaves both vCPUs idle for --idle-sample seconds, and the first program to need a second CPU
    then pays for waking it, several ms on this VM). shuffle: each round in an order of its own
    (seeded by the key) instead of the list rotated, so that no target always follows the same
    one: cold copies carry over (what the previous program left to write back, to free or to
    discard), and a rotation gives every target the same predecessor in every round."""
    samples = {name: [] for name, _ in targets}
    n = len(targets)
    if key:
        GATE.begin(key)
    for r in range(warmup + rounds):
        if key:
            GATE.wait(key)
        if settle:
            for _, fn in targets:
                fn()
        order = targets[r % n:] + targets[:r % n]
        if shuffle:
            random.Random(f"{key}/{r}").shuffle(order)
        for name, fn in order:
            if before:
                before(name)
            v = fn()
            if r >= warmup and v is not None:
                samples[name].append(v)
        log(f"    round {r + 1}/{warmup + rounds}" + (" (warm-up)" if r < warmup else ""))
    med = {k: (statistics.median(v) if v else None) for k, v in samples.items()}
    if key:
        SAMPLES[key] = samples  # kept in the results: a median alone hides an outlier round
    return med, samples


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def proc_stat():
    """(idle, total) jiffies of all CPUs, and the tasks runnable (this one included) or blocked
    in uninterruptible sleep right now: what the kernel's load average counts."""
    idle = total = runq = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                idle, total = v[3] + v[4], sum(v[:8])  # idle + iowait; steal included in total
            elif line.startswith(("procs_running", "procs_blocked")):
                runq += int(line.split()[1])
    return idle, total, runq


def others_activity(seconds, every=0.1):
    """While this script and its children are idle: the machine's CPU use (0-1) and the mean
    number of tasks runnable or in D state (this script excluded) over `seconds`: everyone
    else's load, now, without the load average's minute of memory."""
    i0, t0, _ = proc_stat()
    qs = []
    end = time.monotonic() + seconds
    while True:
        qs.append(proc_stat()[2] - 1)
        if time.monotonic() >= end:
            break
        time.sleep(every)
    i1, t1, _ = proc_stat()
    busy = 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None
    return busy, statistics.mean(qs)


class IdleGate:
    """Waits for an idle machine before each round and records the load every round started at.

    A round starts once the 1-minute load average is below `threshold`. That average remembers
    the last minute, this script's own previous round included: 64 children exec'ing at once
    push it far above 100 here, and it then needs minutes to decay on a machine nobody else uses.
    So while it waits, the gate also watches the run queue itself (tasks runnable or in D state,
    this script excluded, sampled every 0.1 s in windows of `poll` seconds: nothing of ours runs
    between rounds, so that is everyone else's load, now); two windows in a row with a mean below
    `runq` (0: never) also open the gate. Waiting stops after `timeout` seconds for one round or
    once `budget` seconds were spent waiting in all: the round then runs anyway and is recorded
    as under load. Before every round the CPU use and run queue of the last `sample` seconds are
    recorded too."""

    def __init__(self, threshold, runq, timeout, budget, sample, poll=5.0):
        self.threshold, self.runq, self.timeout, self.budget = threshold, runq, timeout, budget
        self.sample, self.poll = sample, poll
        self.waited = 0.0
        self.rounds = {}

    def begin(self, key):
        self.rounds[key] = []

    def wait(self, key):
        t0 = time.monotonic()
        l1 = load1()
        reason = "load" if l1 < self.threshold else None
        calm = 0
        q = None
        while reason is None:
            waited = time.monotonic() - t0
            if waited >= self.timeout or self.waited + waited >= self.budget:
                reason = "timeout"
                break
            if q is None:
                log(f"    idle gate: load average {l1:.2f} >= {self.threshold}; waiting (at most "
                    f"{min(self.timeout, self.budget - self.waited):.0f} s)")
            _, q = others_activity(min(self.poll, max(0.5, self.timeout - waited)))
            l1 = load1()
            if l1 < self.threshold:
                reason = "load"
            elif self.runq > 0 and q < self.runq:
                calm += 1
                if calm >= 2:
                    reason = "run queue"
            else:
                calm = 0
        waited = time.monotonic() - t0
        self.waited += waited
        busy = runq = None
        if self.sample > 0:
            busy, runq = others_activity(self.sample)
        rec = {"load": loadavg(), "load1": l1, "waited_s": round(waited, 1), "gate": reason,
               "under_load": reason == "timeout", "cpu_busy": None if busy is None else round(busy, 3),
               "runq": None if runq is None else round(runq, 2)}
        if q is not None or reason == "timeout":
            why = ("below the threshold" if reason == "load" else "UNDER LOAD (timeout)" if reason == "timeout"
                   else f"run queue idle ({q:.2f} tasks; the average is still falling)")
            log(f"    idle gate: round starts after {waited:.0f} s at load average {l1:.2f}, {why}")
        self.rounds.setdefault(key, []).append(rec)
        return rec


GATE = IdleGate(1.5, 1.5, 180, 3600, 0.5)


# --------------------------------------------------------------------------------------------
# pidring on a chosen backend

BACKENDS = ("io_uring", "epoll")
SEEN = {}  # "workload key" -> {target: sorted backends the program reported}
SAMPLES = {}  # workload key -> {target: [every measured round]}


def backend_env(backend):
    return dict(os.environ, PIDRING_BACKEND=backend, PIDRING_BENCH_SHOW_BACKEND="1")


def check_backend(key, name, backend, cmd, stderr):
    """The program printed "pidring-backend: <backend> [waitid]" (bench_backend.hpp); anything
    else on stderr is passed on. Stops the run if the backend is not the one asked for."""
    said = []
    for line in stderr.splitlines():
        if line.startswith("pidring-backend:"):
            said.append(line.split(":", 1)[1].strip())
        elif line.strip():
            log("    " + line)
    if not said or any(x.split()[0] != backend for x in said):
        raise RuntimeError(f"{name}: asked for PIDRING_BACKEND={backend}, the program reported "
                           f"{said or 'nothing'} ({' '.join(cmd)})")
    seen = SEEN.setdefault(key, {}).setdefault(name, [])
    for x in said:
        if x not in seen:
            seen.append(x)


def on_backend(key, name, backend, cmd):
    """stdout of a pidring benchmark program run with PIDRING_BACKEND=backend, checked."""
    r = subprocess.run(cmd, env=backend_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {r.returncode}: {r.stderr.strip()}")
    check_backend(key, name, backend, cmd, r.stderr)
    return r.stdout.strip()


def fd_kinds(pid):
    """The anonymous-inode kinds among a process's fds (eventpoll, io_uring...), read from outside."""
    kinds = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("anon_inode:"):
                kinds.add(t[len("anon_inode:"):].strip("[]"))
    except OSError:
        pass
    return kinds


def on_backend_watched(key, name, backend, cmd, window=1.0):
    """Like on_backend, and also looks at the running program's fds from outside during its first
    `window` seconds: io_uring shows an anon_inode:[io_uring], epoll an anon_inode:[eventpoll]
    and no ring. Returns (stdout, kinds seen)."""
    p = subprocess.Popen(cmd, env=backend_env(backend), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kinds = set()
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < window:
        kinds |= fd_kinds(p.pid)
        time.sleep(0.1)
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {p.returncode}: {err.strip()}")
    check_backend(key, name, backend, cmd, err)
    want, other = ("io_uring", "eventpoll") if backend == "io_uring" else ("eventpoll", "io_uring")
    if kinds and (want not in kinds or other in kinds):
        raise RuntimeError(f"{name}: PIDRING_BACKEND={backend}, but its fds show {sorted(kinds)}")
    return out.strip(), sorted(kinds)


# --------------------------------------------------------------------------------------------
# Workloads


# The pidring targets of the workloads that issue 13 measures on both backends. "pidring io_uring"
# is the default context_options (IORING_OP_WAITID where the kernel has it, Linux 6.7+); the
# pidfd-poll variant of the io_uring backend stays as context where it was measured before.
PIDRING_IO_URING = "pidring io_uring"
PIDRING_IO_URING_POLL = "pidring io_uring (pidfd poll)"
PIDRING_EPOLL = "pidring epoll"


def w_spawn(a, R):
    b = a.bin
    R["spawn"] = {}
    R["spawn_cpu"] = {}
    for k in (1, 64):
        key = f"spawn {k}"
        log(f"spawn + wait of /bin/true: {a.spawn_n} children, {k} in flight")
        args = [str(a.spawn_n), str(k)]
        targets = [
            (PIDRING_IO_URING, lambda: printed_pair_of(on_backend(key, PIDRING_IO_URING, "io_uring", [f"{b}/bench_spawn", "pidring"] + args))),
            (PIDRING_IO_URING_POLL, lambda: printed_pair_of(on_backend(key, PIDRING_IO_URING_POLL, "io_uring", [f"{b}/bench_spawn", "pidring-poll"] + args))),
            (PIDRING_EPOLL, lambda: printed_pair_of(on_backend(key, PIDRING_EPOLL, "epoll", [f"{b}/bench_spawn", "pidring"] + args))),
            ("posix_spawn + waitpid (C floor)", lambda: printed_pair([f"{b}/bench_spawn", "posix_spawn"] + args)),
            ("fork + execve + waitpid", lambda: printed_pair([f"{b}/bench_spawn", "fork-exec"] + args)),
        ]
        if os.path.exists(f"{b}/bench_boost_spawn"):
            targets.append(("Boost.Process v2 async_wait", lambda: printed_pair([f"{b}/bench_boost_spawn"] + args)))
        targets += [
            ("asyncio (default watcher)", lambda: printed_pair([PY, f"{HERE}/spawn_asyncio.py", "default"] + args)),
            ("asyncio (PidfdChildWatcher)", lambda: printed_pair([PY, f"{HERE}/spawn_asyncio.py", "pidfd"] + args)),
        ]
        if shutil.which("node"):
            targets.append(("Node child_process.spawn", lambda: printed_pair(["node", f"{HERE}/spawn_node.js"] + args)))
        cpu = {name: [] for name, _ in targets}

        def with_cpu(name, fn):
            # The programs print "<seconds> <own CPU seconds>"; the CPU is kept on the side.
            def run():
                out = fn()
                cpu[name].append(out[1])
                return out[0]
            return (name, run)

        med, _ = interleave([with_cpu(n_, f) for n_, f in targets], a.rounds, key=key)
        R["spawn"][str(k)] = med
        R["spawn_cpu"][str(k)] = {n_: statistics.median(v[1:]) if len(v) > 1 else None for n_, v in cpu.items()}


def printed_pair_of(text):
    v = text.split()
    return float(v[0]), float(v[1])


def w_heap(a, R):
    log(f"spawn latency from a small parent and from one with {a.heap_mib} MiB resident")
    modes = ["pidring-waitid", "posix_spawn", "fork-exec"]
    R["heap"] = {m: {} for m in modes}
    # Alternating small and big parents; each parent process interleaves the modes itself
    # (--rounds rounds after a warm-up), so the gate runs before each parent process.
    per = {m: {"small": [], "big": []} for m in modes}
    GATE.begin("heap")
    for rep in range(2):
        for which, mib in (("small", 0), ("big", a.heap_mib)):
            GATE.wait("heap")
            txt = out_of([f"{a.bin}/bench_spawn", "latency", str(a.heap_n), str(a.rounds), str(mib)] + modes)
            for line in txt.splitlines():
                m, _, s = line.split()
                per[m][which].append(float(s))
            log(f"    {which} parent, pass {rep + 1}/2 done")
    for m in modes:
        R["heap"][m] = {w: statistics.median(v) for w, v in per[m].items()}


def w_exit(a, R):
    """Every waiter in one process per round, sample by sample (bench_exit_latency interleaved):
    the child's own exit dominates the latency and drifts, so separate processes measured minutes
    apart compare the drift more than the waiters. Each round gives one median per waiter; the
    result is the median of the rounds. Two kinds of child, alternating by round: forked (R["exit"]:
    a callable child; every page the parent writes after the fork faults once) and programs
    (R["exit_exec"]: started as posix_spawn and pidring start commands, without copy-on-write)."""
    log(f"exit -> resume latency, {a.exit_n} children per waiter per round, all waiters in one process")
    names = {"io_uring-waitid": PIDRING_IO_URING, "io_uring-poll": PIDRING_IO_URING_POLL,
             "epoll": PIDRING_EPOLL, "waitpid": "thread blocked in waitpid",
             "epoll-pidfd": "epoll on a pidfd"}
    kinds = {"exit": [], "exit_exec": ["exec"]}
    samples = {k: {} for k in kinds}
    GATE.begin("exit")
    for r in range(1 + a.rounds):
        for key, extra in kinds.items():
            GATE.wait("exit")
            out = out_of([f"{a.bin}/bench_exit_latency", "interleaved", str(a.exit_n)] + extra)
            if r == 0:
                continue
            for line in out.splitlines():
                mode, us = line.split()
                samples[key].setdefault(names[mode], []).append(float(us))
        log(f"    round {r + 1}/{1 + a.rounds}" + (" (warm-up)" if r == 0 else ""))
    # The program runs each pidring waiter on a context made with that backend explicitly.
    for mode, name in names.items():
        if name in samples["exit"] and mode.split("-")[0] in BACKENDS:
            seen = SEEN.setdefault("exit", {}).setdefault(name, [])
            said = "io_uring waitid" if mode == "io_uring-waitid" else mode.split("-")[0]
            if said not in seen:
                seen.append(said)
    for key in kinds:
        SAMPLES[key] = samples[key]
        R[key] = {k: statistics.median(v) for k, v in samples[key].items()}


def w_many(a, R):
    """--many-n children waiting at once: the parent's RSS growth per child and its threads, for
    pidring on both backends and asyncio. --many-rounds rounds (the programs in rotating order,
    no warm-up: each run is one measurement of memory, not of time); the median per program."""
    log(f"{a.many_n} children waiting at once")
    n = str(a.many_n)
    kinds = {}

    def pidring(name, backend):
        def fn():
            out, k = on_backend_watched("many", name, backend, [f"{a.bin}/bench_many_children", n])
            kinds.setdefault(name, [])
            kinds[name] = sorted(set(kinds[name]) | set(k))
            return out.split()
        return (name, fn)

    targets = [pidring(PIDRING_IO_URING, "io_uring"), pidring(PIDRING_EPOLL, "epoll"),
               ("asyncio (default watcher)", lambda: out_of([PY, f"{HERE}/many_asyncio.py", "default", n]).split()),
               ("asyncio (PidfdChildWatcher)", lambda: out_of([PY, f"{HERE}/many_asyncio.py", "pidfd", n]).split())]
    vals = {name: [] for name, _ in targets}
    GATE.begin("many")
    for r in range(a.many_rounds):
        GATE.wait("many")
        for name, fn in targets[r % len(targets):] + targets[:r % len(targets)]:
            v = fn()
            vals[name].append(v)
            log(f"    {name}: {float(v[0]):.0f} B/child, {v[1]} threads ({v[2]} before)")
    res = {}
    for name, vs in vals.items():
        res[name] = {"bytes_per_child": statistics.median(float(v[0]) for v in vs),
                     "threads": max(int(v[1]) for v in vs), "threads_before": max(int(v[2]) for v in vs)}
        if name in kinds:
            res[name]["fds_seen"] = kinds[name]
    R["many"] = res


def w_runcat(a, R):
    log(f"run(cat) with {a.cat_mib} MiB in and out")
    m = str(a.cat_mib)
    targets = [(PIDRING_IO_URING, lambda: float(on_backend("runcat", PIDRING_IO_URING, "io_uring", [f"{a.bin}/bench_run_cat", m]).split()[0])),
               (PIDRING_EPOLL, lambda: float(on_backend("runcat", PIDRING_EPOLL, "epoll", [f"{a.bin}/bench_run_cat", m]).split()[0])),
               ("poll() loop in C (floor)", lambda: printed_seconds([f"{a.bin}/bench_run_cat_poll", m])),
               ("Python subprocess.run(capture_output=True)", lambda: printed_seconds([PY, f"{HERE}/run_cat.py", m]))]
    R["runcat"], _ = interleave(targets, a.rounds, key="runcat")


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def make_file(path, mib):
    if os.path.exists(path) and os.path.getsize(path) == mib << 20:
        return
    log(f"    writing {path} ({mib} MiB of random bytes)")
    with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
        for _ in range(mib):
            dst.write(src.read(1 << 20))


DST = object()  # in copy_commands' argv: where each run's fresh destination name goes


class fresh_names:
    """Destination names never used before in this run: this VM's ext4 does not reuse an inode
    freed in the last minute, and a name deleted just before the copy made the rounds differ
    several times over. `drop()` removes the copies made so far (between runs, untimed)."""

    def __init__(self, d, stem):
        self.d, self.stem, self.n, self.made = d, stem, 0, []

    def argv(self, argv):
        self.n += 1
        name = f"{self.d}/{self.stem}-{os.getpid()}-{self.n}"
        self.made.append(name)
        return [name if x is DST else x for x in argv]

    def drop(self):
        for p in self.made:
            if os.path.exists(p):
                os.unlink(p)
        self.made.clear()


def copy_commands(a, src, dst):
    """(name, argv, timed from outside) for every copier of a file src -> dst (dst may be DST)."""
    b = f"{a.bin}/bench_copy"
    t = [("pidring automatic (default parallelism)", [b, "pidring", "automatic", "0", src, dst], True)]
    if a.pcp and os.path.exists(a.pcp):
        t.append(("pcp", [a.pcp, "--no-progress", src, dst], True))
    for method, p in (("copy_file_range", 1), ("read_write", 1), ("uring", 1), ("uring", 4)):
        t.append((f"pidring {method} p{p}", [b, "pidring", method, str(p), src, dst], True))
    t.append(("pidring reflink", [b, "pidring", "reflink", "1", src, dst], True))
    t.append(("cp", ["cp", src, dst], True))
    t.append(("Python shutil.copyfile", [PY, f"{HERE}/copy_shutil.py", src, dst], False))
    if a.uring_cp and os.path.exists(a.uring_cp):
        t.append(("liburing io_uring-cp", [a.uring_cp, src, dst], True))
    t.append(("copy_file_range loop", [b, "cfr-loop", src, dst], True))
    return t


def startup_costs(a, d, key):
    """Each program's exec-to-exit time for an empty file: its start-up (exec, dynamic linking,
    io_uring setup...), which on a VM with slow page faults is milliseconds. Subtracted from the
    copies so that a 64 MiB copy compares copying, not loading libstdc++ against loading libc."""
    src = f"{d}/empty-src"
    open(src, "wb").close()
    names = fresh_names(d, "empty-dst")
    cmds = copy_commands(a, src, DST)
    targets = [(name, (lambda argv=argv: wall_seconds(names.argv(argv))) if outside else (lambda: 0.0))
               for name, argv, outside in cmds]
    med, _ = interleave(targets, a.copy_rounds, before=lambda name: names.drop(), key=key)
    names.drop()
    os.unlink(src)
    return med


def copy_targets(a, src, names, mib, startup):
    def corrected(name, argv):
        def fn():
            t = wall_seconds(names.argv(argv))
            return None if t is None else max(t - (startup.get(name) or 0.0), 1e-6)
        return fn

    return [(name, corrected(name, argv) if outside else (lambda argv=argv: printed_seconds(names.argv(argv))))
            for name, argv, outside in copy_commands(a, src, DST)]


def memcpy_ceiling(a, mib, runs=3):
    """The median of `runs` memcpy ceilings, taken outside the copiers' rounds: the program fills
    and frees 2 x min(mib, 256) MiB, and on this VM (free pages handed back to the host) the first
    copier after it paid for touching that memory again: a cold 1 GiB copy took 1.29 s instead of
    0.62 s right after it, every round, for whichever copier followed it in the rotation."""
    v = [printed_seconds([f"{a.bin}/bench_copy", "memcpy", str(mib)]) for _ in range(runs)]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def w_copy(a, R):
    R.setdefault("copy", {})
    fss = [("ext4", a.ext4_dir), ("tmpfs", a.tmpfs_dir)]
    root = os.geteuid() == 0
    for fs, d in fss:
        os.makedirs(d, exist_ok=True)
        log(f"copy: start-up cost of each copier on {fs} (an empty file)")
        startup = startup_costs(a, d, f"copy start-up {fs}")
        R.setdefault("copy_startup", {})[fs] = startup
        for mib in a.copy_mib:
            src = f"{d}/src-{mib}"
            make_file(src, mib)
            caches = ["warm"] + (["cold"] if fs != "tmpfs" and root else [])
            for cache in caches:
                key = f"{fs} {mib} MiB {cache}"
                log(f"copy: {key}")
                names = fresh_names(d, f"dst-{mib}")

                def before(name, cache=cache, names=names):
                    names.drop()
                    if cache == "cold":
                        drop_caches()

                med, _ = interleave(copy_targets(a, src, names, mib, startup), a.copy_rounds, before=before,
                                    key=f"copy {key}", shuffle=True)
                med["memcpy ceiling"] = memcpy_ceiling(a, mib)
                R["copy"][key] = {"mib": mib, "fs": fs, "cache": cache, "results": med}
                names.drop()
            if not a.keep_files:
                os.unlink(src)


AGAIN_COPIES = 41  # bench_copy again: copies timed after the first (report.py reads R["copyheap_again"])


def w_copyheap(a, R):
    """copy_file timed inside the process (io_context set-up included), from a small process and
    from one with --heap-mib resident, interleaved: no process is created to copy, so the heap
    must not matter (issue 12: <= 1.1x). A 4 KiB file (fixed costs) and a 64 MiB one, on tmpfs.
    Next to it the floor: a bare ring, a thread that copy_file_range's, its join; and for the 4 KiB
    file the median of AGAIN_COPIES copies made after a first one in the same io_context (what a
    long-lived program pays per file once its pool thread runs)."""
    d = a.tmpfs_dir
    os.makedirs(d, exist_ok=True)
    R["copyheap"] = {}
    R["copyheap_again"] = AGAIN_COPIES
    for label, size in (("4 KiB", 4096), ("64 MiB", 64 << 20)):
        src, dst = f"{d}/heap-src", f"{d}/heap-dst"
        with open("/dev/urandom", "rb") as f, open(src, "wb") as o:
            o.write(f.read(size))
        log(f"copy_file of {label} on tmpfs from a small process and from one with {a.heap_mib} MiB resident")

        def before(name):
            if os.path.exists(dst):
                os.unlink(dst)

        targets = []
        for which, ballast in (("small", "0"), ("big", str(a.heap_mib))):
            env = dict(os.environ, BENCH_BALLAST_MIB=ballast)
            kinds = [("automatic", [f"{a.bin}/bench_copy", "pidring", "automatic", "0", src, dst]),
                     ("floor", [f"{a.bin}/bench_copy", "floor", src, dst])]
            if size <= 4096:  # every copy after the first in one io_context (the pool running)
                kinds.append(("again", [f"{a.bin}/bench_copy", "again", str(AGAIN_COPIES), src, dst]))
            for name, argv in kinds:
                targets.append((f"{name} {which}",
                                lambda argv=argv, env=env: float(out_of(argv, env=env, stderr=subprocess.DEVNULL).split()[0])))
        med, _ = interleave(targets, a.rounds, before=before, key=f"copyheap {label}")
        R["copyheap"][label] = med
        for p in (src, dst):
            if os.path.exists(p):
                os.unlink(p)


def w_copysmall(a, R):
    """A 4 KiB file, pcp against cp, both timed from outside exec to exit (start-up included: what
    a user waits for). Issue 12: pcp no more than 1 ms slower than cp."""
    if not (a.pcp and os.path.exists(a.pcp)):
        log("copysmall: no pcp built; skipped")
        return
    R["copysmall"] = {}
    for fs, d in (("ext4", a.ext4_dir), ("tmpfs", a.tmpfs_dir)):
        os.makedirs(d, exist_ok=True)
        src = f"{d}/small-src"
        with open(src, "wb") as f:
            f.write(os.urandom(4096))
        runs = [0]

        def fresh():
            runs[0] += 1
            return f"{d}/small-dst-{runs[0]}"

        def timed(argv_of):
            def fn():
                dst = fresh()
                t = wall_seconds(argv_of(dst))
                os.unlink(dst)
                return t
            return fn

        log(f"copy of a 4 KiB file on {fs}: pcp and cp")
        targets = [("pcp", timed(lambda dst: [a.pcp, "--no-progress", src, dst])), ("cp", timed(lambda dst: ["cp", src, dst]))]
        med, _ = interleave(targets, a.small_rounds, key=f"copysmall {fs}", settle=True)
        R["copysmall"][fs] = med
        os.unlink(src)


def make_tree(root, nfiles, ndirs, lo, hi, deep, seed):
    """A tree of random files (made once, kept between runs)."""
    import random
    if os.path.exists(os.path.join(root, ".complete")):
        return
    log(f"    making {root}: {nfiles} files of {lo}-{hi} B in {ndirs} directories")
    shutil.rmtree(root, ignore_errors=True)
    rnd = random.Random(seed)
    dirs = []
    for i in range(ndirs):
        p = os.path.join(root, f"a{i % 7}", f"b{i % 29}", f"c{i}") if deep else os.path.join(root, f"d{i}")
        os.makedirs(p, exist_ok=True)
        dirs.append(p)
    with open("/dev/urandom", "rb") as ur:
        for i in range(nfiles):
            with open(os.path.join(dirs[i % ndirs], f"f{i}"), "wb") as f:
                f.write(ur.read(rnd.randint(lo, hi)))
    open(os.path.join(root, ".complete"), "w").close()


def has_journal(path):
    """Whether the file system holding `path` keeps a jbd2 journal (ext3/ext4): True, False, or
    None where that cannot be told (not a block device)."""
    st = os.stat(path)
    dev = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not os.path.exists(dev):
        return None
    return os.path.exists(f"/proc/fs/jbd2/{os.path.basename(os.path.realpath(dev))}-8")


LOOP_IMAGE_GIB = 4


def journaled_ext4(a):
    """A fresh ext4 as mkfs.ext4 makes it (with a journal), on a loop device over a sparse file in
    tmpfs: (mount point, undo) or None where that cannot be had (not root, no room in tmpfs, no
    mkfs.ext4 or loop devices)."""
    if os.geteuid() != 0:
        log("tree: not root, so no journaled ext4 on a loop device; its rounds are skipped")
        return None
    os.makedirs(a.tmpfs_dir, exist_ok=True)
    if shutil.disk_usage(a.tmpfs_dir).free < (LOOP_IMAGE_GIB + 1) << 30:
        log(f"tree: less than {LOOP_IMAGE_GIB + 1} GiB free in {a.tmpfs_dir} for a loop ext4; its rounds are skipped")
        return None
    img = os.path.join(a.tmpfs_dir, f"ext4-journaled-{os.getpid()}.img")
    mnt = tempfile.mkdtemp(prefix="pidring-ext4-")
    mounted = [False]

    def undo():
        if mounted[0] and subprocess.run(["umount", mnt], check=False).returncode != 0:
            subprocess.run(["umount", "-l", mnt], check=False)  # busy: detached, freed when idle
        if os.path.ismount(mnt):
            log(f"tree: {mnt} is still mounted; left as it is (image {img})")
            return
        shutil.rmtree(mnt, ignore_errors=True)
        if os.path.exists(img):
            os.unlink(img)
    try:
        with open(img, "wb") as f:
            f.truncate(LOOP_IMAGE_GIB << 30)
        mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
        # Inode tables and journal zeroed now, not by a kernel thread during the rounds.
        subprocess.run([mkfs, "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img],
                       check=True, capture_output=True, text=True)
        subprocess.run(["mount", "-o", "loop,discard", img, mnt], check=True, capture_output=True, text=True)
        mounted[0] = True
        return mnt, undo
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        log(f"tree: no journaled ext4 on a loop device ({e} {detail.strip()}); its rounds are skipped")
        undo()
        return None
    except BaseException:
        undo()
        raise


TREES = [("4,000 files, 256 B-128 KiB, 20 directories", "tree4k", 4000, 20, 256, 128 << 10, False),
         ("20,000 files, 0-64 KiB, 400 directories", "tree20k", 20000, 400, 0, 64 << 10, True)]


def tree_rounds(a, R, d, suffix):
    """Both trees made in `d` and copied there by every program, a.tree_rounds rounds after a
    warm-up, the last run's copy removed before each run; results under
    R["tree"][tree label + suffix]."""
    for label, name, nfiles, ndirs, lo, hi, deep in TREES:
        make_tree(os.path.join(d, name), nfiles, ndirs, lo, hi, deep, seed=len(name))
    floor = os.path.join(a.bin, "bench_tree_floor")
    if not os.path.exists(floor):
        log("tree: no bench_tree_floor built; the floor rows are skipped")
    journal = has_journal(d)
    outs = []
    try:
        for label, name, nfiles, ndirs, lo, hi, deep in TREES:
            src = os.path.join(d, name)
            out = os.path.join(d, f"{name}-copies-{os.getpid()}")
            os.makedirs(out, exist_ok=True)
            outs.append(out)
            runs = [0]
            last = []

            def fresh():
                runs[0] += 1
                p = os.path.join(out, f"c{runs[0]}")
                last.append(p)
                return p

            def before(_name):
                for p in last:
                    shutil.rmtree(p, ignore_errors=True)
                last.clear()
                subprocess.run(["sync"], check=True)

            def timed(argv_of, shell=False):
                def fn():
                    dst = fresh()
                    argv = argv_of(dst)
                    t0 = time.perf_counter()
                    r = subprocess.run(argv, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    t = time.perf_counter() - t0
                    if r.returncode != 0:
                        raise RuntimeError(f"{argv}: exit {r.returncode}: {r.stderr.strip()}")
                    return t
                return fn

            targets = [("pcp -r", timed(lambda dst: [a.pcp, "--no-progress", "-r", src, dst]))]
            for j in a.tree_jobs:
                targets.append((f"pcp -r -j {j}", timed(lambda dst, j=j: [a.pcp, "--no-progress", "-r", "-j", str(j), src, dst])))
            targets.append(("cp -r", timed(lambda dst: ["cp", "-r", src, dst])))
            if shutil.which("rsync"):
                targets.append(("rsync -a", timed(lambda dst: ["rsync", "-a", src + "/", dst + "/"])))
            targets.append(("tar c | tar x", timed(
                lambda dst: f"mkdir '{dst}' && tar -C '{src}' -cf - . | tar -C '{dst}' -xf -", shell=True)))
            if os.path.exists(floor):
                for n in (1, 2):
                    targets.append((f"floor, {n} thread{'s' if n > 1 else ''}",
                                    timed(lambda dst, n=n: [floor, str(n), src, dst])))
            log(f"tree: {label}{suffix}")
            med, _ = interleave(targets, a.tree_rounds, before=before, key=f"tree {label}{suffix}")
            R["tree"][label + suffix] = {"files": nfiles, "results": med, "journal": journal}
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)


def w_tree(a, R):
    """Trees (issue 12): 4,000 files of 256 B-128 KiB in 20 directories, and 20,000 files of
    0-64 KiB in a deeper tree (400 directories), copied (page cache warm) by pcp -r (default
    workers, then 1, 2, 4 and 8), cp -r, rsync -a, tar c | tar x and bench_tree_floor (the least
    work a copier of 1 and 2 threads can do), each into a fresh name, the last run's copy removed
    and everything written back (sync) before every run, untimed. On two file systems:

    - the file system of --ext4-dir (results carry "journal": whether it keeps one). On the VM
      this was written on it is an ext4 without a journal, and ext4 without one will not reuse
      an inode freed in the last 60 s (360 s while its inode-table block is dirty): every inode
      allocation scans its block group from the start and reads each such inode's dtime to skip
      it. Every tool's creat() then pays for the copies removed a moment ago, and the rounds
      slow down 3-5x over a run, unevenly (keeping every copy instead did not steady them).
    - a fresh ext4 as mkfs.ext4 makes it, with a journal (what users have), on a loop device over
      a file in tmpfs: rows "..., journaled ext4". Removing a copy costs the next run nothing
      there, and its rounds agree within a few percent. Skipped where it cannot be mounted.

    report.py judges the targets on the journaled rows only where a run has both."""
    if not (a.pcp and os.path.exists(a.pcp)):
        log("tree: no pcp built; skipped")
        return
    R["tree"] = {}
    os.makedirs(a.ext4_dir, exist_ok=True)
    try:
        tree_rounds(a, R, a.ext4_dir, "")
    finally:
        if not a.keep_files:
            for t in TREES:
                shutil.rmtree(os.path.join(a.ext4_dir, t[1]), ignore_errors=True)
    loop = journaled_ext4(a)
    if loop:
        mnt, undo = loop
        try:
            tree_rounds(a, R, mnt, ", journaled ext4")
        finally:
            undo()


def w_sparse(a, R):
    R["sparse"] = {}
    for fs, d in (("ext4", a.ext4_dir), ("tmpfs", a.tmpfs_dir)):
        os.makedirs(d, exist_ok=True)
        src, dst = f"{d}/sparse-src", f"{d}/sparse-dst"
        with open(src, "wb") as f:
            f.truncate(1 << 40)
            f.seek(0)
            f.write(os.urandom(4096))
            f.seek(1 << 39)
            f.write(os.urandom(4096))
        log(f"sparse 1 TiB copy on {fs}")

        def before(name, dst=dst):
            if os.path.exists(dst):
                os.unlink(dst)

        blocks = {}

        def timed(name, cmd):
            def fn():
                s = wall_seconds(cmd)
                blocks[name] = os.stat(dst).st_blocks * 512 if os.path.exists(dst) else None
                return s
            return (name, fn)

        targets = [timed("pidring copy_file (automatic)", [f"{a.bin}/bench_copy", "pidring", "automatic", "0", src, dst]),
                   timed("cp --sparse=auto", ["cp", "--sparse=auto", src, dst])]
        med, _ = interleave(targets, a.rounds, before=before, key=f"sparse {fs}")
        R["sparse"][fs] = {"results": med, "allocated": blocks}
        for p in (src, dst):
            if os.path.exists(p):
                os.unlink(p)


def w_profile(a, R):
    """Where the time goes: perf stat (software events) and strace -c of one spawn run each."""
    prof = {}
    n = str(a.spawn_n)
    # (label prefix, mode, backend or None for the environment's default)
    runs = [("", "pidring-waitid", "io_uring"), ("", "pidring-poll", "io_uring"),
            ("PIDRING_BACKEND=epoll ", "pidring", "epoll"), ("", "posix_spawn", None), ("", "fork-exec", None)]
    if shutil.which("perf"):
        for pre, mode, backend in runs:
            txt = try_out(["perf", "stat", "-e", "task-clock,page-faults,context-switches,cpu-migrations",
                           f"{a.bin}/bench_spawn", mode, n, "1"], env=backend and dict(os.environ, PIDRING_BACKEND=backend))
            prof[f"{pre}perf stat bench_spawn {mode} {n} 1"] = "\n".join(
                l for l in txt.splitlines() if re.search(r"task-clock|page-faults|context-switches|migrations|elapsed|user|sys", l))
    if shutil.which("strace"):
        for pre, mode, backend in (runs[0], runs[2], runs[3]):
            txt = try_out(["strace", "-c", "-f", "-o", "/dev/stdout", f"{a.bin}/bench_spawn", mode, "100", "1"],
                          env=backend and dict(os.environ, PIDRING_BACKEND=backend))
            lines = [l for l in txt.splitlines() if not re.fullmatch(r"[0-9.]+", l.strip())]
            prof[f"{pre}strace -c -f bench_spawn {mode} 100 1"] = "\n".join(lines[:22])
    if os.path.exists(f"{a.bin}/bench_micro"):
        prof["bench_micro (Google Benchmark)"] = try_out([f"{a.bin}/bench_micro", "--benchmark_min_time=0.3"], timeout=600)
    R["profile"] = prof


# --------------------------------------------------------------------------------------------
# Machine


def machine():
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    def pkg(name):
        return try_out(["dpkg-query", "-W", "-f=${Version}", name]) or "not installed"

    os_rel = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_rel = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    df = try_out(["df", "-T", ROOT]).splitlines()
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "distro": os_rel,
        "compiler": try_out(["g++", "--version"]).splitlines()[0] if shutil.which("g++") else "?",
        "liburing": pkg("liburing-dev"),
        "boost": pkg("libboost1.81-dev"),
        "benchmark": pkg("libbenchmark-dev"),
        "python": try_out([PY, "--version"]),
        "node": try_out(["node", "--version"]) if shutil.which("node") else "not installed",
        "coreutils": try_out(["cp", "--version"]).splitlines()[0] if shutil.which("cp") else "?",
        "gnuplot": try_out(["gnuplot", "--version"]),
        "disk": df[1] if len(df) > 1 else "?",
        "date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="directory holding the built bench_* programs")
    ap.add_argument("--uring-cp", default="", help="liburing's examples/io_uring-cp, if built")
    ap.add_argument("--results", default=os.path.join(ROOT, "build", "bench-results.json"))
    ap.add_argument("--only", default="spawn,heap,exit,many,runcat,copy,copysmall,copyheap,tree,sparse,profile",
                    help="comma-separated workloads (default: all); the copier's alone: "
                         "copy,copysmall,copyheap,tree,sparse")
    ap.add_argument("--pcp", default="", help="examples/pcp of the same build (default: next to --bin)")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds after the warm-up")
    ap.add_argument("--copy-rounds", type=int, default=5)
    ap.add_argument("--spawn-n", type=int, default=100, help="issue 8: 2000")
    ap.add_argument("--heap-mib", type=int, default=2048)
    ap.add_argument("--heap-n", type=int, default=10)
    ap.add_argument("--exit-n", type=int, default=100)
    ap.add_argument("--many-n", type=int, default=10000, help="issues 8 and 13: 10000")
    ap.add_argument("--many-rounds", type=int, default=1)
    ap.add_argument("--cat-mib", type=int, default=256, help="issues 8 and 13: 256")
    ap.add_argument("--copy-mib", default="64,256,1024", help="comma-separated sizes in MiB (issue 12: 64,256,1024)")
    ap.add_argument("--small-rounds", type=int, default=21, help="rounds of the 4 KiB copy")
    ap.add_argument("--tree-rounds", type=int, default=5, help="rounds of the tree copies")
    ap.add_argument("--tree-jobs", default="1,2,4,8", help="pcp -j values for the trees (the plot's x axis)")
    ap.add_argument("--ext4-dir", default=os.path.join(ROOT, "build", "bench-data"))
    ap.add_argument("--tmpfs-dir", default="/dev/shm/pidring-bench")
    ap.add_argument("--keep-files", action="store_true")
    ap.add_argument("--git", default="?", help="the pidring version measured (git describe)")
    ap.add_argument("--preset", default="release", help="the CMake preset the programs were built with (for the report)")
    ap.add_argument("--idle-load", type=float, default=1.5,
                    help="idle gate: before every round, wait until the 1-minute load average is below this "
                         "(default 1.5, for 2 cores; 0 never waits)")
    ap.add_argument("--idle-runq", type=float, default=None,
                    help="idle gate: also start a round once the run queue (tasks runnable or in D state, this "
                         "script excluded) has averaged below this for two 5 s windows, however high the load "
                         "average still is from the benchmark's own previous round (default: --idle-load; "
                         "0: only the load average opens the gate)")
    ap.add_argument("--idle-timeout", type=float, default=180,
                    help="idle gate: seconds to wait for one round before running it anyway, marked as taken "
                         "under load (default 180)")
    ap.add_argument("--idle-budget", type=float, default=3600,
                    help="idle gate: seconds of waiting in the whole run, after which rounds only record the "
                         "load (default 3600)")
    ap.add_argument("--idle-sample", type=float, default=0.5,
                    help="seconds over which the machine's CPU use is sampled just before every round (0: not)")
    a = ap.parse_args()
    a.copy_mib = [int(x) for x in a.copy_mib.split(",") if x]
    a.tree_jobs = [int(x) for x in a.tree_jobs.split(",") if x]
    if not a.pcp:
        a.pcp = os.path.join(os.path.dirname(os.path.abspath(a.bin)), "examples", "pcp")
    only = a.only.split(",")

    R = {}
    if os.path.exists(a.results) and len(only) < 11:
        with open(a.results) as f:
            R = json.load(f)  # a partial rerun updates the workloads it ran
    R["machine"] = machine()
    R["git"] = a.git
    R["config"] = {k: v for k, v in vars(a).items() if k not in ("results", "git")}
    global GATE
    GATE = IdleGate(a.idle_load if a.idle_load > 0 else float("inf"),
                    a.idle_load if a.idle_runq is None else a.idle_runq, a.idle_timeout, a.idle_budget, a.idle_sample)
    if "PIDRING_BACKEND" in os.environ:
        # Only the targets named after a backend choose one; the rest run on the default.
        log(f"compare: ignoring PIDRING_BACKEND={os.environ.pop('PIDRING_BACKEND')} for the targets "
            "that are not named after a backend")
    R["backend_automatic"] = [l.split(":", 1)[1].strip() for l in try_out(
        [f"{a.bin}/bench_spawn", "pidring", "1", "1"], env=dict(os.environ, PIDRING_BENCH_SHOW_BACKEND="1")).splitlines()
        if l.startswith("pidring-backend:")]
    R["load_before"] = loadavg()
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    t0 = time.time()
    for name in only:
        tw = time.time()
        globals()[f"w_{name}"](a, R)
        R.setdefault("durations_s", {})[name] = round(time.time() - tw)
        R.setdefault("rounds", {}).update(GATE.rounds)
        R.setdefault("backends_seen", {}).update(SEEN)
        R.setdefault("samples", {}).update(SAMPLES)
        R["idle_gate"] = {"load": a.idle_load, "runq": GATE.runq, "timeout_s": a.idle_timeout,
                          "budget_s": a.idle_budget, "sample_s": a.idle_sample, "waited_s": round(GATE.waited, 1)}
        with open(a.results, "w") as f:
            json.dump(R, f, indent=1)
    R["load_after"] = loadavg()
    R["duration_s"] = time.time() - t0
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "w") as f:
        json.dump(R, f, indent=1)
    log(f"results: {a.results} ({R['duration_s']:.0f} s)")


if __name__ == "__main__":
    main()
