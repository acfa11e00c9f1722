//! Our children: pidfds, signals, waiting for and reaping them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::{cvt, cvt_retry};

/// Opens a pidfd for `pid`, which must be an unreaped child of ours (so the pid cannot
/// have been recycled). The descriptor is always close-on-exec.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) })?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` through a pidfd: unlike `kill(2)`, it can never hit a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a valid descriptor, a signal number, a null siginfo (meaning "as kill(2)")
    // and zero flags are what pidfd_send_signal expects.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    })?;
    Ok(())
}

/// Sends `signal` to `pid` with `kill(2)`. Callers guarantee the pid is an unreaped child.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; the caller holds the child unreaped.
    cvt(unsafe { libc::kill(pid as libc::pid_t, signal) })?;
    Ok(())
}

/// Sends `signal` to every process of the group `pgid`. A group no process is in any
/// more gives `Ok` (nothing to do). The kernel hands out no pid that is still a group's
/// id while a member of that group lives, so the group is that of our child as long
/// as it has a member (the child itself, reaped or not, or one of its descendants).
pub(crate) fn kill_process_group(pgid: u32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a process group of a child",
        ));
    }
    // SAFETY: kill takes plain integers; a negative pid names a process group.
    match cvt(unsafe { libc::kill(-(pgid as libc::pid_t), signal) }) {
        Err(err) if err.raw_os_error() != Some(libc::ESRCH) => Err(err),
        _ => Ok(()),
    }
}

/// `waitid(2)` for one process, retried on `EINTR`; the report is zeroed (`si_pid` 0)
/// when `WNOHANG` found nothing to report.
fn waitid(idtype: libc::idtype_t, id: libc::id_t, flags: i32) -> io::Result<libc::siginfo_t> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial value and lets callers
    // tell "no child changed state" (si_pid == 0) from a real report.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a plain syscall given a pointer to a live siginfo_t.
    cvt_retry(|| unsafe { libc::waitid(idtype, id, &mut info, flags) })?;
    Ok(info)
}

/// Reaps the child behind `pidfd` if it has exited. `Ok(None)` means still running.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitStatus>> {
    let id = pidfd.as_raw_fd() as libc::id_t;
    let info = waitid(libc::P_PIDFD, id, libc::WEXITED | libc::WNOHANG)?;
    // SAFETY: waitid filled `info` (or left it zeroed); reading the union fields that
    // SIGCHLD reports always carry is sound.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(status_from_siginfo(code, status)))
}

/// Waits for the child behind `pidfd` to exit and reaps it. `ECHILD` (someone else
/// reaped it) counts as reaped. For a child that has been killed or is about to exit:
/// it blocks the calling thread until then.
pub(crate) fn reap_pidfd_blocking(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    match waitid(
        libc::P_PIDFD,
        pidfd.as_raw_fd() as libc::id_t,
        libc::WEXITED,
    ) {
        Err(err) if err.raw_os_error() != Some(libc::ECHILD) => Err(err),
        _ => Ok(()),
    }
}

/// Kills our child `pid`, which nothing else holds a pidfd of, and reaps it before
/// returning. Safe by pid: a child we have not reaped keeps its pid.
pub(crate) fn kill_and_reap_pid(pid: u32) {
    let _ = kill(pid, libc::SIGKILL);
    let _ = waitid(libc::P_PID, pid as libc::id_t, libc::WEXITED);
}

/// Whether our child `pid` has exited (reaped or not: `WNOWAIT` leaves a zombie for its
/// watch to collect). A pid that is no child of ours any more counts as exited.
pub(crate) fn child_has_exited(pid: u32) -> bool {
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    match waitid(libc::P_PID, pid as libc::id_t, flags) {
        // SAFETY: waitid filled `info` or left it zeroed.
        Ok(info) => (unsafe { info.si_pid() }) != 0,
        Err(_) => true,
    }
}

/// A descriptor that is always readable, standing for a child that has ended when no
/// pidfd of it exists. One for the whole process.
pub(crate) fn always_readable() -> BorrowedFd<'static> {
    static FD: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    FD.get_or_init(|| {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
            1,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .expect("an eventfd: the process is out of descriptors");
        OwnedFd::from(fd)
    })
    .as_fd()
}

/// Asks whether the process behind `pidfd` is an exited child of ours without reaping
/// it (`WNOWAIT`); fails with `ECHILD` if it is not our child (or was reaped already).
pub(crate) fn waitid_pidfd_peek(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    let id = pidfd.as_raw_fd() as libc::id_t;
    waitid(
        libc::P_PIDFD,
        id,
        libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
    )
    .map(drop)
}

fn status_from_siginfo(code: i32, status: i32) -> ExitStatus {
    match code {
        libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
        libc::CLD_DUMPED => ExitStatus::from_raw((status & 0x7f) | 0x80),
        _ => ExitStatus::from_raw(status & 0x7f),
    }
}

/// Reaps `pid` if it has exited, without blocking. `Ok(None)` means still running.
pub(crate) fn waitpid_nohang(pid: u32) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid on one specific pid with a pointer to a live c_int.
    match cvt_retry(|| unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) })? {
        0 => Ok(None),
        _ => Ok(Some(ExitStatus::from_raw(status))),
    }
}

/// Whether this kernel offers pidfds that can be awaited (`pidfd_open`, Linux 5.3+).
pub(crate) fn pidfd_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| pidfd_open(std::process::id()).is_ok())
}
