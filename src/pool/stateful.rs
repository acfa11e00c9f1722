//! Stateful workers: set up once per worker process, then serve requests.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::core::Core;
use super::handle::{TaskHandle, submit_job};
use super::protocol::JobKind;
use super::state::PoolStats;
use crate::error::Result;

/// A worker that keeps state between requests: a model loaded once, an open database,
/// a warm cache. Each worker process builds one value with [`init`](Worker::init), then
/// answers requests with [`handle`](Worker::handle), one at a time.
///
/// Implement it with plain `async fn`s: no extra crate or attribute is needed. The
/// futures run on a current-thread runtime inside the worker process, so they need not
/// be `Send` (an `Rc` or a `RefCell` may live across an `.await`).
///
/// ```
/// use multiprocess::{ProcessPool, Worker};
///
/// struct Counter { seen: u64 }
///
/// impl Worker for Counter {
///     type Init = u64;
///     type Request = u64;
///     type Response = (u32, u64);
///
///     async fn init(start: u64) -> Result<Self, String> {
///         Ok(Counter { seen: start })
///     }
///
///     async fn handle(&mut self, n: u64) -> (u32, u64) {
///         self.seen += n;
///         (std::process::id(), self.seen)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = ProcessPool::builder().workers(1).build_stateful::<Counter>(100).await?;
/// assert_eq!(pool.apply(1).await?.1, 101);
/// assert_eq!(pool.apply(2).await?.1, 103);
/// pool.close().await;
/// # Ok(())
/// # }
/// ```
pub trait Worker: Sized + 'static {
    /// What every worker is built from (sent to each worker process).
    type Init: Serialize + DeserializeOwned;
    /// A request.
    type Request: Serialize + DeserializeOwned;
    /// The answer to a request.
    type Response: Serialize + DeserializeOwned;

    /// Builds the worker's state, once per worker process. An `Err` fails the pool's
    /// `build` (and every task) with [`Error::Bootstrap`](crate::Error::Bootstrap).
    ///
    /// Declared as returning a future so that no `Send` bound is implied: implement it
    /// as `async fn init(init: Self::Init) -> Result<Self, String>`.
    fn init(init: Self::Init) -> impl Future<Output = Result<Self, String>>;

    /// Answers one request. A panic fails that request with
    /// [`Error::Panicked`](crate::Error::Panicked); the worker and its state live on.
    ///
    /// Implement it as `async fn handle(&mut self, request: Self::Request) -> Self::Response`.
    fn handle(&mut self, request: Self::Request) -> impl Future<Output = Self::Response>;
}

/// A pool of [`Worker`]s: like [`ProcessPool`](crate::ProcessPool), but every task is a
/// request to a long-lived worker state. Made by
/// [`PoolBuilder::build_stateful`](crate::PoolBuilder::build_stateful).
///
/// ```
/// use multiprocess::{ProcessPool, Worker};
///
/// struct Upper;
///
/// impl Worker for Upper {
///     type Init = ();
///     type Request = String;
///     type Response = String;
///     async fn init(_: ()) -> Result<Self, String> { Ok(Upper) }
///     async fn handle(&mut self, s: String) -> String { s.to_uppercase() }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// use futures::TryStreamExt;
/// let pool = ProcessPool::builder().workers(2).build_stateful::<Upper>(()).await?;
/// let out: Vec<String> = pool.map(["a", "b"].map(String::from)).try_collect().await?;
/// assert_eq!(out, ["A", "B"]);
/// # Ok(())
/// # }
/// ```
pub struct StatefulPool<W: Worker> {
    core: Arc<Core>,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> StatefulPool<W> {
    pub(crate) fn from_core(core: Arc<Core>) -> StatefulPool<W> {
        StatefulPool {
            core,
            _worker: PhantomData,
        }
    }

    /// Where workers may join this pool (see
    /// [`PoolBuilder::listen`](crate::PoolBuilder::listen)); `None` if it does not
    /// listen.
    ///
    /// ```
    /// # use multiprocess::{ProcessPool, Worker};
    /// # struct Echo;
    /// # impl Worker for Echo {
    /// #     type Init = ();
    /// #     type Request = u8;
    /// #     type Response = u8;
    /// #     async fn init(_: ()) -> Result<Self, String> { Ok(Echo) }
    /// #     async fn handle(&mut self, n: u8) -> u8 { n }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::builder().workers(1).build_stateful::<Echo>(()).await?;
    /// assert!(pool.listen_address().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen_address(&self) -> Option<crate::Address> {
        self.core.listen_address()
    }

    /// Sends a request to some worker and waits for its response.
    ///
    /// See [`StatefulPool`] for an example.
    pub async fn apply(&self, request: W::Request) -> Result<W::Response> {
        self.submit(request).await
    }

    /// Queues a request; the returned handle is a future for the response, and dropping
    /// it cancels the request (see [`ProcessPool::submit`](crate::ProcessPool::submit)).
    ///
    /// ```no_run
    /// # async fn demo<W: multiprocess::Worker>(pool: multiprocess::StatefulPool<W>, r: W::Request) -> multiprocess::Result<()> {
    /// let response = pool.submit(r).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit(&self, request: W::Request) -> TaskHandle<W::Response> {
        submit_job(
            &self.core,
            JobKind::Handle,
            &request,
            self.core.default_timeout(),
        )
    }

    /// Sends every request and streams the responses in request order.
    ///
    /// See [`StatefulPool`] for an example.
    pub fn map<I>(&self, requests: I) -> impl Stream<Item = Result<W::Response>> + Send + 'static
    where
        I: IntoIterator<Item = W::Request>,
        I::IntoIter: Send + 'static,
        W::Request: Send,
        W::Response: Send,
    {
        use futures_util::StreamExt;
        let core = self.core.clone();
        let window = core.workers() * (core.window() + 1);
        futures_util::stream::iter(requests)
            .map(move |request| {
                let core = core.clone();
                submit_job::<W::Request, W::Response>(
                    &core,
                    JobKind::Handle,
                    &request,
                    core.default_timeout(),
                )
            })
            .buffered(window)
    }

    /// The pool's counters.
    ///
    /// ```no_run
    /// # fn demo<W: multiprocess::Worker>(pool: multiprocess::StatefulPool<W>) {
    /// println!("{:?}", pool.stats());
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.core.stats()
    }

    /// Finishes what is queued, then lets the workers exit.
    ///
    /// See [`StatefulPool`] for an example.
    pub async fn close(&self) {
        self.core.close().await
    }

    /// Kills the workers now; what is queued or running fails with
    /// [`Error::PoolClosed`](crate::Error::PoolClosed).
    ///
    /// ```no_run
    /// # async fn demo<W: multiprocess::Worker>(pool: multiprocess::StatefulPool<W>) {
    /// pool.terminate().await;
    /// # }
    /// ```
    pub async fn terminate(&self) {
        self.core.terminate().await
    }
}

impl<W: Worker> std::fmt::Debug for StatefulPool<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulPool")
            .field("worker", &std::any::type_name::<W>())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<W: Worker> Drop for StatefulPool<W> {
    fn drop(&mut self) {
        self.core.kill_all();
    }
}
