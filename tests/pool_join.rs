//! Workers that join a pool by themselves: this test binary, started as a plain command
//! with the pool's address and key file in its environment, becomes a worker before its
//! `main`. Covered: results, stateful workers, a joined worker SIGKILLed mid-task, a
//! timeout, descriptors refused, a wrong key, no key, garbage before the key is proven,
//! a different build, and close and terminate ending the joined workers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::Scratch;
use futures::TryStreamExt;
use multiprocess::{AuthKey, Error, ProcessPool, StatefulPool, Worker};

/// Generous: only a hang should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "the pool's secret, shared through a file";

/// A process that will join `pool`: `program` (this test binary unless told), with
/// the pool's address and, if given, a key file in its environment.
struct Joiner(Option<Child>);

impl Joiner {
    fn start(pool_address: &str, key_file: Option<&Path>) -> Joiner {
        Joiner::start_program(&std::env::current_exe().unwrap(), pool_address, key_file)
    }

    fn start_program(program: &Path, pool_address: &str, key_file: Option<&Path>) -> Joiner {
        let mut command = Command::new(program);
        command
            .env("MULTIPROCESS_POOL_ADDRESS", pool_address)
            .env_remove("MULTIPROCESS_POOL_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(key_file) = key_file {
            command.env("MULTIPROCESS_POOL_KEY_FILE", key_file);
        }
        Joiner(Some(command.spawn().unwrap()))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Waits for it to exit (off the runtime's threads); its status and what it wrote
    /// on standard error.
    async fn exit(mut self) -> (ExitStatus, String) {
        let child = self.0.take().unwrap();
        let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
        let output = tokio::time::timeout(LIMIT, waited)
            .await
            .expect("the joined worker exits")
            .unwrap()
            .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn listening_pool(workers: usize) -> (ProcessPool, String) {
    let pool = ProcessPool::builder()
        .workers(workers)
        .listen("127.0.0.1:0".parse::<multiprocess::Address>().unwrap(), KEY)
        .build()
        .await
        .unwrap();
    let address = pool.listen_address().unwrap().to_string();
    (pool, address)
}

async fn until_workers(pool: &ProcessPool, n: usize) {
    common::eventually(&format!("{n} workers"), || pool.stats().workers == n).await;
}

fn square(x: u64) -> u64 {
    x * x
}

fn own_pid(_: ()) -> u32 {
    std::process::id()
}

#[tokio::test]
async fn joined_workers_run_tasks_and_exit_when_the_pool_closes() {
    let leaks = common::LeakCheck::start().await;
    let scratch = Scratch::new("join", "results");
    let key = scratch.file("key", format!("{KEY}\n").as_bytes());
    let (pool, address) = listening_pool(0).await;
    let joiners = [
        Joiner::start(&address, Some(&key)),
        Joiner::start(&address, Some(&key)),
    ];
    assert_eq!(pool.apply(square, 7).await.unwrap(), 49);
    until_workers(&pool, 2).await;
    let squares: Vec<u64> = pool.map(square, 0..200).try_collect().await.unwrap();
    assert_eq!(squares, (0..200).map(|x| x * x).collect::<Vec<_>>());
    // The tasks ran in the joined processes, not here.
    let pid = pool.apply(own_pid, ()).await.unwrap();
    assert!(joiners.iter().any(|j| j.pid() == pid), "{pid}");

    pool.close().await;
    for joiner in joiners {
        let pid = joiner.pid();
        let (status, stderr) = joiner.exit().await;
        assert!(status.success(), "{status:?}: {stderr}");
        assert!(!common::exists(pid), "reaped and gone from /proc");
    }
    drop(pool);
    leaks.finish().await;
}

fn write_pid_then_hang(path: String) {
    std::fs::write(path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test]
async fn a_joined_worker_killed_mid_task_fails_only_that_task() {
    let scratch = Scratch::new("join", "killed");
    let key = scratch.file("key", KEY.as_bytes());
    let (pool, address) = listening_pool(0).await;
    let _first = Joiner::start(&address, Some(&key));
    let _second = Joiner::start(&address, Some(&key));
    until_workers(&pool, 2).await;

    let marker = scratch.0.join("running");
    let hung = pool.submit(write_pid_then_hang, marker.to_string_lossy().into_owned());
    let mut victim = 0;
    common::eventually("the task started", || {
        victim = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        victim != 0
    })
    .await;
    let others: Vec<_> = (0..20).map(|x| pool.submit(square, x)).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let err = tokio::time::timeout(LIMIT, hung)
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        Error::WorkerDied {
            pid,
            reason: Some(reason),
            ..
        } => {
            assert_eq!(*pid, victim);
            assert!(reason.contains("connection"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    for (x, task) in others.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), (x * x) as u64);
    }
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.failed), (1, 1), "{stats:?}");
    pool.terminate().await;
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test]
async fn a_timeout_cuts_a_joined_worker_which_ends_itself() {
    let scratch = Scratch::new("join", "timeout");
    let key = scratch.file("key", KEY.as_bytes());
    let (pool, address) = listening_pool(0).await;
    let joiner = Joiner::start(&address, Some(&key));
    let err = pool
        .apply_timeout(sleep_long, (), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let (status, _) = joiner.exit().await;
    assert!(!status.success(), "{status:?}");
    assert_eq!(pool.stats().workers, 0);
}

fn read_pipe(_conn: multiprocess::Connection<u8, u8>) -> u8 {
    0
}

#[tokio::test]
async fn descriptors_do_not_cross_to_a_joined_worker() {
    let scratch = Scratch::new("join", "fds");
    let key = scratch.file("key", KEY.as_bytes());
    let (pool, address) = listening_pool(0).await;
    let _joiner = Joiner::start(&address, Some(&key));
    let (ours, _theirs) = multiprocess::pipe::<u8, u8>().unwrap();
    let err = pool.apply(read_pipe, ours).await.unwrap_err();
    assert!(
        matches!(&err, Error::Encode(why) if why.contains("descriptors")),
        "{err:?}"
    );
    // The worker is unharmed.
    assert_eq!(pool.apply(square, 3).await.unwrap(), 9);
    pool.close().await;
}

#[tokio::test]
async fn a_wrong_key_no_key_and_garbage_are_refused_and_counted() {
    use tokio::io::AsyncWriteExt;

    let scratch = Scratch::new("join", "refused");
    let wrong = scratch.file("wrong", b"not the key");
    let (pool, address) = listening_pool(0).await;

    let (status, stderr) = Joiner::start(&address, Some(&wrong)).exit().await;
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("could not join"), "{stderr}");
    let (status, stderr) = Joiner::start(&address, None).exit().await;
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("MULTIPROCESS_POOL_KEY_FILE"), "{stderr}");

    let mut garbage = tokio::net::TcpStream::connect(&address).await.unwrap();
    garbage.write_all(&[0xff; 300]).await.unwrap();
    common::eventually("the wrong key and the garbage counted", || {
        pool.stats().refused >= 2
    })
    .await;
    drop(garbage);
    assert_eq!(pool.stats().workers, 0);

    // A worker with the key still joins.
    let key = scratch.file("key", KEY.as_bytes());
    let _joiner = Joiner::start(&address, Some(&key));
    assert_eq!(pool.apply(square, 5).await.unwrap(), 25);
    pool.close().await;
}

/// A copy of this binary that is a different build: its build id changed.
fn other_build(scratch: &Scratch) -> PathBuf {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let header: &[u8] = &[4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    if let Some(at) = bytes.windows(header.len()).position(|w| w == header) {
        bytes[at + header.len()] ^= 0xff;
    }
    // Without a build id, the copy's own inode already makes it another build.
    let path = scratch.file("other-build", &bytes);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_worker_of_a_different_build_is_refused_naming_both_builds() {
    let scratch = Scratch::new("join", "build");
    let key = scratch.file("key", KEY.as_bytes());
    let program = other_build(&scratch);
    let (pool, address) = listening_pool(0).await;
    let (status, stderr) = Joiner::start_program(&program, &address, Some(&key))
        .exit()
        .await;
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("different build"), "{stderr}");
    assert_eq!(stderr.matches("build-id").count(), 2, "{stderr}");
    assert_eq!(pool.stats().refused, 1);
    assert_eq!(pool.stats().workers, 0);
}

#[tokio::test]
async fn terminate_ends_joined_workers_running_tasks() {
    let scratch = Scratch::new("join", "terminate");
    let key = scratch.file("key", KEY.as_bytes());
    let (pool, address) = listening_pool(0).await;
    let joiner = Joiner::start(&address, Some(&key));
    until_workers(&pool, 1).await;
    let running = pool.submit(sleep_long, ());
    common::eventually("the task runs", || pool.stats().busy == 1).await;
    pool.terminate().await;
    assert!(matches!(running.await, Err(Error::PoolClosed)));
    let (status, _) = joiner.exit().await;
    assert!(!status.success(), "{status:?}");
}

#[tokio::test]
async fn tasks_wait_for_a_worker_to_join_then_fail_after_the_start_timeout() {
    let pool = ProcessPool::builder()
        .workers(0)
        .worker_start_timeout(Duration::from_millis(300))
        .listen("127.0.0.1:0".parse::<multiprocess::Address>().unwrap(), KEY)
        .build()
        .await
        .unwrap();
    let err = pool.apply(square, 2).await.unwrap_err();
    assert!(
        matches!(&err, Error::Bootstrap(why) if why.contains("joined")),
        "{err:?}"
    );
}

struct Counter(u64);

impl Worker for Counter {
    type Init = u64;
    type Request = u64;
    type Response = (u64, u32);

    async fn init(start: u64) -> Result<Counter, String> {
        Ok(Counter(start))
    }

    async fn handle(&mut self, add: u64) -> (u64, u32) {
        self.0 += add;
        (self.0, std::process::id())
    }
}

#[tokio::test]
async fn a_stateful_pool_takes_joined_workers() {
    let scratch = Scratch::new("join", "stateful");
    let key = scratch.file("key", KEY.as_bytes());
    let pool: StatefulPool<Counter> = ProcessPool::builder()
        .workers(0)
        .listen(
            "127.0.0.1:0".parse::<multiprocess::Address>().unwrap(),
            AuthKey::from(KEY),
        )
        .build_stateful(100)
        .await
        .unwrap();
    let address = pool.listen_address().unwrap().to_string();
    let joiner = Joiner::start(&address, Some(&key));
    assert_eq!(pool.apply(1).await.unwrap(), (101, joiner.pid()));
    assert_eq!(pool.apply(2).await.unwrap(), (103, joiner.pid()));
    pool.close().await;
    let (status, stderr) = joiner.exit().await;
    assert!(status.success(), "{status:?}: {stderr}");
}

/// Runs until `path` exists (the test creates it once it has seen what it waits for).
fn run_until_exists(path: String) -> u32 {
    while !Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::id()
}

#[tokio::test]
async fn a_task_held_by_a_busy_joined_worker_is_taken_back_for_one_that_joins_idle() {
    let scratch = Scratch::new("join", "take-back");
    let key = scratch.file("key", KEY.as_bytes());
    let (pool, address) = listening_pool(0).await;
    let busy = Joiner::start(&address, Some(&key));
    until_workers(&pool, 1).await;
    let release = scratch.0.join("release");
    let long = pool.submit(run_until_exists, release.to_string_lossy().into_owned());
    // Held behind the long task, in the busy worker's window.
    let held = pool.submit(own_pid, ());
    common::eventually("both tasks with the busy worker", || {
        let stats = pool.stats();
        stats.busy == 1 && stats.queued == 0
    })
    .await;

    let idle = Joiner::start(&address, Some(&key));
    let ran_on = tokio::time::timeout(LIMIT, held).await.unwrap().unwrap();
    assert_eq!(ran_on, idle.pid(), "taken back from the busy worker");
    assert!(!release.exists(), "the long task still runs");
    std::fs::write(&release, b"").unwrap();
    assert_eq!(long.await.unwrap(), busy.pid());
    let stats = pool.stats();
    assert_eq!((stats.completed, stats.failed), (2, 0), "{stats:?}");
    pool.close().await;
    for joiner in [busy, idle] {
        let (status, stderr) = joiner.exit().await;
        assert!(status.success(), "{status:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_recycled_joined_worker_is_told_to_exit_and_not_replaced() {
    let scratch = Scratch::new("join", "recycle");
    let key = scratch.file("key", KEY.as_bytes());
    let pool = ProcessPool::builder()
        .workers(0)
        .max_tasks_per_worker(2)
        .worker_start_timeout(Duration::from_secs(1))
        .listen("127.0.0.1:0".parse::<multiprocess::Address>().unwrap(), KEY)
        .build()
        .await
        .unwrap();
    let address = pool.listen_address().unwrap().to_string();
    let joiner = Joiner::start(&address, Some(&key));
    assert_eq!(pool.apply(square, 2).await.unwrap(), 4);
    assert_eq!(pool.apply(square, 3).await.unwrap(), 9);
    let (status, stderr) = joiner.exit().await;
    assert!(status.success(), "{status:?}: {stderr}");
    common::eventually("the worker gone", || pool.stats().workers == 0).await;
    // Nothing replaces it: the next task waits for a worker to join, then fails.
    let err = pool.apply(square, 4).await.unwrap_err();
    assert!(matches!(err, Error::Bootstrap(_)), "{err:?}");
}
