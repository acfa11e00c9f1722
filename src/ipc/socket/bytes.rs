//! Frames of raw bytes, moved between the caller's buffer and the socket without a
//! copy through the connection's own buffers when they are large.
//!
//! A bytes frame carries exactly what `serde_bytes` makes of a byte slice (a varint
//! length, then the bytes), so one side may send raw bytes and the other receive a
//! `serde_bytes::ByteBuf`, or the reverse.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::task::{Context, Poll, ready};

use super::{ReadHalf, WriteHalf, wait_ready};
use crate::error::{Error, Result};
use crate::ipc::wire::{self, HEADER_LEN};
use crate::sys::{self, Wait};

/// Payloads at least this large skip the connection's buffers (smaller ones are cheaper
/// to copy than to send or receive separately).
const DIRECT: usize = 64 << 10;
/// A frame header followed by the longest varint of a length.
const PREFIX_MAX: usize = HEADER_LEN + 10;

/// The header and varint length that precede `len` raw bytes on the wire.
struct Prefix {
    bytes: [u8; PREFIX_MAX],
    len: usize,
}

impl Prefix {
    fn new(len: usize, max_frame_len: usize) -> Result<Prefix> {
        let mut bytes = [0u8; PREFIX_MAX];
        let varint = postcard::to_slice(&(len as u64), &mut bytes[HEADER_LEN..])
            .map_err(|e| Error::Encode(e.to_string()))?
            .len();
        let payload = varint + len;
        if payload > max_frame_len || payload > u32::MAX as usize {
            return Err(Error::FrameTooLarge {
                len: payload as u64,
                max: max_frame_len,
            });
        }
        wire::write_header(&mut bytes[..HEADER_LEN], payload, 0);
        Ok(Prefix {
            bytes,
            len: HEADER_LEN + varint,
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Splits a frame's payload into its raw bytes, checking it is a bytes frame.
fn raw_bytes(payload: &[u8], n_fds: usize) -> Result<&[u8]> {
    let not_bytes = || Error::Decode("the frame does not hold raw bytes".into());
    if n_fds > 0 {
        return Err(not_bytes());
    }
    let (len, rest) = postcard::take_from_bytes::<u64>(payload).map_err(|_| not_bytes())?;
    if len != rest.len() as u64 {
        return Err(not_bytes());
    }
    Ok(rest)
}

/// The bytes of a frame's payload that are the varint length, if a bytes frame of
/// `payload_len` starts with `start`; `None` if `start` does not hold the whole varint
/// yet or the frame is not one of raw bytes.
fn varint_len(start: &[u8], payload_len: usize) -> Option<usize> {
    let (len, rest) = postcard::take_from_bytes::<u64>(start).ok()?;
    let varint = start.len() - rest.len();
    (len == (payload_len - varint) as u64).then_some(varint)
}

impl WriteHalf {
    /// Sends one frame of raw bytes; a large one goes from `bytes` to the socket
    /// directly. If the future is dropped part way, what is unsent is buffered and goes
    /// out with the next flush, so the frame stays whole.
    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() < DIRECT {
            self.encode(serde_bytes::Bytes::new(bytes))?;
            return std::future::poll_fn(|cx| self.poll_flush(cx)).await;
        }
        let prefix = Prefix::new(bytes.len(), self.max_frame_len)?;
        // Frames buffered earlier go first.
        std::future::poll_fn(|cx| self.poll_flush(cx)).await?;
        let mut send = DirectSend {
            write: self,
            prefix,
            bytes,
            sent: 0,
        };
        std::future::poll_fn(|cx| send.poll(cx)).await
    }

    /// [`send_bytes`](Self::send_bytes), blocking the calling thread.
    pub(crate) fn send_bytes_blocking(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() < DIRECT {
            self.encode(serde_bytes::Bytes::new(bytes))?;
            return self.flush_blocking();
        }
        let prefix = Prefix::new(bytes.len(), self.max_frame_len)?;
        self.flush_blocking()?;
        let total = prefix.len + bytes.len();
        let mut sent = 0;
        while sent < total {
            let slices = unsent(prefix.as_slice(), bytes, sent);
            match sys::send_with_fds(self.sock.fd(), &slices, &[], Wait::Block) {
                Ok(n) => sent += n,
                // Someone made the shared socket non-blocking: wait by hand.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let sock = self.sock.clone();
                    wait_ready(sock.fd(), true, None, None)?;
                }
                Err(e) => return Err(Error::from_io(e)),
            }
        }
        Ok(())
    }
}

/// What is left to send of `prefix` then `bytes` once `sent` bytes went out.
fn unsent<'a>(prefix: &'a [u8], bytes: &'a [u8], sent: usize) -> [IoSlice<'a>; 2] {
    let in_prefix = sent.min(prefix.len());
    let in_bytes = sent - in_prefix;
    [
        IoSlice::new(&prefix[in_prefix..]),
        IoSlice::new(&bytes[in_bytes..]),
    ]
}

/// A large bytes frame on its way from the caller's slice to the socket.
struct DirectSend<'a> {
    write: &'a mut WriteHalf,
    prefix: Prefix,
    bytes: &'a [u8],
    sent: usize,
}

impl DirectSend<'_> {
    fn total(&self) -> usize {
        self.prefix.len + self.bytes.len()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self;
        while this.sent < this.total() {
            let slices = unsent(this.prefix.as_slice(), this.bytes, this.sent);
            let full = match sys::send_with_fds(this.write.sock.fd(), &slices, &[], Wait::No) {
                Ok(n) => {
                    this.sent += n;
                    this.sent < this.total()
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) => {
                    // The connection is gone: nothing of this frame is to be kept.
                    this.sent = this.total();
                    return Poll::Ready(Err(Error::from_io(e)));
                }
            };
            if full {
                this.write.flush_waited = true;
                ready!(this.write.poll_room(cx))?;
            }
        }
        if !std::mem::take(&mut this.write.flush_waited) {
            this.write.writable = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for DirectSend<'_> {
    fn drop(&mut self) {
        if self.sent < self.total() {
            // The write buffer was empty when this frame started, so its rest goes
            // first: the next flush completes the frame.
            let [prefix, bytes] = unsent(self.prefix.as_slice(), self.bytes, self.sent);
            self.write.buf.extend_from_slice(&prefix);
            self.write.buf.extend_from_slice(&bytes);
        }
    }
}

impl ReadHalf {
    /// Takes the next bytes frame into `out` if it is complete, or, for a large one of
    /// which only the start has arrived, moves that start into `out` and arranges for
    /// the rest to be read straight into it.
    fn next_bytes(&mut self, out: &mut Vec<u8>) -> Option<Result<()>> {
        match self.direct {
            Some(0) => {
                self.direct = None;
                return Some(Ok(()));
            }
            Some(_) => return None,
            None => {}
        }
        let header = match self.buffered_header()? {
            Ok(header) => header,
            Err(err) => return Some(Err(err)),
        };
        let payload_start = self.start + HEADER_LEN;
        if self.end - self.start >= HEADER_LEN + header.len {
            // Descriptors of a frame that is not one of bytes are closed with it.
            if let Err(err) = self.take_fds(header.n_fds) {
                return Some(Err(err));
            }
            let frame_end = payload_start + header.len;
            let taken = raw_bytes(&self.buf[payload_start..frame_end], header.n_fds).map(|b| {
                out.clear();
                out.extend_from_slice(b);
            });
            self.consume(frame_end);
            return Some(taken);
        }
        if header.len < DIRECT || header.n_fds > 0 {
            return None;
        }
        // Anything else (a typed frame, say) is read whole and refused when complete.
        let varint = varint_len(&self.buf[payload_start..self.end], header.len)?;
        let arrived = &self.buf[payload_start + varint..self.end];
        out.clear();
        out.reserve_exact(header.len - varint);
        out.extend_from_slice(arrived);
        // Everything buffered belongs to this frame, which is incomplete.
        self.direct = Some(header.len - varint - arrived.len());
        self.start = 0;
        self.end = 0;
        None
    }

    /// One receive of the rest of a direct frame into `out`.
    pub(super) fn read_direct(
        &mut self,
        fd: BorrowedFd<'_>,
        wait: Wait,
        out: &mut Vec<u8>,
        missing: usize,
    ) -> Result<(usize, usize)> {
        let got = match sys::recv_into_spare(fd, out, missing, wait) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(Error::Io(e)),
        };
        if got == 0 {
            self.state = super::ReadState::Eof;
            return Ok((0, missing));
        }
        self.direct = Some(missing - got);
        Ok((got, missing))
    }

    /// Gives back a direct frame cut short (its receive was cancelled or timed out):
    /// its bytes return to the buffer as the start of the frame, to be read as usual.
    fn restore_direct(&mut self, out: &mut Vec<u8>) {
        let Some(missing) = self.direct.take() else {
            return;
        };
        let Ok(prefix) = Prefix::new(out.len() + missing, usize::MAX) else {
            return;
        };
        let mut buf = Vec::with_capacity(prefix.len + out.len());
        buf.extend_from_slice(prefix.as_slice());
        buf.append(out);
        self.end = buf.len();
        self.start = 0;
        self.buf = buf;
    }

    /// Receives the next bytes frame into `out`.
    pub(crate) async fn recv_bytes(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let mut recv = DirectRecv { read: self, out };
        std::future::poll_fn(|cx| recv.poll(cx)).await
    }

    /// Receives the next bytes frame into `out`, blocking at most `timeout`.
    pub(crate) fn recv_bytes_blocking(
        &mut self,
        out: &mut Vec<u8>,
        timeout: Option<std::time::Duration>,
    ) -> Result<()> {
        let got = self.next_blocking_with(timeout, out, ReadHalf::next_bytes);
        self.restore_direct(out);
        got.unwrap_or(Err(Error::Disconnected))
    }
}

/// A bytes frame being received into the caller's buffer.
struct DirectRecv<'a> {
    read: &'a mut ReadHalf,
    out: &'a mut Vec<u8>,
}

impl DirectRecv<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let got = ready!(self.read.poll_next_with(cx, self.out, ReadHalf::next_bytes));
        Poll::Ready(got.unwrap_or(Err(Error::Disconnected)))
    }
}

impl Drop for DirectRecv<'_> {
    fn drop(&mut self) {
        self.read.restore_direct(self.out);
    }
}
