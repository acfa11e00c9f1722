//! How fast a child starts, against a raw `fork` + `waitpid` measured in the same run,
//! in alternating rounds (the cost of a fork drifts within a minute on a VM); a burst
//! of 100 spawns awaited together; and a child that needs a 50 MiB table, with and
//! without the table built by a preload in the fork server.
//!
//! `cargo bench --bench start`. Prints a Markdown table.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;

use common::{Stats, raw_fork_times, stats};
use multiprocess::{Process, StartMethod};

fn trivial(x: u32) -> u32 {
    x + 1
}

const TABLE_LEN: usize = 50 * 1024 * 1024 / 8;
static TABLE: OnceLock<Vec<u64>> = OnceLock::new();

fn table() -> &'static [u64] {
    TABLE.get_or_init(|| {
        (0..TABLE_LEN as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .collect()
    })
}

fn build_table() {
    table();
}

fn table_entry(i: usize) -> u64 {
    table()[i]
}

async fn spawn_join_times(method: StartMethod, runs: usize) -> Vec<Duration> {
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

async fn burst(method: StartMethod, n: u32) -> Duration {
    let start = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Process::builder()
                .start_method(method)
                .spawn(trivial, i)
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        assert_eq!(child.await.unwrap(), i as u32 + 1);
    }
    start.elapsed()
}

async fn table_child_times(runs: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = Instant::now();
        let child = Process::builder()
            .start_method(StartMethod::Forkserver)
            .spawn(table_entry, i)
            .unwrap();
        child.await.unwrap();
        times.push(start.elapsed());
    }
    times
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn row(what: &str, s: &Stats, floor: &Stats) {
    println!(
        "| {what} | {} | {} | {:.2}× |",
        ms(s.median),
        ms(s.p99),
        s.median.as_secs_f64() / floor.median.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Warm up the fork server and the reaper.
    rt.block_on(spawn_join_times(StartMethod::Forkserver, 20));
    let (mut floor, mut server, mut exec) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..40 {
        floor.extend(raw_fork_times(10));
        server.extend(rt.block_on(spawn_join_times(StartMethod::Forkserver, 10)));
        if round % 2 == 0 {
            exec.extend(rt.block_on(spawn_join_times(StartMethod::Exec, 10)));
        }
    }
    let (floor, server, exec) = (stats(floor), stats(server), stats(exec));
    let mut bursts = (Vec::new(), Vec::new());
    for _ in 0..5 {
        bursts
            .0
            .push(rt.block_on(burst(StartMethod::Forkserver, 100)));
        bursts.1.push(rt.block_on(burst(StartMethod::Exec, 100)));
    }
    let without = stats(rt.block_on(table_child_times(10)));
    multiprocess::preload(build_table).unwrap();
    rt.block_on(table_child_times(1)); // the server restarts and builds the table once
    let with = stats(rt.block_on(table_child_times(10)));

    println!("| spawn + join (exit reaped), trivial function | median | p99 | vs raw fork |");
    println!("|---|---|---|---|");
    row("multiprocess, fork server", &server, &floor);
    row("multiprocess, exec", &exec, &floor);
    row("floor: raw fork + waitpid", &floor, &floor);
    println!();
    println!("| figure | fork server | exec |");
    println!("|---|---|---|");
    println!(
        "| 100 spawns awaited together (wall, median of 5) | {} | {} |",
        ms(stats(bursts.0).median),
        ms(stats(bursts.1).median)
    );
    println!();
    println!("| child that needs a 50 MiB table (fork server) | median | p99 |");
    println!("|---|---|---|");
    println!(
        "| built in the child | {} | {} |",
        ms(without.median),
        ms(without.p99)
    );
    println!(
        "| built once by `preload` | {} | {} |",
        ms(with.median),
        ms(with.p99)
    );
    println!();
    println!(
        "Runs: 400 raw fork and 400 fork server in alternating rounds of 10, 200 exec \
         interleaved; bursts: 5 each; table: 10 each."
    );
}
