//! How fast a child starts, against a raw `fork` + `waitpid` measured in the same run,
//! in alternating rounds (the cost of a fork drifts within a minute on a VM): to the
//! result in hand and to the exit reaped, by a warm (parked) fork-server child, by a
//! fork-server child with none parked, and by exec; a burst of 100 spawns awaited
//! together; and a child that needs a 50 MiB table, with and
//! without the table built by a preload in the fork server.
//!
//! `cargo bench --bench start` (`START_BENCH_ROUNDS` for fewer than 40 rounds). Prints
//! Markdown tables.

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

/// What a timed run waits for.
#[derive(Clone, Copy)]
enum Until {
    /// The result in hand: `result`.
    Result,
    /// The exit reaped: `join`.
    Reaped,
}

/// Waits, untimed, until the fork server holds a child parked (or, with parking off,
/// none), so that each timed spawn meets the state it measures.
fn settle(warm: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while multiprocess::forkserver_stats().parked.is_empty() == warm && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Times `runs` spawns of a trivial function; with `warm`, counts those served by a
/// child parked before the spawn.
async fn spawn_times(
    method: StartMethod,
    until: Until,
    warm: Option<bool>,
    runs: usize,
    hits: &mut usize,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        if let Some(warm) = warm {
            settle(warm);
        }
        let parked = multiprocess::forkserver_stats().parked;
        let start = Instant::now();
        let mut child = Process::builder()
            .start_method(method)
            .spawn(trivial, 1)
            .unwrap();
        let pid = child.pid();
        let value = match until {
            Until::Result => child.result().await.unwrap(),
            Until::Reaped => child.join().await.unwrap(),
        };
        times.push(start.elapsed());
        assert_eq!(value, 2);
        *hits += parked.contains(&pid) as usize;
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

/// Memory of a parked child, from `/proc/PID/smaps_rollup`: (Rss, Pss) in KiB.
fn parked_memory() -> Option<(u64, u64)> {
    let pid = *multiprocess::forkserver_stats().parked.first()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Rss:")?, field("Pss:")?))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut hits = 0;
    // Warm up the fork server and the reaper.
    rt.block_on(spawn_times(
        StartMethod::Forkserver,
        Until::Reaped,
        None,
        20,
        &mut hits,
    ));
    let mut floor = Vec::new();
    // [warm, cold] × [result, reaped]
    let mut server: [[Vec<Duration>; 2]; 2] = Default::default();
    let mut exec: [Vec<Duration>; 2] = Default::default();
    let (mut warm_runs, mut warm_hits) = (0, 0);
    let rounds: usize = std::env::var("START_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40);
    for round in 0..rounds {
        floor.extend(raw_fork_times(10));
        for (w, warm) in [true, false].into_iter().enumerate() {
            multiprocess::set_max_parked(if warm { 16 } else { 0 });
            if warm {
                // Demand again after the cold rows, so that children get parked.
                rt.block_on(spawn_times(
                    StartMethod::Forkserver,
                    Until::Reaped,
                    None,
                    1,
                    &mut hits,
                ));
            }
            for (u, until) in [Until::Result, Until::Reaped].into_iter().enumerate() {
                let mut hit = 0;
                let times = rt.block_on(spawn_times(
                    StartMethod::Forkserver,
                    until,
                    Some(warm),
                    10,
                    &mut hit,
                ));
                server[w][u].extend(times);
                if warm {
                    warm_runs += 10;
                    warm_hits += hit;
                }
            }
        }
        multiprocess::set_max_parked(16);
        if round % 2 == 0 {
            for (u, until) in [Until::Result, Until::Reaped].into_iter().enumerate() {
                exec[u].extend(rt.block_on(spawn_times(
                    StartMethod::Exec,
                    until,
                    None,
                    10,
                    &mut hits,
                )));
            }
        }
    }
    let floor = stats(floor);
    let [[warm_result, warm_reaped], [cold_result, cold_reaped]] = server.map(|s| s.map(stats));
    let [exec_result, exec_reaped] = exec.map(stats);
    let memory = {
        rt.block_on(spawn_times(
            StartMethod::Forkserver,
            Until::Reaped,
            None,
            1,
            &mut hits,
        ));
        settle(true);
        parked_memory()
    };
    let mut bursts: [Vec<Duration>; 3] = Default::default();
    for _ in 0..5 {
        for (i, (method, max)) in [
            (StartMethod::Forkserver, 16),
            (StartMethod::Forkserver, 0),
            (StartMethod::Exec, 16),
        ]
        .into_iter()
        .enumerate()
        {
            multiprocess::set_max_parked(max);
            settle(max > 0);
            bursts[i].push(rt.block_on(burst(method, 100)));
        }
    }
    multiprocess::set_max_parked(16);
    let without = stats(rt.block_on(table_child_times(10)));
    multiprocess::preload(build_table).unwrap();
    rt.block_on(table_child_times(1)); // the server restarts and builds the table once
    let with = stats(rt.block_on(table_child_times(10)));

    println!("| spawn of a trivial function | median | p99 | vs raw fork |");
    println!("|---|---|---|---|");
    row(
        "fork server, warm child: spawn → result",
        &warm_result,
        &floor,
    );
    row(
        "fork server, warm child: spawn + exit reaped (`join`)",
        &warm_reaped,
        &floor,
    );
    row(
        "fork server, no child parked: spawn → result",
        &cold_result,
        &floor,
    );
    row(
        "fork server, no child parked: spawn + exit reaped",
        &cold_reaped,
        &floor,
    );
    row("exec: spawn → result", &exec_result, &floor);
    row("exec: spawn + exit reaped", &exec_reaped, &floor);
    row("floor: raw fork + waitpid", &floor, &floor);
    println!();
    println!("Warm runs served by a child parked before the spawn: {warm_hits} of {warm_runs}.");
    if let Some((rss, pss)) = memory {
        println!("A parked child: Rss {rss} KiB, Pss {pss} KiB.");
    }
    println!();
    println!("| 100 spawns awaited together (wall, median of 5) | time |");
    println!("|---|---|");
    let [warm_burst, cold_burst, exec_burst] = bursts.map(|b| stats(b).median);
    println!("| fork server, up to 16 parked | {} |", ms(warm_burst));
    println!("| fork server, none parked | {} |", ms(cold_burst));
    println!("| exec | {} |", ms(exec_burst));
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
        "Runs: 400 raw fork and 400 of each fork-server row in alternating rounds of 10, \
         200 of each exec row interleaved; bursts: 5 each; table: 10 each."
    );
}
