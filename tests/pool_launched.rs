//! Pools whose workers are started through launchers, over the real engines: an `sshd`
//! on loopback and a single-node Slurm, both fixtures of this test process.

mod common;

use std::time::Duration;

use common::cluster::{Slurm, Sshd};
use common::launchers::{srun_on, ssh_to};
use futures::TryStreamExt;
use multiprocess::{Error, ProcessPool};

const LONG: Duration = Duration::from_secs(120);

/// The task's result, whether it ran in a Slurm job, and the process that ran it.
fn where_am_i(x: u64) -> (u64, bool, u32) {
    (
        x + 1,
        std::env::var_os("SLURM_JOB_ID").is_some(),
        std::process::id(),
    )
}

fn own_pid_then_hang(_: ()) -> u32 {
    std::thread::sleep(Duration::from_secs(600));
    std::process::id()
}

fn own_pid(_: ()) -> u32 {
    std::process::id()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pool_over_ssh_and_slurm_spreads_its_workers_round_robin() {
    let sshd = tokio::task::spawn_blocking(Sshd::start).await.unwrap();
    let slurm = tokio::task::spawn_blocking(Slurm::start).await.unwrap();
    let pool = ProcessPool::builder()
        .workers(2)
        .hosts([ssh_to(&sshd), srun_on(&slurm)])
        .build()
        .await
        .unwrap();
    assert_eq!(pool.stats().workers, 2);
    let results: Vec<(u64, bool, u32)> = pool.map(where_am_i, 0..400).try_collect().await.unwrap();
    for (x, (y, _, _)) in results.iter().enumerate() {
        assert_eq!(*y, x as u64 + 1);
    }
    // One worker in a Slurm job, one started over ssh: tasks ran on both.
    assert!(results.iter().any(|r| r.1), "no task ran under Slurm");
    assert!(results.iter().any(|r| !r.1), "no task ran over ssh");
    let pids: Vec<u32> = results.iter().map(|r| r.2).collect();
    assert!(pids.iter().all(|pid| *pid != std::process::id()));
    pool.close().await;
    for pid in pids {
        until("the launched workers gone", || !common::exists(pid)).await;
    }
}

#[tokio::test]
async fn a_launched_worker_that_is_lost_fails_its_task_and_is_launched_again() {
    let sshd = tokio::task::spawn_blocking(Sshd::start).await.unwrap();
    let pool = ProcessPool::builder()
        .workers(1)
        .launcher(ssh_to(&sshd))
        .build()
        .await
        .unwrap();
    let first = pool.apply(own_pid, ()).await.unwrap();
    let hung = pool.submit(own_pid_then_hang, ());
    until("the task runs", || pool.stats().busy == 1).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = tokio::time::timeout(LONG, hung).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::WorkerDied { reason: Some(why), .. } if why.contains("connection")),
        "{err:?}"
    );
    // Launched again: the next task runs in a new process.
    let second = tokio::time::timeout(LONG, pool.apply(own_pid, ()))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second, first);
    pool.terminate().await;
    until("the relaunched worker gone", || !common::exists(second)).await;
}
