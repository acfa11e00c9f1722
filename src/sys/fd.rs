//! Descriptors: duplicating them, inheriting them across exec, directories.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, fcntl};

use super::cvt;

/// Duplicates `fd` to a new close-on-exec descriptor numbered at least `min`.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    let new = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Clears `FD_CLOEXEC` so that `fd` survives an `exec`. Async-signal-safe.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_SETFD) on an integer descriptor; used between fork and exec, where
    // only async-signal-safe calls are allowed, which fcntl is.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    Ok(())
}

/// `dup2` that also works when `old == new` by clearing `FD_CLOEXEC` instead.
/// Async-signal-safe, for use between fork and exec.
pub(crate) fn dup2_inheritable(old: RawFd, new: RawFd) -> io::Result<()> {
    if old == new {
        return clear_cloexec(new);
    }
    // SAFETY: dup2 on integer descriptors; async-signal-safe.
    cvt(unsafe { libc::dup2(old, new) })?;
    Ok(())
}

/// Between fork and exec: marks every descriptor from `first` up close-on-exec, so the
/// new program receives only what is put in place after this call, and none of the
/// descriptors the program (or a C library of it) opened without `O_CLOEXEC`.
/// Async-signal-safe.
pub(crate) fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range on plain integers, with a flag that closes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one descriptor at a time, up to the descriptor limit.
    // SAFETY: getrlimit fills a live rlimit.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    let end = limit.rlim_cur.min(i32::MAX as libc::rlim_t) as RawFd;
    for fd in first..end {
        // SAFETY: fcntl on an integer; a closed descriptor gives EBADF, ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// A descriptor for the current working directory (`O_PATH`), to enter the very same
/// directory from another process with [`enter_directory`], whatever its path is then.
pub(crate) fn open_current_dir() -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        ".",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(fd)
}

/// A descriptor for the directory at `path` (`O_PATH`), for [`enter_directory`].
pub(crate) fn open_directory(path: &std::path::Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(fd)
}

/// Makes the directory behind `dir` the working directory (`fchdir`).
pub(crate) fn enter_directory(dir: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::fchdir(dir)?;
    Ok(())
}

/// Points descriptor 0 at `/dev/null`, so a function child never reads the parent's stdin.
pub(crate) fn stdin_from_dev_null() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    dup2_inheritable(null.as_raw_fd(), 0)
}
