//! Async waits cancelled at random points under cross-process load leave nothing
//! behind: nothing lost, duplicated, left counted or left held.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use multiprocess::{Condition, Event, Lock, Semaphore, Value, spawn_process};

/// A small deterministic generator of short timeouts, 0 to 300 µs.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(self.0 % 300)
    }
}

const ROUNDS: u32 = 2000;
const CHILD_OPS: u32 = 2000;

fn count_under_lock(args: (Lock, Value<u64>)) {
    let (lock, counter) = args;
    for _ in 0..CHILD_OPS {
        let _held = lock.lock_blocking().unwrap();
        let now = counter.get();
        std::hint::black_box(());
        counter.set(now + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_lock_waits_leave_the_lock_free_and_exclusive() {
    let leaks = common::LeakCheck::start().await;
    let lock = Lock::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| spawn_process(count_under_lock, (lock.clone(), counter.clone())).unwrap())
        .collect();
    let mut jitter = Jitter(0x9e37_79b9_7f4a_7c15);
    let mut mine = 0;
    for _ in 0..ROUNDS {
        if let Ok(guard) = tokio::time::timeout(jitter.next(), lock.lock()).await {
            let _guard = guard.unwrap();
            let now = counter.get();
            counter.set(now + 1);
            mine += 1;
        }
    }
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(counter.get(), 2 * CHILD_OPS as u64 + mine);
    assert!(!lock.is_locked(), "a cancelled wait left the lock held");
    assert!(lock.try_lock().unwrap().is_some());
    drop((lock, counter));
    leaks.finish().await;
}

fn use_permits(args: (Semaphore, Value<u32>, Value<u32>)) {
    let (sem, inside, most) = args;
    for _ in 0..CHILD_OPS {
        let _permit = sem.acquire_blocking().unwrap();
        let now = inside.atomic().fetch_add(1, Ordering::SeqCst) + 1;
        most.atomic().fetch_max(now, Ordering::SeqCst);
        inside.atomic().fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_take_and_leave_no_permit() {
    let leaks = common::LeakCheck::start().await;
    let sem = Semaphore::new(2).unwrap();
    let inside = Value::new(0u32).unwrap();
    let most = Value::new(0u32).unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| spawn_process(use_permits, (sem.clone(), inside.clone(), most.clone())).unwrap())
        .collect();
    let mut jitter = Jitter(0x2545_f491_4f6c_dd1d);
    for _ in 0..ROUNDS {
        if let Ok(permit) = tokio::time::timeout(jitter.next(), sem.acquire()).await {
            let _permit = permit.unwrap();
            let now = inside.atomic().fetch_add(1, Ordering::SeqCst) + 1;
            most.atomic().fetch_max(now, Ordering::SeqCst);
            inside.atomic().fetch_sub(1, Ordering::SeqCst);
        }
    }
    for child in children {
        child.await.unwrap();
    }
    assert!(most.get() <= 2, "more holders than permits");
    assert_eq!(sem.get_value(), 2, "a permit was lost or invented");
    drop((sem, inside, most));
    leaks.finish().await;
}

fn toggle(args: (Event, u32)) {
    let (event, times) = args;
    for _ in 0..times {
        event.set();
        event.clear();
    }
    event.set();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_event_waits_do_not_stop_a_later_wait_from_waking() {
    let leaks = common::LeakCheck::start().await;
    let event = Event::new().unwrap();
    let child = spawn_process(toggle, (event.clone(), CHILD_OPS)).unwrap();
    let mut jitter = Jitter(0x1234_5678_9abc_def1);
    for _ in 0..ROUNDS {
        let _ = tokio::time::timeout(jitter.next(), event.wait()).await;
    }
    assert!(event.wait_timeout(Duration::from_secs(20)).await.unwrap());
    child.await.unwrap();
    drop(event);
    leaks.finish().await;
}

/// Adds `count` tokens, one at a time, each announced to one waiter.
fn produce_tokens(args: (Condition, Value<u32>, u32)) {
    let (cond, tokens, count) = args;
    for _ in 0..count {
        let _held = cond.lock_blocking().unwrap();
        tokens.set(tokens.get() + 1);
        cond.notify_one();
    }
}

/// Takes `count` tokens, waiting on the condition for each.
fn consume_tokens(args: (Condition, Value<u32>, u32)) {
    let (cond, tokens, count) = args;
    for _ in 0..count {
        let guard = cond.lock_blocking().unwrap();
        let _guard = cond
            .wait_while_blocking(guard, || tokens.get() == 0)
            .unwrap();
        tokens.set(tokens.get() - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_condition_waits_lose_no_notification_and_hold_no_lock() {
    let leaks = common::LeakCheck::start().await;
    let cond = Condition::new().unwrap();
    let tokens = Value::new(0u32).unwrap();
    let produced = 3 * CHILD_OPS / 4;
    let producer = spawn_process(produce_tokens, (cond.clone(), tokens.clone(), produced)).unwrap();
    // Consumes half of what is produced; with notify_one, a notification swallowed by a
    // cancelled wait would leave it waiting for ever on a token that is there.
    let consumer =
        spawn_process(consume_tokens, (cond.clone(), tokens.clone(), produced / 2)).unwrap();
    let mut jitter = Jitter(0x0f0f_1234_dead_beef);
    let mut taken = 0;
    for _ in 0..ROUNDS {
        let attempt = async {
            let guard = cond.lock().await.unwrap();
            let guard = cond.wait_while(guard, || tokens.get() == 0).await.unwrap();
            tokens.set(tokens.get() - 1);
            drop(guard);
        };
        if tokio::time::timeout(jitter.next(), attempt).await.is_ok() {
            taken += 1;
        }
        // Nothing of this process's wait, returned or cancelled, stays registered: at
        // most the consumer's own wait is.
        let registered = cond.n_waiting();
        assert!(registered <= 1, "{registered} waits registered");
        if taken == produced - produced / 2 {
            break;
        }
    }
    producer.await.unwrap();
    // Whatever the cancelled waits did, the consumer gets every token it needs.
    while taken < produced - produced / 2 {
        let guard = cond.lock().await.unwrap();
        let (guard, timed_out) = cond
            .wait_while_timeout(guard, || tokens.get() == 0, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(!timed_out);
        tokens.set(tokens.get() - 1);
        drop(guard);
        taken += 1;
    }
    consumer.await.unwrap();
    assert_eq!(tokens.get(), 0);
    assert_eq!(cond.n_waiting(), 0, "a wait left registered");
    let guard = cond.lock().await.unwrap();
    let (guard, timed_out) = cond
        .wait_timeout(guard, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(timed_out);
    assert_eq!(cond.n_waiting(), 0, "a timed-out wait left registered");
    drop(guard);
    drop((cond, tokens));
    leaks.finish().await;
}
