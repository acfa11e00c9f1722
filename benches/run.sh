#!/usr/bin/env bash
# Runs the foundation benchmarks (ours and their floors, in one invocation each) and
# prints the markdown table. Round trips are pinned to one CPU: on these VMs a
# cross-CPU wake-up costs tens of microseconds and would hide everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench foundation -- 'spawn|bulk'
taskset -c 0 cargo bench --bench foundation -- roundtrip
python3 benches/report.py
