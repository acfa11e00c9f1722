//! The `forkserver` start method: children forked from a small, clean zygote.
//!
//! The zygote is a function child like any other (so it starts by `exec`, single
//! threaded, with none of the parent's runtime or locks). Asked for a child, it forks
//! with `clone3(CLONE_PARENT | CLONE_PIDFD)`: the new process is a sibling of the
//! zygote, that is a child of *ours*, which we reap, signal and await exactly like an
//! exec'd child; the zygote sends us its pidfd. Forking a small single-threaded process
//! costs a fraction of an exec.
//!
//! Every child the zygote forks starts *parked*: named `mp-parked`, it waits on a control
//! socket whose other end the zygote sends us with the pid and pidfd, until a spawn gives
//! it work (see `warm`). A spawn that finds no child parked asks for one and gives it
//! work at once; otherwise the zygote forks ahead of demand, off the spawn's path.
//!
//! The zygote starts on first use, is replaced if it dies, dies with us, and is killed
//! and reaped with its handle.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::child::{self, RunSync};
use super::control::start_message;
use super::exec::spawn_by_exec;
use super::options::{Options, StartMethod};
use super::preload::{self, Preload};
use super::protocol::Entry;
use super::warm::{self, Parked};
use crate::error::{Error, Result};
use crate::exit::ExitWatch;
use crate::ipc::{Connection, PassFd};
use crate::sys::{self, Forked};

/// A request to the zygote: fork one more child and park it.
#[derive(Serialize, Deserialize)]
struct Park;

#[derive(Serialize, Deserialize)]
enum Reply {
    /// A child parked, with its pid; `Handles` follows. Apart, so that a child whose
    /// descriptors cannot be received (this process out of descriptors) can still be
    /// killed and reaped by its pid.
    Parked {
        pid: u32,
    },
    /// The parked child's pidfd, and our end of the socket it is parked on.
    Handles {
        pidfd: PassFd,
        control: PassFd,
    },
    Failed(String),
    /// A preload panicked (with this message): the zygote forks nothing.
    PreloadFailed(String),
}

/// What the zygote starts with.
#[derive(Serialize, Deserialize)]
struct ZygoteStart {
    conn: Connection<Reply, Park>,
    /// Run once, in order, before anything is forked.
    preloads: Vec<Preload>,
}

/// A parked child's name, as `ps` shows it, until a spawn names it.
const PARKED_NAME: &str = "mp-parked";

/// The zygote's main loop: the preloads, then one parked child per request, until we
/// hang up.
fn zygote(ZygoteStart { conn, preloads }: ZygoteStart) {
    if let Err(message) = preload::run_all(preloads) {
        refuse_all(conn, message);
        return;
    }
    // Our parent, which is also every child's (they are forked as our siblings).
    let parent = nix::unistd::getppid().as_raw() as u32;
    let mut conn = Some(conn);
    loop {
        let Some(Ok(Park)) = conn.as_mut().map(|c| c.recv_blocking()) else {
            return;
        };
        let (reply, handles) = fork_parked(&mut conn, parent);
        let Some(conn) = conn.as_mut() else { return };
        if conn.send_blocking(reply).is_err() {
            return;
        }
        if handles.is_some_and(|handles| conn.send_blocking(handles).is_err()) {
            return;
        }
    }
}

/// Forks a child parked on a new control socket; the reply, and the handles (with our
/// end of the socket) to send after it.
fn fork_parked(conn: &mut Option<Connection<Reply, Park>>, parent: u32) -> (Reply, Option<Reply>) {
    let (ours, theirs) = match sys::stream_socketpair() {
        Ok(pair) => pair,
        Err(err) => return (Reply::Failed(err.to_string()), None),
    };
    match sys::fork_sibling() {
        Ok(Forked::Child) => {
            // First of all, so that the child never shows under the server's name.
            // (Not taken by the zygote around the fork: for that moment the zygote
            // would bear another name, and whoever signals processes by name could
            // hit the server mid-fork.)
            sys::set_thread_name(PARKED_NAME);
            drop(conn.take());
            drop(ours);
            child::parked_child(theirs, parent);
        }
        Ok(Forked::Parent { pid, pidfd }) => (
            Reply::Parked { pid },
            Some(Reply::Handles {
                pidfd: PassFd(pidfd),
                control: PassFd(ours),
            }),
        ),
        Err(err) => (Reply::Failed(err.to_string()), None),
    }
}

/// The running zygote: its exit, and the connection it takes requests on.
pub(super) struct Zygote {
    watch: ExitWatch,
    conn: Connection<Park, Reply>,
    /// Which registration of preloads it ran.
    preloads: u64,
}

impl Zygote {
    fn is_alive(&mut self) -> bool {
        matches!(self.watch.try_wait(), Ok(None))
    }

    pub(super) fn pid(&self) -> u32 {
        self.watch.pid()
    }

    /// Asks for one more parked child, without waiting for it. Returns two descriptors
    /// held free for the child's handles, to be dropped just before they are received:
    /// a process out of descriptors fails here, before a child exists, rather than
    /// while receiving them, which would lose its pid and leave it a zombie.
    fn ask(&mut self) -> Result<[OwnedFd; 2]> {
        let spare = sys::always_readable();
        let room = [sys::dup_cloexec(spare, 3)?, sys::dup_cloexec(spare, 3)?];
        self.conn.send_blocking(Park)?;
        Ok(room)
    }

    /// Waits until the answer to [`ask`](Self::ask) has arrived; whether it did within
    /// `ANSWER_LIMIT`.
    fn await_answer(&self) -> bool {
        let ms = ANSWER_LIMIT.as_millis() as i32;
        sys::poll_one(self.conn.as_fd(), false, ms).unwrap_or(false)
    }

    /// The answer to [`ask`](Self::ask).
    fn take_answer(&mut self) -> Result<Parked> {
        let answer = match self.conn.recv_blocking_timeout(ANSWER_LIMIT) {
            Ok(Reply::Parked { pid }) => self.take_handles(pid),
            Ok(Reply::Handles { .. }) => Err(Error::Protocol(
                "fork server: a child's handles without the child".into(),
            )),
            Ok(Reply::Failed(err)) => Err(Error::Io(std::io::Error::other(format!(
                "fork server: {err}"
            )))),
            Ok(Reply::PreloadFailed(message)) => Err(Error::Bootstrap(format!(
                "a preload function panicked in the fork server: {message}"
            ))),
            Err(err) => Err(err),
        };
        answer.map_err(|err| match err {
            Error::Timeout { after } => Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "fork server {} did not answer within {after:?}",
                    self.watch.pid()
                ),
            )),
            err => err,
        })
    }
}

impl Zygote {
    /// The handles of the child `pid` just parked. If they cannot be received, the
    /// child is killed and reaped by its pid, which nothing else knows.
    fn take_handles(&mut self, pid: u32) -> Result<Parked> {
        match self.conn.recv_blocking_timeout(ANSWER_LIMIT) {
            Ok(Reply::Handles {
                pidfd: PassFd(pidfd),
                control: PassFd(control),
            }) => Ok(Parked::new(pid, pidfd, control)),
            other => {
                sys::kill_and_reap_pid(pid);
                match other {
                    Err(err) => Err(err),
                    Ok(_) => Err(Error::Protocol("fork server: handles expected".into())),
                }
            }
        }
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

fn lock() -> MutexGuard<'static, Option<Zygote>> {
    ZYGOTE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers every request with the preload's failure, until we hang up.
fn refuse_all(mut conn: Connection<Reply, Park>, message: String) {
    while let Ok(Park) = conn.recv_blocking() {
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
    let (conn, theirs) = crate::ipc::pipe::<Park, Reply>()?;
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

/// A child parked just now for a spawn that found none parked. A zygote found dead (or
/// running an older list of preloads) is replaced first. One that fails while asked is
/// killed (the next spawn starts another) and the error returned.
pub(super) fn park_now() -> Result<Parked> {
    let mut slot = lock();
    let preloads = preload::generation();
    if slot
        .as_mut()
        .is_none_or(|z| !z.is_alive() || z.preloads != preloads)
    {
        // Dropping a zygote's handle kills and reaps it.
        *slot = None;
        let zygote = start_zygote()?;
        warm::serve_from(&zygote.watch, preloads);
        *slot = Some(zygote);
    }
    let zygote = slot.as_mut().expect("started above");
    let parked = zygote.ask().and_then(|room| {
        drop(room);
        zygote.take_answer()
    });
    parked.inspect_err(|err| {
        if !matches!(err, Error::Bootstrap(_)) {
            tracing::warn!(error = %err, "fork server failed; replacing it");
            // Killed and reaped with its handle.
            *slot = None;
        }
    })
}

/// Parks one more child ahead of demand, if the zygote serving is still `server`:
/// `keep` receives it (under whatever lock `keep` takes, so that the child's
/// descriptors arrive in this process and join the pool as one step). Returns whether
/// the zygote answered at all; one that did not is killed.
pub(super) fn park_ahead(
    server: u32,
    keep: impl FnOnce(&mut dyn FnMut() -> Result<Parked>),
) -> bool {
    let mut slot = lock();
    let Some(zygote) = slot.as_mut().filter(|z| z.pid() == server) else {
        return false;
    };
    let Ok(room) = zygote.ask() else {
        return false;
    };
    if !zygote.await_answer() {
        tracing::warn!("fork server failed; replacing it");
        kill_and_reap(&mut slot);
        return false;
    }
    let mut failed = false;
    let mut room = Some(room);
    keep(&mut || {
        drop(room.take());
        zygote.take_answer().inspect_err(|err| {
            failed = !matches!(err, Error::Bootstrap(_));
        })
    });
    if failed {
        tracing::warn!("fork server failed; replacing it");
        kill_and_reap(&mut slot);
    }
    !failed
}

/// Kills the zygote held and reaps it before returning: no spawn may come to reap it.
/// For the pool's own thread.
fn kill_and_reap(slot: &mut Option<Zygote>) {
    if let Some(mut zygote) = slot.take() {
        let _ = zygote.watch.signal(libc::SIGKILL);
        zygote.watch.reap_killed_blocking();
    }
}

/// Drops the zygote `pid` if it is still the one held: it has exited, and dropping its
/// handle reaps it.
pub(super) fn forget_dead(pid: u32) {
    let mut slot = lock();
    if slot
        .as_mut()
        .is_some_and(|z| z.pid() == pid && !z.is_alive())
    {
        *slot = None;
    }
}
