//! A preload that panics: a clear error at every fork-server spawn, never children that
//! start without its work done. (A binary of its own: preloads are process-wide.)

mod common;

use multiprocess::{Error, Process, StartMethod};

fn broken() {
    panic!("the table cannot be built");
}

fn echo(x: u32) -> u32 {
    x
}

#[tokio::test]
async fn a_panicking_preload_fails_fork_server_spawns_with_its_message() {
    let leaks = common::LeakCheck::start().await;
    multiprocess::preload(broken).unwrap();
    for _ in 0..2 {
        let err = Process::builder()
            .start_method(StartMethod::Forkserver)
            .spawn(echo, 1)
            .unwrap_err();
        assert!(
            matches!(err, Error::Bootstrap(ref m) if m.contains("the table cannot be built")),
            "{err:?}"
        );
    }
    // Children started by exec run no preloads.
    let echoed = Process::builder()
        .start_method(StartMethod::Exec)
        .spawn(echo, 7)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(echoed, 7);
    leaks.finish_ignoring_forkserver().await;
}
