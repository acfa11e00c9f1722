//! 1,000 children alive at once, all awaited on one current-thread runtime; afterwards
//! no zombie and no extra descriptor.

mod common;

use std::io::Read;

use multiprocess::{PassFd, spawn_process};

/// Blocks until the gate pipe reaches end of file, so that every child is alive at
/// once, then answers.
fn square_when_released((x, gate): (u64, PassFd)) -> u64 {
    let _ = std::fs::File::from(gate.0).read(&mut [0u8; 1]);
    x * x
}

#[tokio::test(flavor = "current_thread")]
async fn a_thousand_children_at_once() {
    let leaks = common::LeakCheck::start().await;
    // Two descriptors per running child (control socket and pidfd).
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 {
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(8192),
            hard,
        )
        .unwrap();
    }
    let (gate, release) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let children: Vec<_> = (0..1000u64)
        .map(|i| {
            spawn_process(square_when_released, (i, PassFd(gate.try_clone().unwrap()))).unwrap()
        })
        .collect();
    drop(gate);
    let ours: std::collections::HashSet<u32> = children.iter().map(|c| c.pid()).collect();
    let alive = common::children()
        .iter()
        .filter(|(pid, state)| ours.contains(pid) && *state != 'Z')
        .count();
    assert_eq!(alive, 1000, "all children alive together");
    drop(release);
    let results = futures::future::join_all(children.into_iter().map(|c| c.into_future())).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), (i * i) as u64);
    }
    assert_eq!(common::zombies(), 0);
    leaks.finish().await;
}
