#!/usr/bin/env python3
"""Python's figures for benches/suite.rs: Process start+join latency under each start
method, 1,000 processes started at once and joined, and a Pool(2) worker's idle memory.
Prints one JSON object."""

import json
import multiprocessing
import os
import statistics
import sys
import time


def trivial(x):
    return x + 1


def quick_exit():
    pass


def latency(ctx, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        p = ctx.Process(target=quick_exit)
        p.start()
        p.join()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median": statistics.median(times), "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}


def thousand(ctx):
    start = time.perf_counter()
    procs = [ctx.Process(target=quick_exit) for _ in range(1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - start


def memory_of(pid):
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def pool_memory(ctx):
    with ctx.Pool(2) as pool:
        pool.map(trivial, range(10))
        pids = pool.map(_pid, range(20))
        workers = sorted(set(pids))
        mems = [memory_of(pid) for pid in workers]
    return {"rss_kib": statistics.mean(m[0] for m in mems), "pss_kib": statistics.mean(m[1] for m in mems)}


def _pid(_):
    time.sleep(0.01)
    return os.getpid()


def main():
    runs = {"fork": 200, "forkserver": 200, "spawn": 20}
    out = {"python": sys.version.split()[0]}
    for method, n in runs.items():
        out[f"latency_{method}"] = latency(multiprocessing.get_context(method), n)
    out["thousand_fork"] = thousand(multiprocessing.get_context("fork"))
    out["pool_memory"] = pool_memory(multiprocessing.get_context("fork"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
