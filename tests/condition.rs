//! `Condition` across real processes: CPython's `_TestCondition` cases, ported, with a
//! process and a task in the roles Python gives a process and a thread.

mod common;

use std::time::{Duration, Instant};

use multiprocess::{Condition, Semaphore, Value, spawn_process};

/// Long enough never to be reached when the awaited thing happens.
const LONG: Duration = Duration::from_secs(20);
/// How long a check waits to see that nothing more happens.
const QUIET: Duration = Duration::from_millis(300);
const TIMEOUT1: Duration = Duration::from_millis(100);

/// CPython's `_TestCondition.f`: wait once, with the lock, then say so.
fn wait_once(args: (Condition, Semaphore, Semaphore, Option<Duration>)) {
    let (cond, sleeping, woken, timeout) = args;
    let guard = cond.lock_blocking().unwrap();
    sleeping.release().unwrap();
    let guard = match timeout {
        Some(timeout) => cond.wait_blocking_timeout(guard, timeout).unwrap().0,
        None => cond.wait_blocking(guard).unwrap(),
    };
    woken.release().unwrap();
    drop(guard);
}

async fn wait_once_async(cond: Condition, sleeping: Semaphore, woken: Semaphore) {
    let guard = cond.lock().await.unwrap();
    sleeping.release().unwrap();
    let guard = cond.wait(guard).await.unwrap();
    woken.release().unwrap();
    drop(guard);
}

struct Waiters {
    children: Vec<multiprocess::Process<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Waiters {
    /// `per_kind` child processes and as many tasks, each waiting once.
    async fn start(
        cond: &Condition,
        sleeping: &Semaphore,
        woken: &Semaphore,
        per_kind: usize,
    ) -> Waiters {
        let children = (0..per_kind)
            .map(|_| {
                spawn_process(
                    wait_once,
                    (cond.clone(), sleeping.clone(), woken.clone(), None),
                )
                .unwrap()
            })
            .collect();
        let tasks = (0..per_kind)
            .map(|_| {
                tokio::spawn(wait_once_async(
                    cond.clone(),
                    sleeping.clone(),
                    woken.clone(),
                ))
            })
            .collect();
        for _ in 0..2 * per_kind {
            sleeping.acquire().await.unwrap().forget();
        }
        Waiters { children, tasks }
    }

    async fn join(self) {
        for child in self.children {
            child.await.unwrap();
        }
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// Takes `n` wake-ups, then checks no more come.
async fn expect_woken(woken: &Semaphore, n: usize) {
    for i in 0..n {
        let permit = woken.acquire_timeout(LONG).await.unwrap();
        assert!(permit.is_some(), "only {i} of {n} waiters woke");
        permit.unwrap().forget();
    }
    assert!(
        woken.acquire_timeout(QUIET).await.unwrap().is_none(),
        "more than {n} waiters woke"
    );
}

async fn notify_one(cond: &Condition) {
    let _held = cond.lock().await.unwrap();
    cond.notify_one();
}

async fn notify(cond: &Condition, n: usize) {
    let _held = cond.lock().await.unwrap();
    cond.notify(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_one_wakes_exactly_one_waiter() {
    let leaks = common::LeakCheck::start().await;
    let cond = Condition::new().unwrap();
    let sleeping = Semaphore::new(0).unwrap();
    let woken = Semaphore::new(0).unwrap();
    let waiters = Waiters::start(&cond, &sleeping, &woken, 1).await;
    assert_eq!(woken.get_value(), 0);
    notify_one(&cond).await;
    expect_woken(&woken, 1).await;
    notify_one(&cond).await;
    expect_woken(&woken, 1).await;
    waiters.join().await;
    drop((cond, sleeping, woken));
    leaks.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_all_wakes_every_waiter() {
    let leaks = common::LeakCheck::start().await;
    let cond = Condition::new().unwrap();
    let sleeping = Semaphore::new(0).unwrap();
    let woken = Semaphore::new(0).unwrap();
    // Waiters that time out at once leave nothing behind.
    let quick: Vec<_> = (0..3)
        .map(|_| {
            spawn_process(
                wait_once,
                (
                    cond.clone(),
                    sleeping.clone(),
                    woken.clone(),
                    Some(Duration::ZERO),
                ),
            )
            .unwrap()
        })
        .collect();
    for child in quick {
        child.await.unwrap();
    }
    for _ in 0..3 {
        sleeping.acquire().await.unwrap().forget();
    }
    expect_woken(&woken, 3).await;
    let waiters = Waiters::start(&cond, &sleeping, &woken, 3).await;
    assert_eq!(woken.get_value(), 0);
    {
        let _held = cond.lock().await.unwrap();
        cond.notify_all();
    }
    expect_woken(&woken, 6).await;
    waiters.join().await;
    drop((cond, sleeping, woken));
    leaks.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_n_wakes_exactly_n_waiters() {
    let leaks = common::LeakCheck::start().await;
    let cond = Condition::new().unwrap();
    let sleeping = Semaphore::new(0).unwrap();
    let woken = Semaphore::new(0).unwrap();
    let waiters = Waiters::start(&cond, &sleeping, &woken, 3).await;
    assert_eq!(woken.get_value(), 0);
    notify(&cond, 2).await;
    expect_woken(&woken, 2).await;
    notify(&cond, 4).await;
    expect_woken(&woken, 4).await;
    // Nobody left waiting: a notification wakes nobody, and is not kept for later.
    notify(&cond, 3).await;
    let guard = cond.lock().await.unwrap();
    let (guard, timed_out) = cond.wait_timeout(guard, TIMEOUT1).await.unwrap();
    assert!(timed_out, "an old notification woke a new waiter");
    drop(guard);
    waiters.join().await;
    drop((cond, sleeping, woken));
    leaks.finish().await;
}

#[tokio::test]
async fn wait_times_out_with_the_lock_held_again() {
    let cond = Condition::new().unwrap();
    let guard = cond.lock().await.unwrap();
    let start = Instant::now();
    let (guard, timed_out) = cond.wait_timeout(guard, TIMEOUT1).await.unwrap();
    assert!(timed_out);
    assert!(start.elapsed() >= TIMEOUT1);
    drop(guard);
    let guard = cond.lock_blocking().unwrap();
    let start = Instant::now();
    let (guard, timed_out) = cond.wait_blocking_timeout(guard, TIMEOUT1).unwrap();
    assert!(timed_out);
    assert!(start.elapsed() >= TIMEOUT1);
    drop(guard);
}

/// CPython's `_test_waitfor_f`.
fn wait_for_four(args: (Condition, Value<i32>)) -> bool {
    let (cond, state) = args;
    let guard = cond.lock_blocking().unwrap();
    state.set(0);
    cond.notify_one();
    let guard = cond
        .wait_while_blocking(guard, || state.get() != 4)
        .unwrap();
    let reached = state.get() == 4;
    drop(guard);
    reached
}

#[tokio::test]
async fn wait_while_sees_every_step_of_another_process() {
    let leaks = common::LeakCheck::start().await;
    let cond = Condition::new().unwrap();
    let state = Value::new(-1i32).unwrap();
    let child = spawn_process(wait_for_four, (cond.clone(), state.clone())).unwrap();
    {
        let guard = cond.lock().await.unwrap();
        let (guard, timed_out) = cond
            .wait_while_timeout(guard, || state.get() != 0, LONG)
            .await
            .unwrap();
        assert!(!timed_out);
        assert_eq!(state.get(), 0);
        drop(guard);
    }
    for _ in 0..4 {
        let _held = cond.lock().await.unwrap();
        state.set(state.get() + 1);
        cond.notify_one();
    }
    assert!(child.await.unwrap());
    drop((cond, state));
    leaks.finish().await;
}

/// CPython's `_test_waitfor_timeout_f`.
fn wait_for_four_briefly(args: (Condition, Value<i32>, Semaphore)) -> bool {
    let (cond, state, started) = args;
    started.release().unwrap();
    let guard = cond.lock_blocking().unwrap();
    let expected = TIMEOUT1;
    let start = Instant::now();
    let (guard, timed_out) = cond
        .wait_while_blocking_timeout(guard, || state.get() != 4, expected)
        .unwrap();
    let waited = start.elapsed();
    drop(guard);
    timed_out && waited >= expected
}

#[tokio::test]
async fn wait_while_times_out_when_the_condition_never_comes() {
    let leaks = common::LeakCheck::start().await;
    let cond = Condition::new().unwrap();
    let state = Value::new(0i32).unwrap();
    let started = Semaphore::new(0).unwrap();
    let child = spawn_process(
        wait_for_four_briefly,
        (cond.clone(), state.clone(), started.clone()),
    )
    .unwrap();
    assert!(started.acquire_timeout(LONG).await.unwrap().is_some());
    // Only three steps: the state never reaches 4.
    for _ in 0..3 {
        let _held = cond.lock().await.unwrap();
        state.set(state.get() + 1);
        cond.notify_one();
    }
    assert!(child.await.unwrap());
    drop((cond, state, started));
    leaks.finish().await;
}
