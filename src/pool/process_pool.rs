//! [`ProcessPool`]: a pool of worker processes running plain functions.

use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::core::Core;
use super::handle::{TaskHandle, submit_job};
use super::map::map_stream;
use super::protocol::{JobKind, call_entry};
use super::state::PoolStats;
use super::worker::CallOne;
use crate::error::Result;

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
    pub(crate) fn from_core(core: Arc<Core>) -> ProcessPool {
        ProcessPool { core }
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

    /// Where workers may join this pool (see
    /// [`PoolBuilder::listen`](crate::PoolBuilder::listen)), with the port the system
    /// chose; `None` for a pool that does not listen.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// assert!(pool.listen_address().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen_address(&self) -> Option<crate::Address> {
        self.core.listen_address()
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
    /// worker is running it, [`CancelRunning`](crate::CancelRunning) decides. (Workers hold a few tasks ahead,
    /// see [`PoolBuilder::tasks_in_flight_per_worker`](crate::PoolBuilder::tasks_in_flight_per_worker); a dropped task already handed to
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
            Ok(entry) => submit_job(&self.core, JobKind::Call(entry), &arg, timeout),
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
        map_stream(&self.core, f, inputs, None, true)
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
        map_stream(&self.core, f, inputs, None, false)
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
        map_stream(&self.core, f, inputs, Some(chunk_size.max(1)), true)
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
    /// [`Error::PoolClosed`](crate::Error::PoolClosed).
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

impl std::fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("stats", &self.stats())
            .finish()
    }
}
