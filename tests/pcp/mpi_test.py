#!/usr/bin/env python3
"""pcp-mpi under mpirun: real ranks, real files.

Each case builds a tree with symbolic links (dangling too), hard links (inside a directory and
across directories, to a small and to a big file), empty directories, a FIFO, big and small
files, then:
  - copies it with 1, 2 and 4 ranks (-a, with and without --atomic) and compares the copy with the
    source (type, mode, size, contents, link targets, owners, times, hard links), and reads
    --report: the totals match the tree and every rank copied a share;
  - copies a tree of 400 directories with 2 and 4 ranks: every rank copied a file before rank 0's
    walk ended (the walk overlaps the copy);
  - copies it as uid 65534 with --atomic where one file is unreadable: the job fails with pcp's
    message for it, and nothing is left at DST, hidden or not;
  - kills rank 1 (SIGKILL) mid-copy with --atomic: MPI ends the job, nothing is published and
    rank 0 removes its hidden tree; kills rank 0: the next copy to the same place removes the
    hidden tree the dead job left;
  - sends SIGINT to mpirun mid-copy with --atomic: every rank stops, nothing is left;
  - a usage error is said once, in pcp's words, and ends every rank; mpirun -q leaves only pcp-mpi's
    message of a failing copy.
After each case no pcp-mpi process of ours is left running.

Usage: mpi_test.py PATH-TO-PCP-MPI [CASE-NAME-SUBSTRING]
Exits 77 (ctest's SKIP_RETURN_CODE) when pcp-mpi was not built (no MPI) or mpirun is missing.
"""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import trees

SKIP = 77
PCP_MPI = sys.argv[1] if len(sys.argv) > 1 else ""
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""
NOBODY = 65534
MPIRUN = shutil.which("mpirun")

if not PCP_MPI or not os.path.exists(PCP_MPI):
    print("SKIP: pcp-mpi was not built (CMake found no MPI; Debian: libopenmpi-dev)")
    sys.exit(SKIP)
if not MPIRUN:
    print("SKIP: mpirun not found (Debian: openmpi-bin)")
    sys.exit(SKIP)
PCP_MPI = os.path.abspath(PCP_MPI)


def mpirun(n):
    # --oversubscribe: more ranks than cores here. --allow-run-as-root: the suite runs as root.
    # --bind-to none: each rank's pool of threads may use every core (Open MPI binds a rank to
    # one core by default). Shared memory between the ranks only (vader), without the
    # cross-memory-attach copy that containers and hardened kernels refuse (ptrace scope).
    cmd = [MPIRUN, "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader", "--mca",
           "btl_vader_single_copy_mechanism", "none", "-n", str(n)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


def env():
    # Open MPI's session directory in TMPDIR; the ranks' HOME need not exist (uid 65534).
    e = dict(os.environ, LC_ALL="C", OMPI_MCA_rmaps_base_oversubscribe="1")
    e.setdefault("TMPDIR", "/tmp")
    return e


def write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_tree(src, big=8 << 20, small=300):
    os.makedirs(os.path.join(src, "a", "b", "c"))
    os.makedirs(os.path.join(src, "empty", "nested-empty"))
    os.makedirs(os.path.join(src, "d"))
    for i in range(small):
        write(os.path.join(src, "a", "f%03d" % i), os.urandom(37 * i + 1), 0o644 if i % 7 else 0o600)
    for i in range(4):
        write(os.path.join(src, "d", "big%d" % i), os.urandom(big >> i), 0o640)
    write(os.path.join(src, "a", "b", "c", "x"), b"#!/bin/sh\n", 0o755)
    os.symlink("../d/big0", os.path.join(src, "a", "to-big"))
    os.symlink("nowhere", os.path.join(src, "dangling"))
    os.link(os.path.join(src, "a", "f005"), os.path.join(src, "d", "hard-small"))
    os.link(os.path.join(src, "d", "big1"), os.path.join(src, "a", "b", "hard-big"))
    os.link(os.path.join(src, "d", "big1"), os.path.join(src, "hard-big-2"))
    os.mkfifo(os.path.join(src, "d", "fifo"))
    with open(os.path.join(src, "d", "sparse"), "wb") as f:  # data, a 3 MiB hole, data
        f.write(os.urandom(1 << 20))
        f.seek(4 << 20)
        f.write(os.urandom(12345))
    os.chmod(os.path.join(src, "a", "b"), 0o750)
    t = 1577836800
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for n in filenames + dirnames + [""]:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.utime(p, (t, t))


def manifest(top):
    """Everything a copy must keep: type and mode, owner, times, contents, link targets, and
    which names share an inode."""
    return trees.manifest(top, owners=True, times=True, links=True)


def become_subreaper():
    """Ranks that mpirun leaves behind when it aborts a job (it may exit before they are reaped)
    become our children, for reap_orphans(): no zombie outlives a case, whatever PID 1 does."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(timeout=10):
    """Waits for every child that is left (orphaned ranks, once subprocess has reaped mpirun)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.005)


def hidden_leftovers(parent):
    return [n for n in os.listdir(parent) if ".pidring-" in n]


def ours_running():
    """pcp-mpi processes still running (or unreaped) after a case: there must be none."""
    left = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink("/proc/%s/exe" % p) == PCP_MPI:
                    left.append(int(p))
            except OSError:
                pass
    return left


def run(n, args, cwd, timeout=60, preexec=None, mpirun_args=()):
    return subprocess.run(mpirun(n) + list(mpirun_args) + [PCP_MPI] + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env(), stdin=subprocess.DEVNULL, preexec_fn=preexec)


def drop_to_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("  FAILED: " + what)


def case_copies_equal_the_source(base):
    src = os.path.join(base, "src")
    make_tree(src)
    want = manifest(src)
    files = sum(1 for v in want.values() if v.startswith("-"))
    data = sum(os.lstat(os.path.join(src, k)).st_size for k, v in want.items()
               if v.startswith("-") and "same inode" not in v)
    for n in (1, 2, 4):
        for atomic in ([], ["--atomic"]):
            dst = os.path.join(base, "dst%d%s" % (n, "-atomic" if atomic else ""))
            report = dst + ".json"
            r = run(n, ["-a", "--report", report] + atomic + [src, dst], base)
            label = "-n %d %s" % (n, " ".join(atomic))
            check(r.returncode == 0, "%s: exit %d, stderr %r" % (label, r.returncode, r.stderr[-2000:]))
            check(r.stderr == "", "%s: stderr %r" % (label, r.stderr[-2000:]))
            got = manifest(dst) if os.path.isdir(dst) else {}
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            check(not diff, "%s: the copy differs from the source at %s" %
                  (label, ["%s: %s / %s" % (k, want.get(k), got.get(k)) for k in diff[:5]]))
            check(not hidden_leftovers(base), "%s: hidden leftovers %s" % (label, hidden_leftovers(base)))
            with open(report) as f:
                rep = json.load(f)
            check(rep["ranks"] == n and len(rep["per_rank"]) == n, "%s: report ranks %r" % (label, rep))
            check(rep["files"] == files, "%s: report says %d files, the tree has %d" % (label, rep["files"], files))
            check(rep["bytes"] == data, "%s: report says %d bytes, the tree has %d" % (label, rep["bytes"], data))
            idle = [p["rank"] for p in rep["per_rank"] if p["files"] == 0]
            check(not idle, "%s: ranks %s copied nothing: %r" % (label, idle, rep["per_rank"]))


def case_ranks_copy_while_rank_0_walks(base):
    """The walk overlaps the copy: on a tree of 400 directories of 15 small files each, every rank
    has copied a file before rank 0's walk has ended (--report: when rank 0 first heard that a rank
    had copied a file, and when its walk ended, on rank 0's clock). The copy equals the source.
    Scheduling on a loaded machine may delay a rank's first word, so one of 3 runs must show it."""
    src = os.path.join(base, "src")
    for d in range(400):
        os.makedirs(os.path.join(src, "d%03d" % d, "e"))
        for f in range(15):
            write(os.path.join(src, "d%03d" % d, "e" if f % 3 == 0 else "", "f%02d" % f), b"x" * (f * 97 + 1))
    want = manifest(src)
    seen = []
    for attempt in range(3):
        for n in (2, 4):
            dst = os.path.join(base, "dst%d-%d" % (attempt, n))
            report = dst + ".json"
            r = run(n, ["-a", "--report", report, src, dst], base)
            check(r.returncode == 0 and r.stderr == "", "-n %d: exit %d, stderr %r" % (n, r.returncode, r.stderr[-2000:]))
            check(manifest(dst) == want, "-n %d: the copy differs from the source" % n)
            with open(report) as f:
                rep = json.load(f)
            walk_end = rep["walk_end_seconds"]
            firsts = [p["first_file_seconds"] for p in rep["per_rank"]]
            seen.append("-n %d: walk ended at %.3f s, first files at %s" % (n, walk_end, ["%.3f" % t for t in firsts]))
            for p in rep["per_rank"]:
                check(p["queue_wait_seconds"] >= 0 and p["end_seconds"] > 0, "-n %d: report %r" % (n, p))
            if not all(0 <= t < walk_end for t in firsts):
                break
            shutil.rmtree(dst)
        else:
            print("  " + "; ".join(seen[-2:]))
            return
    check(False, "no run had every rank copying before the walk ended: %s" % seen)


def case_big_files_in_pieces_over_ranks(base):
    """--split-files=always: the big files (8, 4 and 2 MiB, the sparse one) copied in 1 MiB
    pieces by every rank, into a tree that only appears once all of them are in."""
    src = os.path.join(base, "src")
    make_tree(src)
    dst = os.path.join(base, "dst")
    report = os.path.join(base, "r.json")
    r = run(4, ["-a", "--atomic", "--split-files=always", "--split-size=1048576", "--report", report, src, dst], base)
    check(r.returncode == 0 and r.stderr == "", "exit %d, stderr %r" % (r.returncode, r.stderr[-2000:]))
    want, got = manifest(src), manifest(dst) if os.path.isdir(dst) else {}
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    check(not diff, "the copy differs from the source at %s" % diff[:5])
    if diff:
        return
    sparse = os.lstat(os.path.join(dst, "d", "sparse"))
    check(sparse.st_blocks * 512 < 3 << 20, "the sparse file's hole was filled: %d blocks" % sparse.st_blocks)
    with open(report) as f:
        rep = json.load(f)
    idle = [p["rank"] for p in rep["per_rank"] if p["bytes"] < (1 << 20)]
    check(not idle, "ranks %s copied less than a piece: %r" % (idle, rep["per_rank"]))


def case_atomic_failure_as_nobody_leaves_nothing(base):
    os.chmod(base, 0o755)
    src = os.path.join(base, "src")
    make_tree(src, big=1 << 20, small=100)
    secret = os.path.join(src, "a", "f050")
    os.chmod(secret, 0o600)
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames + [""]:
            p = os.path.join(dirpath, n)
            if os.path.islink(p) or p == secret:
                continue
            os.chmod(p, os.lstat(p).st_mode | (0o005 if os.path.isdir(p) else 0o004))
    out = os.path.join(base, "out")
    os.makedirs(out)
    os.chown(out, NOBODY, NOBODY)
    for n in (1, 2, 4):
        dst = os.path.join(out, "dst%d" % n)
        r = run(n, ["-r", "--atomic", src, dst], base, preexec=drop_to_nobody)
        label = "-n %d as uid %d" % (n, NOBODY)
        check(r.returncode != 0, "%s: exit 0 with an unreadable file" % label)
        want = "pcp-mpi: cannot open '%s' for reading: Permission denied" % secret
        check(want in r.stderr, "%s: stderr %r lacks %r" % (label, r.stderr[-2000:], want))
        check(os.listdir(out) == [], "%s: left %s" % (label, os.listdir(out)))


def rank_pids(mpirun_pid):
    """The ranks mpirun started (its children on this node), by rank."""
    ranks = {}
    for tid in os.listdir("/proc/%d/task" % mpirun_pid):
        with open("/proc/%d/task/%s/children" % (mpirun_pid, tid)) as f:
            for pid in f.read().split():
                try:
                    with open("/proc/%s/environ" % pid, "rb") as e:
                        for var in e.read().split(b"\0"):
                            if var.startswith(b"OMPI_COMM_WORLD_RANK="):
                                ranks[int(var.split(b"=")[1])] = int(pid)
                except OSError:
                    pass
    return ranks


def start_and_catch_building(n, args, base, out):
    """Starts mpirun; returns it and the ranks' pids once the hidden tree exists, with rank 0
    stopped (SIGSTOP), so that the copy cannot be published while the test acts."""
    p = subprocess.Popen(mpirun(n) + [PCP_MPI] + args, cwd=base, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 30
    ranks = {}
    while time.monotonic() < deadline and p.poll() is None:
        if len(ranks) < n:
            ranks = rank_pids(p.pid)
        if len(ranks) == n and hidden_leftovers(out):
            os.kill(ranks[0], signal.SIGSTOP)
            return p, ranks
        time.sleep(0.001)
    p.kill()
    p.communicate()
    return None, {}


def start_big_atomic_copy(n, base):
    """`pcp-mpi -a --atomic` of a tree of 2,000 files and 64+32+16+8 MiB with n ranks, caught
    while building (start_and_catch_building): (src, out, dst, mpirun or None, ranks)."""
    src = os.path.join(base, "src")
    make_tree(src, big=64 << 20, small=2000)
    out = os.path.join(base, "out")
    os.makedirs(out)
    dst = os.path.join(out, "dst")
    p, ranks = start_and_catch_building(n, ["-a", "--atomic", src, dst], base, out)
    check(p is not None, "the copy ended before its hidden tree was seen")
    return src, out, dst, p, ranks


def case_killed_rank_publishes_nothing(base):
    """Rank 1 of 4 SIGKILLed mid-copy: Open MPI ends the job (SIGCONT, then SIGTERM a second
    later, SIGKILL a second after that); nothing is published, and rank 0, waiting for the dead
    rank, removes the hidden tree when its SIGTERM comes."""
    src, out, dst, p, ranks = start_big_atomic_copy(4, base)
    if p is None:
        return
    os.kill(ranks[1], signal.SIGKILL)
    os.kill(ranks[0], signal.SIGCONT)
    p.communicate(timeout=60)
    reap_orphans()
    check(p.returncode != 0, "mpirun exit 0 after a rank was killed")
    check(not os.path.exists(dst), "a tree was published although rank 1 was killed")
    check(hidden_leftovers(out) == [], "rank 0 left its hidden tree: %s" % hidden_leftovers(out))


def case_killed_rank_0_is_cleaned_up_by_the_next_copy(base):
    """Rank 0 SIGKILLed mid-copy: nothing is published, its hidden tree stays, and the next copy
    to the same place removes it (its creator is provably gone) and publishes its own."""
    src, out, dst, p, ranks = start_big_atomic_copy(2, base)
    if p is None:
        return
    os.kill(ranks[0], signal.SIGKILL)
    p.communicate(timeout=60)
    reap_orphans()
    check(p.returncode != 0, "mpirun exit 0 after rank 0 was killed")
    check(not os.path.exists(dst), "a tree was published although rank 0 was killed")
    check(len(hidden_leftovers(out)) == 1, "no hidden tree after rank 0 was killed: %s" % os.listdir(out))
    r = run(2, ["-a", "--atomic", src, dst], base)
    check(r.returncode == 0, "the copy after the kill: exit %d, %r" % (r.returncode, r.stderr[-2000:]))
    check(hidden_leftovers(out) == [], "hidden trees left after the next copy: %s" % hidden_leftovers(out))
    check(manifest(dst) == manifest(src), "the copy after the kill differs from the source")


def cgroup2_root():
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


class frozen:
    """A process frozen in a cgroup of its own (cgroup v2's freezer): unlike SIGSTOP, mpirun's
    SIGCONT does not wake it, and the signals sent to it wait until it thaws."""

    def __init__(self, pid, root):
        self.dir = os.path.join(root, "pcp-mpi-test-%d" % os.getpid())
        os.mkdir(self.dir)
        self.origin = None
        with open("/proc/%d/cgroup" % pid) as f:
            for line in f:
                if line.startswith("0::"):
                    self.origin = os.path.join(root, line.strip()[3:].lstrip("/"))
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        self.pid = pid
        self.set(1)

    def set(self, on):
        with open(os.path.join(self.dir, "cgroup.freeze"), "w") as f:
            f.write("1" if on else "0")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(os.path.join(self.dir, "cgroup.events")) as f:
                if ("frozen %d" % on) in f.read():
                    return
            time.sleep(0.001)

    def close(self):
        self.set(0)
        try:
            if self.origin and os.path.isdir(self.origin):
                with open(os.path.join(self.origin, "cgroup.procs"), "w") as f:
                    f.write(str(self.pid))
        except OSError:
            pass  # gone already
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(self.dir)
                return
            except OSError:
                time.sleep(0.01)


def pending_signals(pid):
    """The signals pending for process `pid` (its shared queue), as a mask."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("ShdPnd:"):
                return int(line.split()[1], 16)
    return 0


def case_sigint_to_mpirun_stops_every_rank(base):
    """mpirun answers SIGINT with SIGCONT to every rank at once, SIGTERM a second later and
    SIGKILL a second after that. Rank 0 is frozen from the moment its hidden tree exists until
    mpirun's SIGTERM is pending for it, so the copy cannot end before the stop reaches it."""
    root = cgroup2_root()
    if root is None:
        print("  skipped: no cgroup2 hierarchy to freeze rank 0 in")
        return
    src, out, dst, p, ranks = start_big_atomic_copy(2, base)
    if p is None:
        return
    ice = frozen(ranks[0], root)
    os.kill(ranks[0], signal.SIGCONT)  # the SIGSTOP that caught it: the freezer holds it now
    try:
        p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while not pending_signals(ranks[0]) & (1 << (signal.SIGTERM - 1)) and time.monotonic() < deadline:
            time.sleep(0.001)
        check(time.monotonic() < deadline, "mpirun sent rank 0 no SIGTERM after SIGINT")
    finally:
        ice.close()
    stdout, stderr = p.communicate(timeout=60)
    check(p.returncode != 0, "mpirun exit 0 after SIGINT")
    check(not os.path.exists(dst), "a tree was published after SIGINT")
    check(hidden_leftovers(out) == [], "hidden trees left after SIGINT: %s" % hidden_leftovers(out))
    print("  after SIGINT: mpirun exit %d" % p.returncode)


def case_usage_error_is_said_once(base):
    r = run(4, ["--bogus"], base)
    check(r.returncode != 0, "exit 0 on an unknown option")
    want = "pcp-mpi: unrecognized option '--bogus'\nTry 'pcp-mpi --help' for more information.\n"
    check(r.stderr.count(want) == 1, "stderr %r is not one %r" % (r.stderr[-2000:], want))
    r = run(2, ["--help"], base)
    check(r.returncode == 0 and r.stdout.count("--report=FILE") == 1, "--help: %d %r" % (r.returncode, r.stdout))
    # A failing copy: mpirun adds its own note, which -q (as pcp-mpi(1) says) leaves out.
    missing = os.path.join(base, "missing")
    want = "pcp-mpi: cannot stat '%s': No such file or directory\n" % missing
    r = run(2, ["-r", missing, os.path.join(base, "dst")], base)
    check(r.returncode == 1 and want in r.stderr and "non-zero" in r.stderr, "without -q: %d %r" % (r.returncode, r.stderr))
    r = run(2, ["-r", missing, os.path.join(base, "dst")], base, mpirun_args=["-q"])
    check(r.returncode == 1 and r.stderr == want, "mpirun -q: %d %r" % (r.returncode, r.stderr))


CASES = [case_copies_equal_the_source, case_ranks_copy_while_rank_0_walks, case_big_files_in_pieces_over_ranks, case_atomic_failure_as_nobody_leaves_nothing,
         case_killed_rank_publishes_nothing, case_killed_rank_0_is_cleaned_up_by_the_next_copy,
         case_sigint_to_mpirun_stops_every_rank, case_usage_error_is_said_once]

become_subreaper()
for c in CASES:
    if ONLY not in c.__name__:
        continue
    start = time.monotonic()
    before = len(failures)
    base = tempfile.mkdtemp(prefix="pcp-mpi-test.")
    try:
        print("%s:" % c.__name__, flush=True)
        c(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    reap_orphans()
    left = ours_running()
    check(not left, "%s: pcp-mpi processes left running: %s" % (c.__name__, left))
    print("  %s (%.1f s)" % ("ok" if len(failures) == before else "FAILED", time.monotonic() - start), flush=True)

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
print("all cases passed")
