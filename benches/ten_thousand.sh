#!/usr/bin/env bash
# Many children alive at once, then all awaited: ours (fork server and exec start) and
# Python's multiprocessing with the fork start method, in one run. Prints one JSON line
# per run and a markdown table for BENCHMARKS.md.
#
#   bash benches/ten_thousand.sh [children] [children for the side-by-side rows]
#
# Defaults: 10,000 for ours alone, 3,000 for ours beside Python. Python's fork start
# keeps two descriptors per live child (10,000 need more than a limit of 20,000) and
# each child costs it about 1.5 MiB of Pss, so 10,000 Python children would need some
# 15 GiB: the side-by-side rows use fewer.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
m=${2:-3000}
cargo bench --bench ten_thousand --no-run >/dev/null 2>&1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ours() { cargo bench -q --bench ten_thousand -- "$1" | tee -a "$out"; }
ours "$n"
MULTIPROCESS_START_METHOD=exec ours "$n"
ours "$m"
MULTIPROCESS_START_METHOD=exec ours "$m"
python3 benches/ten_thousand_peer.py "$m" | tee -a "$out"
echo
echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) vCPU," \
    "Linux $(uname -r); $(python3 --version); descriptor limit $(ulimit -Hn)."
echo "Command: \`bash benches/ten_thousand.sh $n $m\`."
echo
echo "| children alive at once | count | spawn all | release + join all | total | parent VmHWM | Pss, parent | Pss, all processes | parent fds |"
echo "|---|---|---|---|---|---|---|---|---|"
python3 - "$out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    err = f" ({r['error']})" if r.get("error") else ""
    print(f"| {r['who']}{err} | {r['children']} | {r['spawn_s']:.2f} s | {r['join_s']:.2f} s "
          f"| {r['total_s']:.2f} s | {r['parent_hwm_kib'] / 1024:.1f} MiB "
          f"| {r['parent_pss_kib'] / 1024:.1f} MiB | {r['total_pss_kib'] / 1024:.0f} MiB "
          f"| {r['parent_fds']} |")
PY
