//! Pool throughput beside Python's `multiprocessing.Pool(2)` and
//! `ProcessPoolExecutor(2)`, and CPU-bound scaling from one worker to two.
//!
//! ```text
//! cargo bench --bench pool
//! ```
//!
//! One invocation measures ours, then runs `benches/pool_peer.py` for Python's figures,
//! and prints a markdown table (also written to `target/pool-table.md`). Every figure is
//! the median of several whole runs; pool start-up is not timed.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use multiprocess::ProcessPool;

const TASKS: u64 = 20_000;
const REPEAT: usize = 5;

fn square(x: u64) -> u64 {
    x * x
}

fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

async fn median<F, Fut>(mut run: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..REPEAT {
        let start = Instant::now();
        run().await;
        times.push(start.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// Medians of `a` and `b` timed alternately (each going first in turn), so that drift
/// in the machine's speed weighs on both alike.
async fn interleaved_medians<A, FutA, B, FutB>(mut a: A, mut b: B) -> (Duration, Duration)
where
    A: FnMut() -> FutA,
    FutA: std::future::Future<Output = ()>,
    B: FnMut() -> FutB,
    FutB: std::future::Future<Output = ()>,
{
    let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
    for round in 0..REPEAT {
        for first in [round % 2 == 0, round % 2 == 1] {
            let start = Instant::now();
            if first {
                a().await;
                times_a.push(start.elapsed());
            } else {
                b().await;
                times_b.push(start.elapsed());
            }
        }
    }
    times_a.sort();
    times_b.sort();
    (times_a[REPEAT / 2], times_b[REPEAT / 2])
}

async fn one_by_one(pool: &ProcessPool) {
    let handles: Vec<_> = (0..TASKS).map(|i| pool.submit(square, i)).collect();
    for (i, result) in futures::future::join_all(handles)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(result.unwrap(), (i * i) as u64);
    }
}

async fn mapped(pool: &ProcessPool) {
    let out: Vec<u64> = pool.map(square, 0..TASKS).try_collect().await.unwrap();
    assert_eq!(out.len(), TASKS as usize);
}

async fn cpu_bound(pool: &ProcessPool) {
    let out: Vec<u64> = pool
        .map_chunked(fib, vec![32u32; 64], 1)
        .try_collect()
        .await
        .unwrap();
    assert!(out.iter().all(|v| *v == 2_178_309));
}

fn python_peer() -> serde_json_lite::Object {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
    let output = std::process::Command::new("python3")
        .arg(dir.join("pool_peer.py"))
        .arg(TASKS.to_string())
        .arg("3")
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json_lite::parse(&String::from_utf8_lossy(&output.stdout))
}

/// Just enough JSON for the peer's flat object of numbers and strings.
mod serde_json_lite {
    pub type Object = Vec<(String, String)>;

    pub fn parse(text: &str) -> Object {
        let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
        inner
            .split(", \"")
            .filter_map(|pair| {
                let (key, value) = pair.split_once("\": ")?;
                Some((
                    key.trim_matches('"').to_string(),
                    value.trim_matches('"').to_string(),
                ))
            })
            .collect()
    }

    pub fn seconds(object: &Object, key: &str) -> f64 {
        object
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    pub fn text<'a>(object: &'a Object, key: &str) -> &'a str {
        object
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("?")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} vCPU, Linux {}", kernel.trim())
}

fn rate(seconds: f64) -> String {
    format!("{:.0} tasks/s", TASKS as f64 / seconds)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks harness-less benches to list themselves.
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (apply, map, one, two) = rt.block_on(async {
        let pool = ProcessPool::builder()
            .workers(2)
            .queue_capacity(TASKS as usize)
            .build()
            .await
            .unwrap();
        one_by_one(&pool).await; // warm-up
        let apply = median(|| one_by_one(&pool)).await;
        let map = median(|| mapped(&pool)).await;
        let single = ProcessPool::builder().workers(1).build().await.unwrap();
        let (one, two) = interleaved_medians(|| cpu_bound(&single), || cpu_bound(&pool)).await;
        pool.close().await;
        single.close().await;
        (apply, map, one, two)
    });
    let peer = python_peer();
    let py_apply = serde_json_lite::seconds(&peer, "Pool.apply_async");
    let py_map = serde_json_lite::seconds(&peer, "Pool.map");
    let py_submit = serde_json_lite::seconds(&peer, "ProcessPoolExecutor.submit");
    let py_emap = serde_json_lite::seconds(&peer, "ProcessPoolExecutor.map");
    let (apply, map) = (apply.as_secs_f64(), map.as_secs_f64());
    let speedup = one.as_secs_f64() / two.as_secs_f64();

    let mut table = String::new();
    table.push_str(&format!(
        "Machine: {}; Python {}; command: `cargo bench --bench pool`; {TASKS} tasks of `x*x` on 2 workers, medians of {REPEAT} runs (Python: 3); the CPU-bound runs on 1 and 2 workers alternate.\n\n",
        machine(),
        serde_json_lite::text(&peer, "python")
    ));
    table.push_str(
        "| measurement | ours | Python peer | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    let row = |what: &str, ours: f64, peer_name: &str, peer: f64, target: f64| {
        let ratio = peer / ours;
        format!(
            "| {what} | {} | {} ({peer_name}) | {ratio:.1}× | ≥ {target}× | {} |\n",
            rate(ours),
            rate(peer),
            if ratio >= target { "yes" } else { "**no**" }
        )
    };
    table.push_str(&row(
        "one-by-one submit",
        apply,
        "Pool.apply_async",
        py_apply,
        5.0,
    ));
    table.push_str(&row(
        "one-by-one submit",
        apply,
        "ProcessPoolExecutor.submit",
        py_submit,
        5.0,
    ));
    table.push_str(&row("map, automatic chunks", map, "Pool.map", py_map, 1.0));
    table.push_str(&row(
        "map, automatic chunks",
        map,
        "ProcessPoolExecutor.map",
        py_emap,
        1.0,
    ));
    table.push_str(&format!(
        "| 64 × fib(32), 2 workers vs 1 | {:.0} ms vs {:.0} ms | — | {speedup:.2}× | ≥ 1.9× | {} |\n",
        two.as_secs_f64() * 1e3,
        one.as_secs_f64() * 1e3,
        if speedup >= 1.9 { "yes" } else { "**no**" }
    ));
    println!("{table}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pool-table.md");
    let _ = std::fs::write(target, &table);
}
