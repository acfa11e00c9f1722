//! The envelope around a remote child's stream, between the local proxy and the remote
//! agent, over the launcher's stdio.
//!
//! ```text
//! agent -> proxy:  GREETING, then envelopes: Hello, Data*, Heartbeat*, Exit
//! proxy -> agent:  envelopes: Job, Heartbeat*, Signal*
//! envelope:        | tag: u8 | len: u32 LE | payload (len B) |
//! ```
//!
//! The agent's greeting comes first so that anything else on the stream (a login
//! script's banner, a program that is not ours) is recognised at once and shown.

use std::io;
use std::os::fd::BorrowedFd;

use serde::{Deserialize, Serialize};

/// The agent's first bytes: a banner no login script prints by chance.
pub(super) const GREETING: &[u8] = b"\x00multiprocess-agent/1\n";

const HEADER: usize = 5;

/// The largest payload of each kind of envelope, checked before any allocation.
fn max_len(tag: u8) -> usize {
    match tag {
        // A job holds the argument, up to the crate's default frame limit.
        TAG_JOB => crate::DEFAULT_MAX_FRAME_LEN + (1 << 20),
        TAG_DATA => DATA_CHUNK,
        _ => 64 << 10,
    }
}

/// The most child bytes one data envelope carries.
pub(super) const DATA_CHUNK: usize = 256 << 10;

const TAG_HELLO: u8 = 1;
const TAG_JOB: u8 = 2;
const TAG_DATA: u8 = 3;
const TAG_HEARTBEAT: u8 = 4;
const TAG_SIGNAL: u8 = 5;
const TAG_EXIT: u8 = 6;

/// What the agent says first: who it is.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hello {
    pub(super) identity: Vec<u8>,
    pub(super) host: String,
    pub(super) pid: u32,
}

/// What the agent is to run: the control stream's first two frames, as the parent
/// encoded them, and how.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Job {
    pub(super) name: String,
    pub(super) frames: Vec<u8>,
    pub(super) heartbeat_ms: u64,
    pub(super) kill_tree: bool,
    pub(super) env_clear: bool,
    pub(super) env: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    pub(super) current_dir: Option<std::path::PathBuf>,
}

/// How the remote child ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum RemoteExit {
    Code(i32),
    Signal(i32),
}

/// One envelope.
#[derive(Debug)]
pub(super) enum Envelope {
    Hello(Hello),
    Job(Job),
    Data(Vec<u8>),
    Heartbeat,
    Signal(i32),
    Exit(RemoteExit),
}

impl Envelope {
    /// What kind of envelope it is, for messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Envelope::Hello(_) => "hello",
            Envelope::Job(_) => "job",
            Envelope::Data(_) => "data",
            Envelope::Heartbeat => "heartbeat",
            Envelope::Signal(_) => "signal",
            Envelope::Exit(_) => "exit",
        }
    }

    /// Appends the envelope's bytes to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let (tag, payload) = match self {
            Envelope::Hello(hello) => (TAG_HELLO, to_bytes(hello)),
            Envelope::Job(job) => (TAG_JOB, to_bytes(job)),
            Envelope::Data(bytes) => (TAG_DATA, bytes.clone()),
            Envelope::Heartbeat => (TAG_HEARTBEAT, Vec::new()),
            Envelope::Signal(signal) => (TAG_SIGNAL, signal.to_le_bytes().to_vec()),
            Envelope::Exit(exit) => (TAG_EXIT, to_bytes(exit)),
        };
        out.push(tag);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
    }

    fn decode(tag: u8, payload: &[u8]) -> Result<Envelope, String> {
        Ok(match tag {
            TAG_HELLO => Envelope::Hello(from_bytes(payload)?),
            TAG_JOB => Envelope::Job(from_bytes(payload)?),
            TAG_DATA => Envelope::Data(payload.to_vec()),
            TAG_HEARTBEAT => Envelope::Heartbeat,
            TAG_SIGNAL => {
                let bytes: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| "a signal request of the wrong size".to_string())?;
                Envelope::Signal(i32::from_le_bytes(bytes))
            }
            TAG_EXIT => Envelope::Exit(from_bytes(payload)?),
            _ => unreachable!("tags are checked with the header"),
        })
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

fn from_bytes<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    postcard::from_bytes(payload).map_err(|err| format!("an undecodable envelope: {err}"))
}

/// Shows the first bytes of something unexpected, for an error message.
pub(super) fn show(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(64)];
    format!("{:?}", String::from_utf8_lossy(shown))
}

/// The reading end: bytes from a non-blocking descriptor, cut into envelopes.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    buf: Vec<u8>,
    greeted: bool,
    closed: bool,
}

/// What reading found.
#[derive(Debug)]
pub(super) enum Read {
    /// Everything available was read.
    Drained,
    /// The other side closed the stream.
    Closed,
}

impl Inbox {
    /// An inbox that first expects the agent's greeting.
    pub(super) fn expecting_greeting() -> Inbox {
        Inbox::default()
    }

    /// An inbox for the proxy's stream, which has no greeting.
    pub(super) fn plain() -> Inbox {
        Inbox {
            greeted: true,
            ..Inbox::default()
        }
    }

    /// Reads what `fd` has now, without waiting: a socket until it has nothing more
    /// (whatever its mode), anything else once (call it when `poll` says readable).
    pub(super) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<Read> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            match read_some(fd, &mut chunk) {
                Ok((0, _)) => {
                    self.closed = true;
                    return Ok(Read::Closed);
                }
                Ok((n, again)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if !again {
                        return Ok(Read::Drained);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Drained),
                Err(err) => return Err(err),
            }
        }
    }

    /// The next whole envelope, if one has arrived.
    pub(super) fn next(&mut self) -> Result<Option<Envelope>, String> {
        if !self.greeted {
            let n = self.buf.len().min(GREETING.len());
            if self.buf[..n] != GREETING[..n] {
                return Err(format!(
                    "the stream does not start as the agent's does: {}",
                    show(&self.buf)
                ));
            }
            if n < GREETING.len() {
                return Ok(None);
            }
            self.buf.drain(..GREETING.len());
            self.greeted = true;
        }
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let tag = self.buf[0];
        if !(TAG_HELLO..=TAG_EXIT).contains(&tag) {
            return Err(format!(
                "unexpected bytes on the stream: {}",
                show(&self.buf)
            ));
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > max_len(tag) {
            return Err(format!(
                "an envelope of {len} bytes, more than the {} allowed",
                max_len(tag)
            ));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let envelope = Envelope::decode(tag, &self.buf[HEADER..HEADER + len]);
        self.buf.drain(..HEADER + len);
        envelope.map(Some)
    }

    /// Adds bytes as if they had been read (fuzzing and tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether nothing at all has arrived yet.
    pub(super) fn untouched(&self) -> bool {
        !self.greeted && self.buf.is_empty()
    }

    /// Whether the stream ended in the middle of an envelope (or before the greeting).
    pub(super) fn truncated(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// The writing end: envelopes queued for a non-blocking descriptor.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    buf: Vec<u8>,
}

impl Outbox {
    /// Queues raw bytes (the greeting).
    pub(super) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queues an envelope.
    pub(super) fn push(&mut self, envelope: &Envelope) {
        envelope.encode(&mut self.buf);
    }

    /// Whether bytes wait to be written.
    pub(super) fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Writes what `fd` takes now without waiting: to a socket until it is full
    /// (whatever its mode), to anything else once, at most `PIPE_BUF` bytes (call it
    /// when `poll` says writable).
    pub(super) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while !self.buf.is_empty() {
            match write_some(fd, &self.buf) {
                Ok((n, again)) => {
                    self.buf.drain(..n);
                    if !again {
                        return Ok(());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// One read that does not wait on a socket in any mode (`MSG_DONTWAIT`), or one plain
/// read of anything else; the flag says whether reading again cannot block.
pub(super) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    loop {
        let read = match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => Ok((n, true)),
            Err(nix::errno::Errno::ENOTSOCK) => nix::unistd::read(fd, buf).map(|n| (n, false)),
            Err(err) => Err(err),
        };
        match read {
            Ok(read) => return Ok(read),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// One write that does not wait on a socket in any mode (`MSG_DONTWAIT`, no
/// `SIGPIPE`), or one write of at most `PIPE_BUF` bytes to anything else, which a
/// writable pipe takes without blocking; the flag says whether writing again cannot
/// block.
pub(super) fn write_some(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<(usize, bool)> {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    loop {
        let sent = match send(fd.as_raw_fd(), bytes, flags) {
            Ok(n) => Ok((n, true)),
            // SIGPIPE is ignored in the processes that get here.
            Err(nix::errno::Errno::ENOTSOCK) => {
                nix::unistd::write(fd, &bytes[..bytes.len().min(libc::PIPE_BUF)])
                    .map(|n| (n, false))
            }
            Err(err) => Err(err),
        };
        match sent {
            Ok(sent) => return Ok(sent),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub(super) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], greeting: bool) -> Result<Vec<Envelope>, String> {
        let mut inbox = match greeting {
            true => Inbox::expecting_greeting(),
            false => Inbox::plain(),
        };
        inbox.feed(bytes);
        let mut out = Vec::new();
        while let Some(envelope) = inbox.next()? {
            out.push(envelope);
        }
        Ok(out)
    }

    #[test]
    fn envelopes_round_trip() {
        let mut bytes = GREETING.to_vec();
        Envelope::Data(vec![1, 2, 3]).encode(&mut bytes);
        Envelope::Signal(15).encode(&mut bytes);
        Envelope::Exit(RemoteExit::Signal(9)).encode(&mut bytes);
        let got = parse(&bytes, true).unwrap();
        assert!(matches!(&got[0], Envelope::Data(d) if d == &[1, 2, 3]));
        assert!(matches!(got[1], Envelope::Signal(15)));
        assert!(matches!(got[2], Envelope::Exit(RemoteExit::Signal(9))));
    }

    #[test]
    fn garbage_is_refused_with_the_bytes_shown() {
        let err = parse(b"Welcome to host\n", true).unwrap_err();
        assert!(err.contains("Welcome to host"), "{err}");
        let err = parse(&[99, 0, 0, 0, 0], false).unwrap_err();
        assert!(err.contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn oversized_envelopes_are_refused_before_allocation() {
        let err = parse(&[TAG_DATA, 0xff, 0xff, 0xff, 0x7f], false).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
