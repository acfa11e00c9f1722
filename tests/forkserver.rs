//! The fork server start method: children that are our own, with every handle feature.

mod common;

use std::time::Duration;

use multiprocess::{Error, Process, StartMethod};

fn forked() -> multiprocess::ProcessBuilder {
    Process::builder().start_method(StartMethod::Forkserver)
}

fn parent_and_self(_: ()) -> (u32, u32) {
    (nix::unistd::getppid().as_raw() as u32, std::process::id())
}

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

fn aborts(_: ()) {
    std::process::abort();
}

fn panics(_: ()) {
    panic!("forked panic");
}

#[tokio::test]
async fn forked_children_are_our_own_children() {
    let leaks = common::LeakCheck::start().await;
    for _ in 0..20 {
        let mut child = forked().spawn(parent_and_self, ()).unwrap();
        let pid = child.pid();
        let (parent, me) = child.join().await.unwrap();
        assert_eq!(
            parent,
            std::process::id(),
            "the child's parent is us, not the zygote"
        );
        assert_eq!(me, pid);
    }
    leaks.finish_ignoring_forkserver().await;
}

#[tokio::test]
async fn failures_kills_and_timeouts_work_as_for_exec() {
    let leaks = common::LeakCheck::start().await;
    let err = forked()
        .spawn(panics, ())
        .unwrap()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Panicked { ref message, .. } if message == "forked panic"),
        "{err:?}"
    );
    let mut stuck = forked().spawn(sleeps_forever, ()).unwrap();
    assert!(matches!(
        stuck.join_timeout(Duration::from_millis(50)).await,
        Err(Error::Timeout { .. })
    ));
    stuck.kill().unwrap();
    assert!(matches!(
        stuck.join().await,
        Err(Error::Signaled {
            signal: libc::SIGKILL,
            ..
        })
    ));
    drop(stuck);
    // Dropped: killed and reaped like any child.
    let dropped = forked().spawn(sleeps_forever, ()).unwrap();
    let pid = dropped.pid();
    drop(dropped);
    assert!(common::await_exit_of(pid, Duration::from_secs(20)).await);
    leaks.finish_ignoring_forkserver().await;
}

fn my_fds(_: ()) -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn a_forked_child_holds_only_stdio_and_its_socket() {
    let leaks = common::LeakCheck::start().await;
    let _pipes: Vec<_> = (0..10)
        .map(|_| multiprocess::pipe::<u8, u8>().unwrap())
        .collect();
    // 0-2, the control socket, the directory being listed.
    assert!(forked().spawn(my_fds, ()).unwrap().join().await.unwrap() <= 5);
    drop(_pipes);
    leaks.finish_ignoring_forkserver().await;
}

#[tokio::test]
async fn a_pool_on_the_fork_server() {
    let leaks = common::LeakCheck::start().await;
    let pool = multiprocess::ProcessPool::builder()
        .workers(2)
        .start_method(StartMethod::Forkserver)
        .build()
        .await
        .unwrap();
    assert_eq!(pool.apply(|x: u64| x * x, 9).await.unwrap(), 81);
    let crash = pool.apply(aborts, ()).await.unwrap_err();
    assert!(
        matches!(
            crash,
            Error::WorkerDied {
                signal: Some(libc::SIGABRT),
                ..
            }
        ),
        "{crash:?}"
    );
    assert_eq!(pool.apply(|x: u64| x + 1, 1).await.unwrap(), 2);
    pool.close().await;
    drop(pool);
    leaks.finish_ignoring_forkserver().await;
}

#[tokio::test]
async fn a_dead_fork_server_is_replaced() {
    let leaks = common::LeakCheck::start().await;
    let first = forked()
        .spawn(parent_and_self, ())
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(first.0, std::process::id());
    let servers: Vec<u32> = common::children()
        .iter()
        .filter(|(pid, state)| *state != 'Z' && common::is_forkserver(*pid))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(servers[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(common::await_exit_of(servers[0], Duration::from_secs(20)).await);
    // The next spawn notices, reaps the old server and starts a new one.
    let (parent, _) = forked()
        .spawn(parent_and_self, ())
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(parent, std::process::id());
    assert!(!common::exists(servers[0]), "the dead server was reaped");
    leaks.finish().await;
}
