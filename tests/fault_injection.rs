//! Faults injected into a busy pool: workers SIGKILLed, SIGSTOPped past the task
//! timeout, or exiting in the middle of a task or of its answer. Every task still ends exactly once,
//! with its result or a typed error, and the pool heals.

mod common;

use std::time::Duration;

use multiprocess::{Error, ProcessPool, TaskHandle};

/// Squares `x` after a short pause (so faults land mid-task); every 97th task exits
/// its worker before answering, and as many others exit after half an answer.
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(300));
    match x % 97 {
        96 => std::process::exit(3),
        48 => {
            common::write_to_pool(&common::torn_frame());
            std::process::exit(4)
        }
        _ => x * x,
    }
}

fn workers_of_pool() -> Vec<u32> {
    common::children()
        .into_iter()
        // A stopped worker is left alone, so that its task runs past the timeout.
        .filter(|(pid, state)| {
            !matches!(*state, 'Z' | 'T' | 't')
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with("pool-worker"))
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_leave_every_task_answered_once() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(2)
        .task_timeout(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    let handles: Vec<TaskHandle<u64>> = (0..1000u64).map(|i| pool.submit(slow_square, i)).collect();
    let all = tokio::spawn(futures::future::join_all(handles));

    // A small deterministic generator, seeded from the clock and printed for replays.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("fault seed {seed}");
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let (mut killed, mut stopped) = (0, 0);
    while !all.is_finished() && killed + stopped < 12 {
        tokio::time::sleep(Duration::from_millis(20 + next() % 40)).await;
        let workers = workers_of_pool();
        if workers.is_empty() {
            continue;
        }
        let victim = nix::unistd::Pid::from_raw(workers[next() as usize % workers.len()] as i32);
        if next() % 2 == 0 {
            let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL);
            killed += 1;
        } else {
            let _ = nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGSTOP);
            stopped += 1;
        }
    }
    let results = all.await.unwrap();
    assert_eq!(results.len(), 1000);
    let (mut ok, mut died, mut timed_out) = (0u64, 0u64, 0u64);
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) => {
                assert_eq!(value, (i * i) as u64, "task {i} answered wrongly");
                ok += 1;
            }
            Err(Error::WorkerDied { .. }) => died += 1,
            Err(Error::Timeout { .. }) => timed_out += 1,
            Err(other) => panic!("task {i}: unexpected {other:?}"),
        }
    }
    let stats = pool.stats();
    println!(
        "faults: {killed} SIGKILL, {stopped} SIGSTOP; tasks: {ok} ok, {died} worker died, {timed_out} timed out; {stats:?}"
    );
    // Every task was answered exactly once: the pool's counts add up to the tasks.
    assert_eq!(
        stats.completed + stats.failed + stats.timed_out,
        1000,
        "{stats:?}"
    );
    assert_eq!(
        (ok, died, timed_out),
        (stats.completed, stats.failed, stats.timed_out)
    );
    assert!(
        died >= 20,
        "the tasks that exit their worker, before or during their answer, fail as WorkerDied"
    );
    // Back to full strength, and working. A worker stopped while idle is only found out
    // when a task on it times out, and one signalled at the very end may still die
    // under the next task; each such failure replaces it.
    common::eventually("pool back to two workers", || pool.stats().workers == 2).await;
    let mut answer = None;
    for _ in 0..4 {
        match pool.apply(slow_square, 5).await {
            Ok(value) => {
                answer = Some(value);
                break;
            }
            Err(Error::Timeout { .. } | Error::WorkerDied { .. }) => continue,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answer, Some(25));
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}
