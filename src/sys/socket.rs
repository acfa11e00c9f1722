//! Unix stream sockets: pairs, and sending and receiving bytes with descriptors.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

use super::cvt_retry;

/// The most descriptors Linux accepts in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Socket buffer size we ask for (the kernel doubles it and caps it at
/// `net.core.wmem_max`/`rmem_max`): room for a large message in flight, so a writer
/// rarely waits for its reader. Memory is only used as data is queued.
pub(crate) const SOCKET_BUFFER: usize = 1 << 20;

/// A connected pair of close-on-exec Unix stream sockets with large buffers.
pub(crate) fn stream_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    for fd in [&a, &b] {
        // A smaller buffer only costs speed, so failing to enlarge it is no error.
        let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::SndBuf, &SOCKET_BUFFER);
        let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    Ok((a, b))
}

/// How a socket call treats an empty (or full) socket. Our sockets stay in blocking
/// mode; the async paths ask for non-blocking behaviour per call, so that the blocking
/// paths can simply block (one syscall, no `poll`) and a descriptor shared with another
/// process behaves the same for both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// Fail with `WouldBlock` instead of waiting.
    No,
    /// Block the calling thread.
    Block,
}

impl Wait {
    fn flags(self) -> MsgFlags {
        match self {
            Wait::No => MsgFlags::MSG_DONTWAIT,
            Wait::Block => MsgFlags::empty(),
        }
    }
}

/// Sends `bufs` with `fds` attached as `SCM_RIGHTS`. Never raises `SIGPIPE`.
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[RawFd],
    wait: Wait,
) -> io::Result<usize> {
    if fds.is_empty() && bufs.len() == 1 {
        // Plain send(2) is a little cheaper than sendmsg(2), and this is the common case.
        return send_plain(socket, &bufs[0], wait);
    }
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            bufs,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | wait.flags(),
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn send_plain(socket: BorrowedFd<'_>, buf: &[u8], wait: Wait) -> io::Result<usize> {
    loop {
        match nix::sys::socket::send(
            socket.as_raw_fd(),
            buf,
            MsgFlags::MSG_NOSIGNAL | wait.flags(),
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A buffer for the ancillary data of one `recvmsg`, reused across calls.
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE])
}

/// Receives into `buf`, appending the descriptors that came along (close-on-exec) to
/// `fds`; `space` is a [`control_buffer`]. Returns the number of bytes read; zero means
/// end of stream.
///
/// The kernel installs received descriptors in our table as it copies the message out.
/// When the table is full (`RLIMIT_NOFILE`) it stops, installs fewer than were sent and
/// flags the message `MSG_CTRUNC` (our buffer always has room for `SCM_MAX_FD`, so
/// nothing else truncates it). The message is then unusable: this fails with `EMFILE`,
/// and the descriptors that were installed are closed rather than leaked.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    wait: Wait,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control buffer).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = space.len() as _;
    let flags = (MsgFlags::MSG_CMSG_CLOEXEC | wait.flags()).bits();
    // SAFETY: `msg` points at `iov` (which points at `buf`) and at `space`, all live and
    // exclusively ours for the call; the kernel writes within their lengths.
    let bytes = cvt_retry(|| unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, flags) })?;
    let bytes = bytes as usize;
    let before = fds.len();
    take_rights(&msg, fds);
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        fds.truncate(before);
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    Ok(bytes)
}

/// Takes ownership of every descriptor in `msg`'s `SCM_RIGHTS` messages, complete or
/// not: the kernel installed each of them in our table.
fn take_rights(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by a successful recvmsg, so `msg_controllen` is what the
    // kernel wrote into the control buffer, and the CMSG macros stay within it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies in the buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: as above; the data follows its header, within `cmsg_len`.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let len = header.cmsg_len as usize - (data as usize - cmsg as usize);
            for i in 0..len / size_of::<RawFd>() {
                // SAFETY: `i` indexes a descriptor inside the data (not necessarily
                // aligned); each was just installed in our table and has no other owner.
                let fd =
                    unsafe { OwnedFd::from_raw_fd(data.cast::<RawFd>().add(i).read_unaligned()) };
                fds.push(fd);
            }
        }
        // SAFETY: `cmsg` is a header of `msg`'s control buffer (see above).
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Receives at most `max` bytes into the spare capacity of `out`, which grows by what
/// arrived. No descriptors are expected: any that came along are discarded by the
/// kernel.
pub(crate) fn recv_into_spare(
    socket: BorrowedFd<'_>,
    out: &mut Vec<u8>,
    max: usize,
    wait: Wait,
) -> io::Result<usize> {
    let spare = out.spare_capacity_mut();
    let len = spare.len().min(max);
    let into = spare.as_mut_ptr().cast::<libc::c_void>();
    // SAFETY: the kernel writes at most `len` bytes at `into`, which is spare capacity
    // of `out`: allocated, owned by `out` and referred to by nothing else.
    let n = cvt_retry(|| unsafe { libc::recv(socket.as_raw_fd(), into, len, wait.flags().bits()) })?
        as usize;
    // SAFETY: the kernel has initialised the first `n` bytes of the spare capacity, and
    // `n <= len` fits in it.
    unsafe { out.set_len(out.len() + n) };
    Ok(n)
}

/// Waits until `fd` is readable (or writable) or `timeout_ms` passes (-1: forever).
/// Used only by the blocking API, never on a runtime thread.
pub(crate) fn poll_one(fd: BorrowedFd<'_>, writable: bool, timeout_ms: i32) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let events = if writable {
        PollFlags::POLLOUT
    } else {
        PollFlags::POLLIN
    };
    let mut fds = [PollFd::new(fd, events)];
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::NONE);
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until one of `fds` is readable (or hung up) or `timeout_ms` passes (-1:
/// forever); which ones are. An interrupted wait returns with none ready.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::NONE);
    match poll(&mut polled, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(polled
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}
