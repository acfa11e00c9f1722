//! Thin, safe wrappers over the Linux calls the crate needs, one module per subject.
//!
//! Every descriptor handed out is an [`OwnedFd`](std::os::fd::OwnedFd) with `FD_CLOEXEC` set.

mod child;
mod fd;
mod fork;
mod futex;
pub(crate) mod reactor;
mod socket;
mod this_process;

pub(crate) use child::*;
pub(crate) use fd::*;
pub(crate) use fork::*;
pub(crate) use futex::*;
pub(crate) use socket::*;
pub(crate) use this_process::*;

/// A raw call's return value, negative when the call failed.
pub(crate) trait RawReturn: Copy {
    /// Whether the call failed (the reason is then in `errno`).
    fn failed(self) -> bool;
}

impl RawReturn for libc::c_int {
    fn failed(self) -> bool {
        self < 0
    }
}

impl RawReturn for libc::c_long {
    fn failed(self) -> bool {
        self < 0
    }
}

impl RawReturn for isize {
    fn failed(self) -> bool {
        self < 0
    }
}

/// A raw call's return value as a `Result`: the value, or the error `errno` holds.
/// Async-signal-safe (it reads `errno` and allocates nothing), so usable between fork
/// and exec.
fn cvt<T: RawReturn>(rc: T) -> std::io::Result<T> {
    match rc.failed() {
        true => Err(std::io::Error::last_os_error()),
        false => Ok(rc),
    }
}

/// [`cvt`] for a call that a signal may interrupt: made again on `EINTR`.
fn cvt_retry<T: RawReturn>(mut call: impl FnMut() -> T) -> std::io::Result<T> {
    loop {
        match cvt(call()) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}
