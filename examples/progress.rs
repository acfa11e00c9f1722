//! A long `map` over a process pool with a progress bar: rate, time left, and each
//! failure shown as it comes, as Python's `tqdm` over `Pool.imap` does.
//!
//! ```text
//! cargo run --release --example progress            # 2,000 tasks
//! cargo run --release --example progress -- 20000   # as many as you like
//! ```
//!
//! Some inputs fail on purpose, in the three ways a task can: it returns an error of
//! its own (its result is a `Result`), it panics (`Error::Panicked`), or it runs past the
//! pool's task timeout (`Error::Timeout`; the pool replaces that worker). None of them
//! stops the map: every input gets its own result, in input order.

use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use multiprocess::{Error, PanicOutput, ProcessPool};

/// How many primes are below `limit`, by trial division: CPU work whose cost grows
/// with the input.
fn primes_below(limit: u64) -> u64 {
    let is_prime = |n: u64| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    (2..limit).filter(|&n| is_prime(n)).count() as u64
}

/// One task: its input's work, or one of the deliberate failures.
fn count_primes(input: u64) -> Result<u64, String> {
    if input % 700 == 699 {
        // Never finishes: the pool's task timeout ends it.
        loop {
            std::thread::park();
        }
    }
    if input % 500 == 499 {
        panic!("input {input} cannot be counted");
    }
    if input % 41 == 40 {
        return Err(format!("input {input} is rejected"));
    }
    Ok(primes_below(10_000 + input * 7_919 % 60_000))
}

#[tokio::main]
async fn main() -> multiprocess::Result<()> {
    let tasks: u64 = match std::env::args().nth(1) {
        Some(count) => count.parse().expect("the argument is a number of tasks"),
        None => 2_000,
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = ProcessPool::builder()
        .workers(workers)
        .task_timeout(Duration::from_secs(2))
        // The bar shows each failure; a worker's own line would tear it.
        .panic_output(PanicOutput::Silent)
        .build()
        .await?;

    let bar = ProgressBar::new(tasks).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} {rate} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> "),
    );
    let mut failed = 0;
    let mut primes = 0;
    // Chunks of one input, as `imap` does by default: each result shows as soon as it
    // and those before it are done. `map_unordered` is `imap_unordered`.
    let mut results = pool.map_chunked(count_primes, 0..tasks, 1).enumerate();
    while let Some((input, result)) = results.next().await {
        let failure = match result {
            Ok(Ok(count)) => {
                primes += count;
                None
            }
            Ok(Err(reason)) => Some(format!("input {input}: {reason}")),
            Err(Error::Panicked { message, .. }) => {
                Some(format!("input {input} panicked: {message}"))
            }
            Err(err) => Some(format!("input {input} failed: {err}")),
        };
        if let Some(line) = failure {
            failed += 1;
            // Printed above the bar (and printed even when stderr is not a terminal,
            // where the bar itself is hidden).
            bar.suspend(|| eprintln!("{line}"));
            bar.set_message(format!("{failed} failed"));
        }
        bar.inc(1);
    }
    bar.finish();
    pool.close().await;
    println!(
        "{tasks} tasks on {workers} workers in {:.1?}: {failed} failed, {primes} primes counted",
        bar.elapsed()
    );
    Ok(())
}
