//! [`ProcessPool`]: long-lived worker processes for CPU-bound work awaited from async
//! code, that heal themselves whatever a task does to its worker.

mod claim;
mod core;
mod protocol;
mod stateful;
mod worker;

pub use self::core::{CancelRunning, PoolStats};
pub use stateful::{StatefulPool, Worker};

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{self, BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, TryAcquireError, oneshot};

use self::core::{Config, Core};
use self::protocol::{Encoded, Failure, JobData, JobKind, StartArg};
use self::protocol::{CallEntry, CallInput, CallOutput};
use self::worker::{CallChunk, CallOne, PlainStart, StatefulStart};
use crate::error::{Error, Result};
use crate::ipc::wire;
use crate::process::Process;
use crate::start::entry::Trampoline;

/// Configures a [`ProcessPool`] (or a [`StatefulPool`]).
///
/// ```
/// use std::time::Duration;
/// use multiprocess::{CancelRunning, ProcessPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = ProcessPool::builder()
///     .workers(2)
///     .max_tasks_per_worker(1000)
///     .task_timeout(Duration::from_secs(30))
///     .queue_capacity(256)
///     .cancel_running(CancelRunning::KillWorker)
///     .build()
///     .await?;
/// assert_eq!(pool.apply(|x: u32| x * 2, 21).await?, 42);
/// # Ok(())
/// # }
/// ```
pub struct PoolBuilder {
    workers: usize,
    window: Option<usize>,
    max_tasks_per_worker: Option<u64>,
    task_timeout: Option<Duration>,
    queue_capacity: usize,
    cancel_running: CancelRunning,
    name: String,
    start_method: Option<crate::StartMethod>,
    memory_limit: Option<u64>,
    start_timeout: Duration,
    init: Option<(CallEntry, Arc<StartArg>)>,
    init_error: Option<Error>,
}

impl Default for PoolBuilder {
    fn default() -> PoolBuilder {
        PoolBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            window: None,
            max_tasks_per_worker: None,
            task_timeout: None,
            queue_capacity: 1024,
            cancel_running: CancelRunning::Finish,
            name: "pool-worker".into(),
            start_method: None,
            memory_limit: None,
            start_timeout: Duration::from_secs(60),
            init: None,
            init_error: None,
        }
    }
}

impl PoolBuilder {
    /// How many worker processes (default: the available parallelism). Zero makes
    /// `build` fail with [`Error::InvalidArgument`]: a pool without workers would
    /// never run a task.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let builder = multiprocess::ProcessPool::builder().workers(4);
    /// let none = multiprocess::ProcessPool::builder().workers(0).build().await;
    /// assert!(matches!(none, Err(multiprocess::Error::InvalidArgument(_))));
    /// # }
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Replaces a worker with a fresh process after it has run `tasks` tasks (a map
    /// chunk counts as one), as Python's `maxtasksperchild` does: a remedy for leaks.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().max_tasks_per_worker(500);
    /// ```
    pub fn max_tasks_per_worker(mut self, tasks: u64) -> Self {
        self.max_tasks_per_worker = Some(tasks.max(1));
        self
    }

    /// The time a task may run before its worker is killed and the task fails with
    /// [`Error::Timeout`] (default: no limit). Per-call overrides:
    /// [`ProcessPool::apply_timeout`], [`ProcessPool::submit_timeout`].
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().task_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many tasks may wait for a worker (default 1024). When the queue is full,
    /// a task is queued only once its [`TaskHandle`] is awaited, and `map` stops pulling
    /// inputs: memory stays bounded however fast work is offered.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().queue_capacity(64);
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// How many tasks each worker holds at once. By default this adapts to the tasks:
    /// two (one running, the next already on its way) for long tasks, up to 32 for tiny
    /// ones, so that a worker never waits for a round trip to the pool between tasks.
    /// A fixed number (1 for strict one-at-a-time dispatch) turns adaptation off.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().tasks_in_flight_per_worker(1);
    /// ```
    pub fn tasks_in_flight_per_worker(mut self, tasks: usize) -> Self {
        self.window = Some(tasks.max(1));
        self
    }

    /// What dropping the handle of a running task does (default: let it finish).
    ///
    /// ```
    /// use multiprocess::CancelRunning;
    /// let builder = multiprocess::ProcessPool::builder().cancel_running(CancelRunning::KillWorker);
    /// ```
    pub fn cancel_running(mut self, policy: CancelRunning) -> Self {
        self.cancel_running = policy;
        self
    }

    /// How workers (and their replacements) are started (default:
    /// [`StartMethod::from_env`](crate::StartMethod::from_env)).
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().start_method(multiprocess::StartMethod::Forkserver);
    /// ```
    pub fn start_method(mut self, method: crate::StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// How long a new worker may take to say it is ready, its
    /// [`initializer`](Self::initializer) included (default 60 s). A worker that takes
    /// longer (stuck, stopped, starved) is killed and replaced; if no worker of the pool
    /// has ever been ready, `build` fails with [`Error::Bootstrap`] instead, since every
    /// replacement would likely do the same.
    ///
    /// A replacement that cannot be started at all (the process is out of descriptors
    /// or processes) is tried again with backoff for as long as the pool lives
    /// ([`PoolStats::missing`] counts it meanwhile). Tasks queued while no worker is
    /// alive wait for it, and fail with [`Error::Bootstrap`] once they have waited this
    /// long.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder()
    ///     .worker_start_timeout(std::time::Duration::from_secs(300));
    /// ```
    pub fn worker_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Caps each worker's address space at `bytes` (see
    /// [`ProcessBuilder::memory_limit`](crate::ProcessBuilder::memory_limit)). A task
    /// whose allocation fails under the cap fails with [`Error::MemoryLimit`]; its worker
    /// is replaced like any other that dies.
    ///
    /// ```
    /// use multiprocess::{Error, ProcessPool};
    ///
    /// fn reserve(mib: usize) -> usize {
    ///     vec![0u8; mib << 20].len()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::builder().workers(1).worker_memory_limit(512 << 20).build().await?;
    /// assert!(matches!(pool.apply(reserve, 1024).await, Err(Error::MemoryLimit { .. })));
    /// assert_eq!(pool.apply(reserve, 1).await?, 1 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The workers' process name prefix (default `pool-worker`).
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().name("resizer");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs `f(arg)` once in every worker before it takes tasks (Python's
    /// `initializer`). A panic fails `build` with [`Error::Bootstrap`].
    ///
    /// ```
    /// fn warm_up(level: u32) {
    ///     assert!(level < 10);
    /// }
    /// let builder = multiprocess::ProcessPool::builder().initializer(warm_up, 3);
    /// ```
    pub fn initializer<A>(mut self, f: fn(A), arg: A) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        match (call_entry::<CallOne<A, ()>>(f), wire::encode_value(&arg)) {
            (Ok(entry), Ok(encoded)) => {
                self.init = Some((entry, Arc::new(StartArg::new(encoded))));
            }
            (Err(e), _) | (_, Err(e)) => self.init_error = Some(e),
        }
        self
    }

    fn check(&mut self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::InvalidArgument(
                "a pool needs at least one worker".into(),
            ));
        }
        match self.init_error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn config(&self, spawn: self::core::SpawnWorker) -> Config {
        Config {
            workers: self.workers,
            window: self.window,
            max_tasks_per_worker: self.max_tasks_per_worker,
            task_timeout: self.task_timeout,
            queue_capacity: self.queue_capacity,
            cancel_running: self.cancel_running,
            memory_limit: self.memory_limit,
            start_timeout: self.start_timeout,
            spawn,
        }
    }

    /// Starts the workers and waits until each is ready.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::builder().workers(2).build().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn build(mut self) -> Result<ProcessPool> {
        self.check()?;
        let init = self.init.clone();
        let spawn = spawner(
            self.name.clone(),
            self.start_method,
            self.memory_limit,
            move |builder, conn, board| {
                let init = match &init {
                    Some((entry, arg)) => Some((*entry, arg.duplicate()?)),
                    None => None,
                };
                builder.spawn(worker::plain_worker, PlainStart { conn, init, board })
            },
        );
        let core = Core::new(self.config(spawn));
        let pool = ProcessPool { core };
        pool.core.start().await?;
        Ok(pool)
    }

    /// Starts a pool of stateful workers, each built from `init`
    /// (see [`Worker`]).
    ///
    /// See [`Worker`] for an example.
    pub async fn build_stateful<W: Worker>(mut self, init: W::Init) -> Result<StatefulPool<W>> {
        self.check()?;
        let init = StartArg::new(wire::encode_value(&init)?);
        let spawn = spawner(
            self.name.clone(),
            self.start_method,
            self.memory_limit,
            move |builder, conn, board| {
                let start = StatefulStart {
                    conn,
                    init: init.duplicate()?,
                    board,
                };
                builder.spawn_async(worker::stateful_worker::<W>, start)
            },
        );
        let core = Core::new(self.config(spawn));
        let pool = StatefulPool {
            core,
            _worker: PhantomData,
        };
        pool.core.start().await?;
        Ok(pool)
    }
}

/// Workers die with the pool's process, are killed with the pool, and carry a name.
fn spawner<F>(
    name: String,
    method: Option<crate::StartMethod>,
    memory_limit: Option<u64>,
    spawn: F,
) -> self::core::SpawnWorker
where
    F: Fn(
            crate::ProcessBuilder,
            crate::Connection<protocol::FromWorker, protocol::JobIn>,
            claim::ClaimBoard,
        ) -> Result<Process<()>>
        + Send
        + Sync
        + 'static,
{
    let counter = AtomicU64::new(1);
    Box::new(move |conn, board| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let mut builder = Process::builder()
            .name(format!("{name}-{n}"))
            .die_with_parent(true)
            .kill_on_drop(true);
        if let Some(method) = method {
            builder = builder.start_method(method);
        }
        if let Some(limit) = memory_limit {
            builder = builder.memory_limit(limit);
        }
        spawn(builder, conn, board)
    })
}

fn call_entry<T: Trampoline<Input = CallInput, Output = CallOutput>>(
    function: T::Function,
) -> Result<CallEntry> {
    CallEntry::new::<T>(function).map_err(|source| Error::Spawn {
        program: "pool task".into(),
        source,
    })
}

/// A pool of worker processes for CPU-bound (or crash-prone) work, awaited from async
/// code.
///
/// Whatever a task does to its worker (panic, abort, segfault, an endless loop past its
/// timeout, `std::process::exit`, garbage written to the worker's connection), that
/// task gets a typed error and only that task: tasks queued behind it go to other
/// workers, and a new worker takes the dead one's place. Workers die with the pool
/// (and with the process that owns it); dropping the pool kills them.
///
/// ```
/// use futures::TryStreamExt;
/// use multiprocess::ProcessPool;
///
/// fn fib(n: u64) -> u64 {
///     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = ProcessPool::new(2).await?;
/// assert_eq!(pool.apply(fib, 20).await?, 6765);
/// let all: Vec<u64> = pool.map(fib, 0..20).try_collect().await?;
/// assert_eq!(all[19], 4181);
/// pool.close().await;
/// # Ok(())
/// # }
/// ```
pub struct ProcessPool {
    core: Arc<Core>,
}

impl ProcessPool {
    /// Starts configuring a pool.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder();
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// A pool of `workers` processes with default settings.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(2).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn new(workers: usize) -> Result<ProcessPool> {
        Self::builder().workers(workers).build().await
    }

    /// Runs `f(arg)` in a worker and returns the result.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// assert_eq!(pool.apply(|s: String| s.len(), "four".to_string()).await?, 4);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.submit(f, arg).await
    }

    /// [`apply`](Self::apply) with its own time limit instead of the pool's.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// let slow = |ms: u64| std::thread::sleep(Duration::from_millis(ms));
    /// let err = pool.apply_timeout(slow, 10_000, Duration::from_millis(50)).await.unwrap_err();
    /// assert!(matches!(err, multiprocess::Error::Timeout { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply_timeout<A, R>(&self, f: fn(A) -> R, arg: A, timeout: Duration) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.submit_timeout(f, arg, timeout).await
    }

    /// Queues `f(arg)` and returns a handle that is a future for its result. The task
    /// is queued at once if the queue has room, otherwise when the handle is first
    /// awaited. Dropping the handle while the task waits in the queue removes it; once a
    /// worker is running it, [`CancelRunning`] decides. (Workers hold a few tasks ahead,
    /// see [`PoolBuilder::tasks_in_flight_per_worker`]; a dropped task already handed to
    /// a worker but not yet running runs, and its result is discarded.)
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(2).await?;
    /// let a = pool.submit(|x: u32| x + 1, 1);
    /// let b = pool.submit(|x: u32| x + 2, 1);
    /// assert_eq!(a.await? + b.await?, 5);
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.submit_timeout_opt(f, arg, self.core.default_timeout())
    }

    /// [`submit`](Self::submit) with its own time limit instead of the pool's.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// let quick = pool.submit_timeout(|x: u8| x, 1, Duration::from_secs(10));
    /// assert_eq!(quick.await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_timeout<A, R>(&self, f: fn(A) -> R, arg: A, timeout: Duration) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.submit_timeout_opt(f, arg, Some(timeout))
    }

    fn submit_timeout_opt<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        timeout: Option<Duration>,
    ) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        match call_entry::<CallOne<A, R>>(f) {
            Ok(entry) => {
                submit_job(&self.core, JobKind::Call(entry), &arg, timeout)
            }
            Err(err) => TaskHandle::failed(&self.core, err),
        }
    }

    /// Runs `f` on every input and streams the results in input order. Inputs are sent
    /// in chunks (about a quarter of the inputs per worker, as Python's `map` does, when
    /// the iterator knows its length; one per task otherwise) and pulled only as fast as
    /// the pool works through them. With chunks, a worker crash fails the whole chunk;
    /// [`map_chunked`](Self::map_chunked) with a chunk size of 1 isolates every input.
    ///
    /// See [`ProcessPool`] for an example.
    pub fn map<A, R, I>(
        &self,
        f: fn(A) -> R,
        inputs: I,
    ) -> impl Stream<Item = Result<R>> + Send + 'static
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map_with(f, inputs, None, true)
    }

    /// Like [`map`](Self::map), but yields results as they complete.
    ///
    /// ```
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(2).await?;
    /// let mut squares: Vec<u64> = pool.map_unordered(|x: u64| x * x, 0..100).try_collect().await?;
    /// squares.sort();
    /// assert_eq!(squares[99], 99 * 99);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        inputs: I,
    ) -> impl Stream<Item = Result<R>> + Send + 'static
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map_with(f, inputs, None, false)
    }

    /// [`map`](Self::map) with an explicit chunk size.
    ///
    /// ```
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(2).await?;
    /// let out: Vec<u32> = pool.map_chunked(|x: u32| x + 1, 0..10, 3).try_collect().await?;
    /// assert_eq!(out, (1..11).collect::<Vec<_>>());
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        inputs: I,
        chunk_size: usize,
    ) -> impl Stream<Item = Result<R>> + Send + 'static
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.map_with(f, inputs, Some(chunk_size.max(1)), true)
    }

    fn map_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        inputs: I,
        chunk: Option<usize>,
        ordered: bool,
    ) -> BoxStream<'static, Result<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        let inputs = inputs.into_iter();
        let workers = self.core.workers();
        let chunk = chunk.unwrap_or_else(|| auto_chunk_size(inputs.size_hint(), workers));
        let entry = call_entry::<CallChunk<A, R>>(f);
        let core = self.core.clone();
        let timeout = core.default_timeout();
        let tasks = stream::iter(Chunks {
            inputs,
            size: chunk,
        })
        .map(move |items: Vec<A>| {
            let n = items.len();
            let handle: TaskHandle<Vec<Result<R, Failure>>> = match &entry {
                Ok(entry) => submit_job(&core, JobKind::Call(*entry), &items, timeout),
                Err(err) => TaskHandle::failed(&core, replicate(err)),
            };
            async move {
                match handle.await {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| r.map_err(Error::from))
                        .collect(),
                    Err(err) => (0..n).map(|_| Err(replicate(&err))).collect::<Vec<_>>(),
                }
            }
        });
        let in_flight = workers * (self.core.window() + 1);
        let results = if ordered {
            tasks.buffered(in_flight).boxed()
        } else {
            tasks.buffer_unordered(in_flight).boxed()
        };
        results.flat_map(stream::iter).boxed()
    }

    /// The pool's counters.
    ///
    /// See [`PoolStats`] for an example.
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }

    /// Stops taking tasks, finishes everything queued and running, then lets the
    /// workers exit and reaps them. (A running task with no time limit that never ends
    /// keeps `close` waiting; [`terminate`](Self::terminate) does not wait.)
    ///
    /// See [`ProcessPool`] for an example.
    pub async fn close(&self) {
        self.core.close().await
    }

    /// Kills every worker now and reaps them; queued and running tasks fail with
    /// [`Error::PoolClosed`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// pool.terminate().await;
    /// assert!(matches!(pool.apply(|x: u8| x, 1).await, Err(multiprocess::Error::PoolClosed)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn terminate(&self) {
        self.core.terminate().await
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.core.kill_all();
    }
}

/// Decodes the pool's wire messages from arbitrary bytes (for fuzzing).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let _ = wire::decode_payload::<protocol::JobIn>(data, Vec::new());
    let _ = wire::decode_payload::<protocol::FromWorker>(data, Vec::new());
}

/// Python's rule: about four chunks per worker when the length is known.
fn auto_chunk_size((low, high): (usize, Option<usize>), workers: usize) -> usize {
    let len = high.unwrap_or(low);
    if len == 0 {
        return 1;
    }
    len.div_ceil(workers * 4).max(1)
}

struct Chunks<I> {
    inputs: I,
    size: usize,
}

impl<I: Iterator> Iterator for Chunks<I> {
    type Item = Vec<I::Item>;

    fn next(&mut self) -> Option<Vec<I::Item>> {
        let chunk: Vec<I::Item> = self.inputs.by_ref().take(self.size).collect();
        (!chunk.is_empty()).then_some(chunk)
    }
}

/// The same error again, for every input of a chunk that failed as a whole.
fn replicate(err: &Error) -> Error {
    match err {
        Error::Timeout { after } => Error::Timeout { after: *after },
        Error::WorkerDied { pid, signal, code } => Error::WorkerDied {
            pid: *pid,
            signal: *signal,
            code: *code,
        },
        Error::PoolClosed => Error::PoolClosed,
        Error::Panicked { message, location } => Error::Panicked {
            message: message.clone(),
            location: location.clone(),
        },
        Error::Bootstrap(msg) => Error::Bootstrap(msg.clone()),
        Error::Encode(msg) => Error::Encode(msg.clone()),
        Error::Decode(msg) => Error::Decode(msg.clone()),
        other => Error::Protocol(other.to_string()),
    }
}

/// Encodes a job and queues it (or prepares to, if the queue is full).
pub(crate) fn submit_job<A: Serialize, R>(
    core: &Arc<Core>,
    kind: JobKind,
    arg: &A,
    timeout: Option<Duration>,
) -> TaskHandle<R> {
    let (payload, fds) = match wire::encode_value(arg) {
        Ok(encoded) => encoded,
        Err(err) => return TaskHandle::failed(core, err),
    };
    let job = Arc::new(JobData {
        id: core.next_job_id(),
        kind,
        payload,
        fds,
    });
    let mut handle = TaskHandle {
        core: core.clone(),
        id: job.id,
        state: HandleState::Failed(None),
        _result: PhantomData,
    };
    handle.state = match core.space.clone().try_acquire_owned() {
        Ok(permit) => handle.enqueue(job, timeout, permit),
        Err(TryAcquireError::NoPermits) => HandleState::WaitingForRoom {
            job,
            timeout,
            room: Box::pin(core.space.clone().acquire_owned()),
        },
        Err(TryAcquireError::Closed) => HandleState::Failed(Some(Error::PoolClosed)),
    };
    handle
}

fn enqueue_on(
    core: &Core,
    job: Arc<JobData>,
    timeout: Option<Duration>,
    permit: OwnedSemaphorePermit,
) -> HandleState {
    match core.enqueue(job, timeout, Some(permit)) {
        Ok(answer) => HandleState::Queued(answer),
        Err(err) => HandleState::Failed(Some(err)),
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

enum HandleState {
    WaitingForRoom {
        job: Arc<JobData>,
        timeout: Option<Duration>,
        room: Acquire,
    },
    Queued(oneshot::Receiver<Result<Encoded>>),
    Failed(Option<Error>),
}

/// A task submitted to a pool: a future for its result. Dropping it cancels the task
/// (see [`ProcessPool::submit`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = multiprocess::ProcessPool::new(1).await?;
/// let handle: multiprocess::TaskHandle<u32> = pool.submit(|x: u32| x, 7);
/// assert_eq!(handle.await?, 7);
/// # Ok(())
/// # }
/// ```
#[must_use = "a task is cancelled when its handle is dropped"]
pub struct TaskHandle<R> {
    core: Arc<Core>,
    id: u64,
    state: HandleState,
    _result: PhantomData<fn() -> R>,
}

impl<R> TaskHandle<R> {
    fn failed(core: &Arc<Core>, err: Error) -> TaskHandle<R> {
        TaskHandle {
            core: core.clone(),
            id: 0,
            state: HandleState::Failed(Some(err)),
            _result: PhantomData,
        }
    }

    fn enqueue(
        &self,
        job: Arc<JobData>,
        timeout: Option<Duration>,
        permit: OwnedSemaphorePermit,
    ) -> HandleState {
        enqueue_on(&self.core, job, timeout, permit)
    }
}

impl<R> TaskHandle<R> {
    /// Whether the task's outcome is in: awaiting the handle now returns at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// let handle = pool.submit(|x: u32| x + 1, 1);
    /// while !handle.is_finished() {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    /// }
    /// assert_eq!(handle.await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        match &self.state {
            HandleState::WaitingForRoom { .. } => false,
            HandleState::Queued(answer) => !answer.is_empty(),
            HandleState::Failed(_) => true,
        }
    }

    /// Lets the task run to its end without awaiting it (Python's `apply_async` with
    /// the result thrown away): dropping a handle cancels its task, detaching does not,
    /// and [`ProcessPool::close`] waits for a detached task like any other. A task still
    /// waiting for room in a full queue is queued at once, past the queue's capacity.
    ///
    /// ```
    /// use multiprocess::{ProcessPool, Value};
    ///
    /// fn record(seen: Value<u32>) {
    ///     seen.set(7);
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::new(1).await?;
    /// let seen = Value::new(0u32)?;
    /// pool.submit(record, seen.clone()).detach();
    /// pool.close().await;
    /// assert_eq!(seen.get(), 7);
    /// # Ok(())
    /// # }
    /// ```
    pub fn detach(mut self) {
        match std::mem::replace(&mut self.state, HandleState::Failed(None)) {
            HandleState::Queued(_answer) => self.core.detach(self.id),
            HandleState::WaitingForRoom { job, timeout, .. } => {
                // Its data is held already: queuing it past the queue's capacity holds
                // no more memory than waiting for room would.
                if let Ok(_answer) = self.core.enqueue(job, timeout, None) {
                    self.core.detach(self.id);
                }
            }
            HandleState::Failed(_) => {}
        }
    }
}

impl<R> std::fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            HandleState::WaitingForRoom { .. } => "waiting for room in the queue",
            HandleState::Queued(_) if self.is_finished() => "finished",
            HandleState::Queued(_) => "queued or running",
            HandleState::Failed(Some(_)) => "failed",
            HandleState::Failed(None) => "done",
        };
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("state", &state)
            .finish()
    }
}

impl std::fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("tasks_in_flight_per_worker", &self.window)
            .field("max_tasks_per_worker", &self.max_tasks_per_worker)
            .field("task_timeout", &self.task_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("cancel_running", &self.cancel_running)
            .field("name", &self.name)
            .field("start_method", &self.start_method)
            .field("worker_memory_limit", &self.memory_limit)
            .field("worker_start_timeout", &self.start_timeout)
            .field("initializer", &self.init.is_some())
            .finish()
    }
}

impl<R: DeserializeOwned> Future for TaskHandle<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                HandleState::WaitingForRoom { job, timeout, room } => {
                    let next = match room.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(permit)) => {
                            enqueue_on(&this.core, job.clone(), *timeout, permit)
                        }
                        Poll::Ready(Err(_)) => HandleState::Failed(Some(Error::PoolClosed)),
                    };
                    this.state = next;
                }
                HandleState::Queued(answer) => {
                    let result = match Pin::new(answer).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(Ok((bytes, fds)))) => wire::decode_payload(&bytes, fds),
                        Poll::Ready(Ok(Err(err))) => Err(err),
                        // The pool dropped the task without an answer: it is gone.
                        Poll::Ready(Err(_)) => Err(Error::PoolClosed),
                    };
                    this.state = HandleState::Failed(None);
                    return Poll::Ready(result);
                }
                HandleState::Failed(err) => {
                    return Poll::Ready(Err(err.take().unwrap_or(Error::AlreadyJoined)));
                }
            }
        }
    }
}

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        if let HandleState::Queued(_) = self.state {
            self.core.cancel(self.id);
        }
    }
}
