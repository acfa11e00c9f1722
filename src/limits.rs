//! The descriptor limit (`RLIMIT_NOFILE`): raised at first use, restored for the
//! programs we execute, and watched so that a child costs fewer descriptors when they
//! run short.
//!
//! Many systems still start programs with a soft limit of 1,024 descriptors (for the
//! sake of `select(2)`), far below the hard limit; a live child costs us one or two
//! descriptors, so a program with a few hundred children would fail with `EMFILE`.
//! Like Go's runtime, the first spawn (or pool) raises the soft limit to the hard limit
//! and every program started after that gets the original soft limit back before it
//! runs, so a program that relies on `select` never sees a descriptor it cannot handle.
//! A limit the program changes itself after that first use is left alone.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

/// `(soft, hard)` of `RLIMIT_NOFILE`.
fn get() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft limit the program started with and the one we raised it to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raised {
    original: u64,
    raised_to: u64,
}

static RAISED: OnceLock<Option<Raised>> = OnceLock::new();

/// Raises the soft descriptor limit to the hard limit, once per process. A failure
/// leaves the limit as it was: children are then simply fewer before `EMFILE`.
pub(crate) fn raise_descriptor_limit() {
    RAISED.get_or_init(|| {
        let (soft, hard) = get().ok()?;
        if soft >= hard {
            return None;
        }
        match set(hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the descriptor limit");
                Some(Raised {
                    original: soft,
                    raised_to: hard,
                })
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot raise the descriptor limit");
                None
            }
        }
    });
}

/// What a program about to be executed must get back: `Some` once the limit was raised.
pub(crate) fn raised() -> Option<Raised> {
    RAISED.get().copied().flatten()
}

impl Raised {
    /// Puts the original soft limit back in a child between fork and exec, unless the
    /// program changed the limit since it was raised (then the child keeps what the
    /// program set). Only `getrlimit` and `setrlimit`: async-signal-safe.
    pub(crate) fn restore_in_child(self) -> io::Result<()> {
        let (soft, hard) = get()?;
        if soft == self.raised_to && self.original < soft {
            set(self.original, hard)?;
        }
        Ok(())
    }
}

/// The error for a message whose descriptors could not be installed: `sys` reports that
/// as `EMFILE` (`recvmsg` itself never fails so), any other error passes as it is.
pub(crate) fn receive_error(err: io::Error) -> Result<io::Error, crate::Error> {
    match err.raw_os_error() {
        Some(libc::EMFILE) => Err(crate::Error::DescriptorLimit {
            limit: soft_descriptor_limit(),
        }),
        _ => Ok(err),
    }
}

/// The current soft descriptor limit (`u64::MAX` if unlimited or unknown).
pub(crate) fn soft_descriptor_limit() -> u64 {
    get().map_or(u64::MAX, |(soft, _)| soft)
}

/// Whether descriptors are running short, judged from one just opened: the kernel hands
/// out the lowest free number, so a descriptor numbered past half the soft limit means
/// at least half the limit is in use. `EMFILE` is exactly "no free number below the
/// limit", so this measures the distance to it, holes and all.
pub(crate) fn descriptors_scarce(just_opened: BorrowedFd<'_>) -> bool {
    let number = just_opened.as_raw_fd() as u64;
    number >= soft_descriptor_limit() / 2
}
