#!/usr/bin/env bash
# The whole side-by-side benchmark suite in one command: every figure for us, for our
# peers (Python's multiprocessing and concurrent.futures, tokio::process, procspawn)
# and for the floors, written to BENCHMARKS.md. Takes about ten minutes on 2 vCPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench suite
bash benches/run.sh | tee target/foundation-table.md
cargo bench --bench pool
cargo bench --bench sync
python3 - <<'PY'
import datetime, platform, subprocess

def text(path):
    return open(path).read().strip()

def foundation():
    lines = [l for l in open("target/foundation-table.md").read().splitlines()
             if l.startswith("|") or l.startswith("Machine")]
    return lines[0] + "\n\n" + "\n".join(lines[1:])

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
out = f"""# Benchmarks

Written by `bash benches/suite.sh` on {datetime.date.today()}: {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} vCPU,
Linux {platform.release()}, {rustc}. Every row is measured in the same run as its peers
and floors; ratios compare within a run only. These are noisy 2-vCPU virtual machines:
expect ±20% between runs.

## Starting processes

{text("target/suite-table.md")}

## Messages: spawn, round trip, bulk (criterion)

{foundation()}

## Pool throughput

{text("target/pool-table.md")}

## Queue and Lock

{text("target/sync-table.md")}
""" + "\n" + open("benches/ten_thousand.md").read() + open("benches/misses.md").read()
open("BENCHMARKS.md", "w").write(out)
print("wrote BENCHMARKS.md")
PY
