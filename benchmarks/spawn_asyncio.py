#!/usr/bin/python3
"""spawn + wait of /bin/true with asyncio.create_subprocess_exec: N children, K in flight.

    spawn_asyncio.py WATCHER N K     WATCHER: default | pidfd

default is the event loop's own choice (ThreadedChildWatcher on Python 3.8-3.11: one thread per
child), pidfd is asyncio.PidfdChildWatcher. Prints the seconds taken and the process's own CPU
seconds for them (all its threads, not the children).
"""
import asyncio
import resource
import sys
import time
import warnings


async def worker(left):
    while left[0] > 0:
        left[0] -= 1
        p = await asyncio.create_subprocess_exec("/bin/true")
        if await p.wait() != 0:
            print("child failed", file=sys.stderr)


async def main(n, k):
    left = [n]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(left) for _ in range(k)))
    return time.perf_counter() - t0


def run(watcher, n, k):
    if watcher == "pidfd":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            w = asyncio.PidfdChildWatcher()
            asyncio.set_child_watcher(w)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if watcher == "pidfd":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            w.attach_loop(loop)
    try:
        return loop.run_until_complete(main(n, k))
    finally:
        loop.close()


if __name__ == "__main__":
    watcher = sys.argv[1]
    n = int(sys.argv[2])
    k = int(sys.argv[3])
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    s = run(watcher, n, k)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    print(f"{s:.6f} {cpu:.6f}")
