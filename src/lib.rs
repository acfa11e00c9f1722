//! Run Rust functions and external programs in child processes from async Rust, and
//! await them like tasks.
//!
//! What Python's `multiprocessing` gives Python programs, for tokio: a child process is
//! a [`Process`] handle you can `.await` for its result, time out, terminate, kill or
//! shut down gracefully; [`pipe`] and [`channel`] carry typed messages between
//! processes, and can themselves be handed to a child inside its argument.
//!
//! # Use it
//!
//! In your crate's `Cargo.toml` (the crate is not on crates.io yet: depend on a clone
//! by path, or by `git`):
//!
//! ```toml
//! [dependencies]
//! multiprocess = { path = "../multiprocess" }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! futures = "0.3" # TryStreamExt: collect a pool's map
//! serde = { version = "1", features = ["derive"] } # arguments and results of your own types
//! ```
//!
//! A function of your program, run in a child process and awaited; then a child that
//! talks over a pipe it received in its argument:
//!
//! ```
//! use std::time::Duration;
//! use multiprocess::{Connection, spawn_process};
//!
//! fn fib(n: u64) -> u64 {
//!     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
//! }
//!
//! fn echo(mut conn: Connection<String, String>) {
//!     while let Ok(line) = conn.recv_blocking() {
//!         conn.send_blocking(line.to_uppercase()).unwrap();
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> multiprocess::Result<()> {
//!     // A CPU-bound function in another process, awaited without blocking the runtime.
//!     let mut child = spawn_process(fib, 25)?;
//!     assert_eq!(child.join_timeout(Duration::from_secs(10)).await?, 75025);
//!
//!     // The pipe's other end travels inside the child's argument.
//!     let (mut here, there) = multiprocess::pipe::<String, String>()?;
//!     let mut echoer = spawn_process(echo, there)?;
//!     here.send("hello".into()).await?;
//!     assert_eq!(here.recv().await?, "HELLO");
//!     drop(here);
//!     echoer.join().await?;
//!     Ok(())
//! }
//! ```
//!
//! A pool of worker processes, like Python's `Pool.map`, over arguments and results of
//! your own types; a task that panics fails alone, with a typed error:
//!
//! ```
//! use futures::TryStreamExt;
//! use multiprocess::{Error, ProcessPool};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Page {
//!     title: String,
//!     text: String,
//! }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Counts {
//!     title: String,
//!     words: usize,
//! }
//!
//! fn count_words(page: Page) -> Counts {
//!     assert!(!page.text.is_empty(), "empty page {}", page.title);
//!     Counts { title: page.title, words: page.text.split_whitespace().count() }
//! }
//!
//! #[tokio::main]
//! async fn main() -> multiprocess::Result<()> {
//!     let pool = ProcessPool::builder().workers(2).build().await?;
//!     let pages = [("a", "one two three"), ("b", "four five")]
//!         .map(|(title, text)| Page { title: title.into(), text: text.into() });
//!     let counts: Vec<Counts> = pool.map(count_words, pages).try_collect().await?;
//!     assert_eq!(counts[0], Counts { title: "a".into(), words: 3 });
//!     assert_eq!(counts[1].words, 2);
//!
//!     let empty = Page { title: "c".into(), text: String::new() };
//!     let failed = pool.apply(count_words, empty).await;
//!     assert!(matches!(failed, Err(Error::Panicked { .. })));
//!     pool.close().await;
//!     Ok(())
//! }
//! ```
//!
//! # How a child starts
//!
//! By default a function child is forked from a small zygote process (the fork
//! server), itself started by executing this program again, so it is born clean and
//! single-threaded whatever your process holds; the child is still your process's own
//! child. [`StartMethod::Exec`] starts each child by executing the program again. Either
//! way a hook the crate places in the binary's initialisation runs before `main`,
//! learns over a private socket which function to run, checks the binary is the very
//! same build as the parent's, runs it and reports. Nothing needs to be added to
//! `main`, and the child never starts your runtime or runs your start-up code. This
//! works the same in binaries, examples, `cargo test` integration tests and doc tests.
//!
//! Beyond single children: [`ProcessPool`] for pooled work, [`Queue`], [`Lock`],
//! [`Semaphore`], [`Event`], [`Barrier`], [`Condition`] and [`SharedMemory`] across
//! processes.
//!
//! # Waiting, with and without a runtime
//!
//! Every call that can wait comes in the same forms: `x` (async), `x_timeout` (async,
//! bounded), `x_blocking` and `x_blocking_timeout` (for code without a runtime, such as
//! a plain function in a child), and, where it makes sense, `try_x`, which never waits:
//! [`Queue::try_put`] and [`Queue::try_get`] fail at once with [`Error::Full`] /
//! [`Error::Empty`]. Running out of time follows Python: where Python raises (a queue's
//! `get`/`put`, a connection, a join), the `_timeout` forms fail with
//! [`Error::Timeout`]; where Python returns a flag, they return it: [`Lock`] and
//! [`Semaphore`] give `Ok(None)` (what `try_lock`/`try_acquire` give when they cannot
//! take), [`Event`] gives `Ok(false)`, and [`Condition`] gives the lock guard back with
//! `true` for "timed out", as std's `Condvar` does. A timed-out or cancelled wait takes
//! nothing and leaves nothing counted.
//!
//! # Guarantees
//!
//! - Waiting never blocks a runtime thread and never hangs on a dead child: exit is
//!   awaited through a pidfd in tokio's reactor (or one `SIGCHLD` stream; see [`reaper`]).
//! - Every child is reaped, including those whose handle was dropped.
//! - Every descriptor the crate opens is close-on-exec unless deliberately passed on.
//! - A hostile or broken peer on a connection gives an error (oversized frames are
//!   refused before allocation), never a panic, a hang or unbounded memory.
//!
//! # Descriptors
//!
//! A live child costs its parent two descriptors (its control socket and its pidfd),
//! and one only once half the descriptor limit is in use: a child started then is
//! watched through `SIGCHLD` instead of a pidfd, so 10,000 children live together
//! within a limit of 20,000. The first spawn (or pool) raises the soft descriptor limit
//! (`RLIMIT_NOFILE`, often 1,024) to the hard limit, as Go's runtime does, and every
//! process the crate starts gets the original soft limit back before it runs, so an
//! external program using `select(2)` sees what it would have seen. A limit the
//! program sets itself after that is left as it is.
//!
//! Linux only (kernel 5.3 or later for pidfds; older kernels fall back to `SIGCHLD`).

#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiprocess supports Linux only today: it is built on pidfds, clone3, memfd and \
     descriptor passing over Unix sockets. On macOS (or Windows), build and run your \
     program in a Linux container (for example `docker run --rm -it -v \"$PWD\":/src \
     -w /src rust cargo run`) or a Linux virtual machine (Lima, OrbStack, UTM, WSL 2). A \
     program that must also build elsewhere can depend on multiprocess for Linux only: \
     list it under [target.'cfg(target_os = \"linux\")'.dependencies]."
);

/// Compiles the items it is given on Linux only, so that elsewhere the error above is the
/// only one a build reports (instead of one per unresolved Linux interface). Modules are
/// declared outside it, each under its own `cfg`, so that rustfmt reaches their files.
macro_rules! on_linux {
    ($($item:item)*) => { $(#[cfg(target_os = "linux")] $item)* };
}

#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
mod exit;
#[cfg(all(target_os = "linux", feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(target_os = "linux")]
mod ipc;
#[cfg(target_os = "linux")]
mod limits;
#[cfg(target_os = "linux")]
mod net;
#[cfg(target_os = "linux")]
mod pool;
#[cfg(target_os = "linux")]
mod process;
#[cfg(target_os = "linux")]
mod queue;
#[cfg(target_os = "linux")]
mod remote;
#[cfg(target_os = "linux")]
mod shm;
#[cfg(target_os = "linux")]
mod start;
#[cfg(target_os = "linux")]
mod sync;
#[cfg(target_os = "linux")]
mod sys;

on_linux! {
pub use error::{Error, Result};
pub use start::PanicOutput;
pub use exit::{Reaper, reaper};
pub use net::{Address, AuthKey, Client, Listener, ListenerBuilder};
pub use ipc::{
    Connection, DEFAULT_MAX_FRAME_LEN, FrameCodec, PassFd, Receiver, Sender, channel, pipe,
};
pub use pool::{
    CancelRunning, PoolBuilder, PoolStats, ProcessPool, StatefulPool, TaskHandle, Worker,
};
pub use process::{
    ActiveChild, Command, CurrentProcess, Process, ProcessBuilder, StartMethod, active_children,
    current_process, spawn_process,
};
pub use queue::{JoinableQueue, Queue};
pub use remote::Launcher;
pub use shm::{Array, AtomicInt, SharedMemory, Value};
pub use start::{ForkserverStats, forkserver_stats, preload, set_max_parked};
pub use sync::{
    Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock, RLockGuard, Semaphore, SemaphorePermit,
};


/// Signals, as accepted by [`Process::signal`].
///
/// ```
/// use multiprocess::Signal;
/// assert_eq!(Signal::SIGTERM as i32, libc::SIGTERM);
/// ```
pub use nix::sys::signal::Signal;
}
