//! `Lock` across real processes: try-lock, ownership, timeouts, holder death.

mod common;

use std::time::{Duration, Instant};

use multiprocess::{Lock, Receiver, Sender, spawn_process};

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

fn hold_until_told(args: (Lock, Sender<()>, Receiver<()>)) {
    let (lock, mut held, mut release) = args;
    let guard = lock.lock_blocking().unwrap();
    held.send_blocking(()).unwrap();
    let _ = release.recv_blocking();
    drop(guard);
}

#[tokio::test]
async fn waiting_for_a_lock_held_elsewhere_times_out_in_both_worlds() {
    let leaks = common::LeakCheck::start().await;
    let lock = Lock::new().unwrap();
    assert!(!lock.is_locked());
    assert_eq!(lock.owner(), None);
    let (held_tx, mut held_rx) = multiprocess::channel::<()>().unwrap();
    let (mut release_tx, release_rx) = multiprocess::channel::<()>().unwrap();
    let holder = spawn_process(hold_until_told, (lock.clone(), held_tx, release_rx)).unwrap();
    held_rx.recv().await.unwrap();
    assert!(lock.is_locked());
    assert_eq!(lock.owner(), Some(holder.pid()));
    let wait = Duration::from_millis(100);
    let start = Instant::now();
    assert!(lock.lock_timeout(wait).await.unwrap().is_none());
    assert!(start.elapsed() >= wait);
    let start = Instant::now();
    assert!(lock.lock_blocking_timeout(wait).unwrap().is_none());
    assert!(start.elapsed() >= wait);
    assert_eq!(lock.owner(), Some(holder.pid()), "timing out took nothing");
    release_tx.send(()).await.unwrap();
    let guard = lock
        .lock_timeout(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("released");
    assert_eq!(lock.owner(), Some(std::process::id()));
    drop(guard);
    holder.await.unwrap();
    let guard = lock.lock_blocking_timeout(Duration::ZERO).unwrap();
    assert!(
        guard.is_some(),
        "a free lock is taken even with no time to wait"
    );
    drop(guard);
    drop((held_rx, release_tx, lock));
    leaks.finish().await;
}
