//! The queue's socket frames, read to their exact length so that the next consumer
//! starts at the next frame.
//!
//! A message too large for the ring travels through the socket every handle shares as
//! a frame: the wire header, the payload, then one status byte. The producer writes
//! the byte last: [`DELIVERED`], or [`WITHDRAWN`] when its `put` was cancelled after
//! the frame had begun (its mark promises the frame, so the frame is finished, but no
//! consumer takes it as a message).

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

use crate::error::{Error, Result};
use crate::ipc::SocketFd;
use crate::ipc::wire::{self, HEADER_LEN};
use crate::sync::{Attempt, OwnerWatch, watch_owner};
use crate::sys::{self, Wait};

/// The status byte of a frame its producer finished.
pub(super) const DELIVERED: u8 = 1;
/// The status byte of a frame whose `put` was cancelled after the frame had begun.
pub(super) const WITHDRAWN: u8 = 0;
/// Bytes after the payload.
pub(super) const TRAILER_LEN: usize = 1;

/// One message taken off the shared stream, not yet decoded.
pub(super) struct RawFrame {
    pub(super) payload: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
    /// Its `put` was cancelled: not a message.
    pub(super) withdrawn: bool,
}

/// Messages whose `get` was cancelled after their frame had begun, read to their end
/// and kept, in order, for the next `get` in this process.
///
/// Every `get` looks here first, and almost always finds nothing: a count read without
/// the lock spares it. The count is raised under the lock before the reader that kept
/// the message releases the queue's read lock, so a `get` that then takes the read
/// lock sees it.
#[derive(Default)]
pub(super) struct Pending {
    count: AtomicUsize,
    frames: Mutex<VecDeque<RawFrame>>,
}

impl Pending {
    fn frames(&self) -> std::sync::MutexGuard<'_, VecDeque<RawFrame>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a message for the next `get`.
    pub(super) fn push(&self, frame: RawFrame) {
        let mut frames = self.frames();
        frames.push_back(frame);
        self.count.store(frames.len(), SeqCst);
    }

    /// The oldest message kept, if any.
    #[inline]
    pub(super) fn pop(&self) -> Option<RawFrame> {
        match self.count.load(SeqCst) {
            0 => None,
            _ => self.pop_locked(),
        }
    }

    #[cold]
    fn pop_locked(&self) -> Option<RawFrame> {
        let mut frames = self.frames();
        let frame = frames.pop_front();
        self.count.store(frames.len(), SeqCst);
        frame
    }

    /// Drops every message kept.
    pub(super) fn clear(&self) {
        let mut frames = self.frames();
        frames.clear();
        self.count.store(0, SeqCst);
    }
}

/// The read of a frame whose `get` was cancelled after the frame had begun, until it is
/// finished: by a task of the runtime the `get` ran in, or by the next waiting `get` of
/// this process, whichever comes first. A blocking `get` on the thread of a
/// current-thread runtime could not wait for that runtime's task (the task cannot run
/// while the thread blocks), so it takes the read over. There is at most one: the read
/// holds the queue's read lock.
#[derive(Default)]
pub(super) struct UnfinishedRead {
    /// Whether `read` holds one, read without the lock by every `get`.
    present: AtomicBool,
    read: Mutex<Option<FrameRead>>,
}

impl UnfinishedRead {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<FrameRead>> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves a read to be finished.
    pub(super) fn leave(&self, read: FrameRead) {
        let mut slot = self.slot();
        *slot = Some(read);
        self.present.store(true, SeqCst);
    }

    /// Takes the read over, if there is one.
    #[inline]
    pub(super) fn adopt(&self) -> Option<FrameRead> {
        match self.present.load(SeqCst) {
            false => None,
            true => self.adopt_locked(),
        }
    }

    #[cold]
    fn adopt_locked(&self) -> Option<FrameRead> {
        let mut slot = self.slot();
        self.present.store(false, SeqCst);
        slot.take()
    }

    /// One attempt of a task at the read: `Ready(None)` once there is none left to
    /// finish (a `get` took it over), else `Ready(Some(outcome))` once it is finished.
    /// A task waiting for the socket when a `get` takes the read over is woken by the
    /// bytes that `get` waits for, and then ends.
    pub(super) fn attempt<'q>(
        &self,
        reader: &'q SocketFd,
        writer: &AtomicU64,
    ) -> Result<Attempt<'q, Option<Result<RawFrame>>>> {
        let mut slot = self.slot();
        let Some(read) = slot.as_mut() else {
            return Ok(Attempt::Ready(None));
        };
        let outcome = match read.attempt(reader, writer) {
            Ok(Attempt::Again) => return Ok(Attempt::Again),
            Ok(Attempt::Wait(wait)) => return Ok(Attempt::Wait(wait)),
            Ok(Attempt::Ready(frame)) => Ok(frame),
            Err(err) => Err(err),
        };
        *slot = None;
        self.present.store(false, SeqCst);
        Ok(Attempt::Ready(Some(outcome)))
    }
}

#[derive(Clone, Copy)]
enum Part {
    Header,
    Payload,
    Trailer,
}

/// One frame read piece by piece as it arrives, never past its end, by attempts that
/// never wait (see [`attempt`](Self::attempt)). It borrows nothing, so that a read
/// whose `get` was cancelled can be handed to a task that finishes it.
pub(super) struct FrameRead {
    writer: WriterWatch,
    header: [u8; HEADER_LEN],
    header_got: usize,
    payload: Option<Vec<u8>>,
    payload_got: usize,
    trailer: [u8; TRAILER_LEN],
    trailer_got: usize,
    fds: Vec<OwnedFd>,
    control: Vec<u8>,
}

impl FrameRead {
    /// Starts reading the frame of a socket entry just taken from the ring, under the
    /// read lock.
    pub(super) fn new() -> Self {
        FrameRead {
            writer: WriterWatch { watching: None },
            header: [0; HEADER_LEN],
            header_got: 0,
            payload: None,
            payload_got: 0,
            trailer: [0; TRAILER_LEN],
            trailer_got: 0,
            fds: Vec::new(),
            control: sys::control_buffer(),
        }
    }

    fn part(&self) -> Part {
        match &self.payload {
            None => Part::Header,
            Some(payload) if self.payload_got < payload.len() => Part::Payload,
            Some(_) => Part::Trailer,
        }
    }

    /// One receive into whatever part is missing. `Ok(None)`: end of stream.
    fn receive(&mut self, reader: &SocketFd) -> io::Result<Option<usize>> {
        let part = self.part();
        let target = match part {
            Part::Header => &mut self.header[self.header_got..],
            Part::Payload => &mut self.payload.as_mut().expect("header read")[self.payload_got..],
            Part::Trailer => &mut self.trailer[self.trailer_got..],
        };
        let n = sys::recv_with_fds(
            reader.fd(),
            target,
            &mut self.control,
            &mut self.fds,
            Wait::No,
        )?;
        match (n, part) {
            (0, _) => return Ok(None),
            (n, Part::Header) => self.header_got += n,
            (n, Part::Payload) => self.payload_got += n,
            (n, Part::Trailer) => self.trailer_got += n,
        }
        Ok(Some(n))
    }

    /// Reads what has arrived, without waiting: the frame, or what to wait for (the
    /// socket, or the death of the producer that owes the rest). `writer` is the
    /// queue's word naming the producer writing a frame.
    pub(super) fn attempt<'q>(
        &mut self,
        reader: &'q SocketFd,
        writer: &AtomicU64,
    ) -> Result<Attempt<'q, RawFrame>> {
        loop {
            if self.header_got == HEADER_LEN && self.payload.is_none() {
                let header = wire::read_header(&self.header, wire::DEFAULT_MAX_FRAME_LEN)?;
                self.payload = Some(vec![0u8; header.len]);
            }
            if self.trailer_got == TRAILER_LEN {
                return Ok(Attempt::Ready(RawFrame {
                    payload: self.payload.take().expect("header read"),
                    fds: std::mem::take(&mut self.fds),
                    withdrawn: self.trailer[0] != DELIVERED,
                }));
            }
            match self.receive(reader) {
                Ok(Some(_)) => {}
                Ok(None) if self.header_got == 0 => {
                    return Err(Error::Protocol(
                        "the queue's stream ended before a marked message".into(),
                    ));
                }
                Ok(None) => {
                    return Err(Error::Protocol(
                        "the queue's stream ended in the middle of a message".into(),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let owner = self.writer.owing(reader, writer)?;
                    return Ok(Attempt::Wait(crate::sync::Wait::Readable {
                        socket: reader,
                        owner,
                    }));
                }
                Err(e) => {
                    return Err(crate::limits::receive_error(e).map_or_else(|l| l, Error::from_io));
                }
            }
        }
    }
}

/// Whether the whole frame at the head of the socket has arrived, so that reading it
/// takes no waiting. The caller holds the read lock and has found a socket entry at
/// the head of the ring, so the socket's unread bytes start with its frame.
pub(super) fn arrived(reader: &SocketFd, writer: &AtomicU64) -> Result<bool> {
    if writer.load(SeqCst) == 0 {
        // No producer is between its mark and the end of its frame.
        return Ok(true);
    }
    let mut header = [0u8; HEADER_LEN];
    if reader.peek(&mut header)? < HEADER_LEN {
        return Ok(false);
    }
    let len = wire::read_header(&header, wire::DEFAULT_MAX_FRAME_LEN)?.len;
    Ok(reader.unread_len()? >= HEADER_LEN + len + TRAILER_LEN)
}

/// The producer writing the frame a consumer reads, by its token in the queue's
/// shared word; the watch on it is opened once per producer.
struct WriterWatch {
    watching: Option<(u64, Option<OwnerWatch>)>,
}

impl WriterWatch {
    /// The watch on the producer that still owes bytes, `None` if none does (the frame
    /// is whole in the socket). A producer that is gone while nothing more can be read
    /// will never finish its frame: `OwnerDied`.
    fn owing(&mut self, reader: &SocketFd, writer: &AtomicU64) -> Result<Option<OwnerWatch>> {
        let token = writer.load(SeqCst);
        if token == 0 {
            return Ok(None);
        }
        if self.watching.as_ref().map(|(t, _)| *t) != Some(token) {
            self.watching = Some((token, watch_owner(token)?));
        }
        let watch = self.watching.as_ref().and_then(|(_, w)| w.clone());
        let alive = match &watch {
            Some(watch) => !sys::poll_one(watch.fd(), false, 0)?,
            None => false,
        };
        if alive {
            return Ok(watch);
        }
        match sys::poll_one(reader.fd(), false, 0)? {
            true => Ok(None),
            false => Err(Error::OwnerDied {
                pid: (token >> 32) as u32,
            }),
        }
    }
}
