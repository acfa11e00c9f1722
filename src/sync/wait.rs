//! The waiting layer: every wait is a sequence of non-blocking attempts, each returning
//! its result or what it must wait for, run by one of two drivers: [`drive`] on tokio's
//! reactor for `async` calls, [`drive_blocking`] on `poll(2)` and futexes for the
//! `_blocking` ones. How long to wait ([`Patience`]) is the driver's argument, so every
//! wait has all its forms (forever, until a deadline, not at all) from one body.
//!
//! An operation keeps whatever it holds between attempts (a lock taken, a waiter
//! counted, a frame half read) in values whose `Drop` undoes or finishes it, so that a
//! cancelled async wait, dropped at its `.await`, leaves no trace.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::notifier::{Counted, Notifier, OwnerWatch};
use crate::error::{Error, Result};
use crate::ipc::SocketFd;
use crate::sys;

/// What one attempt of an operation found.
pub(crate) enum Attempt<'a, T> {
    /// Done.
    Ready(T),
    /// The state moved under the attempt, or the operation moved on a stage: attempt
    /// again at once.
    Again,
    /// Nothing to do until this happens.
    Wait(Wait<'a>),
}

/// What an operation waits for.
pub(crate) enum Wait<'a> {
    /// A notifier's sequence number moving on from `seen` (observed before the attempt
    /// looked at the state), one of `owners` dying, or the time `until`, whichever
    /// comes first. The driver's deadline applies.
    Notified {
        notifier: &'a Notifier,
        seen: u32,
        owners: Vec<OwnerWatch>,
        /// A wake-up the operation itself needs (it handles that time on its own).
        until: Option<Instant>,
    },
    /// Bytes to read on `socket`, or `owner` (who owes them) dying. The operation is
    /// past its point of no return (it took a frame that others expect it to read to
    /// the end): see the drivers for how deadlines apply.
    Readable {
        socket: &'a SocketFd,
        owner: Option<OwnerWatch>,
    },
    /// Room to write on a socket, for a frame past its point of no return (its place
    /// in the queue is marked): see the drivers for how deadlines apply.
    Writable(&'a RoomWatch),
}

impl Wait<'_> {
    /// Whether the wait is before the operation's point of no return.
    fn bounded(&self) -> bool {
        matches!(self, Wait::Notified { .. })
    }
}

/// What one attempt at a wait on a single notifier found; [`Notifier::attempt`] makes
/// it an [`Attempt`] of the waiting layer.
pub(crate) enum Step<T> {
    /// Done.
    Ready(T),
    /// The state changed under the attempt (a dead owner was recovered): try again.
    Again,
    /// Wait for a notification, or for one of these owners to die.
    Wait(Vec<OwnerWatch>),
}

/// How long a driver lets an operation wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Patience {
    /// Not at all: the first bounded wait ends the operation (`try_` calls).
    Never,
    /// Until the deadline, or forever for `None`; one last attempt is made once it
    /// has passed.
    Until(Option<Instant>),
}

impl Patience {
    /// Forever.
    pub(crate) const FOREVER: Patience = Patience::Until(None);

    /// The deadline a bounded wait may last to, or `Err(())` if the driver gives up
    /// now.
    fn deadline(self) -> std::result::Result<Option<Instant>, ()> {
        match self {
            Patience::Never => Err(()),
            Patience::Until(deadline) if passed(deadline) => Err(()),
            Patience::Until(deadline) => Ok(deadline),
        }
    }
}

/// The async driver: attempts until the operation is ready, waiting through tokio's
/// reactor in between. `Ok(None)` if `patience` ran out first.
///
/// A deadline applies to every wait here, even one past its point of no return: an
/// operation given up there finishes what it began in a task when it is dropped, as a
/// cancelled one does. ("Never wait" still lets such a wait run to its end.)
///
/// Cancel safe as long as the operation is: between attempts the driver holds nothing.
pub(crate) async fn drive<'a, T>(
    patience: Patience,
    mut attempt: impl FnMut() -> Result<Attempt<'a, T>>,
) -> Result<Option<T>> {
    loop {
        match attempt()? {
            Attempt::Ready(ready) => return Ok(Some(ready)),
            Attempt::Again => {}
            Attempt::Wait(wait) => {
                // A deadline ends even a wait past its point of no return: the
                // operation, dropped, hands what it began to a task of the runtime.
                let deadline = match (wait.bounded(), patience) {
                    (false, Patience::Never) => None,
                    _ => match patience.deadline() {
                        Ok(deadline) => deadline,
                        Err(()) => return Ok(None),
                    },
                };
                wait_async(wait, deadline).await?;
            }
        }
    }
}

/// The blocking driver: [`drive`], waiting with a futex or `poll(2)` instead of the
/// reactor. A wait past its point of no return runs to its end whatever the deadline:
/// a blocking caller has no task to hand the rest to.
pub(crate) fn drive_blocking<'a, T>(
    patience: Patience,
    mut attempt: impl FnMut() -> Result<Attempt<'a, T>>,
) -> Result<Option<T>> {
    loop {
        match attempt()? {
            Attempt::Ready(ready) => return Ok(Some(ready)),
            Attempt::Again => {}
            Attempt::Wait(wait) => {
                let deadline = match wait.bounded() {
                    true => match patience.deadline() {
                        Ok(deadline) => deadline,
                        Err(()) => return Ok(None),
                    },
                    false => None,
                };
                wait_blocking(wait, deadline)?;
            }
        }
    }
}

/// The earlier of two optional times.
fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One wait through the reactor; returns when it may be worth attempting again.
async fn wait_async(wait: Wait<'_>, deadline: Option<Instant>) -> Result<()> {
    match wait {
        Wait::Notified {
            notifier,
            seen,
            owners,
            until,
        } => {
            notifier
                .wait_until(seen, &owners, earlier(deadline, until))
                .await?;
            Ok(())
        }
        Wait::Readable { socket, owner } => match owner {
            None => socket.readable().await,
            Some(owner) => {
                tokio::select! {
                    ready = socket.readable() => ready,
                    died = owner.died() => died,
                }
            }
        },
        Wait::Writable(room) => room.room().await,
    }
}

/// One wait with `poll(2)` or a futex; returns when it may be worth attempting again.
fn wait_blocking(wait: Wait<'_>, deadline: Option<Instant>) -> Result<()> {
    match wait {
        Wait::Notified {
            notifier,
            seen,
            owners,
            until,
        } => {
            notifier.wait_blocking(seen, &owners, earlier(deadline, until))?;
            Ok(())
        }
        Wait::Readable { socket, owner } => {
            let owner = owner.as_ref().map(|o| o.fd());
            poll_until_ready(socket.fd(), false, owner)
        }
        Wait::Writable(room) => poll_until_ready(room.fd(), true, None),
    }
}

/// Blocks in `poll(2)` until `fd` is readable (or writable), or `also` is readable.
fn poll_until_ready(
    fd: BorrowedFd<'_>,
    writable: bool,
    also: Option<BorrowedFd<'_>>,
) -> Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let events = match writable {
        true => PollFlags::POLLOUT,
        false => PollFlags::POLLIN,
    };
    let mut fds = vec![PollFd::new(fd, events)];
    if let Some(also) = also {
        fds.push(PollFd::new(also, PollFlags::POLLIN));
    }
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::Io(e.into())),
        }
    }
}

/// Room to write on a socket, awaitable: a duplicate of the socket registered with
/// the reactor for writability on the first async wait (and only then, so that a
/// socket nobody ever waits to write on costs no descriptor more).
pub(crate) struct RoomWatch {
    socket: std::sync::Arc<SocketFd>,
    registration: OnceLock<AsyncFd<OwnedFd>>,
}

impl RoomWatch {
    pub(crate) fn new(socket: std::sync::Arc<SocketFd>) -> RoomWatch {
        RoomWatch {
            socket,
            registration: OnceLock::new(),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.fd()
    }

    fn registration(&self) -> Result<&AsyncFd<OwnedFd>> {
        if let Some(reg) = self.registration.get() {
            return Ok(reg);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Io(io::Error::other(
                "async I/O outside a tokio runtime; use the *_blocking methods instead",
            )));
        }
        let dup = sys::dup_cloexec(self.fd(), 3)?;
        let reg =
            sys::reactor::register(dup, Interest::WRITABLE).map_err(|(_, err)| Error::Io(err))?;
        // Two tasks racing here both register; the loser's duplicate is dropped.
        Ok(self.registration.get_or_init(|| reg))
    }

    /// Waits until the socket has room.
    async fn room(&self) -> Result<()> {
        let reg = self.registration()?;
        loop {
            let mut guard = reg.writable().await?;
            if sys::poll_one(reg.get_ref().as_fd(), true, 0)? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

/// Waits on one notifier alone, as operations of the waiting layer.
impl Notifier {
    /// One attempt of a wait on this notifier alone: observes the sequence number,
    /// runs `step`, and turns what it says into an [`Attempt`] for either driver.
    /// `waiters`, if given, counts this waiter (in `counted`, which the operation keeps)
    /// from the first time it must wait until the operation ends, so that whoever
    /// changes the state can skip notifying when nobody waits; once counted it looks
    /// again before it waits.
    pub(crate) fn attempt<'a, T>(
        &'a self,
        waiters: Option<&'a AtomicU32>,
        counted: &mut Option<Counted<'a>>,
        step: impl FnOnce() -> Result<Step<T>>,
    ) -> Result<Attempt<'a, T>> {
        // The number is needed only by an attempt that may wait now: one already
        // counted, or one that is never counted. An uncontended attempt spares the
        // load (and the cache line other processes write).
        let seen = (counted.is_some() || waiters.is_none()).then(|| self.observe());
        Ok(match step()? {
            Step::Ready(ready) => Attempt::Ready(ready),
            Step::Again => Attempt::Again,
            Step::Wait(owners) => match waiters {
                Some(waiters) if counted.is_none() => {
                    *counted = Some(Counted::new(waiters));
                    Attempt::Again
                }
                _ => Attempt::Wait(Wait::Notified {
                    notifier: self,
                    seen: seen.unwrap_or_else(|| self.observe()),
                    owners,
                    until: None,
                }),
            },
        })
    }

    /// Runs `step` on the async driver until it is ready; `Ok(None)` if `patience`
    /// ran out first. See [`attempt`](Self::attempt) for `waiters`.
    ///
    /// Cancel safe as long as `step` is: between attempts nothing is held.
    pub(crate) async fn drive<T>(
        &self,
        waiters: Option<&AtomicU32>,
        patience: Patience,
        mut step: impl FnMut() -> Result<Step<T>>,
    ) -> Result<Option<T>> {
        let waiters = waiters.filter(|_| !matches!(patience, Patience::Never));
        let mut counted = None;
        drive(patience, || self.attempt(waiters, &mut counted, &mut step)).await
    }

    /// [`drive`](Self::drive) on the blocking driver.
    pub(crate) fn drive_blocking<T>(
        &self,
        waiters: Option<&AtomicU32>,
        patience: Patience,
        mut step: impl FnMut() -> Result<Step<T>>,
    ) -> Result<Option<T>> {
        let waiters = waiters.filter(|_| !matches!(patience, Patience::Never));
        let mut counted = None;
        drive_blocking(patience, || self.attempt(waiters, &mut counted, &mut step))
    }
}

/// Whether `deadline` has passed (never, for no deadline).
pub(crate) fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// The outcome of a wait without deadline, which cannot have timed out.
pub(crate) fn waited_forever<T>(outcome: Option<T>) -> Result<T> {
    within(outcome, Duration::MAX)
}

/// The outcome of a wait of at most `timeout`: `Error::Timeout` if it ran out.
pub(crate) fn within<T>(outcome: Option<T>, timeout: Duration) -> Result<T> {
    // Not `ok_or`: an `Error` built and dropped on every operation that did not time
    // out costs more than the operation's atomics.
    match outcome {
        Some(done) => Ok(done),
        None => Err(Error::Timeout { after: timeout }),
    }
}

/// The deadline `timeout` from now; `None` (no deadline) if that is beyond any clock.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
