//! The side-by-side suite's own figures: spawn latency of every start method and peer,
//! a thousand children at once, idle worker memory, CPU-bound speedup on all cores.
//! `benches/suite.sh` runs this with the other benchmarks and writes `BENCHMARKS.md`.
//!
//! ```text
//! cargo bench --bench suite
//! ```
//!
//! Peers in the same invocation: Python 3 `multiprocessing` with the `fork`,
//! `forkserver` and `spawn` start methods (`benches/suite_peer.py`), `tokio::process`
//! running `/bin/true`, `procspawn`, and the floor: a raw `fork` + `waitpid`.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
mod common;

use common::{Stats, raw_fork_times, stats};
use multiprocess::{Process, ProcessPool, StartMethod};

fn trivial(x: u32) -> u32 {
    x + 1
}

fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

async fn ours(method: StartMethod, runs: usize) -> Stats {
    stats(ours_times(method, runs).await)
}

async fn ours_times(method: StartMethod, runs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = Process::builder()
            .start_method(method)
            .spawn(trivial, 1)
            .unwrap();
        assert_eq!(child.join().await.unwrap(), 2);
        times.push(start.elapsed());
    }
    times
}

/// The fork server and its floor, in alternating rounds so that both see the machine
/// in the same state: on these VMs the cost of a fork drifts within a minute.
fn fork_server_and_floor(rt: &tokio::runtime::Runtime, rounds: usize) -> (Stats, Stats) {
    rt.block_on(ours_times(StartMethod::Forkserver, 20)); // warm up the fork server
    let (mut server, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        server.extend(rt.block_on(ours_times(StartMethod::Forkserver, 10)));
        floor.extend(raw_fork_times(10));
    }
    (stats(server), stats(floor))
}

async fn tokio_true(runs: usize) -> Stats {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let status = tokio::process::Command::new("/bin/true")
            .status()
            .await
            .unwrap();
        assert!(status.success());
        times.push(start.elapsed());
    }
    stats(times)
}

fn procspawn_runs(runs: usize) -> Stats {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let value = procspawn::spawn(1u32, trivial).join().unwrap();
        assert_eq!(value, 2);
        times.push(start.elapsed());
    }
    stats(times)
}

async fn thousand(method: StartMethod) -> Duration {
    let start = Instant::now();
    let children: Vec<_> = (0..1000u32)
        .map(|i| {
            Process::builder()
                .start_method(method)
                .spawn(trivial, i)
                .unwrap()
        })
        .collect();
    let joined = futures::future::join_all(
        children
            .into_iter()
            .map(std::future::IntoFuture::into_future),
    )
    .await;
    for (i, result) in joined.into_iter().enumerate() {
        assert_eq!(result.unwrap(), i as u32 + 1);
    }
    start.elapsed()
}

fn memory_kib(pid: u32) -> (u64, u64) {
    let field = |path: String, key: &str| -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field(format!("/proc/{pid}/status"), "VmRSS:"),
        field(format!("/proc/{pid}/smaps_rollup"), "Pss:"),
    )
}

fn worker_pid(_: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(10));
    std::process::id()
}

async fn idle_worker_memory() -> (u64, u64) {
    let pool = ProcessPool::new(2).await.unwrap();
    let pids: Vec<u32> = pool
        .map_chunked(worker_pid, 0..20, 1)
        .try_collect()
        .await
        .unwrap();
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    let sums = distinct
        .iter()
        .map(|p| memory_kib(*p))
        .fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1));
    pool.close().await;
    (
        sums.0 / distinct.len() as u64,
        sums.1 / distinct.len() as u64,
    )
}

async fn fib_batch(pool: &ProcessPool, cores: usize) -> Duration {
    let start = Instant::now();
    let out: Vec<u64> = pool
        .map_chunked(fib, vec![31u32; 16 * cores], 1)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.len(), 16 * cores);
    start.elapsed()
}

/// One worker against all cores, in alternating rounds; medians of each.
async fn cpu_speedup() -> (usize, Duration, Duration) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let single = ProcessPool::new(1).await.unwrap();
    let all = ProcessPool::new(cores).await.unwrap();
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        one.push(fib_batch(&single, cores).await);
        many.push(fib_batch(&all, cores).await);
    }
    single.close().await;
    all.close().await;
    (cores, stats(one).median, stats(many).median)
}

/// The number after `"key"` (and after `"sub"` inside it, if given) in the peer's JSON.
fn json_number(text: &str, key: &str, sub: Option<&str>) -> f64 {
    let Some(mut at) = text.find(&format!("\"{key}\"")) else {
        return f64::NAN;
    };
    if let Some(sub) = sub {
        match text[at..].find(&format!("\"{sub}\"")) {
            Some(offset) => at += offset,
            None => return f64::NAN,
        }
    }
    let rest = &text[at..];
    let rest = &rest[rest.find(':').map_or(0, |i| i + 1)..];
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

fn python_peer() -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/suite_peer.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn ms_f(seconds: f64) -> String {
    format!("{:.3} ms", seconds * 1e3)
}

fn main() {
    procspawn::init();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, floor) = fork_server_and_floor(&rt, 40);
    let (exec, tokio_p, thousand_server, thousand_exec, memory, (cores, one, all)) =
        rt.block_on(async {
            (
                ours(StartMethod::Exec, 200).await,
                tokio_true(200).await,
                thousand(StartMethod::Forkserver).await,
                thousand(StartMethod::Exec).await,
                idle_worker_memory().await,
                cpu_speedup().await,
            )
        });
    let procspawn_stats = procspawn_runs(100);
    let peer = python_peer();
    let py =
        |method: &str, which: &str| json_number(&peer, &format!("latency_{method}"), Some(which));

    let ratio = |d: f64| format!("{:.2}×", d / floor.median.as_secs_f64());
    let mut table = String::new();
    table.push_str(
        "| spawn + join of a trivial function | median | p99 | vs raw fork |\n|---|---|---|---|\n",
    );
    let mut row = |what: &str, median: f64, p99: f64| {
        table.push_str(&format!(
            "| {what} | {} | {} | {} |\n",
            ms_f(median),
            ms_f(p99),
            ratio(median)
        ));
    };
    row(
        "**multiprocess, fork server** (target ≤ 2× raw fork)",
        server.median.as_secs_f64(),
        server.p99.as_secs_f64(),
    );
    row(
        "multiprocess, exec",
        exec.median.as_secs_f64(),
        exec.p99.as_secs_f64(),
    );
    row(
        "floor: raw fork + waitpid",
        floor.median.as_secs_f64(),
        floor.p99.as_secs_f64(),
    );
    row(
        "tokio::process `/bin/true`",
        tokio_p.median.as_secs_f64(),
        tokio_p.p99.as_secs_f64(),
    );
    row(
        "procspawn",
        procspawn_stats.median.as_secs_f64(),
        procspawn_stats.p99.as_secs_f64(),
    );
    for method in ["fork", "forkserver", "spawn"] {
        row(
            &format!("Python multiprocessing, {method}"),
            py(method, "median"),
            py(method, "p99"),
        );
    }
    let met = if server.median.as_secs_f64() <= 2.0 * floor.median.as_secs_f64() {
        "yes"
    } else {
        "**no**"
    };
    table.push_str(&format!(
        "\nFork-server target (≤ 2× raw fork) met: {met}.\n\n"
    ));
    table.push_str("| figure | multiprocess | peer |\n|---|---|---|\n");
    table.push_str(&format!(
        "| 1,000 children spawned at once, all awaited (wall) | {} fork server, {} exec | {} Python fork |\n",
        ms(thousand_server),
        ms(thousand_exec),
        ms_f(json_number(&peer, "thousand_fork", None))
    ));
    table.push_str(&format!(
        "| idle pool worker memory (VmRSS / Pss) | {} / {} KiB | {:.0} / {:.0} KiB (Python Pool(2) worker) |\n",
        memory.0,
        memory.1,
        json_number(&peer, "pool_memory", Some("rss_kib")),
        json_number(&peer, "pool_memory", Some("pss_kib"))
    ));
    table.push_str(&format!(
        "| CPU-bound: {} × fib(31), {cores} workers vs 1 | {:.2}× ({} vs {}) | — |\n",
        16 * cores,
        one.as_secs_f64() / all.as_secs_f64(),
        ms(all),
        ms(one)
    ));
    let header = format!(
        "Command: `cargo bench --bench suite`; Python {}; runs: 400 fork server and 400 raw fork (alternating rounds of 10), 200 exec, 200 tokio, 100 procspawn, Python 200 fork / 200 forkserver / 20 spawn; CPU-bound: medians of 5 alternating rounds.\n\n",
        json_text(&peer, "python")
    );
    let table = header + &table;
    println!("{table}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/suite-table.md"),
        &table,
    );
}

fn json_text(text: &str, key: &str) -> String {
    text.find(&format!("\"{key}\": \""))
        .map(|i| &text[i + key.len() + 5..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
        .to_string()
}
