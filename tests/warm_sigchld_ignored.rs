//! A program that sets `SIGCHLD` to `SIG_IGN` while the fork server holds children
//! parked: the kernel reaps them when they die. Alone in its binary since the setting
//! is process-wide.

mod common;

use std::time::{Duration, Instant};

fn five(_: ()) -> u32 {
    5
}

fn forked() -> multiprocess::ProcessBuilder {
    multiprocess::Process::builder().start_method(multiprocess::StartMethod::Forkserver)
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::exists(pid) {
        assert!(Instant::now() < deadline, "child {pid} still there");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// With `SIGCHLD` ignored, the fork server's parked children are reaped by the kernel
/// when they die (killed here from outside): spawns still get a working child.
#[test]
fn with_sigchld_ignored_parked_children_killed_from_outside_fail_no_spawn() {
    // SAFETY: installing SIG_IGN runs no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let leaks = common::LeakCheck::start_blocking();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..5 {
        let first = forked().spawn(five, ()).unwrap();
        assert_eq!(runtime.block_on(async { first.await }).unwrap(), 5);
        let deadline = Instant::now() + Duration::from_secs(20);
        let parked = loop {
            let parked = multiprocess::forkserver_stats().parked;
            if !parked.is_empty() {
                break parked;
            }
            assert!(Instant::now() < deadline, "no child parked");
            std::thread::yield_now();
        };
        for pid in &parked {
            // SAFETY: kill on a pid the pool holds a pidfd of.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        for pid in parked {
            wait_until_gone(pid);
        }
        let children: Vec<_> = (0..4).map(|_| forked().spawn(five, ()).unwrap()).collect();
        for child in children {
            assert_eq!(runtime.block_on(async { child.await }).unwrap(), 5);
        }
    }
    drop(runtime);
    leaks.finish_blocking();
}
