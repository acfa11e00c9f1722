//! [`Queue`] and [`JoinableQueue`]: multi-producer, multi-consumer, across processes.

mod frame;
mod joinable;
mod layout;

pub use joinable::JoinableQueue;

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::ipc::wire;
use crate::ipc::{PassFd, SocketFd, WriteHalf};
use crate::shm::SharedMemory;
use crate::sync::{Counted, Lock, Notifier, token};
use frame::{DELIVERED, FrameRead, Pending, RawFrame, WITHDRAWN};
use layout::{OPEN, RING, SHUT, SHUT_NOW, Shared};

/// A ring entry: the payload's length, then where the payload is.
const ENTRY_LEN: usize = 8;
const INLINE: u32 = 0;
const ON_SOCKET: u32 = 1;

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

struct Inner {
    /// [`Shared`], then the ring.
    state: SharedMemory,
    writer: Arc<SocketFd>,
    reader: Arc<SocketFd>,
    write_lock: Lock,
    read_lock: Lock,
    space: Notifier,
    data: Notifier,
    /// Wakes `join` (a `JoinableQueue`'s only: a plain queue spares its descriptors).
    done: Option<Notifier>,
    /// This process's messages whose `get` was cancelled mid-frame.
    pending: Pending,
}

impl Inner {
    fn shared(&self) -> &Shared {
        let words = self.state.ptr_at(0, RING).cast::<Shared>();
        // SAFETY: the mapping is page-aligned and holds at least `RING` bytes (checked
        // by `ptr_at`), it lives as long as `self.state`, and `Shared` is atomics only:
        // any bytes (zeroes at first) are valid, and other processes change them only
        // through atomic operations.
        unsafe { &*words }
    }
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

/// What a producer holding the write lock did with its message.
enum Placed {
    InRing,
    /// Its place is marked; the frame must now be written to the socket, whole.
    OnSocket,
    /// The ring has no room for the entry yet.
    NoRoom,
}

/// The two things a side may sleep for.
#[derive(Clone, Copy)]
enum Bell {
    /// Room for a message (producers).
    Space,
    /// A message, or the end (consumers).
    Data,
}

/// What a consumer holding the read lock found at the head of the ring.
enum Taken {
    Inline(Vec<u8>),
    OnSocket,
    Empty,
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
        let capacity = capacity.max(1);
        // Room for small messages of every place, within sane bounds.
        let ring_len = (capacity as usize).saturating_mul(64).clamp(4096, 1 << 20);
        let state = SharedMemory::named("multiprocess-queue", RING + ring_len)?;
        let (writer, reader) = crate::sys::stream_socketpair()?;
        let queue = Queue {
            inner: Arc::new(Inner {
                state,
                writer: SocketFd::new(writer)?,
                reader: SocketFd::new(reader)?,
                write_lock: Lock::new()?,
                read_lock: Lock::new()?,
                space: Notifier::new()?,
                data: Notifier::new()?,
                done: join.then(Notifier::new).transpose()?,
                pending: Pending::default(),
            }),
            _type: PhantomData,
        };
        let settings = &queue.shared().settings.0;
        settings.capacity.store(capacity, SeqCst);
        settings.ring_len.store(ring_len as u32, SeqCst);
        Ok(queue)
    }

    fn shared(&self) -> &Shared {
        self.inner.shared()
    }

    /// The most messages the queue holds.
    ///
    /// See [`Queue::new`] for an example.
    pub fn capacity(&self) -> u32 {
        self.shared().settings.0.capacity.load(SeqCst)
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
        match self.is_shut_down_now() {
            true => 0,
            false => self.shared().items.0.load(SeqCst),
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
        self.shared().settings.0.closed.load(SeqCst) != 0
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
        if self.shared().settings.0.closed
            .compare_exchange(OPEN, SHUT, SeqCst, SeqCst)
            .is_ok()
        {
            self.inner.data.notify();
            self.inner.space.notify();
        }
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
        if self.shared().settings.0.closed.swap(SHUT_NOW, SeqCst) == SHUT_NOW {
            return;
        }
        self.shared().unfinished.0.store(0, SeqCst);
        self.inner.data.notify();
        self.inner.space.notify();
        self.notify_done();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.drop_queued();
    }

    /// Wakes `join`s.
    fn notify_done(&self) {
        if let Some(done) = &self.inner.done {
            done.notify();
        }
    }

    /// Whether [`shutdown_immediate`](Queue::shutdown_immediate) was called.
    fn is_shut_down_now(&self) -> bool {
        self.shared().settings.0.closed.load(SeqCst) == SHUT_NOW
    }

    /// `Err(Closed)` once the queue was shut down immediately: nothing more is taken.
    fn check_shut_down_now(&self) -> Result<()> {
        match self.is_shut_down_now() {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    /// Drops what is queued, as far as that takes no waiting, so that descriptors
    /// travelling in messages are closed now rather than with the queue's last handle.
    fn drop_queued(&self) {
        match self
            .inner
            .read_lock
            .acquire_blocking(true, Some(Instant::now()))
        {
            Ok(true) => {}
            _ => return,
        }
        let _unlock = UnlockOnDrop(&self.inner.read_lock);
        loop {
            match self.head_kind() {
                Some(INLINE) => drop(self.take()),
                Some(_) if matches!(self.frame_arrived(), Ok(true)) => {
                    self.take();
                    if self.frame_read().run_blocking().is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// `Err(OwnerDied)` once a producer died in the middle of a socket frame.
    fn check_broken(&self) -> Result<()> {
        match self.shared().settings.0.broken.load(SeqCst) {
            0 => Ok(()),
            pid => Err(Error::OwnerDied { pid }),
        }
    }

    fn break_stream(&self, pid: u32) -> Error {
        tracing::warn!(
            pid,
            "queue producer died mid-message; the queue is unusable"
        );
        let _ = self.shared().settings.0.broken
            .compare_exchange(0, pid.max(1), SeqCst, SeqCst);
        self.inner.data.notify();
        self.inner.space.notify();
        Error::OwnerDied { pid }
    }

    /// Called with the write lock just taken: a writer still recorded died before it
    /// finished its frame (a live one clears itself before unlocking).
    fn check_writer(&self) -> Result<()> {
        self.check_broken()?;
        match self.shared().tail.0.writer.load(SeqCst) {
            0 => Ok(()),
            dead => Err(self.break_stream((dead >> 32) as u32)),
        }
    }

    // ---- the ring ----

    fn ring_len(&self) -> u64 {
        u64::from(self.shared().settings.0.ring_len.load(SeqCst))
    }

    fn ring_write(&self, pos: u64, data: &[u8]) {
        let len = self.ring_len();
        let at = (pos % len) as usize;
        let first = data.len().min(len as usize - at);
        self.inner.state.write(RING + at, &data[..first]);
        self.inner.state.write(RING, &data[first..]);
    }

    fn ring_read(&self, pos: u64, buf: &mut [u8]) {
        let len = self.ring_len();
        let at = (pos % len) as usize;
        let first = buf.len().min(len as usize - at);
        self.inner.state.read(RING + at, &mut buf[..first]);
        self.inner.state.read(RING, &mut buf[first..]);
    }

    /// The largest payload that goes into the ring itself.
    fn inline_limit(&self) -> usize {
        self.ring_len() as usize / 4
    }

    fn ring_is_empty(&self) -> bool {
        self.shared().head.0.load(SeqCst) == self.shared().tail.0.tail.load(SeqCst)
    }

    /// Puts a message at the tail. The caller holds the write lock.
    fn place(&self, payload: &[u8], inline: bool) -> Result<Placed> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let tail = self.shared().tail.0.tail.load(SeqCst);
        let free = self.ring_len() - (tail - self.shared().head.0.load(SeqCst));
        let (kind, stored) = if inline {
            (INLINE, payload)
        } else {
            (ON_SOCKET, &[][..])
        };
        if free < (ENTRY_LEN + stored.len()) as u64 {
            return Ok(Placed::NoRoom);
        }
        if kind == ON_SOCKET {
            // Recorded before the mark is visible: a consumer that finds the mark can
            // always tell who owes it the frame.
            self.shared().tail.0.writer.store(token(), SeqCst);
        }
        let mut entry = [0u8; ENTRY_LEN];
        entry[..4].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        entry[4..].copy_from_slice(&kind.to_le_bytes());
        self.ring_write(tail, &entry);
        self.ring_write(tail + ENTRY_LEN as u64, stored);
        self.shared().tail.0.tail
            .store(tail + (ENTRY_LEN + stored.len()) as u64, SeqCst);
        ring_bell(&self.shared().data.0, &self.inner.data);
        Ok(match kind {
            INLINE => Placed::InRing,
            _ => Placed::OnSocket,
        })
    }

    /// Takes the entry at the head. The caller holds the read lock.
    fn take(&self) -> Taken {
        let head = self.shared().head.0.load(SeqCst);
        if head == self.shared().tail.0.tail.load(SeqCst) {
            return Taken::Empty;
        }
        let mut entry = [0u8; ENTRY_LEN];
        self.ring_read(head, &mut entry);
        let len = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let kind = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let mut payload = vec![0u8; len];
        self.ring_read(head + ENTRY_LEN as u64, &mut payload);
        self.shared().head.0
            .store(head + (ENTRY_LEN + len) as u64, SeqCst);
        // Gone from the queue now, even if a cancelled read later drops it.
        self.taken();
        match kind {
            INLINE => Taken::Inline(payload),
            _ => Taken::OnSocket,
        }
    }

    /// The kind of the entry at the head, without taking it. The caller holds the
    /// read lock.
    fn head_kind(&self) -> Option<u32> {
        let head = self.shared().head.0.load(SeqCst);
        if head == self.shared().tail.0.tail.load(SeqCst) {
            return None;
        }
        let mut entry = [0u8; ENTRY_LEN];
        self.ring_read(head, &mut entry);
        Some(u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]))
    }

    /// Starts reading the frame of the socket entry just taken; the caller holds the
    /// read lock.
    fn frame_read(&self) -> FrameRead<'_> {
        FrameRead::new(
            &self.inner.reader,
            &self.shared().tail.0.writer,
            &self.inner.pending,
        )
    }

    /// Whether the whole frame of the socket entry at the head has arrived.
    fn frame_arrived(&self) -> Result<bool> {
        frame::arrived(&self.inner.reader, &self.shared().tail.0.writer)
    }

    /// A message of this process whose `get` was cancelled mid-frame: it comes first.
    fn take_pending(&self) -> Option<RawFrame> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    // ---- places ----

    /// Takes a place for one message, or says why not.
    fn try_reserve(&self) -> Result<bool> {
        let capacity = self.capacity();
        let mut items = self.shared().items.0.load(SeqCst);
        loop {
            self.check_broken()?;
            if self.is_closed() {
                return Err(Error::Closed);
            }
            if items >= capacity {
                return Ok(false);
            }
            match self.shared().items.0
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
        self.wait_until(Bell::Space, || self.try_reserve()).await
    }

    /// Takes a place, blocking; `Ok(false)` at the deadline.
    fn reserve_blocking(&self, deadline: Option<Instant>) -> Result<bool> {
        if self.try_reserve()? {
            return Ok(true);
        }
        self.wait_until_blocking(Bell::Space, deadline, || self.try_reserve())
    }

    /// Waits, with the write lock released, until consumers have made room in the ring.
    async fn ring_room(&self, need: usize) -> Result<()> {
        self.wait_until(Bell::Space, || Ok(self.ring_has_room(need)))
            .await
    }

    fn ring_room_blocking(&self, need: usize, deadline: Option<Instant>) -> Result<bool> {
        self.wait_until_blocking(Bell::Space, deadline, || Ok(self.ring_has_room(need)))
    }

    fn bell(&self, bell: Bell) -> (&Notifier, &AtomicU32, &AtomicU32) {
        match bell {
            Bell::Space => (
                &self.inner.space,
                &self.shared().space.0.waiters,
                &self.shared().space.0.rung,
            ),
            Bell::Data => (
                &self.inner.data,
                &self.shared().data.0.waiters,
                &self.shared().data.0.rung,
            ),
        }
    }

    /// Sleeps on `bell` until `ready` holds. The sleeper is counted, and clears the
    /// bell's `rung` flag before each look, so the other side rings again.
    async fn wait_until(&self, bell: Bell, ready: impl Fn() -> Result<bool>) -> Result<()> {
        let (notifier, waiters, rung) = self.bell(bell);
        notifier.arm()?;
        let _waiting = Counted::new(waiters);
        loop {
            rung.store(0, SeqCst);
            let seen = notifier.observe();
            if ready()? {
                return Ok(());
            }
            notifier.wait(seen, &[]).await?;
        }
    }

    /// [`wait_until`](Self::wait_until), blocking; `false` at the deadline.
    fn wait_until_blocking(
        &self,
        bell: Bell,
        deadline: Option<Instant>,
        ready: impl Fn() -> Result<bool>,
    ) -> Result<bool> {
        let (notifier, waiters, rung) = self.bell(bell);
        let _waiting = Counted::new(waiters);
        loop {
            rung.store(0, SeqCst);
            let seen = notifier.observe();
            if ready()? {
                return Ok(true);
            }
            if !notifier.wait_blocking(seen, &[], deadline)? {
                return Ok(false);
            }
        }
    }

    fn ring_has_room(&self, need: usize) -> bool {
        // Read without the locks, so the two positions may be from different moments:
        // head first keeps the tail from looking behind it, and a tail that ran more
        // than a ring ahead meanwhile reads as full. Either way a stale answer only
        // costs a look: consumption after this read rings the bell the caller waits on,
        // and a put re-checks under the write lock.
        let head = self.shared().head.0.load(SeqCst);
        let used = self.shared().tail.0.tail.load(SeqCst).saturating_sub(head);
        self.is_closed()
            || self.check_broken().is_err()
            || self.ring_len().saturating_sub(used) >= need as u64
    }

    /// A put cancelled after its frame had begun: the frame goes out marked withdrawn
    /// and keeps its place until a consumer skips it, but it is no task to wait for.
    fn withdrawn(&self) {
        let before = self.shared().unfinished.0
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        if before == Ok(1) {
            self.notify_done();
        }
    }

    /// A failed put gives its place back.
    fn unput(&self) {
        // Saturating: `shutdown_immediate` may have zeroed the count meanwhile.
        let _ = self.shared().unfinished.0
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        self.shared().items.0.fetch_sub(1, SeqCst);
        self.inner.space.notify();
    }

    /// A message left the queue: free its place.
    fn taken(&self) {
        self.shared().items.0.fetch_sub(1, SeqCst);
        ring_bell(&self.shared().space.0, &self.inner.space);
    }

    /// Whether an empty, closed queue is final: no producer is between its check of
    /// `closed` and its entry (producers place entries under the write lock).
    async fn drained(&self) -> Result<bool> {
        if !self.is_closed() {
            return Ok(false);
        }
        self.inner.write_lock.acquire(true).await?;
        self.inner.write_lock.unlock();
        Ok(self.ring_is_empty())
    }

    /// [`drained`](Self::drained), blocking; `None` at the deadline.
    fn drained_blocking(&self, deadline: Option<Instant>) -> Result<Option<bool>> {
        if !self.is_closed() {
            return Ok(Some(false));
        }
        if !self.inner.write_lock.acquire_blocking(true, deadline)? {
            return Ok(None);
        }
        self.inner.write_lock.unlock();
        Ok(Some(self.ring_is_empty()))
    }

    /// Whether a consumer has something to do: a message, or the end.
    fn data_or_end(&self) -> Result<bool> {
        Ok(!self.ring_is_empty() || self.is_closed() || self.check_broken().is_err())
    }

    /// Waits until the ring holds something or the queue is closed.
    async fn data_or_close(&self) -> Result<()> {
        self.wait_until(Bell::Data, || self.data_or_end()).await
    }

    /// [`data_or_close`](Self::data_or_close), blocking; `false` at the deadline.
    fn data_or_close_blocking(&self, deadline: Option<Instant>) -> Result<bool> {
        self.wait_until_blocking(Bell::Data, deadline, || self.data_or_end())
    }
}

/// Wakes the sleepers on `bell`, if any, once per sleep: a sleeper clears `rung` before
/// it looks again, so producers and consumers working flat out make no system call.
fn ring_bell(bell: &layout::Bell, notifier: &Notifier) {
    if bell.waiters.load(SeqCst) > 0 && bell.rung.swap(1, SeqCst) == 0 {
        notifier.notify();
    }
}

/// A put between taking its place and finishing: dropped early (a cancelled `put`), it
/// gives the place back; dropped while its frame is on its way to the socket, it
/// finishes the frame (blocking: a consumer already expects it), marked withdrawn so
/// that no consumer takes it: a cancelled `put` has put nothing.
struct PutInFlight<'a, T> {
    queue: &'a Queue<T>,
    frame: Option<WriteHalf>,
    settled: bool,
}

impl<T> Drop for PutInFlight<'_, T> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        match self.frame.as_mut() {
            Some(frame) => {
                // The status byte goes last: unless all was written, it is unsent.
                let withdrawn = frame.replace_last_unsent(WITHDRAWN);
                let _ = frame.flush_blocking();
                self.queue.shared().tail.0.writer.store(0, SeqCst);
                self.queue.inner.write_lock.unlock();
                if withdrawn {
                    self.queue.withdrawn();
                }
            }
            None => self.queue.unput(),
        }
    }
}

impl<T: Serialize> Queue<T> {
    fn encode(&self, message: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        wire::encode_value(message)
    }

    fn counted_put(&self) {
        self.shared().unfinished.0.fetch_add(1, SeqCst);
    }

    fn socket_frame(&self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<WriteHalf> {
        let mut frame = WriteHalf::new(self.inner.writer.clone());
        frame.push_encoded(payload, fds)?;
        frame.push_raw(&[DELIVERED]);
        Ok(frame)
    }

    /// Puts a message, waiting while the queue is full.
    ///
    /// See [`Queue::close`] for an example.
    pub async fn put(&self, message: T) -> Result<()> {
        let encoded = self.encode(&message)?;
        self.reserve().await?;
        self.counted_put();
        self.send(encoded).await
    }

    /// Places a message whose place is reserved.
    async fn send(&self, (payload, fds): (Vec<u8>, Vec<OwnedFd>)) -> Result<()> {
        let mut flight = PutInFlight {
            queue: self,
            frame: None,
            settled: false,
        };
        let inline = fds.is_empty() && payload.len() <= self.inline_limit();
        // A frame is checked before its mark is placed: a mark promises a frame.
        let mut frame = match inline {
            true => None,
            false => Some(self.socket_frame(&payload, fds)?),
        };
        loop {
            self.inner.write_lock.acquire(true).await?;
            if let Err(err) = self.check_writer() {
                self.inner.write_lock.unlock();
                return Err(err);
            }
            match self.place(&payload, inline) {
                Ok(Placed::InRing) => {
                    self.inner.write_lock.unlock();
                    flight.settled = true;
                    return Ok(());
                }
                Ok(Placed::OnSocket) => {
                    let frame = flight.frame.insert(frame.take().expect("built for a mark"));
                    let flushed = futures::future::poll_fn(|cx| frame.poll_flush(cx)).await;
                    self.shared().tail.0.writer.store(0, SeqCst);
                    self.inner.write_lock.unlock();
                    flight.settled = true;
                    return flushed;
                }
                Ok(Placed::NoRoom) => {
                    self.inner.write_lock.unlock();
                    self.ring_room(self.entry_len(&payload, inline)).await?;
                }
                Err(err) => {
                    self.inner.write_lock.unlock();
                    return Err(err);
                }
            }
        }
    }

    fn entry_len(&self, payload: &[u8], inline: bool) -> usize {
        ENTRY_LEN + if inline { payload.len() } else { 0 }
    }

    /// Places a message whose place is reserved, blocking the thread; gives the place
    /// back if the message is not placed. `Ok(false)` if `deadline` passed first (a
    /// message whose frame has begun is finished regardless: its mark promises it).
    fn send_blocking(
        &self,
        (payload, fds): (Vec<u8>, Vec<OwnedFd>),
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let unplaced = |outcome: Result<bool>| {
            self.unput();
            outcome
        };
        let inline = fds.is_empty() && payload.len() <= self.inline_limit();
        let mut frame = match inline {
            true => None,
            false => match self.socket_frame(&payload, fds) {
                Ok(frame) => Some(frame),
                Err(err) => return unplaced(Err(err)),
            },
        };
        loop {
            match self.inner.write_lock.acquire_blocking(true, deadline) {
                Ok(true) => {}
                Ok(false) => return unplaced(Ok(false)),
                Err(err) => return unplaced(Err(err)),
            }
            let unlock = UnlockOnDrop(&self.inner.write_lock);
            if let Err(err) = self.check_writer() {
                return unplaced(Err(err));
            }
            match self.place(&payload, inline) {
                Ok(Placed::InRing) => return Ok(true),
                Ok(Placed::OnSocket) => {
                    let flushed = frame.take().expect("built for a mark").flush_blocking();
                    self.shared().tail.0.writer.store(0, SeqCst);
                    return flushed.map(|()| true);
                }
                Ok(Placed::NoRoom) => {
                    drop(unlock);
                    let need = self.entry_len(&payload, inline);
                    match self.ring_room_blocking(need, deadline) {
                        Ok(true) => {}
                        Ok(false) => return unplaced(Ok(false)),
                        Err(err) => return unplaced(Err(err)),
                    }
                }
                Err(err) => return unplaced(Err(err)),
            }
        }
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
        if !self.try_reserve()? {
            return Err(Error::Full);
        }
        self.counted_put();
        self.send_now(encoded)
    }

    /// Places a message whose place is reserved if that takes no waiting; gives the
    /// place back if the message is not placed.
    fn send_now(&self, (payload, fds): (Vec<u8>, Vec<OwnedFd>)) -> Result<()> {
        let unplaced = |err: Error| {
            self.unput();
            Err(err)
        };
        let inline = fds.is_empty() && payload.len() <= self.inline_limit();
        let mut frame = match inline {
            true => None,
            false => match self.socket_frame(&payload, fds) {
                Ok(frame) => Some(frame),
                Err(err) => return unplaced(err),
            },
        };
        match self
            .inner
            .write_lock
            .acquire_blocking(true, Some(Instant::now()))
        {
            Ok(true) => {}
            Ok(false) => return unplaced(Error::Full),
            Err(err) => return unplaced(err),
        }
        let _unlock = UnlockOnDrop(&self.inner.write_lock);
        if let Err(err) = self.check_writer() {
            return unplaced(err);
        }
        if let Some(frame) = &frame {
            match self.inner.writer.takes_at_once(frame.buffered()) {
                Ok(true) => {}
                Ok(false) => return unplaced(Error::Full),
                Err(err) => return unplaced(Error::Io(err)),
            }
        }
        match self.place(&payload, inline) {
            Ok(Placed::InRing) => Ok(()),
            Ok(Placed::NoRoom) => unplaced(Error::Full),
            Err(err) => unplaced(err),
            Ok(Placed::OnSocket) => {
                let frame = frame.as_mut().expect("built for a mark");
                // The room was measured under the write lock, so the frame goes out in
                // one call; were the kernel to take less, the frame must still be
                // finished, as its mark promises it.
                let flushed = match frame.flush_now() {
                    Ok(true) => Ok(()),
                    Ok(false) => frame.flush_blocking(),
                    Err(err) => Err(err),
                };
                self.shared().tail.0.writer.store(0, SeqCst);
                flushed
            }
        }
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
        match tokio::time::timeout(timeout, self.reserve()).await {
            Ok(reserved) => reserved?,
            Err(_) => return Err(Error::Timeout { after: timeout }),
        }
        self.counted_put();
        self.send(encoded).await
    }

    /// Puts a message, blocking the calling thread while the queue is full.
    ///
    /// See [`Queue`] for an example.
    pub fn put_blocking(&self, message: T) -> Result<()> {
        self.put_blocking_until(message, None).map(drop)
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
        let deadline = Instant::now() + timeout;
        match self.put_blocking_until(message, Some(deadline))? {
            true => Ok(()),
            false => Err(Error::Timeout { after: timeout }),
        }
    }

    /// `Ok(false)` if `deadline` passed before the message was placed.
    fn put_blocking_until(&self, message: T, deadline: Option<Instant>) -> Result<bool> {
        let encoded = self.encode(&message)?;
        if !self.reserve_blocking(deadline)? {
            return Ok(false);
        }
        self.counted_put();
        self.send_blocking(encoded, deadline)
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
    /// consumers) and kept for the next `get` in this process.
    ///
    /// See [`Queue`] for an example.
    pub async fn get(&self) -> Result<T> {
        loop {
            self.check_broken()?;
            self.check_shut_down_now()?;
            if let Some(frame) = self.take_pending() {
                return self.finish(frame.payload, frame.fds);
            }
            self.inner.read_lock.acquire(false).await?;
            let unlock = UnlockOnDrop(&self.inner.read_lock);
            self.check_shut_down_now()?;
            match self.take() {
                Taken::Inline(payload) => {
                    drop(unlock);
                    return self.finish(payload, Vec::new());
                }
                Taken::OnSocket => {
                    let mut read = self.frame_read();
                    let frame = read.run().await;
                    drop(read);
                    drop(unlock);
                    match self.finish_frame(frame) {
                        Some(got) => return got,
                        None => continue,
                    }
                }
                Taken::Empty => {
                    drop(unlock);
                    if self.drained().await? {
                        return Err(Error::Closed);
                    }
                    self.data_or_close().await?;
                }
            }
        }
    }

    fn finish(&self, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Result<T> {
        wire::decode_payload(&payload, fds)
    }

    /// The message a socket frame holds; `None` for a withdrawn frame (not a message).
    fn finish_frame(&self, frame: Result<RawFrame>) -> Option<Result<T>> {
        match frame {
            Err(Error::OwnerDied { pid }) => Some(Err(self.break_stream(pid))),
            Err(err) => Some(Err(err)),
            Ok(frame) if frame.withdrawn => None,
            Ok(frame) => Some(self.finish(frame.payload, frame.fds)),
        }
    }

    /// Takes a message under the read lock, which the caller holds, skipping withdrawn
    /// frames; `None` if the ring is empty.
    fn take_blocking(&self) -> Result<Option<T>> {
        loop {
            match self.take() {
                Taken::Inline(payload) => return self.finish(payload, Vec::new()).map(Some),
                Taken::OnSocket => {
                    if let Some(got) = self.finish_frame(self.frame_read().run_blocking()) {
                        return got.map(Some);
                    }
                }
                Taken::Empty => return Ok(None),
            }
        }
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
        self.check_broken()?;
        self.check_shut_down_now()?;
        if let Some(frame) = self.take_pending() {
            return self.finish(frame.payload, frame.fds);
        }
        if self.ring_is_empty() {
            return Err(self.empty_now());
        }
        if !self
            .inner
            .read_lock
            .acquire_blocking(false, Some(Instant::now()))?
        {
            return Err(Error::Empty);
        }
        let _unlock = UnlockOnDrop(&self.inner.read_lock);
        self.check_shut_down_now()?;
        loop {
            match self.head_kind() {
                None => return Err(self.empty_now()),
                Some(INLINE) => return self.take_blocking()?.ok_or(Error::Empty),
                Some(_) if !self.frame_arrived()? => return Err(Error::Empty),
                Some(_) => {
                    self.take();
                    if let Some(got) = self.finish_frame(self.frame_read().run_blocking()) {
                        return got;
                    }
                }
            }
        }
    }

    /// What `try_get` says of an empty ring: `Closed` only if that is final, which it
    /// cannot tell while a producer holds the write lock (it may be placing a message).
    fn empty_now(&self) -> Error {
        if !self.is_closed() {
            return Error::Empty;
        }
        match self
            .inner
            .write_lock
            .acquire_blocking(true, Some(Instant::now()))
        {
            Ok(true) => {
                self.inner.write_lock.unlock();
                match self.ring_is_empty() {
                    true => Error::Closed,
                    false => Error::Empty,
                }
            }
            Ok(false) => Error::Empty,
            Err(err) => err,
        }
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
        match tokio::time::timeout(timeout, self.get()).await {
            Ok(got) => got,
            Err(_) => Err(Error::Timeout { after: timeout }),
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
        self.get_blocking_until(None)?
            .ok_or_else(|| Error::Io(std::io::Error::other("wait without deadline ended")))
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
        self.get_blocking_until(Some(Instant::now() + timeout))?
            .ok_or(Error::Timeout { after: timeout })
    }

    /// `Ok(None)` if `deadline` passed first.
    fn get_blocking_until(&self, deadline: Option<Instant>) -> Result<Option<T>> {
        loop {
            self.check_broken()?;
            self.check_shut_down_now()?;
            if let Some(frame) = self.take_pending() {
                return self.finish(frame.payload, frame.fds).map(Some);
            }
            if !self.inner.read_lock.acquire_blocking(false, deadline)? {
                return Ok(None);
            }
            let unlock = UnlockOnDrop(&self.inner.read_lock);
            self.check_shut_down_now()?;
            if let Some(message) = self.take_blocking()? {
                return Ok(Some(message));
            }
            drop(unlock);
            match self.drained_blocking(deadline)? {
                Some(true) => return Err(Error::Closed),
                Some(false) => {}
                None => return Ok(None),
            }
            if !self.data_or_close_blocking(deadline)? {
                return Ok(None);
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
            &self.data,
            &self.done,
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        type Parts = (
            SharedMemory,
            PassFd,
            PassFd,
            Lock,
            Lock,
            Notifier,
            Notifier,
            Option<Notifier>,
        );
        let (state, PassFd(writer), PassFd(reader), write_lock, read_lock, space, data, done) =
            Parts::deserialize(deserializer)?;
        let socket = |fd: OwnedFd| SocketFd::new(fd).map_err(serde::de::Error::custom);
        Ok(Inner {
            state,
            writer: socket(writer)?,
            reader: socket(reader)?,
            write_lock,
            read_lock,
            space,
            data,
            done,
            pending: Pending::default(),
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
