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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::child::{self, RunSync};
use super::protocol::Entry;
use super::control::start_message;
use super::exec::spawn_by_exec;
use super::options::{Options, StartMethod};
use super::preload::{self, Preload};
use crate::error::{Error, Result};
use crate::exit::ExitWatch;
use crate::ipc::{Connection, PassFd};
use crate::sys::{self, Forked};

#[derive(Serialize, Deserialize)]
struct Request {
    control: PassFd,
    /// The spawning process's working directory at the time of the spawn, which the
    /// child starts in (the zygote's own is the one it started with).
    cwd: PassFd,
    /// The child's name, which it bears from the moment it exists.
    name: String,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Forked { pid: u32, pidfd: PassFd },
    Failed(String),
    /// A preload panicked (with this message): the zygote forks nothing.
    PreloadFailed(String),
}

/// What the zygote starts with.
#[derive(Serialize, Deserialize)]
struct ZygoteStart {
    conn: Connection<Reply, Request>,
    /// Run once, in order, before anything is forked.
    preloads: Vec<Preload>,
}

/// The zygote's main loop: the preloads, then one child per request, until we hang up.
fn zygote(ZygoteStart { conn, preloads }: ZygoteStart) {
    if let Err(message) = preload::run_all(preloads) {
        refuse_all(conn, message);
        return;
    }
    let mut conn = Some(conn);
    loop {
        let Some(Ok(Request {
            control: PassFd(control),
            cwd: PassFd(cwd),
            name,
        })) = conn.as_mut().map(|c| c.recv_blocking())
        else {
            return;
        };
        let reply = match sys::fork_sibling() {
            Ok(Forked::Child) => {
                // First of all, so that the child shows under the zygote's name for
                // as short a time as possible. (Not taken by the zygote around the fork:
                // for that moment the zygote would bear the child's name, and whoever
                // signals processes by name could hit the server mid-fork.)
                sys::set_thread_name(&name);
                drop(conn.take());
                child::forked_child(control, cwd);
            }
            Ok(Forked::Parent { pid, pidfd }) => Reply::Forked {
                pid,
                pidfd: PassFd(pidfd),
            },
            Err(err) => Reply::Failed(err.to_string()),
        };
        drop((control, cwd));
        if conn
            .as_mut()
            .is_none_or(|c| c.send_blocking(reply).is_err())
        {
            return;
        }
    }
}

/// The running zygote: its exit, and the connection it takes requests on.
struct Zygote {
    watch: ExitWatch,
    conn: Connection<Request, Reply>,
    /// Which registration of preloads it ran.
    preloads: u64,
}

impl Zygote {
    fn is_alive(&mut self) -> bool {
        matches!(self.watch.try_wait(), Ok(None))
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // The watch reaps it, now or in the background.
        if self.watch.exit().is_none() {
            let _ = self.watch.signal(libc::SIGKILL);
        }
    }
}

/// The zygote's name, as `ps` shows it.
const NAME: &str = "mp-forkserver";

static ZYGOTE: Mutex<Option<Zygote>> = Mutex::new(None);

/// Answers every request with the preload's failure, until we hang up.
fn refuse_all(mut conn: Connection<Reply, Request>, message: String) {
    while let Ok(request) = conn.recv_blocking() {
        drop(request);
        if conn
            .send_blocking(Reply::PreloadFailed(message.clone()))
            .is_err()
        {
            return;
        }
    }
}

fn start_zygote() -> Result<Zygote> {
    let (preloads, generation) = preload::registered();
    let (conn, theirs) = crate::ipc::pipe::<Request, Reply>()?;
    let options = Options {
        name: Some(NAME.into()),
        start_method: Some(StartMethod::Exec),
        die_with_parent: Some(true),
        kill_on_drop: true,
        ..Options::default()
    };
    let entry = Entry::new::<RunSync<_, ()>>(zygote as fn(_))?;
    let theirs = ZygoteStart {
        conn: theirs,
        preloads,
    };
    let start = start_message(&options, NAME, entry);
    // The server is the crate's own business, not one of the program's children: its
    // watch is never listed among them, and its outcome is never read.
    let watch = spawn_by_exec(&options, &start, &theirs)?.watch;
    tracing::debug!(pid = watch.pid(), "fork server started");
    Ok(Zygote {
        watch,
        conn,
        preloads: generation,
    })
}

/// How long the zygote may take to answer. It does nothing but fork, so only a zygote
/// that is stopped or starved takes this long; the spawn then starts by exec instead of
/// waiting on it for ever.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

fn ask(zygote: &mut Zygote, control: &OwnedFd, name: &str) -> Result<(u32, OwnedFd)> {
    zygote.conn.send_blocking(Request {
        control: PassFd(control.try_clone()?),
        cwd: PassFd(sys::open_current_dir()?),
        name: name.to_string(),
    })?;
    match zygote.conn.recv_blocking_timeout(ANSWER_LIMIT) {
        Ok(Reply::Forked {
            pid,
            pidfd: PassFd(pidfd),
        }) => Ok((pid, pidfd)),
        Ok(Reply::Failed(err)) => Err(Error::Io(std::io::Error::other(format!(
            "fork server: {err}"
        )))),
        Ok(Reply::PreloadFailed(message)) => Err(Error::Bootstrap(format!(
            "a preload function panicked in the fork server: {message}"
        ))),
        Err(Error::Timeout { after }) => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "fork server {} did not answer within {after:?}",
                zygote.watch.pid()
            ),
        ))),
        Err(err) => Err(err),
    }
}

/// Has the zygote fork a child named `name` that will run whatever is sent on `control`; returns
/// the child's pid and pidfd. A zygote found dead is replaced first. One that fails
/// while asked is killed (the next spawn starts another) and the error returned: it
/// may have forked a child holding `control` already, so `control` must not be given
/// to a second one. (Such a child, forked by a zygote stopped between its fork and its
/// answer, reads end of stream and exits; its pid never reached us, so it stays a
/// zombie until we exit.)
pub(crate) fn fork_child(control: &OwnedFd, name: &str) -> Result<(u32, OwnedFd)> {
    let mut slot = ZYGOTE.lock().unwrap_or_else(|p| p.into_inner());
    let preloads = preload::registered().1;
    if slot
        .as_mut()
        .is_none_or(|z| !z.is_alive() || z.preloads != preloads)
    {
        // Dropping a zygote's handle kills and reaps it.
        *slot = None;
        *slot = Some(start_zygote()?);
    }
    let zygote = slot.as_mut().expect("started above");
    ask(zygote, control, name).inspect_err(|err| {
        if !matches!(err, Error::Bootstrap(_)) {
            tracing::warn!(error = %err, "fork server failed; replacing it");
            // Killed and reaped with its handle.
            *slot = None;
        }
    })
}
