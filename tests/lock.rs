//! `Lock` across real processes: try-lock, ownership, timeouts, holder death.

mod common;

use multiprocess::{Lock, spawn_process};

fn try_lock_in_child(lock: Lock) -> bool {
    lock.try_lock().unwrap().is_some()
}

#[tokio::test]
async fn a_failed_try_lock_leaves_the_holder_holding() {
    let leaks = common::LeakCheck::start().await;
    let lock = Lock::new().unwrap();
    let held = lock.lock().await.unwrap();
    assert!(lock.try_lock().unwrap().is_none());
    // Had the failed attempt released the lock, these would take it.
    assert!(lock.try_lock().unwrap().is_none());
    let child = spawn_process(try_lock_in_child, lock.clone()).unwrap();
    assert!(!child.await.unwrap(), "another process took a held lock");
    drop(held);
    assert!(lock.try_lock().unwrap().is_some());
    drop(lock);
    leaks.finish().await;
}
