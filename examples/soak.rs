//! A soak run: spawns, kills, timeouts, crashes and pool churn for a set time, with the
//! process's resident memory, descriptors and children sampled as it goes.
//!
//! ```text
//! cargo run --release --example soak -- 30      # minutes; prints a sample a minute
//! ```
//!
//! It fails (exit code 1) if, at the end, more descriptors are open than at the first
//! sample taken after warm-up (fewer is not a leak: a descriptor opened once per process
//! may have been let go since), a child or zombie remains, the live heap grew by more
//! than a tenth over that sample, or resident memory grew by more than a tenth over the
//! second half of the run.
//!
//! Resident memory alone cannot tell a leak from the allocator keeping freed pages for
//! reuse (glibc adds arenas as threads contend, and each keeps what it once held), so
//! the run also counts the bytes the program holds, through a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use multiprocess::{Error, Lock, PanicOutput, ProcessPool, Queue, pipe, spawn_process};

/// The system allocator, counting the bytes currently allocated.
struct CountingAllocator;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is
// only bookkeeping and never affects the pointers returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on as is.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, as `dealloc` requires.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn square(x: u64) -> u64 {
    x * x
}

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// A pool task that misbehaves now and then: panics, exits its worker, or hangs past
/// the task timeout.
fn task(x: u64) -> u64 {
    match x % 50 {
        7 => panic!("task {x} panicked"),
        19 => std::process::exit(3),
        31 => loop {
            std::thread::park();
        },
        _ => x + 1,
    }
}

fn echo(mut conn: multiprocess::Connection<u64, u64>) {
    while let Ok(x) = conn.recv_blocking() {
        if conn.send_blocking(x).is_err() {
            break;
        }
    }
}

/// Echoes raw bytes frames, reusing one buffer.
fn echo_bytes(mut conn: multiprocess::Connection<(), ()>) {
    let mut buf = Vec::new();
    while conn.recv_bytes_into_blocking(&mut buf).is_ok() {
        if conn.send_bytes_blocking(&buf).is_err() {
            break;
        }
    }
}

#[derive(Default, Debug)]
struct Counts {
    spawned: u64,
    killed: u64,
    timed_out: u64,
    pool_tasks: u64,
    pool_failures: u64,
    pools: u64,
}

struct Sample {
    rss_kib: u64,
    heap_kib: i64,
    fds: usize,
    children: usize,
    zombies: usize,
}

fn sample() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let me = std::process::id();
    let (mut children, mut zombies) = (0, 0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name, which may itself hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?");
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim() == "mp-forkserver" {
                continue; // The deliberate long-lived zygote.
            }
            children += 1;
            zombies += usize::from(state == "Z");
        }
    }
    Sample {
        rss_kib,
        heap_kib: LIVE_BYTES.load(Ordering::Relaxed) / 1024,
        fds,
        children,
        zombies,
    }
}

/// One round of everything: plain children, kills, timeouts, pipes (typed and raw
/// frames), a queue, a lock and a pool with misbehaving tasks.
async fn round(counts: &mut Counts, pool: &ProcessPool) -> multiprocess::Result<()> {
    let mut children: Vec<_> = (0..8u64)
        .map(|x| spawn_process(square, x))
        .collect::<Result<_, _>>()?;
    for (x, child) in children.iter_mut().enumerate() {
        assert_eq!(child.join().await?, (x * x) as u64);
    }
    counts.spawned += 8;

    let mut victim = spawn_process(sleeps_forever, ())?;
    victim.kill()?;
    assert!(matches!(victim.join().await, Err(Error::Signaled { .. })));
    let mut slow = spawn_process(sleeps_forever, ())?;
    assert!(matches!(
        slow.join_timeout(Duration::from_millis(5)).await,
        Err(Error::Timeout { .. })
    ));
    slow.shutdown(Duration::from_millis(100)).await?;
    counts.killed += 2;
    counts.timed_out += 1;

    let (mut ours, theirs) = pipe::<u64, u64>()?;
    let mut echoer = spawn_process(echo, theirs)?;
    for x in 0..100 {
        ours.send(x).await?;
        assert_eq!(ours.recv().await?, x);
    }
    drop(ours);
    echoer.join().await?;

    // Raw frames on both sides of the size where they skip the connection's buffers.
    let (mut ours, theirs) = pipe::<(), ()>()?;
    let mut bytes_echoer = spawn_process(echo_bytes, theirs)?;
    let mut back = Vec::new();
    for len in [10, 100 << 10, 300 << 10] {
        let data = vec![len as u8; len];
        ours.send_bytes(&data).await?;
        ours.recv_bytes_into(&mut back).await?;
        assert!(back == data);
    }
    drop(ours);
    bytes_echoer.join().await?;
    counts.spawned += 4;

    let queue: Queue<u64> = Queue::new(16)?;
    let lock = Lock::new()?;
    for x in 0..32 {
        let _guard = lock.lock().await?;
        queue.put(x).await?;
        assert_eq!(queue.get().await?, x);
    }

    let results = futures::future::join_all((0..200u64).map(|x| pool.submit(task, x))).await;
    counts.pool_tasks += results.len() as u64;
    counts.pool_failures += results.iter().filter(|r| r.is_err()).count() as u64;
    Ok(())
}

/// Lets background reaping of dropped children (and the closing of their descriptors)
/// catch up: awaiting one more child gives the runtime a turn, and what is left is
/// reaped by then or soon after. On a loaded machine that can take a while: up to a
/// minute, until no child is left and at most `fds` descriptors are open.
async fn settle(fds: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        spawn_process(square, 1)
            .expect("spawn")
            .join()
            .await
            .expect("join");
        let now = sample();
        if now.children == 0 && now.zombies == 0 && now.fds <= fds {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What each open descriptor points at, to show what a leak is made of.
fn fd_targets() -> Vec<String> {
    let mut list: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    list.sort();
    list
}

async fn new_pool() -> multiprocess::Result<ProcessPool> {
    ProcessPool::builder()
        .workers(2)
        .task_timeout(Duration::from_millis(200))
        .max_tasks_per_worker(100)
        // The run counts failures; the planted panics need no line each.
        .panic_output(PanicOutput::Silent)
        .build()
        .await
}

#[tokio::main]
async fn main() {
    let minutes: f64 = std::env::args()
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(30.0);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let mut counts = Counts::default();
    // Warm-up: what is created once per process (fork server, signal handling, caches),
    // then the baseline, taken with no pool, as the final sample will be.
    let warm_up = new_pool().await.expect("pool");
    round(&mut counts, &warm_up).await.expect("warm-up round");
    warm_up.close().await;
    drop(warm_up);
    settle(usize::MAX).await;
    let first = sample();
    let first_fds = fd_targets();
    let mut pool = new_pool().await.expect("pool");
    counts.pools += 2;
    println!("minute  rounds  spawned  pool_tasks  rss_kib  heap_kib  fds  children  zombies");
    let start = Instant::now();
    let mut next_report = Duration::from_secs(60);
    let mut rounds = 0u64;
    let mut half_way = None;
    while start.elapsed() < duration {
        round(&mut counts, &pool).await.expect("round");
        rounds += 1;
        if rounds % 25 == 0 {
            // Pool churn: close one pool, start another.
            pool.close().await;
            pool = new_pool().await.expect("pool");
            counts.pools += 1;
        }
        if half_way.is_none() && start.elapsed() >= duration / 2 {
            half_way = Some(sample());
        }
        if start.elapsed() >= next_report {
            next_report += Duration::from_secs(60);
            let now = sample();
            println!(
                "{:>6.1}  {rounds:>6}  {:>7}  {:>10}  {:>7}  {:>8}  {:>3}  {:>8}  {:>7}",
                start.elapsed().as_secs_f64() / 60.0,
                counts.spawned,
                counts.pool_tasks,
                now.rss_kib,
                now.heap_kib,
                now.fds,
                now.children,
                now.zombies
            );
        }
    }
    pool.close().await;
    drop(pool);
    settle(first.fds).await;
    let last = sample();
    let half_way = half_way.unwrap_or_else(sample);
    println!(
        "soak: {:.1} min, {rounds} rounds, {counts:?}",
        start.elapsed().as_secs_f64() / 60.0
    );
    for (name, s) in [("first", &first), ("half-way", &half_way), ("last", &last)] {
        println!(
            "{name:>8}: rss {} KiB, heap {} KiB, {} fds, {} children, {} zombies",
            s.rss_kib, s.heap_kib, s.fds, s.children, s.zombies
        );
    }
    let heap_grew = last.heap_kib > first.heap_kib + first.heap_kib / 10;
    let rss_grew = last.rss_kib > half_way.rss_kib + half_way.rss_kib / 10;
    if last.fds > first.fds {
        println!("descriptors at first: {first_fds:?}");
        println!("descriptors at last: {:?}", fd_targets());
    }
    if last.fds > first.fds || last.children != 0 || last.zombies != 0 || heap_grew || rss_grew {
        println!("soak FAILED");
        std::process::exit(1);
    }
    println!("soak passed");
}
