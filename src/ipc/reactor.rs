//! A descriptor registered with tokio's reactor on first use, for readability only.

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
        let raw = Raw(self.fd.as_raw_fd());
        // SAFETY: `self.fd` owns the descriptor and is dropped only after the
        // registration (field order), so it stays open and the same while registered.
        let reg = unsafe { AsyncFd::register_with_interest(raw, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(self.registration.get_or_init(|| reg))
    }
}
