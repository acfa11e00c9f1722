//! A Unix stream socket split into a framed reader and a framed writer. The socket stays
//! in blocking mode: async calls ask for non-blocking behaviour per call
//! (`MSG_DONTWAIT`), so blocking calls simply block.
//!
//! Both halves work asynchronously (readiness from tokio's reactor, registered lazily on
//! first use) and blocking (`poll(2)`, for children that run no runtime). We do our own
//! framing instead of `tokio_util::codec` because descriptors must travel with the bytes
//! of their frame, which needs `sendmsg`/`recvmsg`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::wire::{self, HEADER_LEN};
use crate::error::{Error, Result};
use crate::sys::reactor::ReadableFd;
use crate::sys::{self, Wait};

mod bytes;

/// The smallest read we issue, so that many small frames arrive in one syscall.
const READ_CHUNK: usize = 64 << 10;
/// The first read of a stream takes this much: most streams (a child's control socket
/// above all) carry a few small frames in their life, and a process awaiting 10,000
/// children should not hold 64 KiB for each.
const FIRST_READ_CHUNK: usize = 4 << 10;
/// Receive buffers larger than this are released once drained.
const KEEP_BUFFER: usize = 4 << 20;
/// Descriptors that may wait for their frame; a peer sending more is misbehaving.
const MAX_QUEUED_FDS: usize = 4 * sys::MAX_FDS_PER_MESSAGE;
/// `Sink::poll_ready` flushes once this much is buffered.
pub(crate) const WRITE_HIGH_WATER: usize = 256 << 10;

/// The socket both halves share; registered with the reactor on first async read.
///
/// The shared registration asks for readability only. Were it to ask for writability
/// too, every time the peer drained some bytes the reactor would wake us for nothing
/// (an `EPOLLOUT` edge), which costs two context switches per round trip on one CPU.
/// A writer that finds the socket full registers a duplicate descriptor for
/// writability instead, and only until the buffer is flushed.
pub(crate) struct SocketFd {
    fd: ReadableFd,
    // Only Unix sockets carry descriptors; a TCP socket would drop them silently.
    passes_fds: bool,
}

impl SocketFd {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Arc<SocketFd>> {
        let passes_fds = !is_network_socket(fd.as_fd());
        Ok(Arc::new(SocketFd {
            fd: ReadableFd::new(fd),
            passes_fds,
        }))
    }

    /// A Unix socket whose bytes are relayed to a network connection (TLS): it would
    /// carry descriptors, but they would stop at the relay.
    pub(crate) fn relayed(fd: OwnedFd) -> Arc<SocketFd> {
        Arc::new(SocketFd {
            fd: ReadableFd::new(fd),
            passes_fds: false,
        })
    }

    /// Refuses descriptors this socket cannot carry, before any byte of their frame is
    /// buffered.
    fn check_fds_allowed(&self, n_fds: usize) -> Result<()> {
        if n_fds == 0 || self.passes_fds {
            return Ok(());
        }
        Err(Error::Encode(format!(
            "this message carries {n_fds} descriptor(s) (a pipe, queue, lock or other \
             handle), and descriptors cannot cross a network connection: only a Unix \
             socket carries them"
        )))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.fd()
    }

    /// Waits until the socket is readable (or at end of stream).
    pub(crate) async fn readable(&self) -> Result<()> {
        let reg = self.registration()?;
        loop {
            let mut guard = reg.readable().await?;
            if sys::poll_one(self.fd(), false, 0)? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    fn registration(&self) -> io::Result<&AsyncFd<crate::sys::reactor::Raw>> {
        self.fd.registration()
    }

    /// Bytes that have arrived and are not yet read.
    pub(crate) fn unread_len(&self) -> io::Result<usize> {
        self.ioctl_len(libc::FIONREAD)
    }

    /// Whether a send of `len` payload bytes now takes all of them at once. The kernel
    /// charges each buffer it queues at its true size (the bytes, plus a header and
    /// page rounding per piece of at most 32 KiB), and lets a sender queue while the
    /// total is below `SO_SNDBUF`: counting a generous 8 KiB per piece keeps the answer
    /// on the safe side.
    pub(crate) fn takes_at_once(&self, len: usize) -> io::Result<bool> {
        let limit = nix::sys::socket::getsockopt(&self.fd(), nix::sys::socket::sockopt::SndBuf)
            .map_err(io::Error::from)?;
        let queued = self.ioctl_len(libc::TIOCOUTQ)?;
        let charged = len + (len / (32 << 10) + 1) * (8 << 10);
        Ok(queued.saturating_add(charged) <= limit)
    }

    fn ioctl_len(&self, request: libc::Ioctl) -> io::Result<usize> {
        let mut len: libc::c_int = 0;
        // SAFETY: FIONREAD and SIOCOUTQ (TIOCOUTQ) on a socket write one int at the
        // pointer, which points at a live local.
        let rc = unsafe { libc::ioctl(self.fd().as_raw_fd(), request, &mut len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(len.max(0) as usize)
    }

    /// Copies the first bytes waiting on the socket into `buf` without taking them;
    /// returns how many were there. Never waits. Descriptors that came with them stay
    /// queued too (without a control buffer the kernel installs none).
    pub(crate) fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, recv};
        loop {
            match recv(
                self.fd().as_raw_fd(),
                buf,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether `fd` is an IP socket (TCP), whose `sendmsg` ignores `SCM_RIGHTS`. Anything
/// that cannot be asked is treated as a Unix socket, as before.
fn is_network_socket(fd: BorrowedFd<'_>) -> bool {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};
    getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|addr| addr.family())
        .is_some_and(|family| matches!(family, AddressFamily::Inet | AddressFamily::Inet6))
}

enum ReadState {
    Open,
    /// The peer closed its end.
    Eof,
    /// A framing error was reported; nothing more will be read.
    Broken,
}

/// Reads whole frames, with their descriptors.
pub(crate) struct ReadHalf {
    sock: Arc<SocketFd>,
    // Always fully initialised; unread bytes are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    control: Vec<u8>,
    max_frame_len: usize,
    state: ReadState,
    // Payload bytes of a large bytes frame still to be read straight into the caller's
    // buffer (see `bytes.rs`); `Some(0)` once all of it has arrived.
    direct: Option<usize>,
}

impl ReadHalf {
    pub(crate) fn new(sock: Arc<SocketFd>) -> ReadHalf {
        ReadHalf {
            sock,
            buf: Vec::new(),
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            control: sys::control_buffer(),
            max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
            state: ReadState::Open,
            direct: None,
        }
    }

    pub(crate) fn socket(&self) -> &Arc<SocketFd> {
        &self.sock
    }

    pub(crate) fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }

    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    pub(crate) fn has_buffered(&self) -> bool {
        self.end > self.start || !self.fds.is_empty()
    }

    /// Decodes the next frame if it is complete in the buffer. A framing error breaks
    /// the half; a payload that fails to decode only costs that frame.
    fn next_buffered<T: DeserializeOwned>(&mut self) -> Option<Result<T>> {
        let header = match self.buffered_header()? {
            Ok(header) => header,
            Err(err) => return Some(Err(err)),
        };
        if self.end - self.start < HEADER_LEN + header.len {
            return None;
        }
        let fds = match self.take_fds(header.n_fds) {
            Ok(fds) => fds,
            Err(err) => return Some(Err(err)),
        };
        let payload = self.start + HEADER_LEN..self.start + HEADER_LEN + header.len;
        let value = wire::decode_payload(&self.buf[payload.clone()], fds);
        self.consume(payload.end);
        Some(value)
    }

    /// The header of the next frame, once it has arrived; a bad one breaks the half.
    fn buffered_header(&mut self) -> Option<Result<wire::Header>> {
        if self.end - self.start < HEADER_LEN {
            return None;
        }
        match wire::read_header(&self.buf[self.start..self.end], self.max_frame_len) {
            Ok(header) => Some(Ok(header)),
            Err(err) => Some(self.fail(err)),
        }
    }

    /// The descriptors of a complete frame, which arrived with its first bytes.
    fn take_fds(&mut self, n_fds: usize) -> Result<Vec<OwnedFd>> {
        if self.fds.len() < n_fds {
            let msg = format!(
                "frame announces {n_fds} descriptors but {} arrived",
                self.fds.len()
            );
            return self.fail(Error::Protocol(msg));
        }
        Ok(self.fds.drain(..n_fds).collect())
    }

    fn consume(&mut self, upto: usize) {
        self.start = upto;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
        }
    }

    fn fail<T>(&mut self, err: Error) -> Result<T> {
        self.state = ReadState::Broken;
        self.start = 0;
        self.end = 0;
        self.direct = None;
        self.fds.clear();
        Err(err)
    }

    /// What the stream yields once the peer has closed, given what is left unread.
    fn at_eof<T>(&mut self) -> Option<Result<T>> {
        match self.state {
            ReadState::Broken => None,
            _ if self.end > self.start || self.direct.is_some() => {
                let msg = format!(
                    "peer closed the connection in the middle of a frame ({} bytes pending)",
                    self.end - self.start
                );
                Some(self.fail(Error::Protocol(msg)))
            }
            _ => None,
        }
    }

    /// Bytes still to come of the frame whose header is buffered, if one is.
    fn missing_of_current_frame(&self) -> Option<usize> {
        let available = self.end - self.start;
        if available < HEADER_LEN {
            return None;
        }
        // The header was validated by `next_buffered`, so the length is bounded.
        let len = u32::from_le_bytes(self.buf[self.start..self.start + 4].try_into().unwrap());
        Some((HEADER_LEN + len as usize).saturating_sub(available))
    }

    /// Makes room for at least the rest of the current frame (or a chunk) after `end`.
    fn reserve_for_next_read(&mut self) {
        let available = self.end - self.start;
        // Room for the rest of the frame, but never more than what has arrived so far
        // (at least a chunk): a peer announcing a huge frame and sending nothing more
        // costs us what it sent, not what it announced.
        let missing = self
            .missing_of_current_frame()
            .unwrap_or_else(|| HEADER_LEN - available);
        let chunk = match self.buf.capacity() {
            0 => FIRST_READ_CHUNK,
            _ => READ_CHUNK,
        };
        let want = chunk.max(missing.min(available));
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
    }

    /// One `recvmsg`, into the buffer or, while a large bytes frame is read directly,
    /// into `direct_into`. Returns the bytes read and the room that was offered; end of
    /// stream is recorded in the state.
    fn read_once(
        &mut self,
        fd: BorrowedFd<'_>,
        wait: Wait,
        direct_into: &mut Vec<u8>,
    ) -> Result<(usize, usize)> {
        if let Some(missing) = self.direct {
            return self.read_direct(fd, wait, direct_into, missing);
        }
        self.reserve_for_next_read();
        let room = self.buf.len() - self.end;
        // The rest of a large frame is read up to its end and no further, so that the
        // buffer empties with it instead of moving the next frame's first bytes down.
        let offered = match self.missing_of_current_frame() {
            Some(missing) if missing >= READ_CHUNK => room.min(missing),
            _ => room,
        };
        let mut fds = Vec::new();
        let space = &mut self.control;
        let into = &mut self.buf[self.end..self.end + offered];
        let got = match sys::recv_with_fds(fd, into, space, &mut fds, wait) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => match crate::limits::receive_error(e) {
                Ok(e) => return Err(Error::Io(e)),
                Err(limit) => return self.fail(limit),
            },
        };
        self.end += got;
        self.fds.extend(fds);
        if self.fds.len() > MAX_QUEUED_FDS {
            return self.fail(Error::Protocol(
                "peer sent descriptors without frames".into(),
            ));
        }
        if got == 0 {
            self.state = ReadState::Eof;
        }
        Ok((got, offered))
    }

    /// Polls for the next frame. `Ready(None)` once the peer closed cleanly or after a
    /// framing error has been reported.
    pub(crate) fn poll_recv<T: DeserializeOwned>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<T>>> {
        self.poll_next_with(cx, &mut Vec::new(), |half, _| half.next_buffered())
    }

    /// Polls until `take` yields the next item from what has been read.
    fn poll_next_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
        mut take: impl FnMut(&mut Self, &mut Vec<u8>) -> Option<Result<T>>,
    ) -> Poll<Option<Result<T>>> {
        loop {
            if let Some(item) = take(self, out) {
                return Poll::Ready(Some(item));
            }
            if !matches!(self.state, ReadState::Open) {
                return Poll::Ready(self.at_eof());
            }
            let sock = self.sock.clone();
            let reg = match sock.registration() {
                Ok(reg) => reg,
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
            };
            let mut guard = match ready!(reg.poll_read_ready(cx)) {
                Ok(guard) => guard,
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
            };
            match self.read_once(sock.fd(), Wait::No, out) {
                // Readiness is kept after a short read: the answer to what we just sent
                // is often already there, and one receive that finds nothing costs
                // less than a turn of the reactor.
                Ok(_) => {}
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// Blocks the calling thread for the next frame; `None` as for [`poll_recv`].
    /// `timeout_ms` of -1 waits forever; on timeout returns `Err(Timeout)`.
    pub(crate) fn recv_blocking<T: DeserializeOwned>(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> Option<Result<T>> {
        self.next_blocking_with(timeout, &mut Vec::new(), |half, _| half.next_buffered())
    }

    /// Blocks until `take` yields the next item from what has been read.
    fn next_blocking_with<T>(
        &mut self,
        timeout: Option<std::time::Duration>,
        out: &mut Vec<u8>,
        mut take: impl FnMut(&mut Self, &mut Vec<u8>) -> Option<Result<T>>,
    ) -> Option<Result<T>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if let Some(item) = take(self, out) {
                return Some(item);
            }
            if !matches!(self.state, ReadState::Open) {
                return self.at_eof();
            }
            let sock = self.sock.clone();
            if deadline.is_some() {
                if let Err(e) = wait_ready(sock.fd(), false, deadline, timeout) {
                    return Some(Err(e));
                }
            }
            let wait = if deadline.is_some() {
                Wait::No
            } else {
                Wait::Block
            };
            match self.read_once(sock.fd(), wait, out) {
                Ok(_) => {}
                // Someone made the socket non-blocking (it is shared): wait by hand.
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = wait_ready(sock.fd(), false, deadline, timeout) {
                        return Some(Err(e));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Reads whatever is already queued on the socket without waiting, then decodes the
    /// next frame if one is complete. Used after a child has exited: all it wrote is in
    /// the socket by then.
    pub(crate) fn recv_now<T: DeserializeOwned>(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(item) = self.next_buffered() {
                return Some(item);
            }
            if !matches!(self.state, ReadState::Open) {
                return self.at_eof();
            }
            let sock = self.sock.clone();
            match self.read_once(sock.fd(), Wait::No, &mut Vec::new()) {
                Ok(_) => continue,
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

fn wait_ready(
    fd: BorrowedFd<'_>,
    writable: bool,
    deadline: Option<std::time::Instant>,
    timeout: Option<std::time::Duration>,
) -> Result<()> {
    let ms = match deadline {
        None => -1,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    after: timeout.unwrap_or_default(),
                });
            }
            left.as_millis().clamp(1, i32::MAX as u128) as i32
        }
    };
    sys::poll_one(fd, writable, ms)?;
    Ok(())
}

/// Encodes frames into a buffer and writes them out, descriptors attached to the first
/// bytes of their frame.
pub(crate) struct WriteHalf {
    sock: Arc<SocketFd>,
    buf: Vec<u8>,
    pos: usize,
    // (offset of a frame in `buf`, the descriptors it carries), in offset order.
    fd_marks: VecDeque<(usize, Vec<OwnedFd>)>,
    max_frame_len: usize,
    // Registered when a flush first finds the socket full, and kept while flushes keep
    // finding it full (a stream of large messages); dropped after a flush that never
    // had to wait, so that an idle or request-reply connection is not woken each time
    // the peer drains its buffer.
    writable: Option<AsyncFd<OwnedFd>>,
    // Whether the flush in progress has waited for room.
    flush_waited: bool,
}

impl WriteHalf {
    pub(crate) fn new(sock: Arc<SocketFd>) -> WriteHalf {
        WriteHalf {
            sock,
            buf: Vec::new(),
            pos: 0,
            fd_marks: VecDeque::new(),
            max_frame_len: wire::DEFAULT_MAX_FRAME_LEN,
            writable: None,
            flush_waited: false,
        }
    }

    pub(crate) fn socket(&self) -> &Arc<SocketFd> {
        &self.sock
    }

    pub(crate) fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }

    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends a frame for `value` to the outgoing buffer.
    pub(crate) fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let offset = self.buf.len();
        let fds = wire::encode_frame(value, &mut self.buf, self.max_frame_len)?;
        if let Err(err) = self.sock.check_fds_allowed(fds.len()) {
            self.buf.truncate(offset);
            return Err(err);
        }
        if !fds.is_empty() {
            self.fd_marks.push_back((offset, fds));
        }
        Ok(())
    }

    /// Appends a frame for a payload encoded already (by `wire::encode_value`).
    pub(crate) fn push_encoded(&mut self, payload: &[u8], fds: Vec<OwnedFd>) -> Result<()> {
        if payload.len() > self.max_frame_len || payload.len() > u32::MAX as usize {
            return Err(Error::FrameTooLarge {
                len: payload.len() as u64,
                max: self.max_frame_len,
            });
        }
        if fds.len() > sys::MAX_FDS_PER_MESSAGE {
            return Err(Error::Encode(format!(
                "a message may carry at most {} descriptors, this one has {}",
                sys::MAX_FDS_PER_MESSAGE,
                fds.len()
            )));
        }
        self.sock.check_fds_allowed(fds.len())?;
        let offset = self.buf.len();
        self.buf.resize(offset + wire::HEADER_LEN, 0);
        wire::write_header(&mut self.buf[offset..], payload.len(), fds.len());
        self.buf.extend_from_slice(payload);
        if !fds.is_empty() {
            self.fd_marks.push_back((offset, fds));
        }
        Ok(())
    }

    /// Appends bytes as they are, outside any frame (a trailer the reader expects).
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Replaces the last buffered byte if it is not sent yet; whether it was.
    pub(crate) fn replace_last_unsent(&mut self, byte: u8) -> bool {
        match self.buffered() {
            0 => false,
            _ => {
                *self.buf.last_mut().expect("bytes buffered") = byte;
                true
            }
        }
    }

    /// One `sendmsg` of the bytes up to the next frame that carries descriptors.
    /// Returns whether everything offered was taken.
    fn write_once(&mut self, wait: Wait) -> io::Result<bool> {
        let fds: Vec<RawFd> = match self.fd_marks.front() {
            Some((offset, fds)) if *offset == self.pos => {
                fds.iter().map(|f| f.as_raw_fd()).collect()
            }
            _ => Vec::new(),
        };
        let stop = self
            .fd_marks
            .iter()
            .map(|(offset, _)| *offset)
            .find(|offset| *offset > self.pos)
            .unwrap_or(self.buf.len());
        let offered = &self.buf[self.pos..stop];
        let n = sys::send_with_fds(self.sock.fd(), &[IoSlice::new(offered)], &fds, wait)?;
        let complete = n == offered.len();
        if !fds.is_empty() && n > 0 {
            self.fd_marks.pop_front();
        }
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
        }
        Ok(complete)
    }

    /// Writes out everything buffered.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        while self.buffered() > 0 {
            let full = match self.write_once(Wait::No) {
                Ok(complete) => !complete,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) => return Poll::Ready(Err(Error::from_io(e))),
            };
            if full {
                self.flush_waited = true;
                ready!(self.poll_room(cx))?;
            }
        }
        if !std::mem::take(&mut self.flush_waited) {
            self.writable = None;
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until the socket has room again, registering for writability on first need.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.writable.is_none() {
            if tokio::runtime::Handle::try_current().is_err() {
                return Poll::Ready(Err(Error::Io(io::Error::other(
                    "async I/O outside a tokio runtime; use the *_blocking methods instead",
                ))));
            }
            let dup = sys::dup_cloexec(self.sock.fd(), 3)?;
            let reg = sys::reactor::register(dup, Interest::WRITABLE)
                .map_err(|(_, err)| Error::Io(err))?;
            self.writable = Some(reg);
        }
        let reg = self.writable.as_ref().expect("registered above");
        let mut guard = ready!(reg.poll_write_ready(cx)).map_err(Error::Io)?;
        // Ready once is enough to try again; a later full buffer waits anew.
        guard.clear_ready();
        Poll::Ready(Ok(()))
    }

    /// Shuts the socket down for writing: the peer sees end of stream.
    pub(crate) fn shutdown(&mut self) -> Result<()> {
        match nix::sys::socket::shutdown(
            self.sock.fd().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(Error::Io(e.into())),
        }
    }

    /// Writes out everything buffered, blocking the calling thread.
    pub(crate) fn flush_blocking(&mut self) -> Result<()> {
        self.flush_blocking_timeout(None)
    }

    /// Writes out everything buffered, blocking the calling thread at most `timeout`
    /// (`None`: no limit). On `Err(Timeout)` what was not written stays buffered, and
    /// goes out with the next flush, so the frame stays whole.
    pub(crate) fn flush_blocking_timeout(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> Result<()> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let wait = match deadline {
            Some(_) => Wait::No,
            None => Wait::Block,
        };
        while self.buffered() > 0 {
            match self.write_once(wait) {
                Ok(_) => {}
                // Full (or someone made the shared socket non-blocking): wait by hand.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let sock = self.sock.clone();
                    wait_ready(sock.fd(), true, deadline, timeout)?;
                }
                Err(e) => return Err(Error::from_io(e)),
            }
        }
        Ok(())
    }

    /// Writes what the socket takes right now without waiting. Returns whether all of it
    /// went out.
    pub(crate) fn flush_now(&mut self) -> Result<bool> {
        while self.buffered() > 0 {
            match self.write_once(Wait::No) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(Error::from_io(e)),
            }
        }
        Ok(true)
    }
}
