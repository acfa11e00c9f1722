//! `Semaphore` and `BoundedSemaphore` across real processes: Python's counting,
//! permits passed between processes, holder death, timeouts.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use multiprocess::{BoundedSemaphore, Error, Semaphore, Sender, Value, spawn_process};

#[test]
fn a_failed_try_acquire_gives_nothing_back() {
    let sem = Semaphore::new(0).unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.available(), 0);
    assert!(sem.try_acquire().unwrap().is_none());
}

#[test]
fn a_failed_try_acquire_keeps_the_permit_held() {
    let sem = Semaphore::new(1).unwrap();
    let held = sem.try_acquire().unwrap().expect("a free permit");
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.available(), 0);
    assert!(sem.try_acquire().unwrap().is_none());
    drop(held);
    assert_eq!(sem.available(), 1);
}

#[test]
fn a_failed_try_acquire_on_a_bounded_semaphore_keeps_the_permit_held() {
    let sem = BoundedSemaphore::new(1).unwrap();
    let held = sem.acquire_blocking().unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.available(), 0);
    drop(held);
    assert_eq!(sem.available(), 1);
    assert!(sem.release().is_err(), "at its bound");
}

/// CPython's `_TestSemaphore._test_semaphore`: acquire without a matching release
/// (`forget` here), `acquire(False)`, then releases.
fn python_sequence(sem: &Semaphore) {
    assert_eq!(sem.get_value(), 2);
    sem.acquire_blocking().unwrap().forget();
    assert_eq!(sem.get_value(), 1);
    sem.acquire_blocking().unwrap().forget();
    assert_eq!(sem.get_value(), 0);
    assert!(sem.try_acquire().unwrap().is_none());
    assert_eq!(sem.get_value(), 0);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 1);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 2);
}

#[test]
fn a_semaphore_counts_like_python() {
    let sem = Semaphore::new(2).unwrap();
    python_sequence(&sem);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 3);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 4);
    assert_eq!(sem.available(), 4);
}

#[test]
fn a_bounded_semaphore_counts_like_python_and_refuses_to_pass_its_bound() {
    let sem = BoundedSemaphore::new(2).unwrap();
    python_sequence(&sem);
    assert!(matches!(sem.release(), Err(Error::BoundExceeded(_))));
    assert_eq!(sem.get_value(), 2);
}

#[test]
fn a_guard_dropped_above_the_bound_gives_nothing_back() {
    let sem = BoundedSemaphore::new(1).unwrap();
    let permit = sem.acquire_blocking().unwrap();
    sem.release().unwrap();
    drop(permit);
    assert_eq!(sem.get_value(), 1);
    let permit = sem.acquire_blocking().unwrap();
    sem.release().unwrap();
    assert!(matches!(permit.release(), Err(Error::BoundExceeded(_))));
    assert_eq!(sem.get_value(), 1);
}

const TIMEOUT2: Duration = Duration::from_millis(100);
const TIMEOUT3: Duration = Duration::from_millis(150);

/// CPython's `_TestSemaphore.test_timeout`, both worlds.
#[tokio::test]
async fn acquire_times_out_like_python() {
    let sem = Semaphore::new(0).unwrap();
    assert!(sem.try_acquire().unwrap().is_none());
    let start = Instant::now();
    assert!(sem.acquire_timeout(TIMEOUT2).await.unwrap().is_none());
    assert!(start.elapsed() >= TIMEOUT2);
    let start = Instant::now();
    assert!(sem.acquire_blocking_timeout(TIMEOUT3).unwrap().is_none());
    assert!(start.elapsed() >= TIMEOUT3);
    assert!(sem.acquire_timeout(Duration::ZERO).await.unwrap().is_none());
    assert_eq!(sem.get_value(), 0);
    sem.release().unwrap();
    assert!(sem.acquire_timeout(TIMEOUT2).await.unwrap().is_some());
    assert!(sem.acquire_blocking_timeout(TIMEOUT2).unwrap().is_some());
    assert_eq!(sem.get_value(), 1);
}

fn acquire_and_keep(sem: BoundedSemaphore) {
    sem.acquire_blocking().unwrap().forget();
}

#[tokio::test]
async fn a_permit_acquired_in_a_child_is_released_in_the_parent() {
    let leaks = common::LeakCheck::start().await;
    let sem = BoundedSemaphore::new(1).unwrap();
    spawn_process(acquire_and_keep, sem.clone())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(sem.get_value(), 0);
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 1);
    assert!(sem.release().is_err());
    drop(sem);
    leaks.finish().await;
}

const ITEMS: u32 = 50;

fn consume(args: (Semaphore, Semaphore, Value<u32>, u32)) -> u32 {
    let (empty, full, items, count) = args;
    let mut seen_empty = 0;
    for _ in 0..count {
        full.acquire_blocking().unwrap().forget();
        if items.atomic().fetch_sub(1, Ordering::SeqCst) == 0 {
            seen_empty += 1;
        }
        empty.release().unwrap();
    }
    seen_empty
}

/// The classic pair of semaphores: the producer takes `empty` and gives `full`, the
/// consumer the reverse. Once the consumer has exited, `full` must not hand out a
/// permit for an item nobody produced.
#[tokio::test]
async fn producer_and_consumer_across_processes_lose_and_invent_nothing() {
    let leaks = common::LeakCheck::start().await;
    let empty = Semaphore::new(4).unwrap();
    let full = Semaphore::new(0).unwrap();
    let items = Value::new(0u32).unwrap();
    let consumer =
        spawn_process(consume, (empty.clone(), full.clone(), items.clone(), ITEMS)).unwrap();
    for _ in 0..ITEMS {
        empty.acquire().await.unwrap().forget();
        items.atomic().fetch_add(1, Ordering::SeqCst);
        full.release().unwrap();
    }
    assert_eq!(
        consumer.await.unwrap(),
        0,
        "the consumer took a missing item"
    );
    assert_eq!(items.get(), 0);
    assert_eq!(full.get_value(), 0);
    assert!(full.acquire_timeout(TIMEOUT2).await.unwrap().is_none());
    assert!(full.acquire_blocking_timeout(TIMEOUT2).unwrap().is_none());
    assert_eq!(empty.get_value(), 4);
    drop((empty, full, items));
    leaks.finish().await;
}

fn hold_guards(args: (Semaphore, Sender<()>)) {
    let (sem, mut ready) = args;
    let held = [
        sem.acquire_blocking().unwrap(),
        sem.acquire_blocking().unwrap(),
    ];
    ready.send_blocking(()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop(held);
}

#[tokio::test]
async fn guarded_permits_of_a_killed_holder_come_back() {
    let leaks = common::LeakCheck::start().await;
    let sem = Semaphore::new(3).unwrap();
    let (tx, mut rx) = multiprocess::channel::<()>().unwrap();
    let mut holder = spawn_process(hold_guards, (sem.clone(), tx)).unwrap();
    rx.recv().await.unwrap();
    let mine = sem.acquire().await.unwrap();
    assert_eq!(sem.get_value(), 0);
    let waiter = {
        let sem = sem.clone();
        tokio::spawn(async move { sem.acquire().await.map(|p| p.forget()) })
    };
    holder.kill().unwrap();
    assert!(holder.join().await.is_err());
    waiter.await.unwrap().unwrap();
    assert_eq!(
        sem.get_value(),
        1,
        "both guarded permits came back; one taken"
    );
    drop(mine);
    assert_eq!(sem.get_value(), 2);
    drop((holder, rx, sem));
    leaks.finish().await;
}

fn take_release_and_forget(args: (Semaphore, Sender<()>)) {
    let (sem, mut ready) = args;
    drop(sem.acquire_blocking().unwrap());
    sem.acquire_blocking().unwrap().forget();
    let released = sem.acquire_blocking().unwrap();
    released.release().unwrap();
    ready.send_blocking(()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test]
async fn released_and_forgotten_permits_stay_where_they_are_when_a_process_dies() {
    let leaks = common::LeakCheck::start().await;
    let sem = Semaphore::new(2).unwrap();
    let (tx, mut rx) = multiprocess::channel::<()>().unwrap();
    let mut holder = spawn_process(take_release_and_forget, (sem.clone(), tx)).unwrap();
    rx.recv().await.unwrap();
    assert_eq!(sem.get_value(), 1);
    holder.kill().unwrap();
    assert!(holder.join().await.is_err());
    // A waiter that watches for dead holders finds none to recover.
    let one = sem.acquire().await.unwrap();
    assert!(sem.acquire_timeout(TIMEOUT2).await.unwrap().is_none());
    drop(one);
    assert_eq!(sem.get_value(), 1);
    drop((holder, rx, sem));
    leaks.finish().await;
}
