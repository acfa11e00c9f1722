//! `RLock` across real processes: re-entry per thread, exclusion of other processes,
//! poisoning by a dead holder.

mod common;

use std::time::Duration;

use multiprocess::{Error, RLock, Sender, spawn_process};

fn try_in_child(rlock: RLock) -> bool {
    rlock.try_lock().unwrap().is_some()
}

fn hold_forever(args: (RLock, Sender<()>)) {
    let (rlock, mut ready) = args;
    let outer = rlock.lock_blocking().unwrap();
    let inner = rlock.lock_blocking().unwrap();
    ready.send_blocking(()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop((inner, outer));
}

#[tokio::test]
async fn an_rlock_is_reentrant_in_its_thread_only() {
    let leaks = common::LeakCheck::start().await;
    let rlock = RLock::new().unwrap();
    let outer = rlock.lock().await.unwrap();
    let inner = rlock.try_lock().unwrap().expect("re-entry");
    let innermost = rlock.lock_blocking().unwrap();
    // Another thread of this process waits.
    let other = {
        let rlock = rlock.clone();
        std::thread::spawn(move || rlock.try_lock().unwrap().is_some())
    };
    assert!(!other.join().unwrap());
    assert!(
        !spawn_process(try_in_child, rlock.clone())
            .unwrap()
            .await
            .unwrap()
    );
    drop(innermost);
    drop(inner);
    assert!(rlock.is_locked(), "still held once");
    drop(outer);
    assert!(!rlock.is_locked());
    assert!(
        spawn_process(try_in_child, rlock.clone())
            .unwrap()
            .await
            .unwrap()
    );
    drop(rlock);
    leaks.finish().await;
}

#[tokio::test]
async fn a_holder_killed_holding_an_rlock_poisons_it() {
    let leaks = common::LeakCheck::start().await;
    let rlock = RLock::new().unwrap();
    let (tx, mut rx) = multiprocess::channel::<()>().unwrap();
    let mut holder = spawn_process(hold_forever, (rlock.clone(), tx)).unwrap();
    rx.recv().await.unwrap();
    assert_eq!(rlock.owner(), Some(holder.pid()));
    assert!(
        rlock
            .lock_timeout(Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
    let pid = holder.pid();
    holder.kill().unwrap();
    assert!(holder.join().await.is_err());
    let err = rlock.lock().await.expect_err("poisoned");
    assert!(
        matches!(err, Error::OwnerDied { pid: p } if p == pid),
        "{err:?}"
    );
    rlock.clear_poison();
    let again = rlock.lock().await.unwrap();
    let twice = rlock.lock().await.unwrap();
    drop((twice, again));
    assert!(!rlock.is_locked());
    drop((holder, rx, rlock));
    leaks.finish().await;
}
