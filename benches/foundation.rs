//! Spawn latency, round-trip latency and bulk throughput, each beside its floor.
//!
//! Run everything and print the table with `benches/run.sh`; by hand:
//!
//! ```text
//! cargo bench --bench foundation -- spawn
//! cargo bench --bench foundation -- bulk
//! taskset -c 0 cargo bench --bench foundation -- roundtrip
//! python3 benches/report.py
//! ```
//!
//! Floors, measured in the same run:
//! - spawn: `std::process::Command` re-executing this very binary, which exits on
//!   entering `main` (a bare re-exec, the least any exec-based start can cost);
//! - roundtrip: two processes ping-ponging 64 bytes over a blocking socketpair;
//! - bulk: one process streaming 1 MiB writes over a blocking socketpair to another,
//!   against typed messages (`ByteBuf`) and raw bytes frames (`send_bytes`).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use multiprocess::{Connection, PassFd, Process, StartMethod, spawn_process};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

const BARE_REEXEC: &str = "MULTIPROCESS_BENCH_BARE_REEXEC";
const SMALL: usize = 64;
const BULK: usize = 1 << 20;

fn trivial(x: u32) -> u32 {
    x + 1
}

/// Child side of the framed round trip: echo until hung up.
fn framed_echo(mut conn: Connection<ByteBuf, ByteBuf>) {
    while let Ok(msg) = conn.recv_blocking() {
        if conn.send_blocking(msg).is_err() {
            break;
        }
    }
}

/// Child side of the floor round trip: blocking echo of fixed 64-byte messages.
fn raw_echo(PassFd(fd): PassFd) {
    let mut socket = UnixStream::from(fd);
    let mut buf = [0u8; SMALL];
    while socket.read_exact(&mut buf).is_ok() {
        if socket.write_all(&buf).is_err() {
            break;
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Bulk {
    Data(ByteBuf),
    Sync,
}

/// The sender's view of [`Bulk`]: the same bytes on the wire, borrowing the payload so
/// that the benchmark measures the transfer, not a clone per message.
#[derive(Serialize)]
enum BulkRef {
    Data(&'static serde_bytes::Bytes),
    Sync,
}

/// A plain socketpair configured like ours (same buffer sizes), for the floors.
fn floor_pair() -> (UnixStream, UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        setsockopt(s, sockopt::SndBuf, &(1 << 20)).unwrap();
        setsockopt(s, sockopt::RcvBuf, &(1 << 20)).unwrap();
    }
    (a, b)
}

/// Child side of the framed bulk stream: consume, answer each `Sync`.
fn framed_sink(mut conn: Connection<(), Bulk>) {
    while let Ok(msg) = conn.recv_blocking() {
        if let Bulk::Sync = msg {
            if conn.send_blocking(()).is_err() {
                break;
            }
        }
    }
}

/// Child side of the floor bulk stream: read a count, then that many MiB, then ack.
fn raw_sink(PassFd(fd): PassFd) {
    let mut socket = UnixStream::from(fd);
    let mut buf = vec![0u8; BULK];
    let mut count = [0u8; 8];
    while socket.read_exact(&mut count).is_ok() {
        for _ in 0..u64::from_le_bytes(count) {
            if socket.read_exact(&mut buf).is_err() {
                return;
            }
        }
        if socket.write_all(&[1]).is_err() {
            return;
        }
    }
}

/// Child side of the raw bytes stream: consume into one buffer, answer each empty frame.
fn raw_bytes_sink(mut conn: Connection<(), ()>) {
    let mut buf = Vec::new();
    while let Ok(len) = conn.recv_bytes_into_blocking(&mut buf) {
        if len == 0 && conn.send_bytes_blocking(&[]).is_err() {
            break;
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench_spawn(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("spawn");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("floor: Command re-exec + wait", |b| {
        b.iter(|| {
            let status = std::process::Command::new("/proc/self/exe")
                .env(BARE_REEXEC, "1")
                .status()
                .unwrap();
            assert!(status.success());
        })
    });
    group.bench_function("spawn_process + join", |b| {
        b.to_async(&rt).iter(|| async {
            let mut child = Process::builder()
                .start_method(StartMethod::Exec)
                .spawn(trivial, 1)
                .unwrap();
            assert_eq!(child.join().await.unwrap(), 2);
        })
    });
    group.bench_function("floor: raw fork + waitpid", |b| {
        b.iter(|| {
            // SAFETY: the child only calls _exit, which is async-signal-safe, so forking
            // this multi-threaded process is sound.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: _exit ends the forked child at once, running nothing else.
                unsafe { libc::_exit(0) };
            }
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
            assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)));
        })
    });
    group.bench_function("spawn_process + join, fork server", |b| {
        b.to_async(&rt).iter(|| async {
            let mut child = Process::builder()
                .start_method(StartMethod::Forkserver)
                .spawn(trivial, 1)
                .unwrap();
            assert_eq!(child.join().await.unwrap(), 2);
        })
    });
    group.finish();
}

fn bench_roundtrip(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("roundtrip");
    group.throughput(Throughput::Elements(1));

    let (ours, theirs) = floor_pair();
    let mut floor_child = spawn_process(raw_echo, PassFd(OwnedFd::from(theirs))).unwrap();
    let mut socket = ours;
    let mut buf = [7u8; SMALL];
    group.bench_function("floor: blocking socketpair 64 B", |b| {
        b.iter(|| {
            socket.write_all(&buf).unwrap();
            socket.read_exact(&mut buf).unwrap();
        })
    });
    drop(socket);

    // The same ping-pong from tokio without framing: what async I/O itself costs.
    let (ours, theirs) = floor_pair();
    let mut tokio_child = spawn_process(raw_echo, PassFd(OwnedFd::from(theirs))).unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut stream = rt
        .block_on(async { tokio::net::UnixStream::from_std(ours) })
        .unwrap();
    group.bench_function("reference: tokio UnixStream 64 B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let start = Instant::now();
                for _ in 0..iters {
                    stream.write_all(&buf).await.unwrap();
                    stream.read_exact(&mut buf).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    drop(stream);

    let (mut conn, child_end) = multiprocess::pipe::<ByteBuf, ByteBuf>().unwrap();
    let mut echo_child = spawn_process(framed_echo, child_end).unwrap();
    let mut msg = Some(ByteBuf::from(vec![7u8; SMALL]));
    group.bench_function("Connection 64 B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut m = msg.take().unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    conn.send(m).await.unwrap();
                    m = conn.recv().await.unwrap();
                }
                let elapsed = start.elapsed();
                msg = Some(m);
                elapsed
            })
        })
    });
    drop(conn);

    // The blocking API, like for like with the floor's blocking calls.
    let (mut conn, child_end) = multiprocess::pipe::<ByteBuf, ByteBuf>().unwrap();
    let mut blocking_child = spawn_process(framed_echo, child_end).unwrap();
    let mut msg = Some(ByteBuf::from(vec![7u8; SMALL]));
    group.bench_function("Connection 64 B, blocking calls", |b| {
        b.iter_custom(|iters| {
            let mut m = msg.take().unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                conn.send_blocking(m).unwrap();
                m = conn.recv_blocking().unwrap();
            }
            let elapsed = start.elapsed();
            msg = Some(m);
            elapsed
        })
    });
    drop(conn);
    group.finish();
    rt.block_on(async {
        blocking_child.join().await.unwrap();
        echo_child.join().await.unwrap();
        floor_child.join().await.unwrap();
        tokio_child.join().await.unwrap();
    });
}

/// One way of moving `count` MiB to a child and waiting until it has them all.
trait BulkPath {
    fn transfer(&mut self, rt: &tokio::runtime::Runtime, count: u64) -> Duration;
}

struct FloorBulk(UnixStream, &'static [u8]);

impl BulkPath for FloorBulk {
    fn transfer(&mut self, _: &tokio::runtime::Runtime, count: u64) -> Duration {
        let start = Instant::now();
        self.0.write_all(&count.to_le_bytes()).unwrap();
        for _ in 0..count {
            self.0.write_all(self.1).unwrap();
        }
        self.0.read_exact(&mut [0u8; 1]).unwrap();
        start.elapsed()
    }
}

struct TypedBulk(Connection<BulkRef, ()>, &'static serde_bytes::Bytes);

impl BulkPath for TypedBulk {
    fn transfer(&mut self, rt: &tokio::runtime::Runtime, count: u64) -> Duration {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..count {
                self.0.send(BulkRef::Data(self.1)).await.unwrap();
            }
            self.0.send(BulkRef::Sync).await.unwrap();
            self.0.recv().await.unwrap();
            start.elapsed()
        })
    }
}

struct RawBulk(Connection<(), ()>, &'static [u8]);

impl BulkPath for RawBulk {
    fn transfer(&mut self, rt: &tokio::runtime::Runtime, count: u64) -> Duration {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..count {
                self.0.send_bytes(self.1).await.unwrap();
            }
            self.0.send_bytes(&[]).await.unwrap();
            self.0.recv_bytes().await.unwrap();
            start.elapsed()
        })
    }
}

/// Bulk throughput of the floor and of our two paths, interleaved round by round: on
/// these VMs the rate of a memory-bound transfer drifts by tens of percent within a
/// minute, so measuring one path after the other would compare different machines.
/// Writes the median time per MiB of each to `target/bulk.json` for the report.
fn bench_bulk() {
    const ROUNDS: usize = 41;
    const PER_ROUND: u64 = 32;
    let rt = runtime();
    let chunk: &'static [u8] = vec![3u8; BULK].leak();

    let (ours, theirs) = floor_pair();
    let mut floor_child = spawn_process(raw_sink, PassFd(OwnedFd::from(theirs))).unwrap();
    // Two types on the wire that agree, so both ends are made from one socketpair.
    let (typed, typed_child_end) = floor_pair();
    let typed_child_end = Connection::<(), Bulk>::from_fd(OwnedFd::from(typed_child_end)).unwrap();
    let mut typed_child = spawn_process(framed_sink, typed_child_end).unwrap();
    let (raw, raw_child_end) = floor_pair();
    let raw_child_end = Connection::<(), ()>::from_fd(OwnedFd::from(raw_child_end)).unwrap();
    let mut raw_child = spawn_process(raw_bytes_sink, raw_child_end).unwrap();

    let mut paths: Vec<(&str, Box<dyn BulkPath>)> = vec![
        ("floor", Box::new(FloorBulk(ours, chunk))),
        (
            "typed",
            Box::new(TypedBulk(
                Connection::from_fd(OwnedFd::from(typed)).unwrap(),
                serde_bytes::Bytes::new(chunk),
            )),
        ),
        (
            "raw",
            Box::new(RawBulk(
                Connection::from_fd(OwnedFd::from(raw)).unwrap(),
                chunk,
            )),
        ),
    ];
    for (_, path) in paths.iter_mut() {
        path.transfer(&rt, PER_ROUND); // warm up
    }
    let mut per_mib: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..ROUNDS {
        // Each path goes first in turn, so none always follows the same neighbour.
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let took = paths[i].1.transfer(&rt, PER_ROUND);
            per_mib[i].push(took.as_nanos() as f64 / PER_ROUND as f64);
        }
    }
    let mut json = Vec::new();
    for ((name, _), times) in paths.iter().zip(per_mib.iter_mut()) {
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let gib_s = BULK as f64 / median / 1.073_741_824;
        println!(
            "bulk/{name}: median {:.2} µs per MiB ({gib_s:.2} GiB/s)",
            median / 1e3
        );
        json.push(format!("\"{name}\": {median}"));
    }
    let out = format!(
        "{{{}, \"rounds\": {ROUNDS}, \"mib_per_round\": {PER_ROUND}}}\n",
        json.join(", ")
    );
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bulk.json");
    std::fs::write(target, out).unwrap();
    drop(paths);
    rt.block_on(async {
        typed_child.join().await.unwrap();
        raw_child.join().await.unwrap();
        floor_child.join().await.unwrap();
    });
}

/// The benchmark name filter given on the command line, if any.
fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

fn main() {
    if std::env::var_os(BARE_REEXEC).is_some() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_spawn(&mut c);
    bench_roundtrip(&mut c);
    c.final_summary();
    if filter().is_none_or(|f| f.contains("bulk")) {
        bench_bulk();
    }
}
