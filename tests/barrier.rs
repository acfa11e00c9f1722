//! Barrier across real processes: CPython's `_TestBarrier` cases, with processes for
//! Python's threads and tasks of the parent beside them, and what Python leaves out:
//! cancelled waits, parties that die, cancellation under load.

mod common;

use std::sync::Mutex;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use multiprocess::{Array, Barrier, Error, Process, Queue, spawn_process};

/// Parties in CPython's barrier tests.
const N: u32 = 5;

/// Shared counters, standing in for CPython's `DummyList`s.
type Counters = Array<u32>;

fn counter(counters: &Counters, i: usize) -> u32 {
    counters.atomic(i).load(SeqCst)
}

fn bump(counters: &Counters, i: usize) {
    counters.atomic(i).fetch_add(1, SeqCst);
}

fn counters(len: usize) -> Counters {
    Array::zeroed(len).unwrap()
}

fn is_broken<T: std::fmt::Debug>(result: multiprocess::Result<T>) -> bool {
    match result {
        Err(Error::BrokenBarrier) => true,
        other => panic!("expected BrokenBarrier, got {other:?}"),
    }
}

/// Polls `done` from a child until it holds; fails after 20 s.
fn poll_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` in `N - 1` children and once more in the parent, as CPython's `run_threads`,
/// and checks every child succeeded.
async fn run_parties<A>(f: fn(A), args: A)
where
    A: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + 'static,
{
    let children: Vec<Process<()>> = (1..N)
        .map(|_| spawn_process(f, args.clone()).unwrap())
        .collect();
    tokio::task::spawn_blocking(move || f(args)).await.unwrap();
    for child in children {
        child.await.unwrap();
    }
}

// test_barrier, test_barrier_10: a barrier is passed in lockstep.

fn multipass(args: (Barrier, Counters, u32)) {
    let (barrier, results, passes) = args;
    let m = barrier.parties();
    assert_eq!(m, N);
    for i in 0..passes {
        bump(&results, 0);
        assert_eq!(counter(&results, 1), i * m);
        barrier.wait_blocking().unwrap();
        bump(&results, 1);
        assert_eq!(counter(&results, 0), (i + 1) * m);
        barrier.wait_blocking().unwrap();
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
}

async fn multipass_async(barrier: Barrier, results: Counters, passes: u32) {
    let m = barrier.parties();
    for i in 0..passes {
        bump(&results, 0);
        assert_eq!(counter(&results, 1), i * m);
        barrier.wait().await.unwrap();
        bump(&results, 1);
        assert_eq!(counter(&results, 0), (i + 1) * m);
        barrier.wait().await.unwrap();
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
}

/// Three children wait blocking, two tasks of the parent await.
async fn lockstep(passes: u32) {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let results = counters(2);
    let children: Vec<_> = (0..3)
        .map(|_| spawn_process(multipass, (barrier.clone(), results.clone(), passes)).unwrap())
        .collect();
    let tasks: Vec<_> = (0..2)
        .map(|_| tokio::spawn(multipass_async(barrier.clone(), results.clone(), passes)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(counter(&results, 0), passes * N);
    assert_eq!(counter(&results, 1), passes * N);
    drop((barrier, results));
    leaks.finish().await;
}

#[tokio::test]
async fn test_barrier() {
    lockstep(1).await;
}

#[tokio::test]
async fn test_barrier_10() {
    lockstep(10).await;
}

#[tokio::test]
async fn test_barrier_processes_only() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let results = counters(2);
    run_parties(multipass, (barrier.clone(), results.clone(), 10)).await;
    assert_eq!(counter(&results, 1), 10 * N);
    drop((barrier, results));
    leaks.finish().await;
}

// test_wait_return: the indices of a round are 0..parties, each once.

fn wait_return(args: (Barrier, Queue<u32>)) {
    let (barrier, queue) = args;
    queue
        .put_blocking(barrier.wait_blocking().unwrap())
        .unwrap();
}

#[tokio::test]
async fn test_wait_return() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let queue = Queue::<u32>::new(16).unwrap();
    run_parties(wait_return, (barrier.clone(), queue.clone())).await;
    let mut results = Vec::new();
    for _ in 0..N {
        results.push(queue.get().await.unwrap());
    }
    assert_eq!(results.iter().filter(|i| **i == 0).count(), 1);
    results.sort();
    assert_eq!(results, (0..N).collect::<Vec<_>>());
    drop((barrier, queue));
    leaks.finish().await;
}

#[tokio::test]
async fn the_last_task_to_arrive_gets_the_last_index() {
    let barrier = Barrier::new(3).unwrap();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move { barrier.wait().await.unwrap() })
        })
        .collect();
    common::eventually("two parties waiting", || barrier.n_waiting() == 2).await;
    assert_eq!(barrier.wait().await.unwrap(), 2);
    let mut first = Vec::new();
    for task in tasks {
        first.push(task.await.unwrap());
    }
    first.sort();
    assert_eq!(first, [0, 1]);
}

// test_action: the action runs once per round, before the release.

/// Where the action counts, set in each process before it waits.
static ACTION_RUNS: Mutex<Option<Counters>> = Mutex::new(None);

fn count_action() {
    let runs = ACTION_RUNS.lock().unwrap();
    bump(runs.as_ref().expect("counter set before waiting"), 0);
}

fn action_party(args: (Barrier, Counters, u32)) {
    let (barrier, runs, waits) = args;
    *ACTION_RUNS.lock().unwrap() = Some(runs.clone());
    for wait in 1..=waits {
        barrier.wait_blocking().unwrap();
        // The next action needs this party's next arrival: the count is exact.
        assert_eq!(counter(&runs, 0), wait, "the action ran before the release");
    }
}

#[tokio::test]
async fn test_action() {
    let leaks = common::LeakCheck::start().await;
    let runs = counters(1);
    let barrier = Barrier::with_action(N, count_action).unwrap();
    run_parties(action_party, (barrier.clone(), runs.clone(), 1)).await;
    assert_eq!(counter(&runs, 0), 1);
    ACTION_RUNS.lock().unwrap().take();
    drop((barrier, runs));
    leaks.finish().await;
}

#[tokio::test]
async fn an_action_runs_once_per_round_over_many_rounds() {
    let leaks = common::LeakCheck::start().await;
    let runs = counters(1);
    let barrier = Barrier::with_action(3, count_action).unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| spawn_process(action_party, (barrier.clone(), runs.clone(), 50)).unwrap())
        .collect();
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(counter(&runs, 0), 50);
    drop((barrier, runs));
    leaks.finish().await;
}

fn panicking_action() {
    panic!("the action failed");
}

fn wait_expecting_broken(barrier: Barrier) -> bool {
    is_broken(barrier.wait_blocking())
}

#[tokio::test]
async fn a_panicking_action_breaks_the_barrier_and_panics_in_the_party_that_ran_it() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::with_action(2, panicking_action).unwrap();
    let child = spawn_process(wait_expecting_broken, barrier.clone()).unwrap();
    common::eventually("the child waiting", || barrier.n_waiting() == 1).await;
    let mine = barrier.clone();
    let ran_it = tokio::spawn(async move { mine.wait().await }).await;
    let panic = ran_it
        .expect_err("the last party ran the action")
        .into_panic();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the action failed"));
    assert!(child.await.unwrap(), "the other party gets BrokenBarrier");
    assert!(barrier.is_broken());
    assert!(is_broken(barrier.wait().await));
    drop(barrier);
    leaks.finish().await;
}

// test_abort: an abort puts the barrier in a broken state.

fn abort_party(args: (Barrier, Counters)) {
    let (barrier, results) = args;
    let i = barrier.wait_blocking().unwrap();
    if i == N / 2 {
        barrier.abort().unwrap();
        bump(&results, 2);
        return;
    }
    match barrier.wait_blocking() {
        Ok(_) => bump(&results, 0),
        Err(Error::BrokenBarrier) => bump(&results, 1),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn test_abort() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let results = counters(3);
    run_parties(abort_party, (barrier.clone(), results.clone())).await;
    assert_eq!(counter(&results, 0), 0);
    assert_eq!(counter(&results, 1), N - 1);
    assert_eq!(counter(&results, 2), 1);
    assert!(barrier.is_broken());
    assert_eq!(barrier.n_waiting(), 0);
    drop((barrier, results));
    leaks.finish().await;
}

// test_reset: a reset frees the waiting parties, and the barrier is usable again.

fn reset_party(args: (Barrier, Counters)) {
    let (barrier, results) = args;
    let i = barrier.wait_blocking().unwrap();
    if i == N / 2 {
        poll_until("the others in the barrier", || barrier.n_waiting() == N - 1);
        barrier.reset().unwrap();
    } else {
        match barrier.wait_blocking() {
            Ok(_) => bump(&results, 0),
            Err(Error::BrokenBarrier) => bump(&results, 1),
            Err(other) => panic!("{other}"),
        }
    }
    // Now, pass the barrier again.
    barrier.wait_blocking().unwrap();
    bump(&results, 2);
}

#[tokio::test]
async fn test_reset() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let results = counters(3);
    run_parties(reset_party, (barrier.clone(), results.clone())).await;
    assert_eq!(counter(&results, 0), 0);
    assert_eq!(counter(&results, 1), N - 1);
    assert_eq!(counter(&results, 2), N);
    assert!(!barrier.is_broken());
    drop((barrier, results));
    leaks.finish().await;
}

// test_abort_and_reset: a barrier can be reset after being broken.

fn abort_and_reset_party(args: (Barrier, Barrier, Counters)) {
    let (barrier, barrier2, results) = args;
    let i = barrier.wait_blocking().unwrap();
    if i == N / 2 {
        barrier.abort().unwrap();
    } else {
        match barrier.wait_blocking() {
            Ok(_) => bump(&results, 0),
            Err(Error::BrokenBarrier) => bump(&results, 1),
            Err(other) => panic!("{other}"),
        }
    }
    // Synchronise and reset: first so that everyone has left the barrier when it is
    // reset, after so that nobody enters it before.
    if barrier2.wait_blocking().unwrap() == N / 2 {
        barrier.reset().unwrap();
    }
    barrier2.wait_blocking().unwrap();
    barrier.wait_blocking().unwrap();
    bump(&results, 2);
}

#[tokio::test]
async fn test_abort_and_reset() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let barrier2 = Barrier::new(N).unwrap();
    let results = counters(3);
    let args = (barrier.clone(), barrier2.clone(), results.clone());
    run_parties(abort_and_reset_party, args).await;
    assert_eq!(counter(&results, 0), 0);
    assert_eq!(counter(&results, 1), N - 1);
    assert_eq!(counter(&results, 2), N);
    drop((barrier, barrier2, results));
    leaks.finish().await;
}

// test_timeout: a wait that times out breaks the barrier for everyone.

fn timeout_party(args: (Barrier, Counters)) {
    let (barrier, results) = args;
    let i = barrier.wait_blocking().unwrap();
    if i == N / 2 {
        // One party is late.
        std::thread::sleep(Duration::from_secs(1));
    }
    if let Err(Error::BrokenBarrier) = barrier.wait_blocking_timeout(Duration::from_millis(500)) {
        bump(&results, 0);
    }
}

#[tokio::test]
async fn test_timeout() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(N).unwrap();
    let results = counters(1);
    run_parties(timeout_party, (barrier.clone(), results.clone())).await;
    assert_eq!(counter(&results, 0), barrier.parties());
    assert!(barrier.is_broken());
    drop((barrier, results));
    leaks.finish().await;
}

#[tokio::test]
async fn an_async_wait_that_times_out_breaks_the_barrier_for_the_other_waiters() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(3).unwrap();
    let child = spawn_process(wait_expecting_broken, barrier.clone()).unwrap();
    common::eventually("the child waiting", || barrier.n_waiting() == 1).await;
    let started = Instant::now();
    assert!(is_broken(
        barrier.wait_timeout(Duration::from_millis(200)).await
    ));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(child.await.unwrap());
    assert!(barrier.is_broken());
    assert!(is_broken(
        barrier.wait_timeout(Duration::from_secs(10)).await
    ));
    drop(barrier);
    leaks.finish().await;
}

// test_single_thread.

#[tokio::test]
async fn test_single_thread() {
    let barrier = Barrier::new(1).unwrap();
    assert_eq!(barrier.wait().await.unwrap(), 0);
    assert_eq!(barrier.wait().await.unwrap(), 0);
    assert_eq!(barrier.wait_blocking().unwrap(), 0);
}

// test_thousand: a thousand rounds in lockstep.

fn thousand_party(args: (Barrier, u32, Queue<u32>)) {
    let (barrier, passes, queue) = args;
    for i in 0..passes {
        barrier.wait_blocking().unwrap();
        queue.put_blocking(i).unwrap();
    }
}

#[tokio::test]
async fn test_thousand() {
    let leaks = common::LeakCheck::start().await;
    let passes = 1000;
    let barrier = Barrier::new(N).unwrap();
    let queue = Queue::<u32>::new(64).unwrap();
    let children: Vec<_> = (0..N)
        .map(|_| spawn_process(thousand_party, (barrier.clone(), passes, queue.clone())).unwrap())
        .collect();
    for i in 0..passes {
        for _ in 0..N {
            assert_eq!(queue.get().await.unwrap(), i);
        }
    }
    for child in children {
        child.await.unwrap();
    }
    drop((barrier, queue));
    leaks.finish().await;
}

fn rounds(args: (Barrier, Array<u32>, usize)) -> u32 {
    let (barrier, arrivals, me) = args;
    let mut led = 0;
    for round in 0..20u32 {
        arrivals.atomic(me).store(round + 1, SeqCst);
        if barrier.wait_blocking().unwrap() == 0 {
            led += 1;
        }
        // Past the barrier, everyone has arrived at this round.
        for i in 0..arrivals.len() {
            assert!(arrivals.atomic(i).load(SeqCst) > round);
        }
        barrier.wait_blocking().unwrap();
    }
    led
}

#[tokio::test]
async fn a_barrier_releases_all_parties_together() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(4).unwrap();
    let arrivals = Array::<u32>::zeroed(4).unwrap();
    let children: Vec<_> = (0..4)
        .map(|i| spawn_process(rounds, (barrier.clone(), arrivals.clone(), i)).unwrap())
        .collect();
    let mut firsts = 0;
    for child in children {
        firsts += child.await.unwrap();
    }
    assert_eq!(firsts, 20, "one index 0 per round");
    drop((barrier, arrivals));
    leaks.finish().await;
}

// Cancel safety.

fn wait_once(barrier: Barrier) -> bool {
    barrier.wait_blocking().is_ok()
}

#[tokio::test]
async fn a_wait_cancelled_by_a_timeout_never_lets_a_round_go_one_party_short() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(2).unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(50), barrier.wait()).await;
    assert!(
        cancelled.is_err(),
        "nobody else waits: the wait cannot finish"
    );
    let released = spawn_process(wait_once, barrier.clone())
        .unwrap()
        .await
        .unwrap();
    assert!(!released, "a round was released with one party missing");
    // The cancelled wait broke the barrier, as a timed-out one does; after a reset a
    // full round passes.
    assert!(barrier.is_broken());
    barrier.reset().unwrap();
    let child = spawn_process(wait_once, barrier.clone()).unwrap();
    barrier.wait().await.unwrap();
    assert!(child.await.unwrap());
    drop(barrier);
    leaks.finish().await;
}

#[tokio::test]
async fn a_wait_dropped_before_it_was_counted_or_after_its_release_leaves_no_trace() {
    let barrier = Barrier::new(2).unwrap();
    drop(barrier.wait());
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
    // Released, then dropped before it looked: the barrier stays whole.
    let mut first = Box::pin(barrier.wait());
    assert!(futures_poll_once(first.as_mut()).await.is_none());
    assert_eq!(barrier.n_waiting(), 1);
    assert_eq!(barrier.wait().await.unwrap(), 1);
    drop(first);
    assert!(!barrier.is_broken());
    assert_eq!(barrier.n_waiting(), 0);
}

/// Polls a future once.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

// A party that dies while waiting.

fn wait_forever(barrier: Barrier) {
    let _ = barrier.wait_blocking();
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test]
async fn a_party_killed_while_waiting_breaks_the_barrier_for_the_others() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(4).unwrap();
    let doomed = spawn_process(wait_forever, barrier.clone()).unwrap();
    common::eventually("the doomed party waiting", || barrier.n_waiting() == 1).await;
    let survivor = spawn_process(wait_expecting_broken, barrier.clone()).unwrap();
    common::eventually("two parties waiting", || barrier.n_waiting() == 2).await;
    let mine = barrier.clone();
    let waiting = tokio::spawn(async move { mine.wait().await });
    common::eventually("three parties waiting", || barrier.n_waiting() == 3).await;
    doomed.kill().unwrap();
    assert!(is_broken(waiting.await.unwrap()));
    assert!(
        survivor.await.unwrap(),
        "the blocking party also learns of the death"
    );
    assert!(matches!(doomed.await, Err(Error::Signaled { .. })));
    assert!(barrier.is_broken());
    // Usable again after a reset.
    barrier.reset().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| spawn_process(wait_once, barrier.clone()).unwrap())
        .collect();
    barrier.wait().await.unwrap();
    for child in children {
        assert!(child.await.unwrap());
    }
    drop(barrier);
    leaks.finish().await;
}

#[tokio::test]
async fn a_party_that_died_before_a_wait_is_seen_at_once() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::new(3).unwrap();
    let doomed = spawn_process(wait_forever, barrier.clone()).unwrap();
    common::eventually("the doomed party waiting", || barrier.n_waiting() == 1).await;
    doomed.kill().unwrap();
    assert!(matches!(doomed.await, Err(Error::Signaled { .. })));
    // The next arrival watches the counted parties and finds this one gone.
    assert!(is_broken(barrier.wait().await));
    barrier.reset().unwrap();
    assert_eq!(barrier.n_waiting(), 0);
    drop(barrier);
    leaks.finish().await;
}

// Random cancellation under load: afterwards, nothing is left counted.

/// A small xorshift generator: enough to scatter timeouts.
struct Scatter(u64);

impl Scatter {
    fn new(seed: u64) -> Scatter {
        Scatter(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Waits with scattered timeouts for `iterations` rounds, resetting a broken barrier;
/// counts releases in `stats[0]`, broken waits in `stats[1]`.
fn churn(args: (Barrier, Counters, u32)) {
    let (barrier, stats, iterations) = args;
    let mut scatter = Scatter::new(u64::from(std::process::id()));
    for _ in 0..iterations {
        let timeout = Duration::from_micros(200 + scatter.below(5000));
        match barrier.wait_blocking_timeout(timeout) {
            Ok(_) => bump(&stats, 0),
            Err(Error::BrokenBarrier | Error::Timeout { .. }) => {
                bump(&stats, 1);
                if scatter.below(2) == 0 {
                    barrier.reset().unwrap();
                }
            }
            Err(other) => panic!("{other}"),
        }
    }
}

async fn churn_async(barrier: Barrier, stats: Counters, iterations: u32, seed: u64) {
    let mut scatter = Scatter::new(seed);
    for _ in 0..iterations {
        let timeout = Duration::from_micros(200 + scatter.below(5000));
        match tokio::time::timeout(timeout, barrier.wait()).await {
            Ok(Ok(_)) => bump(&stats, 0),
            Ok(Err(Error::BrokenBarrier)) | Err(_) => {
                bump(&stats, 1);
                if scatter.below(2) == 0 {
                    barrier.reset().unwrap();
                }
            }
            Ok(Err(other)) => panic!("{other}"),
        }
    }
}

#[tokio::test]
async fn random_cancellation_under_load_leaves_nothing_counted() {
    let leaks = common::LeakCheck::start().await;
    let parties = 3;
    let barrier = Barrier::new(parties).unwrap();
    let stats = counters(2);
    let children: Vec<_> = (0..3)
        .map(|_| spawn_process(churn, (barrier.clone(), stats.clone(), 300)).unwrap())
        .collect();
    let tasks: Vec<_> = (0..3u64)
        .map(|seed| {
            tokio::spawn(churn_async(
                barrier.clone(),
                stats.clone(),
                300,
                seed * 7919 + 1,
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for child in children {
        child.await.unwrap();
    }
    assert_eq!(counter(&stats, 0) + counter(&stats, 1), 6 * 300);
    // However the scheduling went above, one wait is cancelled for certain while counted.
    barrier.reset().unwrap();
    let pending = {
        let barrier = barrier.clone();
        tokio::spawn(async move { barrier.wait().await })
    };
    common::eventually("a party counted", || barrier.n_waiting() == 1).await;
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    // Nothing left counted: after a reset, one party short is never released...
    barrier.reset().unwrap();
    assert_eq!(barrier.n_waiting(), 0);
    let short: Vec<_> = (0..parties - 1)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move { barrier.wait_timeout(Duration::from_millis(300)).await })
        })
        .collect();
    for wait in short {
        assert!(is_broken(wait.await.unwrap()));
    }
    // ...and a full round is, with each index once.
    barrier.reset().unwrap();
    let full: Vec<_> = (0..parties)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move { barrier.wait().await.unwrap() })
        })
        .collect();
    let mut indices = Vec::new();
    for wait in full {
        indices.push(wait.await.unwrap());
    }
    indices.sort();
    assert_eq!(indices, (0..parties).collect::<Vec<_>>());
    drop((barrier, stats));
    leaks.finish().await;
}

#[tokio::test]
async fn bad_party_counts_are_refused() {
    assert!(matches!(Barrier::new(0), Err(Error::Io(_))));
    assert!(matches!(Barrier::new(u32::MAX), Err(Error::Io(_))));
}

// More parties than the barrier takes: the extra ones wait for the next round.

#[tokio::test]
async fn parties_beyond_a_round_wait_for_the_next_one() {
    let barrier = Barrier::new(2).unwrap();
    let waits: Vec<_> = (0..6)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move { barrier.wait().await.unwrap() })
        })
        .collect();
    let mut indices = Vec::new();
    for wait in waits {
        indices.push(wait.await.unwrap());
    }
    indices.sort();
    assert_eq!(indices, [0, 0, 0, 1, 1, 1]);
    assert_eq!(barrier.n_waiting(), 0);
}

#[tokio::test]
async fn a_wait_dropped_while_the_barrier_is_busy_leaves_no_trace() {
    let barrier = Barrier::with_action(1, slow_action).unwrap();
    let releasing = {
        let barrier = barrier.clone();
        std::thread::spawn(move || barrier.wait_blocking().unwrap())
    };
    while !SLOW_ACTION_RUNNING.load(SeqCst) {
        std::thread::yield_now();
    }
    // The single party is running the action: this wait cannot be counted yet.
    let busy = tokio::time::timeout(Duration::from_millis(20), barrier.wait()).await;
    assert!(busy.is_err());
    assert_eq!(releasing.join().unwrap(), 0);
    assert!(!barrier.is_broken());
    assert_eq!(barrier.wait().await.unwrap(), 0);
}

static SLOW_ACTION_RUNNING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// An action that takes a while, so that waits time out while it runs.
fn slow_action() {
    if !SLOW_ACTION_RUNNING.swap(true, SeqCst) {
        std::thread::sleep(Duration::from_millis(400));
    }
}

/// An action that outlasts `wait_briefly`'s timeout.
fn one_second_action() {
    std::thread::sleep(Duration::from_secs(1));
}

fn wait_briefly(barrier: Barrier) -> Result<u32, String> {
    barrier
        .wait_blocking_timeout(Duration::from_millis(300))
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_timeout_that_passes_while_the_action_runs_does_not_break_the_complete_round() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::with_action(2, one_second_action).unwrap();
    let first = spawn_process(wait_briefly, barrier.clone()).unwrap();
    common::eventually("the first party waiting", || barrier.n_waiting() == 1).await;
    // This party arrives last and runs the action, past the first party's timeout.
    let mine = barrier.clone();
    let last = tokio::task::spawn_blocking(move || mine.wait_blocking());
    assert_eq!(first.await.unwrap().unwrap(), 0, "the round was complete");
    assert_eq!(last.await.unwrap().unwrap(), 1);
    assert!(!barrier.is_broken());
    drop(barrier);
    leaks.finish().await;
}

fn die_in_action() {
    std::process::exit(3);
}

fn wait_and_die(barrier: Barrier) {
    let _ = barrier.wait_blocking();
}

#[tokio::test]
async fn a_party_that_dies_running_the_action_breaks_the_barrier() {
    let leaks = common::LeakCheck::start().await;
    let barrier = Barrier::with_action(2, die_in_action).unwrap();
    let mine = barrier.clone();
    let first = tokio::spawn(async move { mine.wait().await });
    common::eventually("the first party waiting", || barrier.n_waiting() == 1).await;
    let last = spawn_process(wait_and_die, barrier.clone()).unwrap();
    assert!(matches!(last.await, Err(Error::Exited { code: 3 })));
    assert!(is_broken(first.await.unwrap()));
    assert!(barrier.is_broken());
    drop(barrier);
    leaks.finish().await;
}

// Generations: a fast party starting the next round is never taken for the last one.

fn count_first_arrivals(args: (Barrier, u32)) -> u32 {
    let (barrier, rounds) = args;
    (0..rounds)
        .map(|_| u32::from(barrier.wait_blocking().unwrap() == 0))
        .sum()
}

#[tokio::test]
async fn every_round_of_two_racing_parties_has_one_first_and_one_last() {
    let leaks = common::LeakCheck::start().await;
    let rounds = 2000;
    let barrier = Barrier::new(2).unwrap();
    let child = spawn_process(count_first_arrivals, (barrier.clone(), rounds)).unwrap();
    let mut mine = 0;
    for _ in 0..rounds {
        mine += u32::from(barrier.wait().await.unwrap() == 0);
    }
    assert_eq!(mine + child.await.unwrap(), rounds);
    assert_eq!(barrier.n_waiting(), 0);
    drop(barrier);
    leaks.finish().await;
}
