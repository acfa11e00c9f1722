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
use crate::sync::{Counted, Lock, Notifier};

const CAPACITY: usize = 0;
const ITEMS: usize = 4;
const CLOSED: usize = 8;
const UNFINISHED: usize = 12;
const SPACE_WAITERS: usize = 16;

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
        let state = SharedMemory::named("multiprocess-queue", 32)?;
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
        if self.try_reserve()? {
            return Ok(());
        }
        self.inner.space.arm()?;
        let _waiting = Counted::new(self.word(SPACE_WAITERS));
        loop {
            let seen = self.inner.space.observe();
            if self.try_reserve()? {
                return Ok(());
            }
            self.inner.space.wait(seen, &[]).await?;
        }
    }

    fn reserve_blocking(&self) -> Result<()> {
        if self.try_reserve()? {
            return Ok(());
        }
        let _waiting = Counted::new(self.word(SPACE_WAITERS));
        loop {
            let seen = self.inner.space.observe();
            if self.try_reserve()? {
                return Ok(());
            }
            self.inner.space.wait_blocking(seen, &[], None)?;
        }
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

    fn unreserve(&self) {
        self.word(ITEMS).fetch_sub(1, SeqCst);
        self.inner.space.notify();
    }
}

/// A message with a reserved place, on its way into the stream. If the `put` is
/// cancelled before any byte went out, the place is given back; if it is cancelled part
/// way through the message, the rest is written (blocking: the stream must stay whole
/// for everyone) and the message counts as put.
struct PutInFlight<'a, T> {
    queue: &'a Queue<T>,
    write: WriteHalf,
    total: usize,
    locked: bool,
    settled: bool,
}

impl<'a, T> PutInFlight<'a, T> {
    fn new(queue: &'a Queue<T>, write: WriteHalf) -> Self {
        let total = write.buffered();
        PutInFlight {
            queue,
            write,
            total,
            locked: false,
            settled: false,
        }
    }

    async fn send(mut self) -> Result<()> {
        self.queue.inner.write_lock.acquire(true).await?;
        self.locked = true;
        let flushed = futures::future::poll_fn(|cx| self.write.poll_flush(cx)).await;
        self.queue.inner.write_lock.unlock();
        self.locked = false;
        self.settled = true;
        self.queue.settle_put(flushed)
    }
}

impl<T> Drop for PutInFlight<'_, T> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let started = self.write.buffered() < self.total;
        if self.locked && started {
            let _ = self.write.flush_blocking();
        } else {
            self.queue.settle_put(Err(Error::Closed)).ok();
        }
        if self.locked {
            self.queue.inner.write_lock.unlock();
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
        let write = self.encode(&message)?;
        self.reserve().await?;
        self.counted_put();
        PutInFlight::new(self, write).send().await
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
        let write = self.encode(&message)?;
        match tokio::time::timeout(timeout, self.reserve()).await {
            Ok(reserved) => reserved?,
            Err(_) => return Err(Error::Timeout { after: timeout }),
        }
        self.counted_put();
        PutInFlight::new(self, write).send().await
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

/// One message taken off the shared stream, not yet decoded.
struct RawFrame {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl<T> Queue<T> {
    /// Messages left the shared queue: free their places.
    fn taken(&self, count: usize) {
        self.word(ITEMS).fetch_sub(count as u32, SeqCst);
        if self.word(SPACE_WAITERS).load(SeqCst) > 0 {
            self.inner.space.notify();
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next message, waiting while the queue is empty; [`Error::Closed`] once
    /// it is closed and empty.
    ///
    /// A consumer holds the queue's read lock only while a message is arriving, never
    /// while it waits for one to start, so a consumer killed while it waits costs the
    /// others nothing. Cancelling `get` loses nothing, except in the middle of a large
    /// message: the stream must stay whole for the other consumers, so that message is
    /// read to its end and dropped.
    ///
    /// See [`Queue`] for an example.
    pub async fn get(&self) -> Result<T> {
        loop {
            self.inner.read_lock.acquire(false).await?;
            let _unlock = UnlockOnDrop(&self.inner.read_lock);
            let mut read = FrameRead::new(&self.inner.reader);
            match read.step(crate::sys::Wait::No) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drop(_unlock);
                    self.inner.reader.readable().await?;
                    continue;
                }
                Err(e) => return Err(Error::from_io(e)),
                Ok(None) => return Err(Error::Closed),
                Ok(Some(_)) => {}
            }
            let frame = read.run().await;
            read.done = true;
            return self.finish(frame);
        }
    }

    fn finish(&self, frame: Result<Option<RawFrame>>) -> Result<T> {
        match frame? {
            Some(frame) => {
                self.taken(1);
                wire::decode_payload(&frame.payload, frame.fds)
            }
            None => Err(Error::Closed),
        }
    }

    fn get_now(&self, wait: crate::sys::Wait) -> Result<Option<T>> {
        let mut read = FrameRead::new(&self.inner.reader);
        match read.step(wait) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(Error::from_io(e)),
            Ok(None) => return Err(Error::Closed),
            Ok(Some(_)) => {}
        }
        let frame = read.run_blocking();
        read.done = true;
        self.finish(frame).map(Some)
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
        let _unlock = UnlockOnDrop(&self.inner.read_lock);
        self.get_now(crate::sys::Wait::No)
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(message) = self.try_get()? {
                return Ok(message);
            }
            match tokio::time::timeout_at(deadline, self.inner.reader.readable()).await {
                Err(_) => return Err(Error::Timeout { after: timeout }),
                Ok(ready) => ready?,
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
        loop {
            self.inner.read_lock.acquire_blocking(false, None)?;
            let unlock = UnlockOnDrop(&self.inner.read_lock);
            if let Some(message) = self.get_now(crate::sys::Wait::No)? {
                return Ok(message);
            }
            drop(unlock);
            crate::sys::poll_one(self.inner.reader.fd(), false, -1)?;
        }
    }
}

/// One frame read piece by piece as it arrives. If the read is cancelled part way, the
/// rest of the frame is read (blocking: it is already on its way) and dropped, so that
/// the next consumer starts at a frame boundary.
struct FrameRead<'a> {
    reader: &'a SocketFd,
    header: [u8; HEADER_LEN],
    header_got: usize,
    payload: Vec<u8>,
    payload_got: usize,
    fds: Vec<OwnedFd>,
    control: Vec<u8>,
    done: bool,
}

impl<'a> FrameRead<'a> {
    fn new(reader: &'a SocketFd) -> Self {
        FrameRead {
            reader,
            header: [0; HEADER_LEN],
            header_got: 0,
            payload: Vec::new(),
            payload_got: 0,
            fds: Vec::new(),
            control: crate::sys::control_buffer(),
            done: false,
        }
    }

    /// One receive into whatever part is missing. `Ok(None)`: end of stream.
    fn step(&mut self, wait: crate::sys::Wait) -> std::io::Result<Option<usize>> {
        let target = if self.header_got < HEADER_LEN {
            &mut self.header[self.header_got..]
        } else {
            &mut self.payload[self.payload_got..]
        };
        let n = crate::sys::recv_with_fds(
            self.reader.fd(),
            target,
            &mut self.control,
            &mut self.fds,
            wait,
        )?;
        if n == 0 {
            return Ok(None);
        }
        if self.header_got < HEADER_LEN {
            self.header_got += n;
        } else {
            self.payload_got += n;
        }
        Ok(Some(n))
    }

    fn header_complete(&mut self) -> Result<()> {
        let parsed = wire::read_header(&self.header, wire::DEFAULT_MAX_FRAME_LEN)?;
        self.payload = vec![0u8; parsed.len];
        Ok(())
    }

    fn complete(&self) -> bool {
        self.header_got == HEADER_LEN && self.payload_got == self.payload.len()
    }

    fn take(&mut self) -> RawFrame {
        RawFrame {
            payload: std::mem::take(&mut self.payload),
            fds: std::mem::take(&mut self.fds),
        }
    }

    /// Completes a frame whose first bytes have arrived, blocking the thread.
    fn run_blocking(&mut self) -> Result<Option<RawFrame>> {
        loop {
            if self.header_got == HEADER_LEN && self.payload.is_empty() && self.payload_got == 0 {
                self.header_complete()?;
            }
            if self.complete() {
                return Ok(Some(self.take()));
            }
            match self.step(crate::sys::Wait::Block) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::Protocol(
                        "stream ended in the middle of a frame".into(),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    crate::sys::poll_one(self.reader.fd(), false, -1)?;
                }
                Err(e) => return Err(Error::from_io(e)),
            }
        }
    }

    async fn run(&mut self) -> Result<Option<RawFrame>> {
        loop {
            if self.header_got == HEADER_LEN && self.payload.is_empty() && self.payload_got == 0 {
                self.header_complete()?;
            }
            if self.complete() {
                return Ok(Some(self.take()));
            }
            match self.step(crate::sys::Wait::No) {
                Ok(Some(_)) => {}
                Ok(None) if self.header_got == 0 => return Ok(None),
                Ok(None) => {
                    return Err(Error::Protocol(
                        "stream ended in the middle of a frame".into(),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.reader.readable().await?
                }
                Err(e) => return Err(Error::from_io(e)),
            }
        }
    }
}

impl Drop for FrameRead<'_> {
    fn drop(&mut self) {
        if self.done || (self.header_got == 0 && self.payload_got == 0) {
            return;
        }
        tracing::warn!("queue get cancelled in the middle of a message; the message is dropped");
        while !self.complete() {
            if self.header_got == HEADER_LEN
                && self.payload.is_empty()
                && self.payload_got == 0
                && self.header_complete().is_err()
            {
                return;
            }
            if self.complete() || !matches!(self.step(crate::sys::Wait::Block), Ok(Some(_))) {
                return;
            }
        }
    }
}

/// Releases the read lock even if the read holding it is cancelled.
struct UnlockOnDrop<'a>(&'a Lock);

impl Drop for UnlockOnDrop<'_> {
    fn drop(&mut self) {
        self.0.unlock();
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
