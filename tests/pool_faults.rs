//! Whatever a task does to its worker, that task alone fails with the right error,
//! everything else in flight succeeds, and the pool heals.

mod common;

use std::time::Duration;

use futures::StreamExt;
use multiprocess::{CancelRunning, Error, ProcessPool, TaskHandle};

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
enum Job {
    Square(u64),
    KillSelf,
    Segfault,
    Abort,
    Exit(i32),
    Loop,
    Panic,
    /// Writes the start of an answer frame, then exits with this code.
    TornReply(i32),
    /// Writes a malformed frame header, then keeps running.
    Garbage,
    /// Shuts its connection down, then keeps running.
    HangUp,
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn run(job: Job) -> u64 {
    match job {
        Job::Square(x) => x * x,
        Job::KillSelf => {
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL)
                .unwrap();
            unreachable!()
        }
        Job::Segfault => {
            // SAFETY: none; this deliberately writes through a null pointer.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
            unreachable!()
        }
        Job::Abort => std::process::abort(),
        Job::Exit(code) => std::process::exit(code),
        Job::Loop => loop {
            std::hint::spin_loop();
        },
        Job::Panic => panic!("task panicked"),
        Job::TornReply(code) => {
            common::write_to_pool(&common::torn_frame());
            std::process::exit(code)
        }
        Job::Garbage => {
            common::write_to_pool(b"not a frame header");
            park_forever()
        }
        Job::HangUp => {
            nix::sys::socket::shutdown(common::worker_socket(), nix::sys::socket::Shutdown::Both)
                .unwrap();
            park_forever()
        }
    }
}

/// Puts `bad` among 1,000 good tasks, all in flight together, and checks that exactly
/// the bad one failed, as `check` expects.
async fn one_bad_among_a_thousand(bad: Job, check: impl Fn(&Error) -> bool) {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(2)
        .task_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let mut handles: Vec<TaskHandle<u64>> = Vec::new();
    for i in 0..1000u64 {
        if i == 500 {
            handles.push(pool.submit(run, bad));
        }
        handles.push(pool.submit(run, Job::Square(i)));
    }
    let results = futures::future::join_all(handles).await;
    let mut expected = 0u64;
    for (index, result) in results.into_iter().enumerate() {
        if index == 500 {
            let err = result.unwrap_err();
            assert!(check(&err), "{bad:?} gave {err:?}");
            continue;
        }
        assert_eq!(result.unwrap(), expected * expected, "task {index}");
        expected += 1;
    }
    // Healed: back to full strength and still working.
    assert_eq!(pool.apply(run, Job::Square(3)).await.unwrap(), 9);
    assert_eq!(pool.stats().workers, 2);
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn a_task_that_sigkills_its_worker() {
    one_bad_among_a_thousand(Job::KillSelf, |e| {
        matches!(
            e,
            Error::WorkerDied {
                signal: Some(libc::SIGKILL),
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn a_task_that_segfaults() {
    one_bad_among_a_thousand(Job::Segfault, |e| {
        matches!(
            e,
            Error::WorkerDied {
                signal: Some(libc::SIGSEGV),
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn a_task_that_aborts() {
    one_bad_among_a_thousand(Job::Abort, |e| {
        matches!(
            e,
            Error::WorkerDied {
                signal: Some(libc::SIGABRT),
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn a_task_that_exits() {
    one_bad_among_a_thousand(Job::Exit(7), |e| {
        matches!(e, Error::WorkerDied { code: Some(7), .. })
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_exits_mid_reply() {
    one_bad_among_a_thousand(Job::TornReply(5), |e| {
        matches!(e, Error::WorkerDied { code: Some(5), .. })
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_sends_garbage_and_lives_on_is_killed() {
    one_bad_among_a_thousand(
        Job::Garbage,
        |e| matches!(e, Error::Protocol(why) if why.contains("bad frame header")),
    )
    .await;
}

#[tokio::test]
async fn a_worker_that_hangs_up_and_lives_on_is_killed() {
    one_bad_among_a_thousand(
        Job::HangUp,
        |e| matches!(e, Error::Protocol(why) if why.contains("broke its connection")),
    )
    .await;
}

#[tokio::test]
async fn a_task_that_loops_forever_times_out() {
    one_bad_among_a_thousand(Job::Loop, |e| matches!(e, Error::Timeout { .. })).await;
}

#[tokio::test]
async fn a_task_that_panics_leaves_its_worker_alive() {
    one_bad_among_a_thousand(
        Job::Panic,
        |e| matches!(e, Error::Panicked { message, .. } if message == "task panicked"),
    )
    .await;
}

#[tokio::test]
async fn crashes_are_counted_and_workers_replaced() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();
    for _ in 0..3 {
        assert!(pool.apply(run, Job::KillSelf).await.is_err());
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.failed, stats.respawned, stats.workers),
        (3, 3, 2),
        "{stats:?}"
    );
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn a_dropped_task_is_removed_from_the_queue() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .tasks_in_flight_per_worker(1)
        .task_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    // The worker is busy with a slow task; the next one waits in the queue.
    let slow = pool.submit(|ms: u64| std::thread::sleep(Duration::from_millis(ms)), 300);
    let waiting = pool.submit(run, Job::Square(2));
    assert_eq!(pool.stats().queued, 1);
    drop(waiting);
    assert_eq!(pool.stats().queued, 0);
    slow.await.unwrap();
    assert_eq!(pool.stats().completed, 1, "the dropped task never ran");
    drop(pool);
    leaks.finish().await;
}

fn report_then_sleep(conn: multiprocess::Sender<u32>) {
    let mut conn = conn;
    conn.send_blocking(std::process::id()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test]
async fn a_running_task_dropped_with_kill_worker_kills_it() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .cancel_running(CancelRunning::KillWorker)
        .build()
        .await
        .unwrap();
    let (tx, mut rx) = multiprocess::channel::<u32>().unwrap();
    let mut running = pool.submit(report_then_sleep, tx);
    // Poll it once so it is queued, then learn that it started.
    assert!(futures::poll!(&mut running).is_pending());
    let pid = rx.recv().await.unwrap();
    drop(running);
    assert!(
        common::await_exit_of(pid, Duration::from_secs(20)).await,
        "worker {pid} not killed"
    );
    // The pool heals and goes on.
    assert_eq!(pool.apply(run, Job::Square(5)).await.unwrap(), 25);
    assert!(pool.apply(pid_of, ()).await.unwrap() != pid);
    drop((pool, rx));
    leaks.finish().await;
}

fn pid_of(_: ()) -> u32 {
    std::process::id()
}

#[tokio::test]
async fn a_running_task_dropped_by_default_finishes() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(1).build().await.unwrap();
    let (tx, mut rx) = multiprocess::channel::<u32>().unwrap();
    fn report_then_return(mut conn: multiprocess::Sender<u32>) -> u32 {
        conn.send_blocking(std::process::id()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        7
    }
    let mut running = pool.submit(report_then_return, tx);
    assert!(futures::poll!(&mut running).is_pending());
    let pid = rx.recv().await.unwrap();
    drop(running);
    // Same worker, still alive, answers the next task after finishing the first.
    assert_eq!(pool.apply(pid_of, ()).await.unwrap(), pid);
    assert_eq!(pool.stats().completed, 2);
    drop((pool, rx));
    leaks.finish().await;
}

#[tokio::test]
async fn backpressure_bounds_the_queue() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .tasks_in_flight_per_worker(1)
        .queue_capacity(4)
        .build()
        .await
        .unwrap();
    // Far more handles than the queue holds: only `capacity` are queued, the rest wait
    // for room without being held by the pool.
    let handles: Vec<TaskHandle<u64>> = (0..50).map(|i| pool.submit(run, Job::Square(i))).collect();
    assert!(pool.stats().queued <= 4, "{:?}", pool.stats());
    let results = futures::future::join_all(handles).await;
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == (i * i) as u64)
    );
    // map pulls inputs only as fast as the pool consumes them: an endless input works.
    let mut squares = Box::pin(pool.map_chunked(|x: u64| x * x, 0.., 1));
    for i in 0..20u64 {
        assert_eq!(squares.next().await.unwrap().unwrap(), i * i);
        assert!(pool.stats().queued <= 4, "{:?}", pool.stats());
    }
    drop(squares);
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn close_drains_the_queue() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();
    let handles: Vec<_> = (0..200).map(|i| pool.submit(run, Job::Square(i))).collect();
    let closing = pool.close();
    let (_, results) = tokio::join!(closing, futures::future::join_all(handles));
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == (i * i) as u64)
    );
    assert_eq!(pool.stats().workers, 0);
    assert!(matches!(
        pool.apply(run, Job::Square(1)).await,
        Err(Error::PoolClosed)
    ));
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn terminate_kills_and_fails_what_is_pending() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();
    let handles: Vec<_> = (0..10).map(|_| pool.submit(run, Job::Loop)).collect();
    pool.terminate().await;
    for result in futures::future::join_all(handles).await {
        assert!(matches!(result, Err(Error::PoolClosed)), "{result:?}");
    }
    assert_eq!(pool.stats().workers, 0);
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn dropping_the_pool_leaves_no_process() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();
    let busy = pool.submit(run, Job::Loop);
    let pids: Vec<u32> = common::children()
        .iter()
        .map(|(pid, _)| *pid)
        .filter(|pid| !common::is_forkserver(*pid))
        .filter(|pid| !multiprocess::forkserver_stats().parked.contains(pid))
        .collect();
    assert_eq!(pids.len(), 2);
    drop(pool);
    assert!(matches!(busy.await, Err(Error::PoolClosed)));
    for pid in pids {
        assert!(
            common::await_exit_of(pid, Duration::from_secs(20)).await,
            "worker {pid} survived"
        );
    }
    leaks.finish().await;
}

/// The reply to a task that killed its worker arrives while the replacement is still
/// being started: closing or terminating right then must still account for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_while_a_replacement_starts_leaves_no_process() {
    let leaks = common::LeakCheck::start().await;
    for round in 0..20 {
        let pool = ProcessPool::builder().workers(1).build().await.unwrap();
        let died = pool.apply(run, Job::Exit(3)).await;
        assert!(
            matches!(died, Err(Error::WorkerDied { code: Some(3), .. })),
            "{died:?}"
        );
        if round % 2 == 0 {
            pool.close().await;
        } else {
            pool.terminate().await;
        }
        assert_eq!(pool.stats().workers, 0, "round {round}");
        drop(pool);
    }
    leaks.finish().await;
}

/// Stops its own worker (before it can say it is ready) the first time it runs after
/// the file `dir/armed` appears.
fn stop_once_armed(dir: String) {
    let dir = std::path::Path::new(&dir);
    if dir.join("armed").exists()
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join("stopped"))
            .is_ok()
    {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).unwrap();
    }
}

fn unique_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_worker_stopped_before_ready_is_replaced() {
    let leaks = common::LeakCheck::start().await;
    let dir = unique_dir("stopped-before-ready");
    let pool = ProcessPool::builder()
        .workers(1)
        .initializer(stop_once_armed, dir.to_string_lossy().into_owned())
        .worker_start_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    std::fs::write(dir.join("armed"), b"").unwrap();
    // This task ends its worker; the replacement stops itself before it is ready, is
    // killed when its start-up time runs out, and the next one takes the queued task.
    let died = pool.apply(run, Job::Exit(0)).await;
    assert!(matches!(died, Err(Error::WorkerDied { .. })), "{died:?}");
    assert_eq!(pool.apply(run, Job::Square(3)).await.unwrap(), 9);
    assert!(dir.join("stopped").exists(), "no worker stopped itself");
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.respawned), (1, 2), "{stats:?}");
    pool.close().await;
    drop(pool);
    std::fs::remove_dir_all(&dir).unwrap();
    leaks.finish().await;
}

fn never_ready(_: ()) {
    loop {
        std::thread::park();
    }
}

#[tokio::test]
async fn workers_never_ready_fail_the_build() {
    let leaks = common::LeakCheck::start().await;
    let built = ProcessPool::builder()
        .workers(2)
        .initializer(never_ready, ())
        .worker_start_timeout(Duration::from_millis(300))
        .build()
        .await;
    match built {
        Err(Error::Bootstrap(message)) => {
            assert!(message.contains("not ready within 300ms"), "{message}")
        }
        Err(other) => panic!("expected Bootstrap, got {other:?}"),
        Ok(_) => panic!("a pool whose workers never start was built"),
    }
    leaks.finish().await;
}
