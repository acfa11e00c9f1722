//! Short-lived helper commands (key generation, `ip`, readiness probes), each bounded
//! in time so that a stuck one fails the fixture instead of hanging the test.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `command` to completion with its output captured, killing it if it takes
/// longer than `limit`. The error says what ran and what went wrong.
pub fn output_within(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel();
    // Reading both pipes to the end on a side thread lets the wait below have a
    // deadline; a child that filled a pipe could otherwise never exit.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        let err_reader = std::thread::spawn(move || {
            let mut err = Vec::new();
            let _ = stderr.read_to_end(&mut err);
            err
        });
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let err = err_reader.join().unwrap_or_default();
        let status = child.wait();
        let _ = done_tx.send(status.map(|status| Output {
            status,
            stdout: out,
            stderr: err,
        }));
    });
    match done_rx.recv_timeout(limit) {
        Ok(result) => result.map_err(|e| format!("cannot wait for {what}: {e}")),
        Err(_) => {
            // SAFETY: a plain kill(2) of our own child, not reaped yet (the side
            // thread reaps it only after its pipes close, which this kill causes).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
            Err(format!("{what} did not finish within {limit:?}"))
        }
    }
}

/// Runs `command` and returns its standard output, or an error with its standard error.
pub(super) fn checked(command: &mut Command, limit: Duration) -> Result<String, String> {
    let out = output_within(command, limit)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `pid` names a process that has not exited: zombies waiting for a parent to
/// reap them count as gone.
pub fn process_is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?");
    state != "Z" && state != "X"
}

/// The last lines of a daemon's log, for failure messages.
pub(super) fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(25);
    format!("{}:\n{}", path.display(), lines[start..].join("\n"))
}
