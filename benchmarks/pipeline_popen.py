#!/usr/bin/python3
"""cat | cat | cat from Python with MIB MiB in and out. Prints the seconds taken (building the
input is not timed).

    pipeline_popen.py MIB [STAGES] [chain|shell]

chain (the default): a subprocess.Popen chain, the way the Python documentation shows it
("Replacing shell pipeline"), the input written to the first stage's stdin from a thread (one
write call), the last stage's stdout read to its end, every stage waited for.
shell: subprocess.run("cat | cat | cat", shell=True, input=..., capture_output=True), the
one-liner most code uses (communicate() feeds the input in PIPE_BUF pieces)."""
import subprocess
import sys
import threading
import time

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
stages = int(sys.argv[2]) if len(sys.argv) > 2 else 3
mode = sys.argv[3] if len(sys.argv) > 3 else "chain"
data = b"x" * (mib << 20)
if mode == "shell":
    t0 = time.perf_counter()
    r = subprocess.run(" | ".join(["cat"] * stages), shell=True, input=data, capture_output=True, check=True)
    s = time.perf_counter() - t0
    if len(r.stdout) != len(data):
        sys.exit("the pipeline gave back %d bytes" % len(r.stdout))
    print(f"{s:.6f}")
    sys.exit(0)
t0 = time.perf_counter()
procs = [subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)]
for _ in range(stages - 1):
    p = subprocess.Popen(["cat"], stdin=procs[-1].stdout, stdout=subprocess.PIPE)
    procs[-1].stdout.close()  # so that the stage before gets SIGPIPE if this one exits
    procs.append(p)


def feed():
    try:
        procs[0].stdin.write(data)
    finally:
        procs[0].stdin.close()


feeder = threading.Thread(target=feed)
feeder.start()
out = procs[-1].stdout.read()
procs[-1].stdout.close()
feeder.join()
codes = [p.wait() for p in procs]
s = time.perf_counter() - t0
if len(out) != len(data) or any(codes):
    sys.exit("the chain gave back %d bytes, statuses %s" % (len(out), codes))
print(f"{s:.6f}")
