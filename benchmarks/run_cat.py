#!/usr/bin/python3
"""subprocess.run(["cat"], input=..., capture_output=True) with MIB MiB in and out.
Prints the seconds the run took (building the input is not timed)."""
import subprocess
import sys
import time

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
data = b"x" * (mib << 20)
t0 = time.perf_counter()
r = subprocess.run(["cat"], input=data, capture_output=True, check=True)
s = time.perf_counter() - t0
if len(r.stdout) != len(data):
    sys.exit("cat gave back %d bytes" % len(r.stdout))
print(f"{s:.6f}")
