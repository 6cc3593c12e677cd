#!/usr/bin/env python3
"""pcp side by side with the system's GNU cp.

Every case builds the same tree twice, runs the same commands with cp in one and pcp in the
other, and compares what they did: each command's exit status, stdout and stderr (cp's "cp:"
read as "pcp:"; lines sorted, since pcp copies several files at once), and the resulting trees
(type, mode, size, contents, link targets; owners, times, hard links and user.* xattrs where the
case preserves them). Cases about permissions run as uid/gid 65534 (the suite runs as root).
Then a SIGINT and a SIGTERM sent to pcp during a 3,000-file copy: it exits 130/143 within a
second, nothing hidden is left, every file present is complete; with --atomic nothing is.

Usage: cp_compat.py PATH-TO-PCP [CASE-NAME-SUBSTRING]
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from trees import manifest

PCP = os.path.abspath(sys.argv[1])
ONLY = sys.argv[2] if len(sys.argv) > 2 else ""
CP = shutil.which("cp")
NOBODY = 65534
IS_ROOT = os.geteuid() == 0
T2020 = 1577836800  # the source files' times
T2001 = 978307200   # "existing": older than the sources
T2030 = 1893456000  # "newer": newer than the sources


def write(path, data, mode=0o644, mtime=T2020):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def make_fixture(top):
    """The tree every case starts from."""
    src = os.path.join(top, "src")
    os.makedirs(os.path.join(src, "sub", "deeper"))
    os.makedirs(os.path.join(src, "empty"))
    write(os.path.join(src, "f"), b"hello\n")
    write(os.path.join(src, "x"), b"#!/bin/sh\n", 0o755)
    write(os.path.join(src, "sub", "g"), b"gee", 0o640)
    write(os.path.join(src, "sub", "deeper", "h"), bytes(range(256)) * 16, 0o600)
    os.symlink("f", os.path.join(src, "link"))
    os.symlink("nowhere", os.path.join(src, "dangling"))
    os.mkfifo(os.path.join(src, "fifo"))
    os.link(os.path.join(src, "f"), os.path.join(src, "hard"))
    for d in ("sub/deeper", "sub", "empty", ""):
        os.utime(os.path.join(src, d), (T2020, T2020))
    write(os.path.join(top, "file1"), b"one\n")
    write(os.path.join(top, "file2"), b"two\n")
    os.symlink("file1", os.path.join(top, "linkf"))
    os.symlink("nowhere", os.path.join(top, "dlink"))
    os.symlink("src", os.path.join(top, "linkdir"))
    os.mkfifo(os.path.join(top, "fifo1"))
    os.makedirs(os.path.join(top, "dst"))
    write(os.path.join(top, "dst", "keep"), b"keep\n")
    write(os.path.join(top, "existing"), b"old contents\n", mtime=T2001)
    write(os.path.join(top, "newer"), b"newer\n", mtime=T2030)
    os.makedirs(os.path.join(top, "clash", "file1"))


def settle_times(top):
    """Everything the fixture made gets the same times in both trees (a link keeps its own)."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                t = os.stat(p).st_mtime_ns if os.path.isfile(p) else T2020 * 10**9
                os.utime(p, ns=(t, t))


def chown_tree(top, uid, gid):
    os.lchown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def drop_to_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def run(tool, args, cwd, nobody):
    # cp runs as "cp" and its name is read as pcp's: the one difference not worth a case.
    name = "cp" if tool == CP else "pcp"
    r = subprocess.run([name] + args, executable=tool, cwd=cwd, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, LC_ALL="C"), preexec_fn=drop_to_nobody if nobody else None)
    err = r.stderr
    if tool == CP:
        err = re.sub(r"^cp: ", "pcp: ", err, flags=re.M).replace("'cp --help'", "'pcp --help'")
    return (r.returncode, sorted(r.stdout.splitlines()), sorted(err.splitlines()))


class case:
    def __init__(self, name, *commands, setup=None, nobody=False, owners=False, times=False, links=False,
                 xattrs=False, root_only=False, tree_differs=None, after_chown=None):
        self.name, self.commands, self.setup = name, [c.split() for c in commands], setup
        self.nobody, self.root_only = nobody and IS_ROOT, root_only
        self.after_chown = after_chown  # setup done after the tree is given to uid 65534
        self.tree_differs = tree_differs  # a documented difference (pcp(1)): trees not compared
        self.facts = dict(owners=owners, times=times, links=links, xattrs=xattrs)


def unreadable(top):
    os.chmod(os.path.join(top, "src", "sub", "g"), 0)
    os.makedirs(os.path.join(top, "src", "locked"))
    write(os.path.join(top, "src", "locked", "inside"), b"in")
    os.chmod(os.path.join(top, "src", "locked"), 0)


def read_only_dst(top):
    os.chmod(os.path.join(top, "dst"), 0o555)


def others_files(top):
    # Sources owned by someone else (readable), and a read-only destination file of our own.
    os.lchown(os.path.join(top, "src", "f"), 1234, 5678)
    os.lchown(os.path.join(top, "src", "sub"), 1234, 5678)
    os.chmod(os.path.join(top, "existing"), 0o444)


def archive_fixture(top):
    # Owners other than root's (only root may give them), and an xattr on a file and a directory.
    os.lchown(os.path.join(top, "src", "x"), 1234, 5678)
    os.lchown(os.path.join(top, "src", "link"), 1234, 5678)
    os.setxattr(os.path.join(top, "src", "f"), "user.comment", b"kept")
    os.setxattr(os.path.join(top, "src", "sub"), "user.dir", b"too")
    os.utime(os.path.join(top, "src"), (T2020, T2020))
    os.utime(os.path.join(top, "src", "sub"), (T2020, T2020))
    os.chmod(os.path.join(top, "src", "x"), 0o4755)


CASES = [
    # Files: cp's defaults.
    case("file to a new name", "file1 new"),
    case("file onto an existing file: replaced", "file1 existing"),
    case("files into a directory", "file1 file2 dst"),
    case("file into a directory given with a slash", "file1 dst/"),
    case("-t DIR", "-t dst file1 file2"),
    case("-T: DEST is the copy's name", "-T file1 new"),
    case("-T onto a directory", "-T file1 dst"),
    case("-T with three operands", "-T file1 file2 dst"),
    case("a link operand is followed without -r", "linkf new"),
    case("a dangling link operand without -r", "dlink new"),
    case("-P without -r copies the link", "-P linkf new"),
    case("duplicate source files: a warning, exit 0", "file1 file1 dst"),
    case("two sources with one name", "file1 clash/file1 dst"),
    case("-n keeps an existing file", "-n file1 existing"),
    case("-u replaces an older file", "-u file1 existing"),
    case("-u keeps a newer file", "-u file1 newer"),
    case("-p keeps mode and times", "-p src/x new", times=True),
    case("--preserve=timestamps", "--preserve=timestamps file1 new", times=True),
    case("--preserve=mode --no-preserve=mode", "--preserve=mode --no-preserve=mode src/x new"),
    case("-v names each copy", "-v file1 file2 dst"),
    case("--sparse=always and --reflink=never copy the same bytes", "--sparse=always --reflink=never file1 new"),
    case("--reflink=auto", "--reflink=auto file1 new"),
    # Trees.
    case("-r into a new name", "-r src copy"),
    case("-r into an existing directory", "-r src dst"),
    case("-r twice: the second merges", "-r src dst", "-r src dst"),
    case("-r src/. merges the contents", "-r src/. dst"),
    case("-rT merges into DEST", "-rT src dst"),
    case("-r a link operand is copied as a link", "-r linkf dst"),
    case("-r a dangling link operand", "-r dlink dst"),
    case("-r a link to a directory is copied as a link", "-r linkdir dst"),
    case("-rH follows the operand only", "-rH linkdir copy"),
    case("-rL follows every link", "-rL src copy"),
    case("-r a FIFO operand is recreated", "-r fifo1 dst"),
    case("-r duplicate source directories: a warning, exit 0", "-r src src dst"),
    case("-rn keeps what exists", "-r src copy", "-rn file1 copy/f", "-rn src/. copy"),
    case("-rv names each copy", "-rv src copy"),
    case("-a keeps modes, times, links", "-a src copy", times=True, links=True),
    case("-a as root keeps owners and xattrs too", "-a src copy", setup=archive_fixture, owners=True,
         times=True, links=True, xattrs=True, root_only=True),
    case("--preserve=xattr", "-r --preserve=xattr src copy", setup=archive_fixture, xattrs=True),
    # Everyday forms.
    case("-r with a trailing slash, into a directory", "-r src/ dst"),
    case("-r with a trailing slash, to a new name", "-r src/ copy"),
    case("a file onto a file inside a directory", "file1 dst/keep"),
    case("into a directory reached through a link", "file1 linkdir"),
    case("-t with -r and mixed sources", "-r -t dst src file1"),
    case("-a twice: the second merges", "-a src copy", "-a src copy", links=True),
    case("-rv twice: the second names only what it copies", "-rv src copy", "-rv src copy"),
    case("-ru after -r", "-r src copy", "-ru src copy"),
    case("-rH does not follow links inside", "-rH src copy"),
    case("-rL through a link operand", "-rL linkdir copy", "-rL linkf dst"),
    case("-H without -r follows the operand", "-H linkf new"),
    case("-d copies a link as a link", "-d linkf new"),
    case("--sparse=never", "--sparse=never file1 new"),
    case("options after the operands", "file1 new -v"),
    case("-- ends the options", "-- file1 new"),
    # What cannot be done: cp's messages, the other sources still copied.
    case("a target ending in a slash that is not a directory", "file1 new/"),
    case("no operands", ""),
    case("one operand", "file1"),
    case("an unknown option", "--bogus file1 new"),
    case("an unknown short option", "-z file1 new"),
    case("a bad --preserve list", "--preserve=colour file1 new"),
    case("a missing source among good ones", "nosuch file1 dst"),
    case("a directory without -r", "src file1 dst"),
    case("several sources, target missing", "file1 file2 nodir"),
    case("several sources, target a file", "file1 file2 existing"),
    case("-t onto a file", "-t existing file1"),
    case("the same file", "file1 file1"),
    case("a directory into itself", "-r src src/sub", tree_differs="cp copies some of it first, pcp nothing"),
    case("a directory onto a file", "-r src existing"),
    case("a file onto a directory", "file1 clash"),
    case("into a directory that is not there", "file1 nodir/x"),
    # As an unprivileged user: an unreadable file and directory are reported, the rest copied.
    case("unreadable entries are reported and skipped", "-r src copy", setup=unreadable, nobody=True,
         tree_differs="cp makes an unreadable directory's copy, empty; pcp does not"),
    case("an unreadable file operand", "src/sub/g file1 dst", setup=unreadable, nobody=True),
    case("a destination directory we may not write", "-r file1 src dst", setup=read_only_dst, nobody=True),
    case("-p of someone else's file: the owner cannot be kept, silently", "-p src/f new", after_chown=others_files,
         nobody=True, owners=True, times=True),
    case("-a of someone else's tree", "-a src copy", after_chown=others_files, nobody=True, owners=True, times=True),
    case("-f replaces a read-only file of ours", "-f file1 existing", after_chown=others_files, nobody=True),
    case("a destination we may not write, merging", "-r src dst", "-r src/. dst/src", setup=read_only_dst,
         nobody=True),
]


def run_case(c, base):
    results = {}
    for tool in (CP, PCP):
        top = os.path.join(base, os.path.basename(tool))
        os.makedirs(top)
        make_fixture(top)
        if c.setup:
            c.setup(top)
        if c.nobody:
            chown_tree(top, NOBODY, NOBODY)
        if c.after_chown:
            c.after_chown(top)
        settle_times(top)
        outputs = [run(tool, args, top, c.nobody) for args in c.commands]
        results[tool] = (outputs, manifest(top, **c.facts))
    problems = []
    (cp_out, cp_tree), (pcp_out, pcp_tree) = results[CP], results[PCP]
    for args, a, b in zip(c.commands, cp_out, pcp_out):
        cmd = " ".join(args)
        if a[0] != b[0]:
            problems.append("`%s`: exit status cp %d, pcp %d" % (cmd, a[0], b[0]))
        if a[1] != b[1]:
            problems.append("`%s`: stdout\n    cp:  %r\n    pcp: %r" % (cmd, a[1], b[1]))
        if a[2] != b[2]:
            problems.append("`%s`: stderr\n    cp:  %r\n    pcp: %r" % (cmd, a[2], b[2]))
    for path in sorted(set(cp_tree) | set(pcp_tree)) if not c.tree_differs else []:
        if cp_tree.get(path) != pcp_tree.get(path):
            problems.append("%s: cp made %r, pcp %r" % (path, cp_tree.get(path), pcp_tree.get(path)))
    return problems


def hidden_entries(top):
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith(".")]
    return found


def signal_case(base, sig, atomic, ignored=False):
    """SIGINT/SIGTERM during a 3,000-file copy: the right status within a second, nothing hidden.
    ignored: pcp is started with the signal ignored (nohup), and the copy must go on to the end."""
    src = os.path.join(base, "many")
    if not os.path.isdir(src):
        block = bytes(range(256)) * 256  # 64 KiB
        for d in range(30):
            os.makedirs(os.path.join(src, "d%02d" % d))
            for f in range(100):
                write(os.path.join(src, "d%02d" % d, "f%03d" % f), block)
    out = os.path.join(base, "out-%d-%d-%d" % (sig, atomic, ignored))
    os.makedirs(out)
    args = [PCP, "-r", "-j", "2", "--method", "read_write", "--chunk", "4096", src, os.path.join(out, "copy")]
    if atomic:
        args.insert(1, "--atomic")
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                         preexec_fn=(lambda: signal.signal(sig, signal.SIG_IGN)) if ignored else None)
    copy = os.path.join(out, "copy")
    # Wait until the copy is under way: some files are there (or, with --atomic, the hidden tree).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        if atomic and os.listdir(out):
            break
        if not atomic and sum(len(files) for _, _, files in os.walk(copy)) >= 50:
            break
        time.sleep(0.005)
    problems = []
    if p.poll() is not None:
        return ["the copy ended (status %d) before the signal could be sent" % p.returncode]
    sent = time.monotonic()
    p.send_signal(sig)
    try:
        p.wait(timeout=60 if ignored else 10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return ["pcp did not end within 10 s of the signal"]
    took = time.monotonic() - sent
    err = p.stderr.read()
    p.stderr.close()
    if ignored:
        files = sum(len(f) for _, _, f in os.walk(copy))
        shutil.rmtree(out)
        if p.returncode != 0 or err or files != 3000:
            return ["with the signal ignored: status %d, %d files, stderr %r" % (p.returncode, files, err)]
        return []
    if p.returncode != 128 + sig:
        problems.append("exit status %d, expected %d" % (p.returncode, 128 + sig))
    if took > 1.0:
        problems.append("took %.2f s to stop" % took)
    if err:
        problems.append("stderr: %r" % err)
    hidden = hidden_entries(out)
    if hidden:
        problems.append("hidden entries left: %s" % hidden[:5])
    if atomic and os.listdir(out):
        problems.append("--atomic left %s" % os.listdir(out))
    files = 0
    for dirpath, _, filenames in os.walk(copy):
        for n in filenames:
            files += 1
            if os.path.getsize(os.path.join(dirpath, n)) != 65536:
                problems.append("incomplete file %s" % os.path.join(dirpath, n))
    if not atomic and not 0 < files < 3000:
        problems.append("%d files copied: not a stop in the middle" % files)
    shutil.rmtree(out)
    return problems


def main():
    base = tempfile.mkdtemp(prefix="pcp-vs-cp-")
    os.chmod(base, 0o755)
    failed = 0
    ran = 0
    try:
        for i, c in enumerate(CASES):
            if ONLY not in c.name:
                continue
            if c.root_only and not IS_ROOT:
                print("SKIP  %s (needs root)" % c.name)
                continue
            where = os.path.join(base, "case%02d" % i)
            problems = run_case(c, where)
            shutil.rmtree(where, ignore_errors=True)
            ran += 1
            print("%s  %s%s%s" % ("ok  " if not problems else "FAIL", c.name, " (as uid 65534)" if c.nobody else "",
                                  " [known difference: %s]" % c.tree_differs if c.tree_differs else ""))
            for p in problems:
                print("      " + p)
            failed += bool(problems)
        if ONLY in "signals":
            for sig, atomic, ignored in ((signal.SIGINT, False, False), (signal.SIGTERM, False, False),
                                         (signal.SIGHUP, False, False), (signal.SIGINT, True, False),
                                         (signal.SIGHUP, False, True)):
                name = "%s during a 3,000-file copy%s%s" % (signal.Signals(sig).name, " with --atomic" if atomic else "",
                                                          " started with it ignored (nohup): no stop" if ignored else "")
                problems = signal_case(base, sig, atomic, ignored)
                ran += 1
                print("%s  %s" % ("ok  " if not problems else "FAIL", name))
                for p in problems:
                    print("      " + p)
                failed += bool(problems)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("%d of %d cases behave as cp (or as the signal cases require)" % (ran - failed, ran))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
