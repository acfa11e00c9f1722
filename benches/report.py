#!/usr/bin/env python3
"""Turns criterion's estimates for the foundation benchmarks into a markdown table.

Each row puts one of our measurements beside the floor measured in the same run and
checks it against its target. Run after `benches/run.sh` (or the cargo commands
listed in benches/foundation.rs).
"""

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")

# (what, group, ours, floor, kind, target)
# kind "latency": ours / floor must be <= target; "throughput": floor / ours >= target.
ROWS = [
    ("spawn + join, trivial fn (exec)", "spawn", "spawn_process + join", "floor_ Command re-exec + wait", "latency", 1.1),
    ("spawn + join, trivial fn (fork server)", "spawn", "spawn_process + join, fork server", "floor_ raw fork + waitpid", "latency", 2.0),
    ("64 B round trip, async calls (taskset -c 0)", "roundtrip", "Connection 64 B", "floor_ blocking socketpair 64 B", "latency", 1.3),
    ("64 B round trip, blocking calls (taskset -c 0)", "roundtrip", "Connection 64 B, blocking calls", "floor_ blocking socketpair 64 B", "latency", 1.3),
    ("  tokio UnixStream, no framing (reference)", "roundtrip", "reference_ tokio UnixStream 64 B", "floor_ blocking socketpair 64 B", "latency", None),
    ("1 MiB bulk, typed messages (`ByteBuf`), interleaved", "bulk", "typed", "floor", "throughput", 0.9),
    ("1 MiB bulk, raw bytes (`send_bytes` / `recv_bytes_into`), interleaved", "bulk", "raw", "floor", "throughput", 0.9),
]


def median_ns(group, bench):
    if group == "bulk":
        # Measured interleaved, round by round, outside criterion (see bench_bulk).
        with open(os.path.join(ROOT, "..", "bulk.json")) as f:
            return json.load(f)[bench]
    path = os.path.join(ROOT, group, bench, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt_time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.3f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} vCPU, Linux {platform.release()}, {rustc}"


def main():
    print(f"Machine: {machine()}\n")
    print("| measurement | ours (median) | floor (median) | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    missing = False
    for what, group, ours, floor, kind, target in ROWS:
        try:
            o, f = median_ns(group, ours), median_ns(group, floor)
        except OSError:
            print(f"| {what} | not measured | | | | |")
            missing = True
            continue
        if kind == "latency":
            ratio = o / f
            goal = f"≤ {target}×" if target else "—"
            met = "—" if target is None else ("yes" if ratio <= target else "**no**")
        else:
            ratio = f / o
            goal = f"≥ {target}×" if target else "—"
            met = "—" if target is None else ("yes" if ratio >= target else "**no**")
        extra = ""
        if kind == "throughput":
            extra = f" ({(1 << 20) / o * 1e9 / (1 << 30):.2f} GiB/s)"
        print(f"| {what} | {fmt_time(o)}{extra} | {fmt_time(f)} | {ratio:.2f}× | {goal} | {met} |")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
