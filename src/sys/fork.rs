//! Forking a sibling, and what a freshly forked child does first.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::FcntlArg;

use super::{cvt, dup2_inheritable};

/// `struct clone_args` as far as `CLONE_ARGS_SIZE_VER0` (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Which side of [`fork_sibling`] we are on.
pub(crate) enum Forked {
    Child,
    Parent { pid: u32, pidfd: OwnedFd },
}

/// Forks a *sibling*: the new process's parent is our own parent (`CLONE_PARENT`), so
/// it is that process's child to reap, signal and await; we get a pidfd for it. With
/// `CLONE_PARENT` the exit signal must be 0: the child inherits ours (`SIGCHLD`).
/// Only for a single-threaded process: the child runs on a copy of this one.
pub(crate) fn fork_sibling() -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a new stack behaves as fork: the child continues here on a
    // copy of our (single-threaded) memory. `args` is a valid clone_args of the size
    // passed, and `pidfd` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match cvt(rc)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as u32,
            // SAFETY: CLONE_PIDFD stored a fresh descriptor for the child in `pidfd`.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// In a freshly forked child: moves `keep` to descriptor 3 and closes every other
/// descriptor above 2, since nothing of the forking process's belongs to the child.
pub(crate) fn keep_only(keep: OwnedFd) -> io::Result<OwnedFd> {
    let raw = keep.as_raw_fd();
    if raw != 3 {
        dup2_inheritable(raw, 3)?;
    }
    std::mem::forget(keep);
    // SAFETY: close_range on plain integers; everything above 3 is closed, which no
    // Rust object in this single-threaded child still relies on (the caller leaked or
    // dropped its handles to them).
    cvt(unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) })?;
    // SAFETY: descriptor 3 now holds the socket we were given, and only it owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let _ = nix::fcntl::fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    Ok(fd)
}
