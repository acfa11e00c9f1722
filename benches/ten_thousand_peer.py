"""Python's multiprocessing (fork start method) doing what benches/ten_thousand.rs does:
N children alive at once, each blocked reading an inherited pipe, then all joined.

    python3 benches/ten_thousand_peer.py [children]   # default 10000; one JSON line

Memory is taken while all are alive, as in the Rust side: the parent's VmHWM, and the
Pss of the parent and every child, summed.

Python's fork start keeps two descriptors per live child in the parent (the sentinel
and the pipe a child watches for its parent's death): at the descriptor limit, starting
the next child fails with EMFILE. The run then goes on with the children it has, and
says how many.
"""

import json
import multiprocessing as mp
import os
import sys
import time


def square_when_released(x, gate, release):
    # A forked child holds every descriptor of its parent, the pipe's write end too.
    os.close(release)
    os.read(gate, 1)
    # The result has nowhere to go without a pipe or queue per child (Python's
    # Process returns nothing); the exit code says it ran.
    _ = x * x


def proc_kib(path, field):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line[len(field):].split()[0])
    except OSError:
        pass
    return 0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    ctx = mp.get_context("fork")
    gate, release = os.pipe()
    started = time.perf_counter()
    children = []
    error = None
    for i in range(n):
        p = ctx.Process(target=square_when_released, args=(i, gate, release))
        try:
            p.start()
        except OSError as e:
            error = f"child {i}: {e}"
            break
        children.append(p)
    spawned = time.perf_counter() - started
    os.close(gate)
    fds = len(os.listdir("/proc/self/fd"))
    children_pss = sum(proc_kib(f"/proc/{p.pid}/smaps_rollup", "Pss:") for p in children)
    parent_pss = proc_kib("/proc/self/smaps_rollup", "Pss:")
    joined_from = time.perf_counter()
    os.close(release)
    for p in children:
        p.join()
        assert p.exitcode == 0, p.exitcode
    joined = time.perf_counter() - joined_from
    print(json.dumps({
        "who": "Python multiprocessing (fork)",
        "children": len(children),
        "error": error,
        "spawn_s": round(spawned, 3),
        "join_s": round(joined, 3),
        "total_s": round(spawned + joined, 3),
        "parent_hwm_kib": proc_kib("/proc/self/status", "VmHWM:"),
        "parent_pss_kib": parent_pss,
        "total_pss_kib": parent_pss + children_pss,
        "parent_fds": fds,
    }))


if __name__ == "__main__":
    main()
