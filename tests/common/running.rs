//! Children that run until told otherwise, for the tests that stop them from outside.

use std::path::{Path, PathBuf};

use multiprocess::{Process, ProcessBuilder};

/// Creates `ready`, then waits forever.
pub fn ready_then_forever(ready: PathBuf) {
    std::fs::write(&ready, b"").unwrap();
    loop {
        std::thread::park();
    }
}

extern "C" fn exit_42(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(42) };
}

/// Exits with code 42 on `SIGTERM`: proof that the signal reached this very process.
pub fn exits_42_on_term(ready: PathBuf) {
    // SAFETY: the handler only calls `_exit`.
    unsafe { libc::signal(libc::SIGTERM, exit_42 as *const () as libc::sighandler_t) };
    ready_then_forever(ready);
}

/// Spawns `f`, one of the functions above, and returns once it has created `ready`.
pub async fn spawn_running(builder: &ProcessBuilder, f: fn(PathBuf), ready: &Path) -> Process<()> {
    let child = builder.spawn(f, ready.to_path_buf()).unwrap();
    super::eventually("the child runs", || ready.exists()).await;
    child
}

/// Returns once none of `pids` is a live process.
pub async fn all_gone(pids: &[u32]) {
    super::eventually("every process has exited", || {
        pids.iter().all(|pid| !super::alive(*pid))
    })
    .await;
}
