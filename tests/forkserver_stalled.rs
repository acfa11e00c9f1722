//! A fork server that stops answering (here: stopped by a signal) does not hang
//! spawning: the spawn starts its child by exec instead, the stalled server is killed
//! and reaped, and the next spawn starts a new one. In a test binary of its own, as it
//! stalls the server every other test would share.

mod common;

use multiprocess::{Process, StartMethod};

fn parent_and_self(_: ()) -> (u32, u32) {
    (nix::unistd::getppid().as_raw() as u32, std::process::id())
}

fn fork_servers() -> Vec<u32> {
    common::children()
        .into_iter()
        .filter(|(pid, state)| *state != 'Z' && common::is_forkserver(*pid))
        .map(|(pid, _)| pid)
        .collect()
}

async fn spawn_and_join() -> (u32, u32) {
    Process::builder()
        .start_method(StartMethod::Forkserver)
        .spawn(parent_and_self, ())
        .unwrap()
        .join()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stopped_fork_server_is_replaced_and_the_spawn_still_runs() {
    let leaks = common::LeakCheck::start().await;
    let me = std::process::id();
    assert_eq!(spawn_and_join().await.0, me);
    let servers = fork_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    let stalled = servers[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stalled as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();

    // The stopped server never answers: this spawn gives up on it and execs.
    let (parent, child) = spawn_and_join().await;
    assert_eq!(parent, me);
    assert_ne!(child, stalled);
    common::eventually("the stalled server killed and reaped", || {
        !common::exists(stalled)
    })
    .await;

    // The next spawn starts a fresh server.
    assert_eq!(spawn_and_join().await.0, me);
    let servers = fork_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(servers[0], stalled);
    leaks.finish().await;
}
