//! What Python users look for: `current_process()`, `active_children()`,
//! `Process.exitcode`, and the handle's pidfd to wait on with anything.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use multiprocess::{Process, StartMethod, active_children, current_process, spawn_process};

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

fn exits(code: i32) {
    std::process::exit(code);
}

fn whoami(_: ()) -> (String, u32, u32) {
    let me = current_process();
    (me.name().to_string(), me.pid(), me.parent_pid())
}

#[tokio::test]
async fn current_process_names_a_child_and_its_parent() {
    let leaks = common::LeakCheck::start().await;
    assert_eq!(current_process().name(), "MainProcess");
    assert_eq!(current_process().pid(), std::process::id());
    for method in [StartMethod::Forkserver, StartMethod::Exec] {
        let child = Process::builder()
            .name("introspected")
            .start_method(method)
            .spawn(whoami, ())
            .unwrap();
        let pid = child.pid();
        let (name, seen_pid, parent) = child.await.unwrap();
        assert_eq!(name, "introspected", "{method:?}");
        assert_eq!(seen_pid, pid, "{method:?}");
        assert_eq!(parent, std::process::id(), "{method:?}");
    }
    leaks.finish().await;
}

#[tokio::test]
async fn exitcode_follows_pythons_convention() {
    let leaks = common::LeakCheck::start().await;
    let mut running = spawn_process(sleeps_forever, ()).unwrap();
    assert_eq!(running.exitcode(), None);
    running.kill().unwrap();
    let _ = running.join().await;
    assert_eq!(running.exitcode(), Some(-libc::SIGKILL));
    let mut fine = spawn_process(exits, 0).unwrap();
    let _ = fine.join().await;
    assert_eq!(fine.exitcode(), Some(0));
    let mut failing = spawn_process(exits, 3).unwrap();
    let _ = failing.join().await;
    assert_eq!(failing.exitcode(), Some(3));
    let mut program = multiprocess::Command::new("sh")
        .args(["-c", "kill -TERM $$"])
        .spawn()
        .unwrap();
    let _ = program.join().await;
    assert_eq!(program.exitcode(), Some(-libc::SIGTERM));
    drop((running, fine, failing, program));
    leaks.finish().await;
}

fn ours(pids: &[u32]) -> Vec<(u32, String)> {
    active_children()
        .into_iter()
        .filter(|c| pids.contains(&c.pid()))
        .map(|c| (c.pid(), c.name().to_string()))
        .collect()
}

#[tokio::test]
async fn active_children_lists_live_children_only() {
    let leaks = common::LeakCheck::start().await;
    let kept = Process::builder()
        .name("kept")
        .spawn(sleeps_forever, ())
        .unwrap();
    let dropped = spawn_process(sleeps_forever, ()).unwrap();
    let program = multiprocess::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let mut finished = spawn_process(exits, 0).unwrap();
    let _ = finished.join().await;
    let pids = [kept.pid(), dropped.pid(), program.pid(), finished.pid()];
    let listed = ours(&pids);
    assert_eq!(listed, {
        let mut expected = vec![
            (kept.pid(), "kept".to_string()),
            (dropped.pid(), dropped.name().to_string()),
            (program.pid(), "sleep".to_string()),
        ];
        expected.sort();
        expected
    });
    // A child just forked by the server bears the server's name until it renames
    // itself: look for the server among the children that are not ours.
    let servers: Vec<u32> = common::children()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| !pids.contains(pid) && common::is_forkserver(*pid))
        .collect();
    assert!(
        active_children()
            .iter()
            .all(|c| !servers.contains(&c.pid())),
        "the fork server is listed"
    );
    drop(dropped);
    program.kill().unwrap();
    common::eventually("only the kept child listed", || {
        ours(&pids) == vec![(kept.pid(), "kept".to_string())]
    })
    .await;
    drop((kept, program, finished));
    common::eventually("no child listed", || ours(&pids).is_empty()).await;
    leaks.finish().await;
}

fn readable(fd: std::os::fd::BorrowedFd<'_>, wait: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut poll, 1, wait.as_millis() as i32) == 1 }
}

#[tokio::test]
async fn the_handle_is_a_pidfd_readable_once_the_child_exits() {
    let leaks = common::LeakCheck::start().await;
    let (mut release, child_end) = multiprocess::pipe::<(), ()>().unwrap();
    let mut child = spawn_process(
        |mut conn: multiprocess::Connection<(), ()>| conn.recv_blocking().unwrap(),
        child_end,
    )
    .unwrap();
    assert!(!readable(child.as_fd(), Duration::from_millis(50)));
    release.send(()).await.unwrap();
    assert!(readable(child.as_fd(), Duration::from_secs(20)));
    child.join().await.unwrap();
    // Still there, and still readable, after the join.
    assert!(readable(child.as_fd(), Duration::ZERO));
    drop((child, release));
    leaks.finish().await;
}
