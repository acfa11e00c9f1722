//! What every handle of a queue shares, and the byte ring in its shared memory: code
//! that deals in bytes only, the same for every message type.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::frame::{self, Pending, RawFrame, UnfinishedRead};
use super::layout::{
    self, DATA_WAKE, DONE_WAKE, OPEN, READ_LOCK, RING, SHUT, SHUT_NOW, SPACE_WAKE, Shared,
    WRITE_LOCK,
};
use super::ops::UnfinishedWrite;
use crate::error::{Error, Result};
use crate::ipc::{PassFd, SocketFd};
use crate::shm::{SharedMemory, Words};
use crate::sync::{Attempt, Counted, Lock, Notifier, RoomWatch, Wait, token};

/// A ring entry: the payload's length, then where the payload is.
const ENTRY_LEN: usize = 8;
pub(super) const INLINE: u32 = 0;
const ON_SOCKET: u32 = 1;

/// A queue's shared parts, behind every handle of it in this process.
pub(super) struct Inner {
    /// [`Shared`], then the ring.
    state: SharedMemory,
    /// The [`Shared`] words, checked once.
    words: Words,
    pub(super) writer: Arc<SocketFd>,
    pub(super) reader: Arc<SocketFd>,
    /// Room on `writer`, for producers of socket frames.
    pub(super) room: RoomWatch,
    pub(super) write_lock: Lock,
    pub(super) read_lock: Lock,
    space: Notifier,
    data: Notifier,
    /// Wakes `join` (a `JoinableQueue`'s only: a plain queue spares its descriptors).
    pub(super) done: Option<Notifier>,
    /// This process's messages whose `get` was cancelled mid-frame.
    pub(super) pending: Pending,
    /// The frame of a `get` cancelled mid-frame, while it is still being read.
    pub(super) unfinished_read: UnfinishedRead,
    /// The frame of a `put` cancelled mid-frame, while it is still being written.
    pub(super) unfinished_write: UnfinishedWrite,
}

/// What a producer holding the write lock did with its message.
pub(super) enum Placed {
    InRing,
    /// Its place is marked; the frame must now be written to the socket, whole.
    OnSocket,
    /// The ring has no room for the entry yet.
    NoRoom,
}

/// The two things a side may sleep for.
#[derive(Clone, Copy)]
pub(super) enum Bell {
    /// Room for a message (producers).
    Space,
    /// A message, or the end (consumers).
    Data,
}

/// What a consumer holding the read lock found at the head of the ring.
pub(super) enum Taken {
    Inline(Vec<u8>),
    OnSocket,
    Empty,
}

impl Inner {
    /// A queue holding at most `capacity` messages; with `join`, one whose
    /// `unfinished` count can be waited for.
    pub(super) fn new(capacity: u32, join: bool) -> Result<Inner> {
        let capacity = capacity.max(1);
        // Room for small messages of every place, within sane bounds.
        let ring_len = (capacity as usize).saturating_mul(64).clamp(4096, 1 << 20);
        let state = SharedMemory::named("multiprocess-queue", RING + ring_len)?;
        let (writer, reader) = crate::sys::stream_socketpair()?;
        let data = Notifier::in_page(&state, DATA_WAKE)?;
        let inner = Self::from_parts(state, writer, reader, data, join)?;
        let settings = &inner.shared().settings.0;
        settings.capacity.store(capacity, SeqCst);
        settings.ring_len.store(ring_len as u32, SeqCst);
        Ok(inner)
    }

    /// Every part of a queue, from its page, its sockets and the notifier that lends
    /// its eventfd to the others (and to the locks).
    fn from_parts(
        state: SharedMemory,
        writer: OwnedFd,
        reader: OwnedFd,
        data: Notifier,
        join: bool,
    ) -> std::io::Result<Inner> {
        let writer = SocketFd::new(writer)?;
        Ok(Inner {
            room: RoomWatch::new(writer.clone()),
            writer,
            reader: SocketFd::new(reader)?,
            write_lock: Lock::in_page(&state, WRITE_LOCK, &data),
            read_lock: Lock::in_page(&state, READ_LOCK, &data),
            space: data.sharing(&state, SPACE_WAKE),
            done: join.then(|| data.sharing(&state, DONE_WAKE)),
            data,
            words: Words::new(&state, 0, RING),
            state,
            pending: Pending::default(),
            unfinished_read: UnfinishedRead::default(),
            unfinished_write: UnfinishedWrite::default(),
        })
    }

    pub(super) fn shared(&self) -> &Shared {
        let words = self.words.start().cast::<Shared>();
        // SAFETY: the mapping is page-aligned and holds at least `RING` bytes (checked
        // by `Words::new`), it lives as long as `self.words`, and `Shared` is atomics only:
        // any bytes (zeroes at first) are valid, and other processes change them only
        // through atomic operations.
        unsafe { &*words }
    }

    pub(super) fn capacity(&self) -> u32 {
        self.shared().settings.0.capacity.load(SeqCst)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.shared().settings.0.closed.load(SeqCst) != OPEN
    }

    /// Whether `shutdown_immediate` was called.
    pub(super) fn is_shut_down_now(&self) -> bool {
        self.shared().settings.0.closed.load(SeqCst) == SHUT_NOW
    }

    /// `Err(Closed)` once the queue was shut down immediately: nothing more is taken.
    pub(super) fn check_shut_down_now(&self) -> Result<()> {
        match self.is_shut_down_now() {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    pub(super) fn close(&self) {
        if self
            .shared()
            .settings
            .0
            .closed
            .compare_exchange(OPEN, SHUT, SeqCst, SeqCst)
            .is_ok()
        {
            self.data.notify();
            self.space.notify();
        }
    }

    /// `shutdown_immediate`: wakes everyone; the caller drops what is queued.
    pub(super) fn shut_down_now(&self) -> bool {
        if self.shared().settings.0.closed.swap(SHUT_NOW, SeqCst) == SHUT_NOW {
            return false;
        }
        self.shared().unfinished.0.store(0, SeqCst);
        self.data.notify();
        self.space.notify();
        self.notify_done();
        self.pending.clear();
        true
    }

    /// Wakes `join`s.
    pub(super) fn notify_done(&self) {
        if let Some(done) = &self.done {
            done.notify();
        }
    }

    /// `Err(OwnerDied)` once a producer died in the middle of a socket frame.
    pub(super) fn check_broken(&self) -> Result<()> {
        match self.shared().settings.0.broken.load(SeqCst) {
            0 => Ok(()),
            pid => Err(Error::OwnerDied { pid }),
        }
    }

    pub(super) fn break_stream(&self, pid: u32) -> Error {
        tracing::warn!(
            pid,
            "queue producer died mid-message; the queue is unusable"
        );
        let _ = self
            .shared()
            .settings
            .0
            .broken
            .compare_exchange(0, pid.max(1), SeqCst, SeqCst);
        self.data.notify();
        self.space.notify();
        Error::OwnerDied { pid }
    }

    /// Called with the write lock just taken: a writer still recorded died before it
    /// finished its frame (a live one clears itself before unlocking).
    pub(super) fn check_writer(&self) -> Result<()> {
        self.check_broken()?;
        match self.shared().tail.0.writer.load(SeqCst) {
            0 => Ok(()),
            dead => Err(self.break_stream((dead >> 32) as u32)),
        }
    }

    /// The producer of a socket frame is done with it (written or failed).
    pub(super) fn frame_written(&self) {
        self.shared().tail.0.writer.store(0, SeqCst);
    }

    // ---- the ring ----

    fn ring_len(&self) -> u64 {
        u64::from(self.shared().settings.0.ring_len.load(SeqCst))
    }

    fn ring_write(&self, pos: u64, data: &[u8]) {
        let len = self.ring_len();
        let at = (pos % len) as usize;
        let first = data.len().min(len as usize - at);
        self.state.write(RING + at, &data[..first]);
        self.state.write(RING, &data[first..]);
    }

    fn ring_read(&self, pos: u64, buf: &mut [u8]) {
        let len = self.ring_len();
        let at = (pos % len) as usize;
        let first = buf.len().min(len as usize - at);
        self.state.read(RING + at, &mut buf[..first]);
        self.state.read(RING, &mut buf[first..]);
    }

    /// Whether a payload goes into the ring itself (else through the socket).
    pub(super) fn fits_inline(&self, payload: &[u8], fds: &[OwnedFd]) -> bool {
        fds.is_empty() && payload.len() <= self.ring_len() as usize / 4
    }

    /// Ring bytes an entry takes.
    pub(super) fn entry_len(payload: &[u8], inline: bool) -> usize {
        ENTRY_LEN + if inline { payload.len() } else { 0 }
    }

    pub(super) fn ring_is_empty(&self) -> bool {
        self.shared().head.0.load(SeqCst) == self.shared().tail.0.tail.load(SeqCst)
    }

    /// Puts a message at the tail. The caller holds the write lock.
    pub(super) fn place(&self, payload: &[u8], inline: bool) -> Result<Placed> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let tail = self.shared().tail.0.tail.load(SeqCst);
        let free = self.ring_len() - (tail - self.shared().head.0.load(SeqCst));
        let (kind, stored) = match inline {
            true => (INLINE, payload),
            false => (ON_SOCKET, &[][..]),
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
        self.shared()
            .tail
            .0
            .tail
            .store(tail + (ENTRY_LEN + stored.len()) as u64, SeqCst);
        ring_bell(&self.shared().data.0, &self.data);
        Ok(match kind {
            INLINE => Placed::InRing,
            _ => Placed::OnSocket,
        })
    }

    /// Takes the entry at the head. The caller holds the read lock.
    pub(super) fn take(&self) -> Taken {
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
        self.shared()
            .head
            .0
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
    pub(super) fn head_kind(&self) -> Option<u32> {
        let head = self.shared().head.0.load(SeqCst);
        if head == self.shared().tail.0.tail.load(SeqCst) {
            return None;
        }
        let mut entry = [0u8; ENTRY_LEN];
        self.ring_read(head, &mut entry);
        Some(u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]))
    }

    /// Whether the whole frame of the socket entry at the head has arrived.
    pub(super) fn frame_arrived(&self) -> Result<bool> {
        frame::arrived(&self.reader, &self.shared().tail.0.writer)
    }

    /// A message of this process whose `get` was cancelled mid-frame: it comes first.
    pub(super) fn take_pending(&self) -> Option<RawFrame> {
        self.pending.pop()
    }

    // ---- places ----

    /// Takes a place for one message; `false` if the queue is full.
    pub(super) fn try_reserve(&self) -> Result<bool> {
        let capacity = self.capacity();
        let items = &self.shared().items.0;
        let mut now = items.load(SeqCst);
        loop {
            self.check_broken()?;
            if self.is_closed() {
                return Err(Error::Closed);
            }
            if now >= capacity {
                return Ok(false);
            }
            match items.compare_exchange(now, now + 1, SeqCst, SeqCst) {
                Ok(_) => return Ok(true),
                Err(actual) => now = actual,
            }
        }
    }

    /// A put took its place: one more message to be marked done.
    pub(super) fn counted_put(&self) {
        self.shared().unfinished.0.fetch_add(1, SeqCst);
    }

    /// A put cancelled after its frame had begun: the frame goes out marked withdrawn
    /// and keeps its place until a consumer skips it, but it is no task to wait for.
    pub(super) fn withdrawn(&self) {
        let before = self
            .shared()
            .unfinished
            .0
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        if before == Ok(1) {
            self.notify_done();
        }
    }

    /// A failed put gives its place back.
    pub(super) fn unput(&self) {
        // Saturating: `shutdown_immediate` may have zeroed the count meanwhile.
        let _ = self
            .shared()
            .unfinished
            .0
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        self.shared().items.0.fetch_sub(1, SeqCst);
        self.space.notify();
    }

    /// A message left the queue: free its place.
    fn taken(&self) {
        self.shared().items.0.fetch_sub(1, SeqCst);
        ring_bell(&self.shared().space.0, &self.space);
    }

    pub(super) fn ring_has_room(&self, need: usize) -> bool {
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

    /// Whether a consumer has something to do: a message, or the end.
    pub(super) fn data_or_end(&self) -> Result<bool> {
        Ok(!self.ring_is_empty() || self.is_closed() || self.check_broken().is_err())
    }

    /// One attempt at a wait on `bell` until `ready` holds. A sleeper is counted (in
    /// `counted`, which the operation keeps) from its first look that finds nothing,
    /// then looks again before it sleeps, and clears the bell's `rung` flag before each
    /// look, so the other side rings again. Without `enlist` (a call that never
    /// waits) it is never counted.
    pub(super) fn bell_attempt<'q>(
        &'q self,
        bell: Bell,
        counted: &mut Option<Counted<'q>>,
        enlist: bool,
        ready: impl FnOnce() -> Result<bool>,
    ) -> Result<Attempt<'q, ()>> {
        let (notifier, words) = match bell {
            Bell::Space => (&self.space, &self.shared().space.0),
            Bell::Data => (&self.data, &self.shared().data.0),
        };
        // Only an attempt that may sleep now needs the number (and to clear `rung`):
        // the first look of a call spares both.
        let sleeper = counted.is_some() || !enlist;
        if counted.is_some() {
            words.rung.store(0, SeqCst);
        }
        let seen = sleeper.then(|| notifier.observe());
        if ready()? {
            return Ok(Attempt::Ready(()));
        }
        let Some(seen) = seen else {
            *counted = Some(Counted::new(&words.waiters));
            return Ok(Attempt::Again);
        };
        Ok(Attempt::Wait(Wait::Notified {
            notifier,
            seen,
            owners: Vec::new(),
            until: None,
        }))
    }
}

impl Inner {
    /// A wait for a message, for an operation that must say it would wait.
    pub(super) fn data_wait(&self) -> Wait<'_> {
        Wait::Notified {
            notifier: &self.data,
            seen: self.data.observe(),
            owners: Vec::new(),
            until: None,
        }
    }
}

/// Wakes the sleepers on `bell`, if any, once per sleep: a sleeper clears `rung` before
/// it looks again, so producers and consumers working flat out make no system call.
fn ring_bell(bell: &layout::Bell, notifier: &Notifier) {
    if bell.waiters.load(SeqCst) > 0 && bell.rung.swap(1, SeqCst) == 0 {
        notifier.notify();
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
            self.data.wake_fd_for_message()?,
            self.done.is_some(),
        )
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (state, PassFd(writer), PassFd(reader), wake, join) =
            <(SharedMemory, PassFd, PassFd, PassFd, bool)>::deserialize(deserializer)?;
        let data = Notifier::from_message(wake, &state, RING, DATA_WAKE, "queue")?;
        Self::from_parts(state, writer, reader, data, join).map_err(serde::de::Error::custom)
    }
}
