//! Queue throughput and uncontended lock cost beside Python's `multiprocessing.Queue`
//! and `multiprocessing.Lock`.
//!
//! ```text
//! cargo bench --bench sync
//! ```
//!
//! One invocation measures ours, runs `benches/sync_peer.py` for Python's figures and
//! prints a markdown table (also written to `target/sync-table.md`).

use std::time::{Duration, Instant};

use multiprocess::{Error, Lock, Queue, spawn_process};

const MESSAGES: u64 = 100_000;
const LOCK_OPS: u64 = 1_000_000;
const REPEAT: usize = 5;

fn produce(queue: Queue<u64>) {
    for i in 0..MESSAGES {
        queue.put_blocking(i).unwrap();
    }
    queue.close();
}

async fn queue_run() -> Duration {
    let queue = Queue::<u64>::new(1024).unwrap();
    let start = Instant::now();
    let producer = spawn_process(produce, queue.clone()).unwrap();
    let mut received = 0;
    loop {
        match queue.get().await {
            Ok(_) => received += 1,
            Err(Error::Closed) => break,
            Err(err) => panic!("{err}"),
        }
    }
    let elapsed = start.elapsed();
    producer.await.unwrap();
    assert_eq!(received, MESSAGES);
    elapsed
}

async fn lock_async_run(lock: &Lock) -> Duration {
    let start = Instant::now();
    for _ in 0..LOCK_OPS {
        drop(lock.lock().await.unwrap());
    }
    start.elapsed()
}

fn lock_blocking_run(lock: &Lock) -> Duration {
    let start = Instant::now();
    for _ in 0..LOCK_OPS {
        drop(lock.lock_blocking().unwrap());
    }
    start.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn peer() -> (f64, f64, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sync_peer.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([MESSAGES.to_string(), LOCK_OPS.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |key: &str| -> String {
        let start = text
            .find(&format!("\"{key}\": "))
            .map(|i| i + key.len() + 4)
            .unwrap_or(0);
        text[start..]
            .split([',', '}'])
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .to_string()
    };
    (
        field("queue").parse().unwrap_or(f64::NAN),
        field("lock").parse().unwrap_or(f64::NAN),
        field("python"),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queue = median((0..REPEAT).map(|_| rt.block_on(queue_run())).collect());
    let lock = Lock::new().unwrap();
    let lock_async = median(
        (0..REPEAT)
            .map(|_| rt.block_on(lock_async_run(&lock)))
            .collect(),
    );
    let lock_blocking = median((0..REPEAT).map(|_| lock_blocking_run(&lock)).collect());
    let (py_queue, py_lock, python) = peer();

    let per_msg = |s: f64| format!("{:.0} msg/s", MESSAGES as f64 / s);
    let per_op = |d: f64| format!("{:.0} ns", d / LOCK_OPS as f64 * 1e9);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l[l.find(':').unwrap() + 1..].trim().to_string())
        })
        .unwrap_or_default();
    let mut table = format!(
        "Machine: {cpu}, {} vCPU; Python {python}; command: `cargo bench --bench sync`; medians of {REPEAT} runs (Python: 3).\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    table.push_str(
        "| measurement | ours | Python peer | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    let q_ratio = py_queue / queue.as_secs_f64();
    table.push_str(&format!(
        "| Queue, {MESSAGES} small messages, producer process → consumer | {} | {} | {q_ratio:.1}× | ≥ 10× | {} |\n",
        per_msg(queue.as_secs_f64()),
        per_msg(py_queue),
        if q_ratio >= 10.0 { "yes" } else { "**no**" }
    ));
    for (what, d) in [
        ("Lock acquire + release, async, uncontended", lock_async),
        (
            "Lock acquire + release, blocking, uncontended",
            lock_blocking,
        ),
    ] {
        let ns = d.as_secs_f64() / LOCK_OPS as f64 * 1e9;
        table.push_str(&format!(
            "| {what} | {} | {} | {:.1}× | ≤ 1 µs | {} |\n",
            per_op(d.as_secs_f64()),
            per_op(py_lock),
            py_lock / d.as_secs_f64(),
            if ns <= 1000.0 { "yes" } else { "**no**" }
        ));
    }
    println!("{table}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sync-table.md"),
        &table,
    );
}
