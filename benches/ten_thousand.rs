//! 10,000 children alive at once, then all awaited: wall time and peak memory, for
//! `benches/ten_thousand.sh` to set beside Python's `multiprocessing` doing the same.
//!
//! ```text
//! cargo bench --bench ten_thousand -- [children]   # default 10000; prints one JSON line
//! ```
//!
//! Each child blocks reading an inherited pipe until the parent closes its end, then
//! returns `x * x`. Memory is taken while all are alive: the parent's VmHWM, and the
//! proportional set size (Pss, shared pages split between their sharers) of the parent,
//! every child and the fork server, summed.

use std::io::Read;
use std::time::Instant;

use multiprocess::{PassFd, spawn_process};

fn square_when_released((x, gate): (u64, PassFd)) -> u64 {
    let _ = std::fs::File::from(gate.0).read(&mut [0u8; 1]);
    x * x
}

/// A `kB` field of a `/proc` file, in KiB.
fn proc_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn pss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// Our own children's pids that are not in `known` (the fork server).
fn other_children(known: &std::collections::HashSet<u32>) -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !known.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.to_string()))
                .is_some_and(|r| r.split_whitespace().nth(1) == Some(me.as_str()))
        })
        .collect()
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (gate, release) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let started = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|i| {
                spawn_process(square_when_released, (i, PassFd(gate.try_clone().unwrap())))
                    .unwrap_or_else(|err| panic!("child {i}: {err}"))
            })
            .collect();
        let spawned = started.elapsed();
        drop(gate);
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let pids: std::collections::HashSet<u32> = children.iter().map(|c| c.pid()).collect();
        let servers = other_children(&pids);
        let children_pss: u64 = pids.iter().chain(&servers).map(|&p| pss_kib(p)).sum();
        let parent_pss = pss_kib(std::process::id());
        let joined_from = Instant::now();
        drop(release);
        let results =
            futures::future::join_all(children.into_iter().map(|c| c.into_future())).await;
        let joined = joined_from.elapsed();
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), (i * i) as u64);
        }
        let hwm = proc_kib("/proc/self/status", "VmHWM:");
        println!(
            "{{\"who\": \"multiprocess ({})\", \"children\": {n}, \"spawn_s\": {:.3}, \
             \"join_s\": {:.3}, \"total_s\": {:.3}, \"parent_hwm_kib\": {hwm}, \
             \"parent_pss_kib\": {parent_pss}, \"total_pss_kib\": {}, \"parent_fds\": {fds}}}",
            std::env::var("MULTIPROCESS_START_METHOD").unwrap_or("forkserver".into()),
            spawned.as_secs_f64(),
            joined.as_secs_f64(),
            (spawned + joined).as_secs_f64(),
            parent_pss + children_pss,
        );
    });
}
