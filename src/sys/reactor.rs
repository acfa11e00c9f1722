//! Descriptors registered with tokio's reactor, always while they stay open.
//!
//! tokio asks whoever registers a descriptor to keep it open and the same for as long
//! as the registration lives. Every registration in the crate goes through [`register`]
//! (the registration owns the descriptor) or [`ReadableFd`] (the descriptor is dropped
//! after its registration), so that promise is kept in this one place.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub(crate) struct Raw(RawFd);

impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Owns a descriptor and registers it, lazily, with the reactor of whatever runtime
/// first waits on it, so handles can be made outside a runtime and used inside one.
pub(crate) struct ReadableFd {
    // Declared before `fd` so it deregisters before the descriptor closes.
    registration: OnceLock<AsyncFd<Raw>>,
    registering: Mutex<()>,
    fd: OwnedFd,
}

impl ReadableFd {
    pub(crate) fn new(fd: OwnedFd) -> ReadableFd {
        ReadableFd {
            registration: OnceLock::new(),
            registering: Mutex::new(()),
            fd,
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn owned(&self) -> &OwnedFd {
        &self.fd
    }

    pub(crate) fn registration(&self) -> io::Result<&AsyncFd<Raw>> {
        if let Some(reg) = self.registration.get() {
            return Ok(reg);
        }
        let _lock = self.registering.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reg) = self.registration.get() {
            return Ok(reg);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "async I/O outside a tokio runtime; use the *_blocking methods instead",
            ));
        }
        // `self.fd` owns the descriptor and is dropped only after the registration
        // (field order), so it stays open and the same while registered.
        let reg = register_while_open(Raw(self.fd.as_raw_fd()), Interest::READABLE)
            .map_err(|(_, err)| err)?;
        Ok(self.registration.get_or_init(|| reg))
    }
}

/// Registers `fd` with the current runtime's reactor; the registration owns it. On
/// failure the descriptor comes back with the error.
pub(crate) fn register(
    fd: OwnedFd,
    interest: Interest,
) -> Result<AsyncFd<OwnedFd>, (OwnedFd, io::Error)> {
    // The `AsyncFd` owns `fd`, so it stays open and the same while registered.
    register_while_open(fd, interest)
}

/// Registers `fd`, which the caller keeps open and the same until the registration is
/// dropped: owned by the registration itself ([`register`]), or dropped after it
/// ([`ReadableFd`]). Private so that no other caller can break that promise.
fn register_while_open<T: AsRawFd>(
    fd: T,
    interest: Interest,
) -> Result<AsyncFd<T>, (T, io::Error)> {
    // SAFETY: both callers keep the descriptor open and unchanged for as long as the
    // registration lives, as stated on each call, which is all tokio requires.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts())
}
