#!/usr/bin/python3
"""shutil.copyfile(SRC, DST). Prints the seconds the copy took (interpreter start-up excluded)."""
import shutil
import sys
import time

t0 = time.perf_counter()
shutil.copyfile(sys.argv[1], sys.argv[2])
print(f"{time.perf_counter() - t0:.6f}")
