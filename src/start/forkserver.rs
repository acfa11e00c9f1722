//! The `forkserver` start method: children forked from a small, clean zygote.
//!
//! The zygote is a function child like any other (so it starts by `exec`, single
//! threaded, with none of the parent's runtime or locks). Asked for a child, it forks
//! with `clone3(CLONE_PARENT | CLONE_PIDFD)`: the new process is a sibling of the
//! zygote, that is a child of *ours*, which we reap, signal and await exactly like an
//! exec'd child; the zygote sends us its pidfd. Forking a small single-threaded process
//! costs a fraction of an exec.
//!
//! The zygote starts on first use, is replaced if it dies, dies with us, and is killed
//! and reaped with its handle.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::child;
use crate::error::{Error, Result};
use crate::ipc::{Connection, PassFd};
use crate::process::Process;
use crate::sys::{self, Forked};

#[derive(Serialize, Deserialize)]
struct Request {
    control: PassFd,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Forked { pid: u32, pidfd: PassFd },
    Failed(String),
}

/// The zygote's main loop: one child per request, until we hang up.
fn zygote(conn: Connection<Reply, Request>) {
    let mut conn = Some(conn);
    loop {
        let Some(Ok(Request {
            control: PassFd(control),
        })) = conn.as_mut().map(|c| c.recv_blocking())
        else {
            return;
        };
        let reply = match sys::fork_sibling() {
            Ok(Forked::Child) => {
                drop(conn.take());
                child::forked_child(control);
            }
            Ok(Forked::Parent { pid, pidfd }) => Reply::Forked {
                pid,
                pidfd: PassFd(pidfd),
            },
            Err(err) => Reply::Failed(err.to_string()),
        };
        drop(control);
        if conn
            .as_mut()
            .is_none_or(|c| c.send_blocking(reply).is_err())
        {
            return;
        }
    }
}

struct Zygote {
    process: Process<()>,
    conn: Connection<Request, Reply>,
}

static ZYGOTE: Mutex<Option<Zygote>> = Mutex::new(None);

fn start_zygote() -> Result<Zygote> {
    let (conn, theirs) = crate::ipc::pipe::<Request, Reply>()?;
    let process = Process::builder()
        .name("mp-forkserver")
        .start_method(crate::StartMethod::Exec)
        .die_with_parent(true)
        .kill_on_drop(true)
        .spawn(zygote, theirs)?;
    tracing::debug!(pid = process.pid(), "fork server started");
    Ok(Zygote { process, conn })
}

fn ask(zygote: &mut Zygote, control: &OwnedFd) -> Result<(u32, OwnedFd)> {
    zygote.conn.send_blocking(Request {
        control: PassFd(control.try_clone()?),
    })?;
    match zygote.conn.recv_blocking()? {
        Reply::Forked {
            pid,
            pidfd: PassFd(pidfd),
        } => Ok((pid, pidfd)),
        Reply::Failed(err) => Err(Error::Io(std::io::Error::other(format!(
            "fork server: {err}"
        )))),
    }
}

/// Has the zygote fork a child that will run whatever is sent on `control`; returns
/// the child's pid and pidfd. A dead zygote is replaced once.
pub(crate) fn fork_child(control: &OwnedFd) -> Result<(u32, OwnedFd)> {
    let mut slot = ZYGOTE.lock().unwrap_or_else(|p| p.into_inner());
    let mut last_error = None;
    for _ in 0..2 {
        if slot.as_mut().is_none_or(|z| !z.process.is_alive()) {
            // Dropping a dead zygote's handle reaps it.
            *slot = Some(start_zygote()?);
        }
        let zygote = slot.as_mut().expect("started above");
        match ask(zygote, control) {
            Ok(child) => return Ok(child),
            Err(err) => {
                tracing::warn!(error = %err, "fork server failed; replacing it");
                *slot = None;
                last_error = Some(err);
            }
        }
    }
    Err(last_error.expect("two attempts failed"))
}
