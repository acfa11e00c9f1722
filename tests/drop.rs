//! Dropping a handle: kill-on-drop kills and reaps; without it the child runs on and is
//! still reaped when it ends.

mod common;

use std::time::Duration;

use multiprocess::{Connection, Process, spawn_process};

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

fn waits_for_word(mut conn: Connection<(), String>) -> String {
    conn.recv_blocking().unwrap()
}

#[tokio::test]
async fn kill_on_drop_leaves_no_process() {
    let leaks = common::LeakCheck::start().await;
    let child = spawn_process(sleeps_forever, ()).unwrap();
    let pid = child.pid();
    assert!(common::exists(pid));
    drop(child);
    assert!(
        common::await_exit_of(pid, Duration::from_secs(20)).await,
        "child still running"
    );
    common::eventually("dropped child reaped", || !common::exists(pid)).await;
    leaks.finish().await;
}

#[tokio::test]
async fn without_kill_on_drop_the_child_finishes_and_is_reaped() {
    let leaks = common::LeakCheck::start().await;
    let (mut conn, child_end) = multiprocess::pipe::<String, ()>().unwrap();
    let child = Process::builder()
        .kill_on_drop(false)
        .spawn(waits_for_word, child_end)
        .unwrap();
    let pid = child.pid();
    drop(child);
    // Still alive after the drop: it answers.
    assert!(common::exists(pid));
    conn.send("done".to_string()).await.unwrap();
    assert!(common::await_exit_of(pid, Duration::from_secs(20)).await);
    common::eventually("finished child reaped", || !common::exists(pid)).await;
    drop(conn);
    leaks.finish().await;
}

/// The SIGCHLD backend's driver lives on the runtime that first awaited a child; when
/// that runtime is gone, a child dropped on another runtime must still be reaped when it
/// ends, with no further spawn or wait to prompt it.
#[test]
fn dropped_after_the_reaping_runtime_ended_is_reaped_when_it_finishes() {
    let leaks = common::LeakCheck::start_blocking();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let mut child = spawn_process(|x: u32| x + 1, 1).unwrap();
        assert_eq!(child.join().await.unwrap(), 2);
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let (mut conn, child_end) = multiprocess::pipe::<String, ()>().unwrap();
        let child = Process::builder()
            .kill_on_drop(false)
            .spawn(waits_for_word, child_end)
            .unwrap();
        let pid = child.pid();
        drop(child);
        conn.send("done".to_string()).await.unwrap();
        common::eventually("finished child reaped", || !common::exists(pid)).await;
    });
    drop(second);
    leaks.finish_blocking();
}

#[test]
fn dropped_outside_a_runtime_is_reaped_by_the_next_spawn() {
    let leaks = common::LeakCheck::start_blocking();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let child = spawn_process(sleeps_forever, ()).unwrap();
    let pid = child.pid();
    drop(child);
    assert!(runtime.block_on(common::await_exit_of(pid, Duration::from_secs(20))));
    // The next spawn sweeps the orphans left without a runtime.
    let mut next = spawn_process(sleeps_forever, ()).unwrap();
    assert!(!common::exists(pid), "orphan {pid} not reaped");
    next.kill().unwrap();
    assert!(runtime.block_on(next.join()).is_err());
    drop((next, runtime));
    leaks.finish_blocking();
}

#[test]
fn dropped_while_its_runtime_shuts_down_is_reaped_by_the_next_spawn() {
    let leaks = common::LeakCheck::start_blocking();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Tasks that still own a child when the runtime goes down: dropping them drops the
    // children's handles in the middle of the shutdown.
    let pids: Vec<u32> = runtime.block_on(async {
        (0..4)
            .map(|_| {
                let mut child = spawn_process(sleeps_forever, ()).unwrap();
                let pid = child.pid();
                tokio::spawn(async move {
                    let _ = child.join().await;
                });
                pid
            })
            .collect()
    });
    drop(runtime);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for &pid in &pids {
        assert!(runtime.block_on(common::await_exit_of(pid, Duration::from_secs(20))));
    }
    let mut next = spawn_process(sleeps_forever, ()).unwrap();
    for pid in pids {
        assert!(!common::exists(pid), "orphan {pid} not reaped");
    }
    next.kill().unwrap();
    assert!(runtime.block_on(next.join()).is_err());
    drop((next, runtime));
    leaks.finish_blocking();
}

/// Starts `sleep` and leaves it running, orphaned once we exit; returns its pid.
fn leaves_an_orphan(_: ()) -> u32 {
    let grandchild = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = grandchild.id();
    std::mem::forget(grandchild);
    pid
}

/// Starts `sleep`, reports its pid, and waits to be killed.
fn starts_a_grandchild_and_waits(mut report: multiprocess::Sender<u32>) {
    let grandchild = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    report.send_blocking(grandchild.id()).unwrap();
    std::mem::forget(grandchild);
    sleeps_forever(());
}

async fn gone(pid: u32) {
    assert!(
        common::await_exit_of(pid, Duration::from_secs(20)).await,
        "process {pid} survived"
    );
}

#[tokio::test]
async fn kill_tree_takes_an_orphaned_grandchild_along_on_drop() {
    let leaks = common::LeakCheck::start().await;
    let mut child = Process::builder()
        .kill_tree(true)
        .spawn(leaves_an_orphan, ())
        .unwrap();
    let grandchild = child.join().await.unwrap();
    assert!(common::exists(grandchild));
    drop(child);
    gone(grandchild).await;
    leaks.finish().await;
}

#[tokio::test]
async fn kill_tree_takes_a_running_childs_children_along() {
    let leaks = common::LeakCheck::start().await;
    let builder = Process::builder().kill_tree(true);
    // Dropped while running.
    let (tx, mut rx) = multiprocess::channel::<u32>().unwrap();
    let child = builder.spawn(starts_a_grandchild_and_waits, tx).unwrap();
    let (pid, grandchild) = (child.pid(), rx.recv().await.unwrap());
    drop((child, rx));
    gone(pid).await;
    gone(grandchild).await;
    // Killed while running.
    let (tx, mut rx) = multiprocess::channel::<u32>().unwrap();
    let mut child = builder.spawn(starts_a_grandchild_and_waits, tx).unwrap();
    let grandchild = rx.recv().await.unwrap();
    child.kill().unwrap();
    assert!(child.join().await.is_err());
    gone(grandchild).await;
    drop((child, rx));
    // A program whose shell leaves a background job behind.
    let mut shell = builder
        .command("sh")
        .args(["-c", "sleep 1000 >/dev/null & echo $!"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let grandchild: u32 = common::read_stdout(&mut shell)
        .await
        .trim()
        .parse()
        .unwrap();
    shell.join().await.unwrap();
    assert!(common::exists(grandchild));
    drop(shell);
    gone(grandchild).await;
    leaks.finish().await;
}

#[tokio::test]
async fn without_kill_tree_an_orphaned_grandchild_survives_the_drop() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(leaves_an_orphan, ()).unwrap();
    let grandchild = child.join().await.unwrap();
    drop(child);
    assert!(!common::await_exit_of(grandchild, Duration::from_millis(300)).await);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(grandchild as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    gone(grandchild).await;
    leaks.finish().await;
}
