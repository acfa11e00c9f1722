//! [`Queue`] and [`JoinableQueue`]: multi-producer, multi-consumer, across processes.

mod frame;
mod joinable;
mod layout;
mod ops;
mod ring;

pub use joinable::JoinableQueue;

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ipc::wire;
use crate::sync::{Patience, deadline_after, drive, drive_blocking, waited_forever, within};
use frame::RawFrame;
use layout::Shared;
use ops::{Get, Put};
use ring::Inner;

/// A bounded queue shared by any number of producer and consumer processes, like
/// Python's `multiprocessing.Queue`, awaitable.
///
/// Messages go into a ring in shared memory, in the order they are put: a `put` is a
/// copy into the ring and a `get` a copy out, with no system call unless the other side
/// sleeps. A message too large for the ring, or one that carries descriptors, has its
/// place in the ring marked and travels as a frame through a stream socket every
/// handle shares, so messages of any size keep their order and are never torn. `put`
/// waits while `capacity` messages are queued. After [`close`](Queue::close), `put`
/// fails and consumers get [`Error::Closed`] once the queue is empty.
///
/// If a consumer process dies while it holds the queue's read lock, or a producer dies
/// in the middle of writing a large message to the socket, the queue can no longer be
/// trusted: later calls fail with [`Error::OwnerDied`] (a consumer reading that message
/// finds out as soon as its writer is gone).
///
/// ```
/// use multiprocess::{Queue, spawn_process};
///
/// fn produce(q: Queue<String>) {
///     for i in 0..3 {
///         q.put_blocking(format!("item {i}")).unwrap();
///     }
///     q.close();
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let q = Queue::new(16)?;
/// let producer = spawn_process(produce, q.clone())?;
/// let mut got = Vec::new();
/// while let Ok(item) = q.get().await {
///     got.push(item);
/// }
/// producer.await?;
/// assert_eq!(got, ["item 0", "item 1", "item 2"]);
/// # Ok(())
/// # }
/// ```
pub struct Queue<T> {
    inner: Arc<Inner>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Queue<T> {
    /// A queue holding at most `capacity` messages (at least 1).
    ///
    /// ```
    /// let q = multiprocess::Queue::<u32>::new(8)?;
    /// assert_eq!(q.capacity(), 8);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(capacity: u32) -> Result<Queue<T>> {
        Self::with_join(capacity, false)
    }

    /// A queue; with `join`, one whose `unfinished` count can be waited for.
    fn with_join(capacity: u32, join: bool) -> Result<Queue<T>> {
        Ok(Queue {
            inner: Arc::new(Inner::new(capacity, join)?),
            _type: PhantomData,
        })
    }

    fn shared(&self) -> &Shared {
        self.inner.shared()
    }

    /// The most messages the queue holds.
    ///
    /// See [`Queue::new`] for an example.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity()
    }

    /// Messages queued (or being put) right now.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(4)?;
    /// q.put_blocking(1u8)?;
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn len(&self) -> u32 {
        match self.inner.is_shut_down_now() {
            true => 0,
            false => self
                .shared()
                .items
                .0
                .load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Whether `capacity` messages are queued, so that `put` would wait, like Python's
    /// `full()`. Other processes may change that at any moment.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(1)?;
    /// assert!(!q.is_full());
    /// q.put_blocking(1u8)?;
    /// assert!(q.is_full());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity()
    }

    /// Whether no message is queued.
    ///
    /// ```
    /// assert!(multiprocess::Queue::<u8>::new(1)?.is_empty());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`close`](Queue::close) was called (by any process).
    ///
    /// See [`Queue::close`] for an example.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Closes the queue for every handle in every process: `put` fails with
    /// [`Error::Closed`]; consumers take what is queued, then get `Error::Closed`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::Queue::new(4)?;
    /// q.put(1u8).await?;
    /// q.close();
    /// assert!(q.is_closed());
    /// assert!(matches!(q.put(2).await, Err(multiprocess::Error::Closed)));
    /// assert_eq!(q.get().await?, 1);
    /// assert!(matches!(q.get().await, Err(multiprocess::Error::Closed)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(&self) {
        self.inner.close();
    }

    /// Python 3.13's `shutdown()`, which is [`close`](Queue::close): `put` fails with
    /// [`Error::Closed`], and consumers take what is queued, then get `Error::Closed`.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(2)?;
    /// q.put_blocking(1u8)?;
    /// q.shutdown();
    /// assert!(matches!(q.put_blocking(2), Err(multiprocess::Error::Closed)));
    /// assert_eq!(q.get_blocking()?, 1);
    /// assert!(matches!(q.get_blocking(), Err(multiprocess::Error::Closed)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.close();
    }

    /// Python 3.13's `shutdown(immediate=True)`, for every handle in every process:
    /// queued messages are dropped, a [`JoinableQueue`]'s unfinished count goes to
    /// zero, and every `put` and `get`, waiting or later, fails with [`Error::Closed`];
    /// waiting `join`s return. A consumer already reading a message finishes it.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(2)?;
    /// q.put_blocking(1u8)?;
    /// q.shutdown_immediate();
    /// assert_eq!(q.len(), 0);
    /// assert!(matches!(q.get_blocking(), Err(multiprocess::Error::Closed)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn shutdown_immediate(&self) {
        if self.inner.shut_down_now() {
            ops::drop_queued(&self.inner);
        }
    }

    /// Wakes `join`s.
    fn notify_done(&self) {
        self.inner.notify_done();
    }

    /// Whether [`shutdown_immediate`](Queue::shutdown_immediate) was called.
    fn is_shut_down_now(&self) -> bool {
        self.inner.is_shut_down_now()
    }

    /// Runs a `put` on the async driver; `Ok(None)` if `patience` ran out first.
    async fn put_encoded(
        &self,
        encoded: (Vec<u8>, Vec<OwnedFd>),
        patience: Patience,
    ) -> Result<Option<()>> {
        let mut put = Put::new(&self.inner, encoded, false)?;
        drive(patience, || put.attempt()).await
    }

    /// Runs a `put` on the blocking driver; `Ok(None)` if `patience` ran out first.
    fn put_encoded_blocking(
        &self,
        encoded: (Vec<u8>, Vec<OwnedFd>),
        patience: Patience,
    ) -> Result<Option<()>> {
        let nowait = matches!(patience, Patience::Never);
        let mut put = Put::new(&self.inner, encoded, nowait)?;
        drive_blocking(patience, || put.attempt())
    }

    /// Runs a `get` on the async driver; `Ok(None)` if `patience` ran out first.
    async fn get_raw(&self, patience: Patience) -> Result<Option<RawFrame>> {
        let mut get = Get::new(&self.inner, false);
        drive(patience, || get.attempt()).await
    }

    /// Runs a `get` on the blocking driver; `Ok(None)` if `patience` ran out first.
    fn get_raw_blocking(&self, patience: Patience) -> Result<Option<RawFrame>> {
        let nowait = matches!(patience, Patience::Never);
        let mut get = Get::new(&self.inner, nowait);
        drive_blocking(patience, || get.attempt())
    }
}

impl<T: Serialize> Queue<T> {
    fn encode(&self, message: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        wire::encode_value(message)
    }

    /// Puts a message, waiting while the queue is full.
    ///
    /// See [`Queue::close`] for an example.
    pub async fn put(&self, message: T) -> Result<()> {
        let encoded = self.encode(&message)?;
        self.put_encoded(encoded, Patience::FOREVER)
            .await
            .and_then(waited_forever)
    }

    /// Puts a message if that takes no waiting at all, like Python's `put_nowait`:
    /// [`Error::Full`] if the queue is full, or if putting it now would mean waiting
    /// for another producer that is putting a message, for room in the ring, or for
    /// room in the socket (a large message or one carrying descriptors travels through
    /// the socket, and is only taken while the socket has room for all of it). The
    /// message is dropped on `Full`.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(1)?;
    /// q.try_put(1u8)?;
    /// assert!(matches!(q.try_put(2u8), Err(multiprocess::Error::Full)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn try_put(&self, message: T) -> Result<()> {
        let encoded = self.encode(&message)?;
        self.put_encoded_blocking(encoded, Patience::Never)?
            .ok_or(Error::Full)
    }

    /// [`put`](Self::put) with a time limit on waiting for room.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::Queue::new(1)?;
    /// q.put(1u8).await?;
    /// let full = q.put_timeout(2, Duration::from_millis(10)).await;
    /// assert!(matches!(full, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_timeout(&self, message: T, timeout: Duration) -> Result<()> {
        let encoded = self.encode(&message)?;
        let put = self.put_encoded(encoded, Patience::Until(deadline_after(timeout)));
        within(put.await?, timeout)
    }

    /// Puts a message, blocking the calling thread while the queue is full.
    ///
    /// See [`Queue`] for an example.
    pub fn put_blocking(&self, message: T) -> Result<()> {
        let encoded = self.encode(&message)?;
        self.put_encoded_blocking(encoded, Patience::FOREVER)
            .and_then(waited_forever)
    }

    /// [`put_blocking`](Self::put_blocking) with a time limit on waiting:
    /// [`Error::Timeout`] if the message could not be put within `timeout`, and then it
    /// was not put.
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::Queue::new(1)?;
    /// q.put_blocking_timeout(1u8, Duration::from_secs(1))?;
    /// let full = q.put_blocking_timeout(2, Duration::from_millis(10));
    /// assert!(matches!(full, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn put_blocking_timeout(&self, message: T, timeout: Duration) -> Result<()> {
        let encoded = self.encode(&message)?;
        let put = self.put_encoded_blocking(encoded, Patience::Until(deadline_after(timeout)));
        within(put?, timeout)
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next message, waiting while the queue is empty; [`Error::Closed`] once
    /// it is closed and empty.
    ///
    /// A consumer holds the queue's read lock only while it takes a message, never while
    /// it waits for one, so a consumer killed while it waits costs the others nothing.
    /// Cancelling `get` loses nothing. A large message whose reading from the socket
    /// had begun is read to its end (the stream must stay whole for the other
    /// consumers) by a task of the runtime, never blocking the caller's thread, and
    /// kept for the next `get` in this process.
    ///
    /// See [`Queue`] for an example.
    pub async fn get(&self) -> Result<T> {
        let frame = self
            .get_raw(Patience::FOREVER)
            .await
            .and_then(waited_forever)?;
        self.finish(frame)
    }

    fn finish(&self, frame: RawFrame) -> Result<T> {
        wire::decode_payload(&frame.payload, frame.fds)
    }

    /// Takes a message if that takes no waiting at all, like Python's `get_nowait`:
    /// [`Error::Empty`] if no message is queued, or if taking it now would mean waiting
    /// for another consumer, for a producer still placing one, or for the bytes of a
    /// message that travels through the socket (one is taken only once all of it has
    /// arrived, so one larger than the socket holds is only ever taken by a waiting
    /// call). [`Error::Closed`] once the queue is closed and empty.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(2)?;
    /// assert!(matches!(q.try_get(), Err(multiprocess::Error::Empty)));
    /// q.put_blocking(5u8)?;
    /// assert_eq!(q.try_get()?, 5);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<T> {
        let frame = self
            .get_raw_blocking(Patience::Never)?
            .ok_or(Error::Empty)?;
        self.finish(frame)
    }

    /// [`get`](Self::get) with a time limit on waiting for a message.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::Queue::<u8>::new(1)?;
    /// let empty = q.get_timeout(Duration::from_millis(10)).await;
    /// assert!(matches!(empty, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let got = self.get_raw(Patience::Until(deadline_after(timeout))).await;
        let frame = within(got?, timeout)?;
        self.finish(frame)
    }

    /// Takes the next message, blocking the calling thread while the queue is empty.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(2)?;
    /// q.put_blocking("x".to_string())?;
    /// assert_eq!(q.get_blocking()?, "x");
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn get_blocking(&self) -> Result<T> {
        let frame = self
            .get_raw_blocking(Patience::FOREVER)
            .and_then(waited_forever)?;
        self.finish(frame)
    }

    /// [`get_blocking`](Self::get_blocking) with a time limit on waiting:
    /// [`Error::Timeout`] if no message came within `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::Queue::<u8>::new(1)?;
    /// let empty = q.get_blocking_timeout(Duration::from_millis(10));
    /// assert!(matches!(empty, Err(multiprocess::Error::Timeout { .. })));
    /// q.put_blocking(4)?;
    /// assert_eq!(q.get_blocking_timeout(Duration::from_secs(1))?, 4);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn get_blocking_timeout(&self, timeout: Duration) -> Result<T> {
        let got = self.get_raw_blocking(Patience::Until(deadline_after(timeout)));
        let frame = within(got?, timeout)?;
        self.finish(frame)
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inner::deserialize(deserializer).map(|inner| Queue {
            inner: Arc::new(inner),
            _type: PhantomData,
        })
    }
}
