//! A program that sets `SIGCHLD` to `SIG_IGN` (common in daemons): the kernel then reaps
//! every child as it exits. Alone in its binary since the setting is process-wide.

mod common;

use std::time::{Duration, Instant};

use multiprocess::{Command, Error, spawn_process};

fn five(_: ()) -> u32 {
    5
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::exists(pid) {
        assert!(Instant::now() < deadline, "child {pid} still there");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn with_sigchld_ignored_children_are_joined_and_dropped_without_abort() {
    // SAFETY: installing SIG_IGN runs no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // Spawned and ended before anything of ours awaits a child, so that whichever
    // backend is in use, the kernel is the one that reaps them.
    let mut joined = spawn_process(five, ()).unwrap();
    let dropped = spawn_process(five, ()).unwrap();
    let mut program = Command::new("true").spawn().unwrap();
    let dropped_program = Command::new("true").spawn().unwrap();
    for pid in [
        joined.pid(),
        dropped.pid(),
        program.pid(),
        dropped_program.pid(),
    ] {
        wait_until_gone(pid);
    }
    drop(dropped);
    drop(dropped_program);

    let leaks = common::LeakCheck::start_blocking();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(joined.join()).unwrap(), 5);
    assert_eq!(joined.exit_status(), None);
    let err = runtime.block_on(program.join()).unwrap_err();
    assert!(matches!(err, Error::ReapedElsewhere { .. }), "{err:?}");
    drop((joined, program, runtime));
    leaks.finish_blocking();
}
