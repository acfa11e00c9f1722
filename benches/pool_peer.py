#!/usr/bin/env python3
"""Python's peers for benches/pool.rs: the same work through multiprocessing.Pool(2)
and concurrent.futures.ProcessPoolExecutor(2). Prints one JSON object of median
seconds per measurement. Called by the Rust benchmark so both run in one invocation."""

import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
REPEAT = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def square(x):
    return x * x


def median_seconds(run):
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ctx = multiprocessing.get_context("fork")
    results = {}
    with ctx.Pool(2) as pool:
        pool.map(square, range(100))  # warm up the workers
        results["Pool.apply_async"] = median_seconds(
            lambda: [r.get() for r in [pool.apply_async(square, (i,)) for i in range(TASKS)]]
        )
        results["Pool.map"] = median_seconds(lambda: pool.map(square, range(TASKS)))
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        list(executor.map(square, range(100)))
        results["ProcessPoolExecutor.submit"] = median_seconds(
            lambda: [f.result() for f in [executor.submit(square, i) for i in range(TASKS)]]
        )
        results["ProcessPoolExecutor.map"] = median_seconds(lambda: list(executor.map(square, range(TASKS))))
    results["python"] = sys.version.split()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
