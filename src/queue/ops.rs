//! `put` and `get` as operations of the waiting layer: attempts that never wait, each
//! returning the outcome or what to wait for, run by the async or the blocking driver.
//! Byte-level, the same code for every message type.
//!
//! Whatever an operation holds between attempts is undone or finished when it is
//! dropped: a place taken is given back, a lock released. A frame already under way on
//! the socket must be finished (the other side expects all of it): a dropped operation
//! hands it to a task of the runtime it ran in, so that a cancelled `get` or `put` never
//! blocks a runtime thread, or finishes it on the spot outside a runtime.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use super::frame::{DELIVERED, FrameRead, RawFrame, WITHDRAWN};
use super::ring::{Bell, INLINE, Inner, Placed, Taken};
use crate::error::{Error, Result};
use crate::ipc::WriteHalf;
use crate::sync::{
    Attempt, Counted, Lock, Patience, RoomWatch, Wait, drive, drive_blocking, waited_forever,
};

/// Releases a lock when dropped, unless forgotten.
struct UnlockOnDrop<'a>(&'a Lock);

impl Drop for UnlockOnDrop<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PutStage {
    /// Taking a place.
    Reserve,
    /// Holding a place; taking the write lock.
    Lock,
    /// Holding a place; waiting for room in the ring.
    Room,
    /// Holding a place; finishing the frame of a cancelled `put` of this process,
    /// which holds the write lock this one needs.
    TakenOver,
    /// The mark is placed and the write lock held: writing the frame.
    Flush,
    Done,
}

/// One `put` of an encoded message.
pub(super) struct Put<'q> {
    inner: &'q Arc<Inner>,
    payload: Vec<u8>,
    inline: bool,
    /// The socket frame, for a message that does not go into the ring.
    frame: Option<WriteHalf>,
    stage: PutStage,
    /// A `try_put`: never counted as a waiter, and never starts a frame that the
    /// socket cannot take at once.
    nowait: bool,
    /// This operation counted as a waiter on what it waits for now.
    counted: Option<Counted<'q>>,
    /// The frame of a cancelled `put`, taken over.
    taken_over: Option<LeftWrite>,
}

impl<'q> Put<'q> {
    pub(super) fn new(
        inner: &'q Arc<Inner>,
        (payload, fds): (Vec<u8>, Vec<OwnedFd>),
        nowait: bool,
    ) -> Result<Put<'q>> {
        let inline = inner.fits_inline(&payload, &fds);
        // A frame is checked before its mark is placed: a mark promises a frame.
        let frame = match inline {
            true => None,
            false => {
                let mut frame = WriteHalf::new(inner.writer.clone());
                frame.push_encoded(&payload, fds)?;
                frame.push_raw(&[DELIVERED]);
                Some(frame)
            }
        };
        Ok(Put {
            inner,
            payload,
            inline,
            frame,
            stage: PutStage::Reserve,
            nowait,
            counted: None,
            taken_over: None,
        })
    }

    /// One attempt; a stage that is done moves on to the next within the attempt,
    /// so an uncontended `put` is one attempt.
    pub(super) fn attempt(&mut self) -> Result<Attempt<'q, ()>> {
        let inner: &'q Inner = self.inner;
        let enlist = !self.nowait;
        loop {
            let step = match self.stage {
                PutStage::Reserve => {
                    inner.bell_attempt(Bell::Space, &mut self.counted, enlist, || {
                        inner.try_reserve()
                    })?
                }
                PutStage::Lock => {
                    // A cancelled put's frame, still being written, holds the write
                    // lock: this put finishes it rather than wait for the task writing
                    // it, which may be unable to run while this thread waits.
                    if let Some(left) = (enlist).then(|| inner.unfinished_write.adopt()).flatten() {
                        self.taken_over = Some(left);
                        self.stage = PutStage::TakenOver;
                        continue;
                    }
                    inner.write_lock.attempt(&mut self.counted, enlist, true)?
                }
                PutStage::TakenOver => {
                    let left = self.taken_over.as_mut().expect("taken over");
                    let flushed = match flush_attempt(&mut left.frame, &inner.room) {
                        Ok(Attempt::Ready(())) => Ok(()),
                        Ok(other) => return Ok(other),
                        Err(err) => Err(err),
                    };
                    let left = self.taken_over.take().expect("taken over");
                    settle_write(inner, flushed, left.withdrawn);
                    self.stage = PutStage::Lock;
                    continue;
                }
                PutStage::Room => {
                    let need = Inner::entry_len(&self.payload, self.inline);
                    inner.bell_attempt(Bell::Space, &mut self.counted, enlist, || {
                        Ok(inner.ring_has_room(need))
                    })?
                }
                PutStage::Flush => return self.flush(),
                PutStage::Done => return Ok(Attempt::Ready(())),
            };
            if !matches!(step, Attempt::Ready(())) {
                return Ok(step);
            }
            self.counted = None;
            match self.stage {
                PutStage::Reserve => {
                    inner.counted_put();
                    self.stage = PutStage::Lock;
                }
                PutStage::Room => self.stage = PutStage::Lock,
                _ => match self.locked()? {
                    // No room in the ring yet: wait for it (in the next turn).
                    Attempt::Again => {}
                    done_or_wait => return Ok(done_or_wait),
                },
            }
        }
    }

    /// Places the message, the write lock just taken.
    fn locked(&mut self) -> Result<Attempt<'q, ()>> {
        let inner: &'q Inner = self.inner;
        let unlock = UnlockOnDrop(&inner.write_lock);
        inner.check_writer()?;
        if let (Some(frame), true) = (&self.frame, self.nowait) {
            if !inner.writer.takes_at_once(frame.buffered())? {
                return Err(Error::Full);
            }
        }
        match inner.place(&self.payload, self.inline)? {
            Placed::InRing => {
                self.stage = PutStage::Done;
                Ok(Attempt::Ready(()))
            }
            Placed::NoRoom => {
                self.stage = PutStage::Room;
                Ok(Attempt::Again)
            }
            Placed::OnSocket => {
                // Held until the frame is written.
                std::mem::forget(unlock);
                self.stage = PutStage::Flush;
                self.flush()
            }
        }
    }

    fn flush(&mut self) -> Result<Attempt<'q, ()>> {
        let frame = self.frame.as_mut().expect("built for a mark");
        let step = flush_attempt(frame, &self.inner.room);
        if !matches!(step, Ok(Attempt::Wait(_))) {
            self.stage = PutStage::Done;
            self.inner.frame_written();
            self.inner.write_lock.unlock();
        }
        step
    }
}

impl Drop for Put<'_> {
    fn drop(&mut self) {
        match self.stage {
            PutStage::Reserve | PutStage::Done => {}
            PutStage::Lock | PutStage::Room => self.inner.unput(),
            PutStage::TakenOver => {
                self.inner.unput();
                let left = self.taken_over.take().expect("taken over");
                WriteRest::leave(self.inner, left);
            }
            PutStage::Flush => {
                let frame = self.frame.take().expect("built for a mark");
                WriteRest::start(self.inner, frame);
            }
        }
    }
}

/// One attempt at writing out what is left of a frame.
fn flush_attempt<'q>(frame: &mut WriteHalf, room: &'q RoomWatch) -> Result<Attempt<'q, ()>> {
    match frame.flush_now()? {
        true => Ok(Attempt::Ready(())),
        false => Ok(Attempt::Wait(Wait::Writable(room))),
    }
}

/// The rest of a frame whose `put` was dropped after the frame had begun: its mark
/// promises it, so it is finished, marked withdrawn (unless its status byte was sent
/// already) so that no consumer takes it. A cancelled `put` has put nothing.
pub(super) struct LeftWrite {
    frame: WriteHalf,
    withdrawn: bool,
}

/// A [`LeftWrite`] until it is written: by a task of the runtime the `put` ran in, or
/// by the next waiting `put` of this process, whichever comes first. A blocking `put`
/// on the thread of a current-thread runtime could not wait for that runtime's task
/// (the frame holds the write lock, and the task cannot run while the thread blocks),
/// so it takes the write over. There is at most one: it holds the write lock.
#[derive(Default)]
pub(super) struct UnfinishedWrite {
    /// Whether `write` holds one, read without the lock by every waiting `put`.
    present: AtomicBool,
    write: Mutex<Option<LeftWrite>>,
}

impl UnfinishedWrite {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<LeftWrite>> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leave(&self, left: LeftWrite) {
        let mut slot = self.slot();
        *slot = Some(left);
        self.present.store(true, SeqCst);
    }

    /// Takes the write over, if there is one.
    #[inline]
    fn adopt(&self) -> Option<LeftWrite> {
        match self.present.load(SeqCst) {
            false => None,
            true => self.adopt_locked(),
        }
    }

    #[cold]
    fn adopt_locked(&self) -> Option<LeftWrite> {
        let mut slot = self.slot();
        self.present.store(false, SeqCst);
        slot.take()
    }

    /// One attempt of a task at the write: `Ready(None)` once there is none left (a
    /// `put` took it over), else `Ready(Some((outcome, withdrawn)))` once it is written.
    /// A task waiting for room when a `put` takes the write over is woken by the room
    /// that `put` waits for, and then ends.
    fn attempt<'q>(&self, room: &'q RoomWatch) -> Result<Attempt<'q, Option<Written>>> {
        let mut slot = self.slot();
        let Some(left) = slot.as_mut() else {
            return Ok(Attempt::Ready(None));
        };
        let outcome = match flush_attempt(&mut left.frame, room) {
            Ok(Attempt::Ready(())) => Ok(()),
            Ok(Attempt::Again) => return Ok(Attempt::Again),
            Ok(Attempt::Wait(wait)) => return Ok(Attempt::Wait(wait)),
            Err(err) => Err(err),
        };
        let withdrawn = left.withdrawn;
        *slot = None;
        self.present.store(false, SeqCst);
        Ok(Attempt::Ready(Some((outcome, withdrawn))))
    }
}

/// How a [`LeftWrite`] ended, and whether it was withdrawn.
type Written = (Result<()>, bool);

/// Finishes a [`LeftWrite`] on a task of the runtime, or here outside one.
struct WriteRest(Arc<Inner>);

impl WriteRest {
    fn start(inner: &Arc<Inner>, mut frame: WriteHalf) {
        // The status byte goes last: unless all was written, it is unsent.
        let withdrawn = frame.replace_last_unsent(WITHDRAWN);
        Self::leave(inner, LeftWrite { frame, withdrawn });
    }

    fn leave(inner: &Arc<Inner>, left: LeftWrite) {
        inner.unfinished_write.leave(left);
        let rest = WriteRest(inner.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(rest.run())),
            // Outside a runtime: the drop finishes it here.
            Err(_) => drop(rest),
        }
    }

    async fn run(self) {
        let inner = &self.0;
        let attempt = || inner.unfinished_write.attempt(&inner.room);
        match drive(Patience::FOREVER, attempt).await {
            Ok(Some(Some((flushed, withdrawn)))) => settle_write(inner, flushed, withdrawn),
            // Taken over by a `put`.
            Ok(_) => {}
            // The wait itself failed: the write is given up.
            Err(err) => {
                if let Some(left) = inner.unfinished_write.adopt() {
                    settle_write(inner, Err(err), left.withdrawn);
                }
            }
        }
    }
}

impl Drop for WriteRest {
    fn drop(&mut self) {
        // Not finished by a task (no runtime, or the runtime is shutting down).
        let inner = &self.0;
        if let Some(mut left) = inner.unfinished_write.adopt() {
            let room = &inner.room;
            let flushed =
                drive_blocking(Patience::FOREVER, || flush_attempt(&mut left.frame, room));
            settle_write(inner, flushed.map(drop), left.withdrawn);
        }
    }
}

/// A cancelled `put`'s frame is written (or failed): releases the write lock it held.
fn settle_write(inner: &Inner, flushed: Result<()>, withdrawn: bool) {
    if let Err(err) = flushed {
        tracing::warn!(%err, "queue put cancelled; the rest of its message could not be written");
    }
    inner.frame_written();
    inner.write_lock.unlock();
    if withdrawn {
        inner.withdrawn();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum GetStage {
    /// Looking for a message of this process's own first.
    Start,
    /// Taking the read lock.
    Lock,
    /// The read lock held and a socket entry taken: reading its frame.
    Frame,
    /// Found the ring empty: is that the end?
    Drained,
    /// Waiting for a message or the end.
    Data,
}

/// One `get`; ready with the message, not yet decoded.
pub(super) struct Get<'q> {
    inner: &'q Arc<Inner>,
    stage: GetStage,
    /// A `try_get`: never counted as a waiter, and never takes a socket entry whose
    /// frame has not wholly arrived.
    nowait: bool,
    counted: Option<Counted<'q>>,
    read: Option<FrameRead>,
}

impl<'q> Get<'q> {
    pub(super) fn new(inner: &'q Arc<Inner>, nowait: bool) -> Get<'q> {
        Get {
            inner,
            stage: GetStage::Start,
            nowait,
            counted: None,
            read: None,
        }
    }

    /// One attempt; a stage that is done moves on to the next within the attempt,
    /// so an uncontended `get` is one attempt.
    pub(super) fn attempt(&mut self) -> Result<Attempt<'q, RawFrame>> {
        loop {
            match self.stage_attempt()? {
                Attempt::Again => {}
                done_or_wait => return Ok(done_or_wait),
            }
        }
    }

    /// One attempt at the current stage: `Again` once it moved on to another.
    fn stage_attempt(&mut self) -> Result<Attempt<'q, RawFrame>> {
        let inner: &'q Inner = self.inner;
        let enlist = !self.nowait;
        match self.stage {
            GetStage::Start => {
                inner.check_broken()?;
                inner.check_shut_down_now()?;
                if let Some(frame) = inner.take_pending() {
                    return Ok(Attempt::Ready(frame));
                }
                // A cancelled get's frame, still being read: this get finishes it
                // rather than wait for the task reading it, which may be unable to run
                // while this thread waits. (A call that never waits leaves it.)
                if let Some(read) = (!self.nowait)
                    .then(|| inner.unfinished_read.adopt())
                    .flatten()
                {
                    self.read = Some(read);
                    self.stage = GetStage::Frame;
                    return Ok(Attempt::Again);
                }
                self.stage = GetStage::Lock;
                Ok(Attempt::Again)
            }
            GetStage::Lock => {
                let step = inner.read_lock.attempt(&mut self.counted, enlist, false)?;
                if let Some(step) = not_ready(step) {
                    return Ok(step);
                }
                self.counted = None;
                self.locked()
            }
            GetStage::Frame => self.read_frame(),
            GetStage::Drained => {
                if !inner.is_closed() {
                    self.stage = GetStage::Data;
                    return Ok(Attempt::Again);
                }
                // Final only if no producer is between its check of `closed` and its
                // entry: producers place entries under the write lock.
                let step = inner.write_lock.attempt(&mut self.counted, enlist, true)?;
                if let Some(step) = not_ready(step) {
                    return Ok(step);
                }
                inner.write_lock.unlock();
                self.counted = None;
                match inner.ring_is_empty() {
                    true => Err(Error::Closed),
                    false => {
                        self.stage = GetStage::Start;
                        Ok(Attempt::Again)
                    }
                }
            }
            GetStage::Data => {
                let step = inner.bell_attempt(Bell::Data, &mut self.counted, enlist, || {
                    inner.data_or_end()
                })?;
                if let Some(step) = not_ready(step) {
                    return Ok(step);
                }
                self.counted = None;
                self.stage = GetStage::Start;
                Ok(Attempt::Again)
            }
        }
    }

    /// Takes the entry at the head, the read lock just taken.
    fn locked(&mut self) -> Result<Attempt<'q, RawFrame>> {
        let inner: &'q Inner = self.inner;
        let unlock = UnlockOnDrop(&inner.read_lock);
        inner.check_shut_down_now()?;
        // A cancelled get of this process may have finished its message meanwhile (it
        // held the read lock until then): that message comes first.
        if let Some(frame) = inner.take_pending() {
            return Ok(Attempt::Ready(frame));
        }
        // Only a call that never waits needs to know before it takes the entry.
        let socket_head = self.nowait && inner.head_kind().is_some_and(|kind| kind != INLINE);
        if socket_head && !inner.frame_arrived()? {
            // Reading it now would mean waiting for its bytes.
            self.stage = GetStage::Start;
            return Ok(Attempt::Wait(inner.data_wait()));
        }
        match inner.take() {
            Taken::Inline(payload) => Ok(Attempt::Ready(RawFrame {
                payload,
                fds: Vec::new(),
                withdrawn: false,
            })),
            Taken::OnSocket => {
                // Held until the frame is read.
                std::mem::forget(unlock);
                self.read = Some(FrameRead::new());
                self.stage = GetStage::Frame;
                self.read_frame()
            }
            Taken::Empty => {
                self.stage = GetStage::Drained;
                Ok(Attempt::Again)
            }
        }
    }

    fn read_frame(&mut self) -> Result<Attempt<'q, RawFrame>> {
        let inner: &'q Inner = self.inner;
        let read = self.read.as_mut().expect("a frame under way");
        let step = read.attempt(&inner.reader, &inner.shared().tail.0.writer);
        if matches!(step, Ok(Attempt::Wait(_))) {
            return step;
        }
        self.read = None;
        self.stage = GetStage::Start;
        inner.read_lock.unlock();
        match step {
            // Its put was cancelled: not a message.
            Ok(Attempt::Ready(frame)) if frame.withdrawn => Ok(Attempt::Again),
            Err(Error::OwnerDied { pid }) => Err(inner.break_stream(pid)),
            other => other,
        }
    }
}

/// `None` once a stage's attempt is ready, else the attempt to pass on.
fn not_ready<'q, U>(attempt: Attempt<'q, ()>) -> Option<Attempt<'q, U>> {
    match attempt {
        Attempt::Ready(()) => None,
        Attempt::Again => Some(Attempt::Again),
        Attempt::Wait(wait) => Some(Attempt::Wait(wait)),
    }
}

impl Drop for Get<'_> {
    fn drop(&mut self) {
        if let Some(read) = self.read.take() {
            ReadRest::start(self.inner, read);
        }
    }
}

/// Finishes the frame of a `get` dropped after the frame had begun: the entry is
/// taken, so the frame is this process's to read, to its end (the stream must stay
/// whole for the other consumers); the message is kept for the next `get` here. A task
/// of the runtime reads it, unless the next waiting `get` of this process takes the
/// read over first (see [`UnfinishedRead`](super::frame::UnfinishedRead)).
struct ReadRest(Arc<Inner>);

impl ReadRest {
    fn start(inner: &Arc<Inner>, read: FrameRead) {
        inner.unfinished_read.leave(read);
        let rest = ReadRest(inner.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(rest.run())),
            // Outside a runtime: the drop finishes it here.
            Err(_) => drop(rest),
        }
    }

    async fn run(self) {
        let inner = &self.0;
        let writer = &inner.shared().tail.0.writer;
        let attempt = || inner.unfinished_read.attempt(&inner.reader, writer);
        match drive(Patience::FOREVER, attempt).await {
            Ok(Some(Some(frame))) => keep(inner, frame),
            // Taken over by a `get`.
            Ok(_) => {}
            // The wait itself failed: the read is given up.
            Err(err) => {
                if inner.unfinished_read.adopt().is_some() {
                    keep(inner, Err(err));
                }
            }
        }
    }
}

impl Drop for ReadRest {
    fn drop(&mut self) {
        // Not finished by a task (no runtime, or the runtime is shutting down).
        let inner = &self.0;
        if let Some(mut read) = inner.unfinished_read.adopt() {
            let writer = &inner.shared().tail.0.writer;
            let frame = drive_blocking(Patience::FOREVER, || read.attempt(&inner.reader, writer));
            keep(inner, frame.and_then(waited_forever));
        }
    }
}

/// Keeps the message of a finished read for the next `get` in this process, and
/// releases the read lock the read held.
fn keep(inner: &Inner, frame: Result<RawFrame>) {
    match frame {
        Ok(frame) if !frame.withdrawn => {
            tracing::debug!(
                "queue get cancelled in the middle of a message; kept for the next get"
            );
            inner.pending.push(frame);
        }
        Ok(_) => {}
        Err(Error::OwnerDied { pid }) => drop(inner.break_stream(pid)),
        Err(err) => tracing::warn!(%err, "queue get cancelled; its message could not be read"),
    }
    inner.read_lock.unlock();
}

/// Drops what is queued, as far as that takes no waiting, so that descriptors
/// travelling in messages are closed now rather than with the queue's last handle.
pub(super) fn drop_queued(inner: &Inner) {
    let mut counted = None;
    let taken = drive_blocking(Patience::Never, || {
        inner.read_lock.attempt(&mut counted, false, true)
    });
    if !matches!(taken, Ok(Some(()))) {
        return;
    }
    let _unlock = UnlockOnDrop(&inner.read_lock);
    loop {
        match inner.head_kind() {
            Some(INLINE) => drop(inner.take()),
            Some(_) if matches!(inner.frame_arrived(), Ok(true)) => {
                inner.take();
                let mut read = FrameRead::new();
                let writer = &inner.shared().tail.0.writer;
                if drive_blocking(Patience::FOREVER, || read.attempt(&inner.reader, writer))
                    .is_err()
                {
                    return;
                }
            }
            _ => return,
        }
    }
}
