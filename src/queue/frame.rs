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
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::error::{Error, Result};
use crate::ipc::SocketFd;
use crate::ipc::wire::{self, HEADER_LEN};
use crate::sync::{OwnerWatch, watch_owner};
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
pub(super) type Pending = Mutex<VecDeque<RawFrame>>;

/// Where a frame read stands: finished, or waiting for more bytes.
pub(super) enum Step {
    Done(RawFrame),
    /// Nothing to read right now: wait for the socket or the writer's death.
    Wait,
}

#[derive(Clone, Copy)]
enum Part {
    Header,
    Payload,
    Trailer,
}

/// One frame read piece by piece as it arrives, never past its end. If the read is
/// dropped part way (a cancelled `get`), the rest of the frame is read (blocking: it
/// is already on its way) and the message kept in `pending`, so that the next consumer
/// starts at a frame boundary and nothing is lost.
pub(super) struct FrameRead<'a> {
    reader: &'a SocketFd,
    writer: WriterWatch<'a>,
    pending: &'a Pending,
    header: [u8; HEADER_LEN],
    header_got: usize,
    payload: Option<Vec<u8>>,
    payload_got: usize,
    trailer: [u8; TRAILER_LEN],
    trailer_got: usize,
    fds: Vec<OwnedFd>,
    control: Vec<u8>,
    done: bool,
}

impl<'a> FrameRead<'a> {
    /// Starts reading the frame of a socket entry just taken from the ring, under the
    /// read lock. `writer` is the queue's word naming the producer writing a frame.
    pub(super) fn new(reader: &'a SocketFd, writer: &'a AtomicU64, pending: &'a Pending) -> Self {
        FrameRead {
            reader,
            writer: WriterWatch {
                writer,
                watching: None,
            },
            pending,
            header: [0; HEADER_LEN],
            header_got: 0,
            payload: None,
            payload_got: 0,
            trailer: [0; TRAILER_LEN],
            trailer_got: 0,
            fds: Vec::new(),
            control: sys::control_buffer(),
            done: false,
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
    fn receive(&mut self) -> io::Result<Option<usize>> {
        let part = self.part();
        let target = match part {
            Part::Header => &mut self.header[self.header_got..],
            Part::Payload => &mut self.payload.as_mut().expect("header read")[self.payload_got..],
            Part::Trailer => &mut self.trailer[self.trailer_got..],
        };
        let n = sys::recv_with_fds(
            self.reader.fd(),
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

    /// Reads what has arrived, without waiting: the frame, or `Step::Wait`.
    pub(super) fn step(&mut self) -> Result<Step> {
        let step = self.try_step();
        // A frame that cannot be read is not read again on drop.
        self.done |= step.is_err();
        step
    }

    fn try_step(&mut self) -> Result<Step> {
        loop {
            if self.header_got == HEADER_LEN && self.payload.is_none() {
                let header = wire::read_header(&self.header, wire::DEFAULT_MAX_FRAME_LEN)?;
                self.payload = Some(vec![0u8; header.len]);
            }
            if self.trailer_got == TRAILER_LEN {
                self.done = true;
                return Ok(Step::Done(RawFrame {
                    payload: self.payload.take().expect("header read"),
                    fds: std::mem::take(&mut self.fds),
                    withdrawn: self.trailer[0] != DELIVERED,
                }));
            }
            match self.receive() {
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Wait),
                Err(e) => return Err(Error::from_io(e)),
            }
        }
    }

    /// Completes the frame, waiting through tokio's reactor.
    pub(super) async fn run(&mut self) -> Result<RawFrame> {
        loop {
            match self.step()? {
                Step::Done(frame) => return Ok(frame),
                Step::Wait => self.writer.wait(self.reader).await?,
            }
        }
    }

    /// Completes the frame, blocking the thread.
    pub(super) fn run_blocking(&mut self) -> Result<RawFrame> {
        loop {
            match self.step()? {
                Step::Done(frame) => return Ok(frame),
                Step::Wait => self.writer.wait_blocking(self.reader)?,
            }
        }
    }
}

impl Drop for FrameRead<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The entry is taken: its frame is ours to read, cancelled or not.
        match self.run_blocking() {
            Ok(frame) if !frame.withdrawn => {
                tracing::debug!(
                    "queue get cancelled in the middle of a message; kept for the next get"
                );
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(frame);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "queue get cancelled; its message could not be read"),
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
struct WriterWatch<'a> {
    writer: &'a AtomicU64,
    watching: Option<(u64, Option<OwnerWatch>)>,
}

impl WriterWatch<'_> {
    /// The watch on the producer that still owes bytes, `None` if none does (the frame
    /// is whole in the socket). A producer that is gone while nothing more can be read
    /// will never finish its frame: `OwnerDied`.
    fn owing(&mut self, reader: &SocketFd) -> Result<Option<&OwnerWatch>> {
        let token = self.writer.load(SeqCst);
        if token == 0 {
            return Ok(None);
        }
        if self.watching.as_ref().map(|(t, _)| *t) != Some(token) {
            self.watching = Some((token, watch_owner(token)?));
        }
        let watch = self.watching.as_ref().and_then(|(_, w)| w.as_ref());
        let alive = match watch {
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

    /// Waits until the socket is readable or the producer owing bytes is gone.
    async fn wait(&mut self, reader: &SocketFd) -> Result<()> {
        match self.owing(reader)? {
            None => reader.readable().await,
            Some(watch) => {
                tokio::select! {
                    ready = reader.readable() => ready,
                    died = watch.died() => died,
                }
            }
        }
    }

    /// [`wait`](Self::wait), blocking the thread in `poll(2)`.
    fn wait_blocking(&mut self, reader: &SocketFd) -> Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let watch = self.owing(reader)?;
        let mut fds = vec![PollFd::new(reader.fd(), PollFlags::POLLIN)];
        if let Some(watch) = watch {
            fds.push(PollFd::new(watch.fd(), PollFlags::POLLIN));
        }
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Io(e.into())),
            }
        }
    }
}
