//! die_with_parent: a parent process SIGKILLed takes its child with it.

mod common;

use std::time::Duration;

use multiprocess::{Process, Sender, spawn_process};

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// A middle process: starts a grandchild, reports its pid, then waits to be killed.
fn middle(args: (bool, Sender<u32>)) {
    let (die_with_parent, mut report) = args;
    let grandchild = Process::builder()
        .die_with_parent(die_with_parent)
        .kill_on_drop(false)
        .spawn(sleeps_forever, ())
        .unwrap();
    report.send_blocking(grandchild.pid()).unwrap();
    sleeps_forever(());
}

#[tokio::test]
async fn a_killed_parent_takes_its_child_along() {
    let leaks = common::LeakCheck::start().await;
    let (tx, mut rx) = multiprocess::channel::<u32>().unwrap();
    let mut parent = spawn_process(middle, (true, tx)).unwrap();
    let grandchild = rx.recv().await.unwrap();
    assert!(common::exists(grandchild));
    parent.kill().unwrap();
    assert!(parent.join().await.is_err());
    assert!(
        common::await_exit_of(grandchild, Duration::from_secs(20)).await,
        "grandchild {grandchild} outlived its parent"
    );
    drop((parent, rx));
    leaks.finish().await;
}

#[tokio::test]
async fn without_it_the_child_outlives_its_parent() {
    let leaks = common::LeakCheck::start().await;
    let (tx, mut rx) = multiprocess::channel::<u32>().unwrap();
    let mut parent = spawn_process(middle, (false, tx)).unwrap();
    let grandchild = rx.recv().await.unwrap();
    parent.kill().unwrap();
    assert!(parent.join().await.is_err());
    // Still there after its parent is gone (reparented); clean it up ourselves.
    assert!(!common::await_exit_of(grandchild, Duration::from_millis(300)).await);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(grandchild as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(common::await_exit_of(grandchild, Duration::from_secs(20)).await);
    drop((parent, rx));
    leaks.finish().await;
}

/// A middle process that owns a pool, reports its workers' pids, then waits to die.
async fn pool_owner(mut report: Sender<Vec<u32>>) {
    let pool = multiprocess::ProcessPool::new(2).await.unwrap();
    let mut pids = Vec::new();
    for _ in 0..50 {
        let pid = pool.apply(|_: ()| std::process::id(), ()).await.unwrap();
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    // A child asked to die with us, started through the fork server, then every child
    // we have: workers, that child and the fork server itself.
    let _child = Process::builder()
        .die_with_parent(true)
        .spawn(sleeps_forever, ())
        .unwrap();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(me) && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    report.send(pids).await.unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn pool_workers_die_with_the_process_that_owns_the_pool() {
    let leaks = common::LeakCheck::start().await;
    let (tx, mut rx) = multiprocess::channel::<Vec<u32>>().unwrap();
    let mut owner = Process::builder().spawn_async(pool_owner, tx).unwrap();
    let workers = rx.recv().await.unwrap();
    // Two workers, the die-with-parent child, and (with the default start method) the
    // fork server.
    assert!(workers.len() >= 3, "{workers:?}");
    owner.kill().unwrap();
    assert!(owner.join().await.is_err());
    // The owner is dead and reaped: every descendant must follow within a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    for pid in workers {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            common::await_exit_of(pid, left).await,
            "descendant {pid} still alive a second after the process that owned it died"
        );
    }
    drop((owner, rx));
    leaks.finish().await;
}

/// An owner: starts a function child and a program with the defaults (or detached),
/// reports their pids, then waits to be killed, holding both handles.
fn owner(args: (bool, Sender<Vec<u32>>)) {
    let (detached, mut report) = args;
    let builder = Process::builder().kill_on_drop(!detached);
    let function = builder.spawn(sleeps_forever, ()).unwrap();
    let program = builder.command("sleep").arg("1000").spawn().unwrap();
    report
        .send_blocking(vec![function.pid(), program.pid()])
        .unwrap();
    sleeps_forever(());
    drop((function, program));
}

#[tokio::test]
async fn children_spawned_with_the_defaults_die_with_their_killed_owner() {
    let leaks = common::LeakCheck::start().await;
    let (tx, mut rx) = multiprocess::channel::<Vec<u32>>().unwrap();
    let mut parent = spawn_process(owner, (false, tx)).unwrap();
    let children = rx.recv().await.unwrap();
    parent.kill().unwrap();
    assert!(parent.join().await.is_err());
    for child in children {
        assert!(
            common::await_exit_of(child, Duration::from_secs(20)).await,
            "child {child} outlived its owner"
        );
    }
    drop((parent, rx));
    leaks.finish().await;
}

#[tokio::test]
async fn detached_children_outlive_their_killed_owner() {
    let leaks = common::LeakCheck::start().await;
    let (tx, mut rx) = multiprocess::channel::<Vec<u32>>().unwrap();
    let mut parent = spawn_process(owner, (true, tx)).unwrap();
    let children = rx.recv().await.unwrap();
    parent.kill().unwrap();
    assert!(parent.join().await.is_err());
    for child in children {
        assert!(!common::await_exit_of(child, Duration::from_millis(300)).await);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(common::await_exit_of(child, Duration::from_secs(20)).await);
    }
    drop((parent, rx));
    leaks.finish().await;
}
