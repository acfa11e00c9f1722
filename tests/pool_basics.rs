//! A pool's everyday work: results, order, volume, stateful workers, initializers.

mod common;

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use multiprocess::{Error, ProcessPool, Worker};

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u32) -> u32 {
    std::process::id()
}

#[tokio::test]
async fn apply_and_submit() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::new(2).await.unwrap();
    assert_eq!(pool.apply(square, 12).await.unwrap(), 144);
    let handles: Vec<_> = (0..50).map(|i| pool.submit(square, i)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), (i * i) as u64);
    }
    let stats = pool.stats();
    assert_eq!(stats.workers, 2);
    assert_eq!(stats.completed, 51);
    pool.close().await;
    assert_eq!(pool.stats().workers, 0);
    drop(pool);
    leaks.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_tasks_none_lost_or_duplicated() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(2)
        .queue_capacity(256)
        .build()
        .await
        .unwrap();
    // One by one through submit, in a bounded number at a time.
    let results: Vec<u64> = futures::stream::iter(0..100_000u64)
        .map(|i| pool.submit(square, i))
        .buffer_unordered(512)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(results.len(), 100_000);
    let distinct: HashSet<u64> = results.iter().copied().collect();
    assert_eq!(distinct.len(), 100_000);
    assert_eq!(
        results.iter().sum::<u64>(),
        (0..100_000u64).map(|i| i * i).sum()
    );
    assert_eq!(pool.stats().completed, 100_000);
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn map_preserves_order_and_map_unordered_loses_nothing() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::new(2).await.unwrap();
    let ordered: Vec<u64> = pool.map(square, 0..10_000).try_collect().await.unwrap();
    assert_eq!(ordered, (0..10_000).map(|i| i * i).collect::<Vec<_>>());
    let one_by_one: Vec<u64> = pool
        .map_chunked(square, 0..500, 1)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(one_by_one, (0..500).map(|i| i * i).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .map_unordered(square, 0..10_000)
        .try_collect()
        .await
        .unwrap();
    unordered.sort();
    assert_eq!(unordered, ordered);
    // An iterator without a known length is chunked one by one and still streams.
    let unknown = (0..300u64).filter(|x| x % 3 == 0);
    let filtered: Vec<u64> = pool.map(square, unknown).try_collect().await.unwrap();
    assert_eq!(filtered.len(), 100);
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn max_tasks_per_worker_recycles_workers() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .max_tasks_per_worker(3)
        .build()
        .await
        .unwrap();
    let mut pids = Vec::new();
    for i in 0..9 {
        pids.push(pool.apply(pid_of, i).await.unwrap());
    }
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    for chunk in pids.chunks(3) {
        assert!(chunk.iter().all(|p| *p == chunk[0]), "{pids:?}");
    }
    assert!(pool.stats().recycled >= 2);
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

struct Model {
    pid: u32,
    weights: Vec<u64>,
    served: u64,
}

impl Worker for Model {
    type Init = (u64, String);
    type Request = u64;
    type Response = (u32, u64, u64, String);

    async fn init((size, marker): (u64, String)) -> Result<Self, String> {
        // Record every initialisation in a file, to count them from the parent.
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&marker)
            .unwrap();
        writeln!(log, "{}", std::process::id()).unwrap();
        Ok(Model {
            pid: std::process::id(),
            weights: (0..size).collect(),
            served: 0,
        })
    }

    async fn handle(&mut self, x: u64) -> (u32, u64, u64, String) {
        self.served += 1;
        if x == u64::MAX {
            panic!("bad request");
        }
        (
            self.pid,
            self.weights.iter().sum::<u64>() * x,
            self.served,
            String::new(),
        )
    }
}

#[tokio::test]
async fn stateful_workers_initialise_once_each() {
    let leaks = common::LeakCheck::start().await;
    let marker = std::env::temp_dir().join(format!("mp-init-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let init = (10u64, marker.display().to_string());
    let pool = ProcessPool::builder()
        .workers(2)
        .build_stateful::<Model>(init)
        .await
        .unwrap();
    let answers: Vec<_> = pool.map(1..=200u64).try_collect().await.unwrap();
    for (i, (_, value, _, _)) in answers.iter().enumerate() {
        assert_eq!(*value, 45 * (i as u64 + 1));
    }
    let pids: HashSet<u32> = answers.iter().map(|a| a.0).collect();
    let served: u64 = pids
        .iter()
        .map(|pid| {
            answers
                .iter()
                .filter(|a| a.0 == *pid)
                .map(|a| a.2)
                .max()
                .unwrap()
        })
        .sum();
    assert_eq!(served, 200, "state persists across requests in each worker");
    // A panic fails only that request; the worker and its state live on.
    let err = pool.apply(u64::MAX).await.unwrap_err();
    assert!(
        matches!(err, Error::Panicked { ref message, .. } if message == "bad request"),
        "{err:?}"
    );
    assert_eq!(pool.apply(1).await.unwrap().1, 45);
    pool.close().await;
    let inits = std::fs::read_to_string(&marker).unwrap();
    let init_pids: Vec<&str> = inits.lines().collect();
    assert_eq!(init_pids.len(), 2, "one init per worker: {init_pids:?}");
    let _ = std::fs::remove_file(&marker);
    drop(pool);
    leaks.finish().await;
}

fn set_up(value: u32) {
    // SAFETY: the worker is single-threaded while its initializer runs.
    unsafe { std::env::set_var("POOL_INIT_VALUE", value.to_string()) };
}

fn read_init(_: ()) -> String {
    std::env::var("POOL_INIT_VALUE").unwrap_or_default()
}

fn failing_init(_: ()) {
    panic!("cannot initialise");
}

#[tokio::test]
async fn initializer_runs_in_every_worker() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(2)
        .initializer(set_up, 7)
        .build()
        .await
        .unwrap();
    let seen: Vec<String> = pool
        .map_chunked(read_init, vec![(); 20], 1)
        .try_collect()
        .await
        .unwrap();
    assert!(seen.iter().all(|s| s == "7"), "{seen:?}");
    pool.close().await;
    drop(pool);
    let err = ProcessPool::builder()
        .workers(1)
        .initializer(failing_init, ())
        .build()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Bootstrap(ref m) if m.contains("cannot initialise")),
        "{err:?}"
    );
    leaks.finish().await;
}

fn record(seen: multiprocess::Value<u32>) {
    seen.update(|n| *n += 1);
}

#[tokio::test]
async fn detached_tasks_run_to_their_end_and_close_waits_for_them() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .queue_capacity(2)
        .build()
        .await
        .unwrap();
    let seen = multiprocess::Value::new(0u32).unwrap();
    // More than the queue holds: some wait for room when they are detached.
    for _ in 0..10 {
        pool.submit(record, seen.clone()).detach();
    }
    pool.close().await;
    assert_eq!(seen.get(), 10);
    drop((pool, seen));
    leaks.finish().await;
}

#[tokio::test]
async fn a_handle_says_when_its_task_is_finished() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::new(1).await.unwrap();
    let handle = pool.submit(square, 5);
    assert!(
        format!("{handle:?}").starts_with("TaskHandle"),
        "{handle:?}"
    );
    common::eventually("the task finished", || handle.is_finished()).await;
    assert_eq!(handle.await.unwrap(), 25);
    let described = format!("{pool:?}");
    assert!(described.contains("completed: 1"), "{described}");
    assert!(format!("{:?}", ProcessPool::builder().workers(3)).contains("workers: 3"));
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

/// A worker whose state is not `Send` and is held across an `.await`: plain `async fn`s
/// in the trait, no attribute, no boxing.
struct Tally {
    seen: std::rc::Rc<std::cell::RefCell<Vec<u64>>>,
}

impl Worker for Tally {
    type Init = ();
    type Request = u64;
    type Response = (u32, Vec<u64>);

    async fn init(_: ()) -> Result<Self, String> {
        Ok(Tally {
            seen: Default::default(),
        })
    }

    async fn handle(&mut self, x: u64) -> (u32, Vec<u64>) {
        let seen = self.seen.clone();
        tokio::task::yield_now().await;
        seen.borrow_mut().push(x);
        (std::process::id(), seen.borrow().clone())
    }
}

#[tokio::test]
async fn a_stateful_worker_may_hold_state_that_is_not_send_across_awaits() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .build_stateful::<Tally>(())
        .await
        .unwrap();
    let (first_pid, first) = pool.apply(3).await.unwrap();
    let (second_pid, second) = pool.apply(4).await.unwrap();
    assert_eq!(first_pid, second_pid);
    assert_ne!(first_pid, std::process::id());
    assert_eq!((first, second), (vec![3], vec![3, 4]));
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}
