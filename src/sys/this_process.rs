//! Settings of the calling process: signals, its parent's death, limits, its name.

use std::io;

use super::cvt;

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

/// Asks the kernel to send `signal` to this process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; the remaining arguments are unused.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
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
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) })?;
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
