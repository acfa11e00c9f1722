//! Waiting on several descriptors at once, in the proxy and the agent (each a process of
//! its own with nothing else to do, so a blocking `poll(2)` is the right wait).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// A descriptor to wait on, and for what.
#[derive(Clone, Copy, Debug)]
pub(super) struct Watched<'a> {
    fd: BorrowedFd<'a>,
    flags: PollFlags,
}

impl<'a> Watched<'a> {
    pub(super) fn new(fd: BorrowedFd<'a>, flags: PollFlags) -> Watched<'a> {
        Watched { fd, flags }
    }

    pub(super) fn read(fd: BorrowedFd<'a>) -> Watched<'a> {
        Watched::new(fd, PollFlags::POLLIN)
    }

    pub(super) fn write(fd: BorrowedFd<'a>) -> Watched<'a> {
        Watched::new(fd, PollFlags::POLLOUT)
    }
}

/// Waits until one of `watched` is ready (or hung up, or in error) or `timeout` passes
/// (`None`: no limit); says which are ready. An interrupted wait reports none ready.
pub(super) fn poll_fds(
    watched: &mut [Watched<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut fds: Vec<PollFd<'_>> = watched.iter().map(|w| PollFd::new(w.fd, w.flags)).collect();
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(limit) => {
            // Rounded up, so a wait never returns early and spins.
            let ms = limit.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    match nix::poll::poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(vec![false; fds.len()]),
        Err(err) => return Err(err.into()),
    }
    Ok(fds
        .iter()
        .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}
