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
