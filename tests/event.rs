//! `Event` across real processes: CPython's `_TestEvent.test_event`, ported, in both
//! worlds.

mod common;

use std::time::{Duration, Instant};

use multiprocess::{Event, spawn_process};

const TIMEOUT1: Duration = Duration::from_millis(100);
const TIMEOUT2: Duration = Duration::from_millis(150);

/// CPython's `_test_event`: let time pass, then set.
fn set_later(event: Event) {
    std::thread::sleep(TIMEOUT2);
    event.set();
}

#[tokio::test]
async fn an_event_waits_and_times_out_like_python() {
    let leaks = common::LeakCheck::start().await;
    let event = Event::new().unwrap();
    assert!(!event.is_set());
    assert!(!event.wait_timeout(Duration::ZERO).await.unwrap());
    let start = Instant::now();
    assert!(!event.wait_timeout(TIMEOUT1).await.unwrap());
    assert!(start.elapsed() >= TIMEOUT1);
    let start = Instant::now();
    assert!(!event.wait_blocking_timeout(TIMEOUT1).unwrap());
    assert!(start.elapsed() >= TIMEOUT1);
    event.set();
    assert!(event.is_set());
    event.wait().await.unwrap();
    assert!(event.wait_timeout(TIMEOUT1).await.unwrap());
    assert!(event.wait_blocking_timeout(TIMEOUT1).unwrap());
    event.clear();
    assert!(!event.is_set());
    let child = spawn_process(set_later, event.clone()).unwrap();
    assert!(event.wait_timeout(Duration::from_secs(20)).await.unwrap());
    child.await.unwrap();
    event.clear();
    let child = spawn_process(set_later, event.clone()).unwrap();
    assert!(
        event
            .wait_blocking_timeout(Duration::from_secs(20))
            .unwrap()
    );
    child.await.unwrap();
    drop(event);
    leaks.finish().await;
}
