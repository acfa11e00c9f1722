//! 10,000 children alive at once, all awaited on one current-thread runtime, within a
//! descriptor limit of 20,000: afterwards no zombie and no extra descriptor.

mod common;

use std::io::Read;
use std::time::Instant;

use multiprocess::{PassFd, spawn_process};
use nix::sys::resource::{Resource, getrlimit};

const CHILDREN: u64 = 10_000;

/// Blocks until the gate pipe reaches end of file, so that every child is alive at
/// once, then answers.
fn square_when_released((x, gate): (u64, PassFd)) -> u64 {
    let _ = std::fs::File::from(gate.0).read(&mut [0u8; 1]);
    x * x
}

/// How many children this machine's descriptor limit allows: all 10,000 from a limit of
/// 20,000 up (the first spawn raised the soft limit to the hard one).
fn children_for_limit(soft: u64) -> u64 {
    let n = CHILDREN.min(soft / 2);
    if n < CHILDREN {
        eprintln!(
            "ten_thousand: SCALED DOWN to {n} children: the descriptor limit here is {soft} \
             (`ulimit -Hn`), 20,000 are needed for 10,000"
        );
    }
    n
}

#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_children_alive_at_once_within_the_descriptor_limit() {
    let leaks = common::LeakCheck::start().await;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(
        soft, hard,
        "the first spawn raises the soft limit to the hard one"
    );
    let n = children_for_limit(soft);
    let before = common::fd_count();
    let started = Instant::now();
    let (gate, release) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let children: Vec<_> = (0..n)
        .map(|i| {
            spawn_process(square_when_released, (i, PassFd(gate.try_clone().unwrap())))
                .unwrap_or_else(|err| panic!("spawning child {i} of {n}: {err}"))
        })
        .collect();
    drop(gate);
    let spawned = started.elapsed();
    let in_use = common::fd_count() - before;
    eprintln!(
        "ten_thousand: {n} children spawned in {spawned:?}, {in_use} descriptors \
         ({:.2} per child, limit {soft})",
        in_use as f64 / n as f64
    );
    assert!(
        (in_use as u64) < soft * 4 / 5,
        "{in_use} descriptors for {n} children leave too little of the limit {soft}"
    );
    let ours: std::collections::HashSet<u32> = children.iter().map(|c| c.pid()).collect();
    let alive = common::children()
        .iter()
        .filter(|(pid, state)| ours.contains(pid) && *state != 'Z')
        .count();
    assert_eq!(alive as u64, n, "all children alive together");
    drop(release);
    let results = futures::future::join_all(children.into_iter().map(|c| c.into_future())).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (i * i) as u64);
    }
    eprintln!("ten_thousand: all joined after {:?}", started.elapsed());
    assert_eq!(common::zombies(), 0);
    leaks.finish().await;
}
