//! The reaping backend follows `MULTIPROCESS_REAPER`, and both backends await children.

mod common;

use multiprocess::{Reaper, reaper, spawn_process};

#[test]
fn the_environment_switch_selects_the_backend() {
    match std::env::var("MULTIPROCESS_REAPER").as_deref() {
        Ok("sigchld") => assert_eq!(reaper(), Reaper::Sigchld),
        // Our kernels have pidfds; only an explicit switch selects the fallback.
        _ => assert_eq!(reaper(), Reaper::Pidfd),
    }
}

#[tokio::test]
async fn children_are_awaited_with_either_backend() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(|x: u8| x, 1).unwrap();
    assert_eq!(child.join().await.unwrap(), 1);
    drop(child);
    leaks.finish().await;
}
