#!/usr/bin/env python3
"""Python's peers for benches/sync.rs: multiprocessing.Queue throughput of small
messages between two processes, and uncontended multiprocessing.Lock acquire/release.
Prints one JSON object (median seconds)."""

import json
import multiprocessing
import statistics
import sys
import time

MESSAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
LOCK_OPS = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
REPEAT = 3


def produce(queue, count):
    for i in range(count):
        queue.put(i)
    queue.put(None)


def queue_run(ctx):
    queue = ctx.Queue(1024)
    producer = ctx.Process(target=produce, args=(queue, MESSAGES))
    start = time.perf_counter()
    producer.start()
    received = 0
    while queue.get() is not None:
        received += 1
    elapsed = time.perf_counter() - start
    producer.join()
    assert received == MESSAGES
    return elapsed


def lock_run(ctx):
    lock = ctx.Lock()
    start = time.perf_counter()
    for _ in range(LOCK_OPS):
        lock.acquire()
        lock.release()
    return time.perf_counter() - start


def main():
    ctx = multiprocessing.get_context("fork")
    print(json.dumps({
        "queue": statistics.median(queue_run(ctx) for _ in range(REPEAT)),
        "lock": statistics.median(lock_run(ctx) for _ in range(REPEAT)),
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
