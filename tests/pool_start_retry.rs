//! A worker that cannot be replaced for lack of descriptors is retried until it can:
//! the pool never shrinks for good. Tasks queued meanwhile wait, or fail with a clear
//! error once no worker could be started for the pool's start timeout.
//!
//! These tests take every free descriptor of the process: they live in a binary of
//! their own and run one at a time (the leak check serialises them).

mod common;

use std::time::Duration;

use multiprocess::{Error, ProcessPool};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

fn square(x: u64) -> u64 {
    x * x
}

fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}

/// Takes every descriptor the process may still open, under a lowered soft limit (so
/// that there are few to take); gives them back when dropped.
struct Exhausted {
    held: Vec<std::fs::File>,
    soft: u64,
    hard: u64,
}

impl Exhausted {
    fn now() -> Exhausted {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        setrlimit(Resource::RLIMIT_NOFILE, highest + 32, hard).unwrap();
        let mut held = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(file) => held.push(file),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("{e}"),
            }
        }
        Exhausted { held, soft, hard }
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        self.held.clear();
        setrlimit(Resource::RLIMIT_NOFILE, self.soft, self.hard).unwrap();
    }
}

/// A child the fork server parked ahead of demand holds its descriptors already, so a
/// spawn that takes one needs almost none: these tests want every start to need some.
fn no_children_parked() {
    multiprocess::set_max_parked(0);
}

#[tokio::test]
async fn a_replacement_that_cannot_start_is_retried_until_it_can() {
    no_children_parked();
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .worker_start_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();

    // Out of descriptors, the worker dies: its replacement cannot start.
    let exhausted = Exhausted::now();
    let died = pool.apply(exit_with, 3).await;
    assert!(
        matches!(died, Err(Error::WorkerDied { code: Some(3), .. })),
        "{died:?}"
    );
    common::eventually("a failed start", || pool.stats().start_failures >= 2).await;
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.missing), (0, 1), "{stats:?}");

    // With no worker for longer than the start timeout, a task fails, and says why.
    let starved = pool.apply(square, 2).await;
    match &starved {
        Err(Error::Bootstrap(message)) => {
            assert!(
                message.contains("no pool worker could be started"),
                "{message}"
            );
            // It names the cause of the last failed start, not a stage's side effect.
            assert!(message.contains("Too many open files"), "{message}");
            assert!(!message.contains("encode"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // Descriptors free again: the retry starts a worker, and the pool works.
    drop(exhausted);
    let answer = tokio::time::timeout(Duration::from_secs(20), pool.apply(square, 4))
        .await
        .expect("a worker was started once descriptors were free");
    assert_eq!(answer.unwrap(), 16);
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.missing), (1, 0), "{stats:?}");
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn tasks_queued_while_a_worker_cannot_start_wait_for_it() {
    no_children_parked();
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(1).build().await.unwrap();
    let exhausted = Exhausted::now();
    let _ = pool.apply(exit_with, 3).await;
    common::eventually("a failed start", || pool.stats().start_failures >= 1).await;
    let waiting = pool.submit(square, 5);
    common::eventually("the task queued", || pool.stats().queued == 1).await;
    drop(exhausted);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the queued task ran once a worker could start");
    assert_eq!(answer.unwrap(), 25);
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}
