//! What a task forks belongs to its worker: a worker's death is seen from its exit even
//! while a process it forked holds its connection open, and whatever a task forked is
//! killed with its worker when the worker dies, is recycled or the pool ends.

mod common;

use std::time::Duration;

use multiprocess::{Error, ProcessPool, Value};

/// Long enough that only a hang can reach it.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Forks a process that waits for signals forever, inheriting everything the worker
/// holds (its connection to the pool included); returns its pid.
fn fork_sleeper() -> u32 {
    // SAFETY: the child only calls `pause`, which is async-signal-safe, and never returns.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => loop {
            nix::unistd::pause();
        },
        nix::unistd::ForkResult::Parent { child } => child.as_raw() as u32,
    }
}

fn fork_orphan(_: ()) -> u32 {
    fork_sleeper()
}

fn fork_then_exit(pid_out: Value<u32>) -> u32 {
    pid_out.set(fork_sleeper());
    std::process::exit(3)
}

fn square(x: u64) -> u64 {
    x * x
}

async fn gone(pid: u32) -> bool {
    common::await_exit_of(pid, PROMPTLY).await
}

#[tokio::test]
async fn a_worker_that_exits_while_its_fork_holds_the_connection_fails_its_task_promptly() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(1).build().await.unwrap();
    let grandchild = Value::new(0u32).unwrap();
    let result = tokio::time::timeout(PROMPTLY, pool.apply(fork_then_exit, grandchild.clone()))
        .await
        .expect("the task's answer waited for the process its worker forked");
    assert!(
        matches!(result, Err(Error::WorkerDied { code: Some(3), .. })),
        "{result:?}"
    );
    assert_ne!(grandchild.get(), 0);
    assert!(
        gone(grandchild.get()).await,
        "the forked process outlived its worker"
    );
    assert_eq!(pool.apply(square, 7).await.unwrap(), 49);
    pool.close().await;
    drop((pool, grandchild));
    leaks.finish().await;
}

#[tokio::test]
async fn a_recycled_worker_leaves_nothing_it_forked() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(1)
        .build()
        .await
        .unwrap();
    let orphan = pool.apply(fork_orphan, ()).await.unwrap();
    assert!(
        gone(orphan).await,
        "the forked process outlived its recycled worker"
    );
    common::eventually("the worker replaced", || pool.stats().recycled == 1).await;
    assert_eq!(pool.apply(square, 3).await.unwrap(), 9);
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn a_closed_pool_leaves_nothing_its_tasks_forked() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();
    let orphans = [
        pool.apply(fork_orphan, ()).await.unwrap(),
        pool.apply(fork_orphan, ()).await.unwrap(),
    ];
    tokio::time::timeout(PROMPTLY, pool.close())
        .await
        .expect("close waited for processes the tasks forked");
    for orphan in orphans {
        assert!(
            gone(orphan).await,
            "a forked process outlived the closed pool"
        );
    }
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn a_dropped_pool_leaves_nothing_its_tasks_forked() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(1).build().await.unwrap();
    let orphan = pool.apply(fork_orphan, ()).await.unwrap();
    drop(pool);
    assert!(
        gone(orphan).await,
        "a forked process outlived the dropped pool"
    );
    leaks.finish().await;
}

#[tokio::test]
async fn a_pool_of_no_workers_is_an_error() {
    let built = ProcessPool::builder().workers(0).build().await;
    assert!(
        matches!(built, Err(Error::InvalidArgument(_))),
        "{:?}",
        built.err()
    );
    assert!(matches!(
        ProcessPool::new(0).await,
        Err(Error::InvalidArgument(_))
    ));
}
