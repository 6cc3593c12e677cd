#!/usr/bin/python3
"""N children (`sleep 3600`) awaited at once by asyncio, killed once measured.

    many_asyncio.py WATCHER N        WATCHER: default | pidfd

Prints: <VmRSS growth per child in bytes> <Threads while waiting> <Threads before>
"""
import asyncio
import sys
import warnings


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


async def main(n):
    rss0, thr0 = status("VmRSS"), status("Threads")
    procs = [await asyncio.create_subprocess_exec("/bin/sleep", "3600") for _ in range(n)]
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    await asyncio.sleep(0.3)
    rss1, thr1 = status("VmRSS"), status("Threads")
    for p in procs:
        p.kill()
    await asyncio.gather(*waits)
    return (rss1 - rss0) * 1024.0 / n, thr1, thr0


if __name__ == "__main__":
    watcher, n = sys.argv[1], int(sys.argv[2])
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
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
    per_child, thr1, thr0 = loop.run_until_complete(main(n))
    print(f"{per_child:.1f} {thr1} {thr0}")
