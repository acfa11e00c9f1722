//! [`Queue`] and [`JoinableQueue`]: multi-producer, multi-consumer, across processes.

use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ipc::wire::{self, HEADER_LEN};
use crate::ipc::{PassFd, SocketFd, WriteHalf};
use crate::shm::SharedMemory;
use crate::sync::{Lock, Notifier};

const CAPACITY: usize = 0;
const ITEMS: usize = 4;
const CLOSED: usize = 8;
const UNFINISHED: usize = 12;

/// A bounded queue shared by any number of producer and consumer processes, like
/// Python's `multiprocessing.Queue`, awaitable.
///
/// Messages travel as frames through one stream socket that every handle shares;
/// a write lock keeps each message contiguous and a read lock makes each consumer take
/// whole messages, so messages of any size are never torn or interleaved. `put` waits
/// while `capacity` messages are queued. After [`close`](Queue::close), `put` fails and
/// consumers get [`Error::Closed`] once the queue is empty.
///
/// If a consumer process dies in the middle of reading a message, the stream can no
/// longer be trusted: later `get`s fail with [`Error::OwnerDied`]. A producer that dies
/// mid-message leaves consumers an [`Error::Protocol`].
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

struct Inner {
    state: SharedMemory,
    writer: Arc<SocketFd>,
    reader: Arc<SocketFd>,
    write_lock: Lock,
    read_lock: Lock,
    space: Notifier,
    done: Notifier,
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
        let state = SharedMemory::named("multiprocess-queue", 16)?;
        state
            .atomic::<AtomicU32>(CAPACITY)
            .store(capacity.max(1), SeqCst);
        let (writer, reader) = crate::sys::stream_socketpair()?;
        Ok(Queue {
            inner: Arc::new(Inner {
                state,
                writer: SocketFd::new(writer)?,
                reader: SocketFd::new(reader)?,
                write_lock: Lock::new()?,
                read_lock: Lock::new()?,
                space: Notifier::new()?,
                done: Notifier::new()?,
            }),
            _type: PhantomData,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.inner.state.atomic(offset)
    }

    /// The most messages the queue holds.
    ///
    /// See [`Queue::new`] for an example.
    pub fn capacity(&self) -> u32 {
        self.word(CAPACITY).load(SeqCst)
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
        self.word(ITEMS).load(SeqCst)
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
        self.word(CLOSED).load(SeqCst) != 0
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
        if self.word(CLOSED).swap(1, SeqCst) == 0 {
            // Consumers read end of stream once everything sent before is read.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.inner.writer.fd()),
                nix::sys::socket::Shutdown::Write,
            );
            self.inner.space.notify();
        }
    }

    /// Takes a place for one message, or says why not.
    fn try_reserve(&self) -> Result<bool> {
        let capacity = self.capacity();
        let mut items = self.word(ITEMS).load(SeqCst);
        loop {
            if self.is_closed() {
                return Err(Error::Closed);
            }
            if items >= capacity {
                return Ok(false);
            }
            match self
                .word(ITEMS)
                .compare_exchange(items, items + 1, SeqCst, SeqCst)
            {
                Ok(_) => return Ok(true),
                Err(now) => items = now,
            }
        }
    }

    async fn reserve(&self) -> Result<()> {
        self.inner.space.arm()?;
        loop {
            let seen = self.inner.space.observe();
            if self.try_reserve()? {
                return Ok(());
            }
            self.inner.space.wait(seen, &[]).await?;
        }
    }

    fn reserve_blocking(&self) -> Result<()> {
        loop {
            let seen = self.inner.space.observe();
            if self.try_reserve()? {
                return Ok(());
            }
            self.inner.space.wait_blocking(seen, &[], None)?;
        }
    }

    fn unreserve(&self) {
        self.word(ITEMS).fetch_sub(1, SeqCst);
        self.inner.space.notify();
    }

    fn taken(&self) {
        self.word(ITEMS).fetch_sub(1, SeqCst);
        self.inner.space.notify();
    }
}

/// The frame being read, finished (and dropped) if the `get` that started it is
/// cancelled, so that the next consumer starts at a frame boundary.
struct PartialRead<'a> {
    reader: &'a SocketFd,
    remaining: usize,
}

impl Drop for PartialRead<'_> {
    fn drop(&mut self) {
        if self.remaining > 0 {
            tracing::warn!(
                bytes = self.remaining,
                "queue get cancelled mid-message; message dropped"
            );
            let mut rest = vec![0u8; self.remaining];
            let _ = self.reader.read_exact_blocking(&mut rest, &mut Vec::new());
        }
    }
}

impl<T: Serialize> Queue<T> {
    fn encode(&self, message: &T) -> Result<WriteHalf> {
        let mut write = WriteHalf::new(self.inner.writer.clone());
        write.encode(message)?;
        Ok(write)
    }

    fn counted_put(&self) {
        self.word(UNFINISHED).fetch_add(1, SeqCst);
    }

    /// Puts a message, waiting while the queue is full.
    ///
    /// See [`Queue::close`] for an example.
    pub async fn put(&self, message: T) -> Result<()> {
        let mut write = self.encode(&message)?;
        self.reserve().await?;
        self.counted_put();
        let sent = async {
            self.inner.write_lock.acquire(true).await?;
            let flushed = futures::future::poll_fn(|cx| write.poll_flush(cx)).await;
            self.inner.write_lock.unlock();
            flushed
        }
        .await;
        self.settle_put(sent)
    }

    fn settle_put(&self, sent: Result<()>) -> Result<()> {
        if let Err(err) = sent {
            self.word(UNFINISHED).fetch_sub(1, SeqCst);
            self.unreserve();
            return Err(match err {
                Error::Disconnected => Error::Closed,
                other => other,
            });
        }
        Ok(())
    }

    /// Puts a message if there is room now; `Ok(false)` if the queue is full.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(1)?;
    /// assert!(q.try_put(1u8)?);
    /// assert!(!q.try_put(2u8)?);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn try_put(&self, message: T) -> Result<bool> {
        let mut write = self.encode(&message)?;
        if !self.try_reserve()? {
            return Ok(false);
        }
        self.counted_put();
        let sent = self.write_blocking(&mut write);
        self.settle_put(sent).map(|()| true)
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
        let mut write = self.encode(&message)?;
        match tokio::time::timeout(timeout, self.reserve()).await {
            Ok(reserved) => reserved?,
            Err(_) => return Err(Error::Timeout { after: timeout }),
        }
        self.counted_put();
        let sent = async {
            self.inner.write_lock.acquire(true).await?;
            let flushed = futures::future::poll_fn(|cx| write.poll_flush(cx)).await;
            self.inner.write_lock.unlock();
            flushed
        }
        .await;
        self.settle_put(sent)
    }

    /// Puts a message, blocking the calling thread while the queue is full.
    ///
    /// See [`Queue`] for an example.
    pub fn put_blocking(&self, message: T) -> Result<()> {
        let mut write = self.encode(&message)?;
        self.reserve_blocking()?;
        self.counted_put();
        let sent = self.write_blocking(&mut write);
        self.settle_put(sent)
    }

    fn write_blocking(&self, write: &mut WriteHalf) -> Result<()> {
        self.inner.write_lock.acquire_blocking(true, None)?;
        let flushed = write.flush_blocking();
        self.inner.write_lock.unlock();
        flushed
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next message, waiting while the queue is empty; [`Error::Closed`] once
    /// it is closed and empty. Cancelling a `get` in the middle of a large message
    /// drops that message (the stream must stay whole for the other consumers).
    ///
    /// See [`Queue`] for an example.
    pub async fn get(&self) -> Result<T> {
        loop {
            if let Some(result) = self.get_if_readable().await? {
                return result;
            }
        }
    }

    /// Waits for data (or the end), then reads one frame holding the read lock. The
    /// lock is held only while a frame is being read, so a consumer killed while it
    /// waits does not poison the queue; one killed mid-frame does. `None`: another
    /// consumer took the data first.
    async fn get_if_readable(&self) -> Result<Option<Result<T>>> {
        self.inner.reader.readable().await?;
        self.inner.read_lock.acquire(false).await?;
        if !crate::sys::poll_one(self.inner.reader.fd(), false, 0)? {
            self.inner.read_lock.unlock();
            return Ok(None);
        }
        let result = self.read_frame_async().await;
        self.inner.read_lock.unlock();
        Ok(Some(self.settle_get(result)))
    }

    async fn read_frame_async(&self) -> Result<Option<T>> {
        let reader = &*self.inner.reader;
        let mut header = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        let mut partial = PartialRead {
            reader,
            remaining: 0,
        };
        if !reader.read_exact(&mut header, &mut fds).await? {
            return Ok(None);
        }
        let parsed = wire::read_header(&header, wire::DEFAULT_MAX_FRAME_LEN)?;
        partial.remaining = parsed.len;
        let mut payload = vec![0u8; parsed.len];
        let complete = reader.read_exact(&mut payload, &mut fds).await;
        partial.remaining = 0;
        complete?;
        Ok(Some(wire::decode_payload(&payload, fds)?))
    }

    fn read_frame_blocking(&self) -> Result<Option<T>> {
        let reader = &*self.inner.reader;
        let mut header = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        if !reader.read_exact_blocking(&mut header, &mut fds)? {
            return Ok(None);
        }
        let parsed = wire::read_header(&header, wire::DEFAULT_MAX_FRAME_LEN)?;
        let mut payload = vec![0u8; parsed.len];
        reader.read_exact_blocking(&mut payload, &mut fds)?;
        Ok(Some(wire::decode_payload(&payload, fds)?))
    }

    fn settle_get(&self, result: Result<Option<T>>) -> Result<T> {
        match result {
            Ok(Some(message)) => {
                self.taken();
                Ok(message)
            }
            Ok(None) => Err(Error::Closed),
            // A message that does not decode was still taken off the queue.
            Err(Error::Decode(msg)) => {
                self.taken();
                Err(Error::Decode(msg))
            }
            Err(err) => Err(err),
        }
    }

    /// Takes a message if one is already queued; `Ok(None)` if none is.
    ///
    /// ```
    /// let q = multiprocess::Queue::new(2)?;
    /// assert_eq!(q.try_get()?, None::<u8>);
    /// q.put_blocking(5u8)?;
    /// assert_eq!(q.try_get()?, Some(5));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<Option<T>> {
        if !self
            .inner
            .read_lock
            .acquire_blocking(false, Some(std::time::Instant::now()))?
        {
            return Ok(None);
        }
        let ready = crate::sys::poll_one(self.inner.reader.fd(), false, 0);
        let result = match ready {
            Ok(true) => self.read_frame_blocking(),
            Ok(false) => {
                self.inner.read_lock.unlock();
                return if self.is_closed() && self.is_empty() {
                    Err(Error::Closed)
                } else {
                    Ok(None)
                };
            }
            Err(e) => Err(Error::Io(e)),
        };
        self.inner.read_lock.unlock();
        self.settle_get(result).map(Some)
    }

    /// [`get`](Self::get) with a time limit on waiting for a message to start
    /// arriving (a message that has started is always read whole).
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.reader.readable()).await {
                Err(_) => return Err(Error::Timeout { after: timeout }),
                Ok(ready) => ready?,
            }
            if let Some(result) = self.get_if_readable().await? {
                return result;
            }
        }
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
        let reader = self.inner.reader.fd();
        loop {
            crate::sys::poll_one(reader, false, -1)?;
            self.inner.read_lock.acquire_blocking(false, None)?;
            if !crate::sys::poll_one(reader, false, 0)? {
                self.inner.read_lock.unlock();
                continue;
            }
            let result = self.read_frame_blocking();
            self.inner.read_lock.unlock();
            return self.settle_get(result);
        }
    }
}

impl Serialize for Inner {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let dup = |fd: &Arc<SocketFd>| {
            fd.fd()
                .try_clone_to_owned()
                .map(PassFd)
                .map_err(serde::ser::Error::custom)
        };
        (
            &self.state,
            dup(&self.writer)?,
            dup(&self.reader)?,
            &self.write_lock,
            &self.read_lock,
            &self.space,
            &self.done,
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        type Parts = (SharedMemory, PassFd, PassFd, Lock, Lock, Notifier, Notifier);
        let (state, PassFd(writer), PassFd(reader), write_lock, read_lock, space, done) =
            Parts::deserialize(deserializer)?;
        let socket = |fd: OwnedFd| SocketFd::new(fd).map_err(serde::de::Error::custom);
        Ok(Inner {
            state,
            writer: socket(writer)?,
            reader: socket(reader)?,
            write_lock,
            read_lock,
            space,
            done,
        })
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

/// A [`Queue`] that also counts unfinished messages, like Python's `JoinableQueue`:
/// every `put` adds one, [`task_done`](JoinableQueue::task_done) takes one away, and
/// [`join`](JoinableQueue::join) waits until none is left. Dereferences to [`Queue`].
///
/// ```
/// use multiprocess::{JoinableQueue, spawn_process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     while let Ok(_job) = q.get_blocking() {
///         q.task_done().unwrap();
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let q = JoinableQueue::new(8)?;
/// let child = spawn_process(worker, q.clone())?;
/// for job in 0..20 {
///     q.put(job).await?;
/// }
/// q.join().await?;
/// q.close();
/// child.await?;
/// # Ok(())
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished", &self.unfinished())
            .finish()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> JoinableQueue<T> {
    /// A joinable queue holding at most `capacity` messages.
    ///
    /// See [`JoinableQueue`] for an example.
    pub fn new(capacity: u32) -> Result<JoinableQueue<T>> {
        Ok(JoinableQueue {
            queue: Queue::new(capacity)?,
        })
    }

    /// Messages put but not yet marked done.
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(2)?;
    /// q.put_blocking(1u8)?;
    /// assert_eq!(q.unfinished(), 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn unfinished(&self) -> u32 {
        self.queue.word(UNFINISHED).load(SeqCst)
    }

    /// Marks one message as processed. More calls than messages put is
    /// [`Error::BoundExceeded`].
    ///
    /// See [`JoinableQueue`] for an example.
    pub fn task_done(&self) -> Result<()> {
        let unfinished = self.queue.word(UNFINISHED);
        let mut now = unfinished.load(SeqCst);
        loop {
            if now == 0 {
                return Err(Error::BoundExceeded(
                    "task_done called more times than put".into(),
                ));
            }
            match unfinished.compare_exchange(now, now - 1, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        if now == 1 {
            self.queue.inner.done.notify();
        }
        Ok(())
    }

    /// Waits until every message put has been marked done.
    ///
    /// See [`JoinableQueue`] for an example.
    pub async fn join(&self) -> Result<()> {
        self.queue.inner.done.arm()?;
        loop {
            let seen = self.queue.inner.done.observe();
            if self.unfinished() == 0 {
                return Ok(());
            }
            self.queue.inner.done.wait(seen, &[]).await?;
        }
    }

    /// Waits until every message put has been marked done, blocking the calling thread.
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(2)?;
    /// q.join_blocking()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn join_blocking(&self) -> Result<()> {
        loop {
            let seen = self.queue.inner.done.observe();
            if self.unfinished() == 0 {
                return Ok(());
            }
            self.queue.inner.done.wait_blocking(seen, &[], None)?;
        }
    }
}
