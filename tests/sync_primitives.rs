//! Lock, semaphores, Event, shared memory across real processes, including
//! what happens when a holder is killed.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use multiprocess::{
    Array, BoundedSemaphore, Error, Event, Lock, Queue, Semaphore, Sender, SharedMemory, Value,
    spawn_process,
};

fn increment(args: (Lock, Value<u64>, u32)) {
    let (lock, counter, times) = args;
    for _ in 0..times {
        let _held = lock.lock_blocking().unwrap();
        // A read-modify-write in two steps: only the lock makes it atomic.
        let now = counter.get();
        std::hint::black_box(());
        counter.set(now + 1);
    }
}

#[tokio::test]
async fn a_lock_guards_a_counter_across_four_processes() {
    let leaks = common::LeakCheck::start().await;
    let lock = Lock::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn_process(increment, (lock.clone(), counter.clone(), 10_000)).unwrap())
        .collect();
    // The parent takes part too, through the async API.
    for _ in 0..1000 {
        let _held = lock.lock().await.unwrap();
        let now = counter.get();
        tokio::task::yield_now().await;
        counter.set(now + 1);
    }
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(counter.get(), 41_000);
    drop((lock, counter));
    leaks.finish().await;
}

fn hold_lock_forever(args: (Lock, Sender<()>)) {
    let (lock, mut ready) = args;
    let held = lock.lock_blocking().unwrap();
    ready.send_blocking(()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop(held);
}

#[tokio::test]
async fn a_holder_killed_while_holding_the_lock_poisons_it() {
    let leaks = common::LeakCheck::start().await;
    let lock = Lock::new().unwrap();
    let (tx, mut rx) = multiprocess::channel::<()>().unwrap();
    let mut holder = spawn_process(hold_lock_forever, (lock.clone(), tx)).unwrap();
    rx.recv().await.unwrap();
    assert!(lock.try_lock().unwrap().is_none());
    // A waiter is already waiting when the holder dies: it learns at once.
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.lock().await.map(drop) })
    };
    tokio::task::yield_now().await;
    let pid = holder.pid();
    holder.kill().unwrap();
    assert!(holder.join().await.is_err());
    let err = waiter.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::OwnerDied { pid: p } if p == pid),
        "{err:?}"
    );
    assert!(lock.is_poisoned());
    assert!(matches!(lock.lock().await, Err(Error::OwnerDied { .. })));
    lock.clear_poison();
    drop(lock.lock().await.unwrap());
    drop((holder, rx, lock));
    leaks.finish().await;
}

fn limited(args: (Semaphore, Value<u32>, Value<u32>)) {
    let (sem, inside, max_seen) = args;
    for _ in 0..30 {
        let _permit = sem.acquire_blocking().unwrap();
        let now = inside.atomic().fetch_add(1, Ordering::SeqCst) + 1;
        max_seen.atomic().fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(300));
        inside.atomic().fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_semaphore_limits_concurrency() {
    let leaks = common::LeakCheck::start().await;
    let sem = Semaphore::new(2).unwrap();
    let inside = Value::new(0u32).unwrap();
    let max_seen = Value::new(0u32).unwrap();
    let children: Vec<_> = (0..5)
        .map(|_| spawn_process(limited, (sem.clone(), inside.clone(), max_seen.clone())).unwrap())
        .collect();
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(max_seen.get(), 2, "observed maximum equals the permits");
    assert_eq!(sem.available(), 2);
    drop((sem, inside, max_seen));
    leaks.finish().await;
}

fn hold_permits(args: (Semaphore, Sender<()>)) {
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
async fn permits_of_a_killed_holder_come_back() {
    let leaks = common::LeakCheck::start().await;
    let sem = Semaphore::new(2).unwrap();
    let (tx, mut rx) = multiprocess::channel::<()>().unwrap();
    let mut holder = spawn_process(hold_permits, (sem.clone(), tx)).unwrap();
    rx.recv().await.unwrap();
    assert_eq!(sem.available(), 0);
    let waiter = {
        let sem = sem.clone();
        tokio::spawn(async move { sem.acquire().await.map(|p| p.forget()) })
    };
    tokio::task::yield_now().await;
    holder.kill().unwrap();
    assert!(holder.join().await.is_err());
    waiter.await.unwrap().unwrap();
    assert_eq!(
        sem.available(),
        1,
        "both permits came back; the waiter holds one"
    );
    sem.release().unwrap();
    assert_eq!(sem.available(), 2);
    drop((holder, rx, sem));
    leaks.finish().await;
}

#[test]
fn a_bounded_semaphore_refuses_extra_releases() {
    let leaks = common::LeakCheck::start_blocking();
    let sem = BoundedSemaphore::new(1).unwrap();
    assert!(matches!(sem.release(), Err(Error::BoundExceeded(_))));
    sem.acquire_blocking().unwrap().forget();
    sem.release().unwrap();
    assert!(sem.release().is_err());
    // A plain semaphore grows instead, as Python's does.
    let plain = Semaphore::new(1).unwrap();
    plain.release().unwrap();
    assert_eq!(plain.available(), 2);
    drop((sem, plain));
    leaks.finish_blocking();
}

fn wait_for(args: (Event, Queue<u32>)) -> u32 {
    let (event, started) = args;
    started.put_blocking(std::process::id()).unwrap();
    event.wait_blocking().unwrap();
    std::process::id()
}

#[tokio::test]
async fn an_event_wakes_every_waiter() {
    let leaks = common::LeakCheck::start().await;
    let event = Event::new().unwrap();
    let started = Queue::new(8).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn_process(wait_for, (event.clone(), started.clone())).unwrap())
        .collect();
    for _ in 0..4 {
        started.get().await.unwrap();
    }
    let local = {
        let event = event.clone();
        tokio::spawn(async move { event.wait().await })
    };
    assert!(!event.is_set());
    event.set();
    local.await.unwrap().unwrap();
    for child in children {
        let pid = child.pid();
        assert_eq!(child.await.unwrap(), pid);
    }
    drop((event, started));
    leaks.finish().await;
}

fn write_pattern(args: (SharedMemory, Array<f64>, Value<[u8; 4]>)) {
    let (mem, array, value) = args;
    let pattern: Vec<u8> = (0..mem.len()).map(|i| (i % 251) as u8).collect();
    mem.write(0, &pattern);
    for i in 0..array.len() {
        array.set(i, i as f64 * 0.5);
    }
    value.set(*b"done");
}

#[tokio::test]
async fn shared_memory_written_by_a_child_is_read_by_the_parent() {
    let leaks = common::LeakCheck::start().await;
    let mem = SharedMemory::new(1 << 20).unwrap();
    let array = Array::<f64>::zeroed(100).unwrap();
    let value = Value::new([0u8; 4]).unwrap();
    spawn_process(write_pattern, (mem.clone(), array.clone(), value.clone()))
        .unwrap()
        .await
        .unwrap();
    let mut buf = vec![0u8; mem.len()];
    mem.read(0, &mut buf);
    assert!(buf.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(array.get(99), 49.5);
    assert_eq!(&value.get(), b"done");
    drop((mem, array, value, buf));
    leaks.finish().await;
}

fn wait_for_turn(args: (multiprocess::Condition, Value<u32>, u32)) -> u32 {
    let (cond, turn, me) = args;
    let guard = cond.lock_blocking().unwrap();
    let mut guard = guard;
    while turn.get() != me {
        guard = cond.wait_blocking(guard).unwrap();
    }
    turn.set(me + 1);
    cond.notify_all();
    drop(guard);
    me
}

#[tokio::test]
async fn a_condition_hands_turns_between_processes() {
    let leaks = common::LeakCheck::start().await;
    let cond = multiprocess::Condition::new().unwrap();
    let turn = Value::new(0u32).unwrap();
    // Started in reverse order: each must wait for the one before it.
    let children: Vec<_> = (1..=4u32)
        .rev()
        .map(|me| spawn_process(wait_for_turn, (cond.clone(), turn.clone(), me)).unwrap())
        .collect();
    {
        let _held = cond.lock().await.unwrap();
        turn.set(1);
        cond.notify_all();
    }
    let guard = cond.lock().await.unwrap();
    let guard = cond.wait_while(guard, || turn.get() != 5).await.unwrap();
    drop(guard);
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(turn.get(), 5);
    drop((cond, turn));
    leaks.finish().await;
}
