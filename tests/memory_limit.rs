//! A memory cap on a child: allocations beyond it fail in the child, and the parent
//! gets `Error::MemoryLimit` instead of a bare signal.

mod common;

use multiprocess::{Error, Process, StartMethod};

const LIMIT: u64 = 512 << 20;

/// Allocates and touches `mib` MiB, returning how many bytes it holds.
fn hoard(mib: usize) -> usize {
    let block = vec![1u8; mib << 20];
    std::hint::black_box(&block).iter().step_by(4096).count() * 4096
}

/// Reserves `mib` MiB of zeroed memory without touching it: it counts against the
/// address space all the same, and costs no RAM.
fn reserve(mib: usize) -> usize {
    let block = vec![0u8; mib << 20];
    std::hint::black_box(block).len()
}

fn panics_under_the_cap(_: ()) {
    panic!("not about memory");
}

fn capped(method: StartMethod) -> multiprocess::ProcessBuilder {
    Process::builder().memory_limit(LIMIT).start_method(method)
}

async fn exceeding_the_cap_is_a_memory_limit_error(method: StartMethod) {
    let leaks = common::LeakCheck::start().await;
    // Within the cap, the child works as usual.
    let mut within = capped(method).spawn(hoard, 64).unwrap();
    assert_eq!(within.join().await.unwrap(), 64 << 20);
    // Beyond it the allocation fails, the child aborts, and the error says why.
    let mut beyond = capped(method).spawn(reserve, 2048).unwrap();
    match beyond.join().await {
        Err(Error::MemoryLimit { limit, signal }) => {
            assert_eq!(limit, LIMIT);
            assert_eq!(signal, libc::SIGABRT);
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    // The same allocation without a cap succeeds: it was the cap, not the machine.
    let mut uncapped = Process::builder()
        .start_method(method)
        .spawn(reserve, 2048)
        .unwrap();
    assert_eq!(uncapped.join().await.unwrap(), 2048 << 20);
    leaks.finish().await;
}

#[tokio::test]
async fn exceeding_the_cap_is_a_memory_limit_error_exec() {
    exceeding_the_cap_is_a_memory_limit_error(StartMethod::Exec).await;
}

#[tokio::test]
async fn exceeding_the_cap_is_a_memory_limit_error_forkserver() {
    exceeding_the_cap_is_a_memory_limit_error(StartMethod::Forkserver).await;
}

#[tokio::test]
async fn a_panic_under_the_cap_is_still_a_panic() {
    let leaks = common::LeakCheck::start().await;
    let mut child = capped(StartMethod::from_env())
        .spawn(panics_under_the_cap, ())
        .unwrap();
    match child.join().await {
        Err(Error::Panicked { message, .. }) => assert_eq!(message, "not about memory"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    leaks.finish().await;
}

#[tokio::test]
async fn an_external_program_runs_under_the_cap() {
    let leaks = common::LeakCheck::start().await;
    let mut shell = Process::builder()
        .memory_limit(LIMIT)
        .command("sh")
        .args(["-c", "ulimit -v"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::read_stdout(&mut shell).await;
    shell.join().await.unwrap();
    // `ulimit -v` reports KiB.
    assert_eq!(out.trim(), (LIMIT / 1024).to_string());
    leaks.finish().await;
}

#[tokio::test]
async fn a_pool_task_beyond_the_cap_fails_alone() {
    let leaks = common::LeakCheck::start().await;
    let pool = multiprocess::ProcessPool::builder()
        .workers(2)
        .worker_memory_limit(LIMIT)
        .build()
        .await
        .unwrap();
    let small: Vec<_> = (0..20).map(|_| pool.submit(hoard, 1)).collect();
    let big = pool.submit(reserve, 2048);
    match big.await {
        Err(Error::MemoryLimit { limit, signal }) => {
            assert_eq!((limit, signal), (LIMIT, libc::SIGABRT));
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    for result in futures::future::join_all(small).await {
        assert_eq!(result.unwrap(), 1 << 20);
    }
    // The worker that died is replaced and the pool goes on.
    assert_eq!(pool.apply(hoard, 2).await.unwrap(), 2 << 20);
    common::eventually("pool back to two workers", || pool.stats().workers == 2).await;
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}
