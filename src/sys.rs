//! Thin, safe wrappers over the Linux calls the crate needs.
//!
//! Everything that touches a raw syscall lives here so the rest of the crate is free of
//! `unsafe`. Every descriptor handed out is an [`OwnedFd`] with `FD_CLOEXEC` set.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// The most descriptors Linux accepts in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Opens a pidfd for `pid`, which must be an unreaped child of ours (so the pid cannot
/// have been recycled). The descriptor is always close-on-exec.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` through a pidfd: unlike `kill(2)`, it can never hit a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a valid descriptor, a signal number, a null siginfo (meaning "as kill(2)")
    // and zero flags are what pidfd_send_signal expects.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to `pid` with `kill(2)`. Callers guarantee the pid is an unreaped child.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; the caller holds the child unreaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
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
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// `waitid(2)` for one process, retried on `EINTR`; the report is zeroed (`si_pid` 0)
/// when `WNOHANG` found nothing to report.
fn waitid(idtype: libc::idtype_t, id: libc::id_t, flags: i32) -> io::Result<libc::siginfo_t> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid initial value and lets callers
    // tell "no child changed state" (si_pid == 0) from a real report.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: a plain syscall given a pointer to a live siginfo_t.
        if unsafe { libc::waitid(idtype, id, &mut info, flags) } == 0 {
            return Ok(info);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
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
    waitid(libc::P_PIDFD, id, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT).map(drop)
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
    loop {
        // SAFETY: waitpid on one specific pid with a pointer to a live c_int.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        match rc {
            0 => return Ok(None),
            r if r > 0 => return Ok(Some(ExitStatus::from_raw(status))),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

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
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `dup2` that also works when `old == new` by clearing `FD_CLOEXEC` instead.
/// Async-signal-safe, for use between fork and exec.
pub(crate) fn dup2_inheritable(old: RawFd, new: RawFd) -> io::Result<()> {
    if old == new {
        return clear_cloexec(new);
    }
    // SAFETY: dup2 on integer descriptors; async-signal-safe.
    let rc = unsafe { libc::dup2(old, new) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Between fork and exec: every signal back to its default action and none blocked.
/// Ignored signals and the signal mask survive `exec`, so without this a program
/// started under `nohup` or from a thread that blocks signals would hand that on, and
/// `SIGINT` would do nothing to its children. Async-signal-safe.
pub(crate) fn reset_signals() {
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty mask; sigaction
    // and sigprocmask are async-signal-safe. Numbers the C library reserves (or that do
    // not exist) fail with EINVAL and are left as they are.
    unsafe {
        let default: libc::sigaction = std::mem::zeroed();
        for signal in 1..=64 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
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
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
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

/// Receives into `buf`, appending any descriptors that came along (close-on-exec) to
/// `fds`. Returns the number of bytes read; zero means end of stream.
/// A buffer for the ancillary data of one `recvmsg`, reused across calls.
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE])
}

pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    wait: Wait,
) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut *space),
            MsgFlags::MSG_CMSG_CLOEXEC | wait.flags(),
        ) {
            Ok(msg) => break msg,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let bytes = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for raw in received {
                // SAFETY: SCM_RIGHTS just installed these descriptors in our table; we
                // are their only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "peer sent more descriptors than one message may carry",
        ));
    }
    Ok(bytes)
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
    loop {
        // SAFETY: the kernel writes at most `len` bytes at `into`, which is spare
        // capacity of `out`: allocated, owned by `out` and referred to by nothing else.
        let n = unsafe { libc::recv(socket.as_raw_fd(), into, len, wait.flags().bits()) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel has initialised the first `n` bytes of the spare
            // capacity, and `n <= len` fits in it.
            unsafe { out.set_len(out.len() + n) };
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
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

/// Asks the kernel to send `signal` to this process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; the remaining arguments are unused.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Caps the process's address space (`RLIMIT_AS`, soft and hard) at `bytes`.
/// Async-signal-safe: usable between fork and exec.
pub(crate) fn set_address_space_limit(bytes: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's name (`comm`, as `ps` shows it); truncated to 15 bytes.
pub(crate) fn set_thread_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    if let Ok(cname) = std::ffi::CStr::from_bytes_with_nul(&bytes) {
        let _ = nix::sys::prctl::set_name(cname);
    }
}

/// Whether this kernel offers pidfds that can be awaited (`pidfd_open`, Linux 5.3+).
pub(crate) fn pidfd_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| pidfd_open(std::process::id()).is_ok())
}

/// Ignores `SIGPIPE`, as std does before a Rust `main`: a child of ours starts before
/// std's own setup runs, and must see `EPIPE` errors rather than die on a closed pipe.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no handler code to be unsafe about.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
}

/// Sleeps while `word` (in shared memory) still holds `expected`, up to `timeout`.
/// Wakes early on `futex_wake_all`, a signal, or spuriously; callers re-check.
pub(crate) fn futex_wait(
    word: &std::sync::atomic::AtomicU32,
    expected: u32,
    timeout: Option<std::time::Duration>,
) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT (shared, not private: the word lives in a MAP_SHARED mapping
    // other processes use) on a live, aligned u32, with a valid or null timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes every thread, in any process, sleeping in `futex_wait` on `word`.
pub(crate) fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32; the remaining arguments are unused.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

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
    match rc {
        -1 => Err(io::Error::last_os_error()),
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
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: descriptor 3 now holds the socket we were given, and only it owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let _ = nix::fcntl::fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    Ok(fd)
}
