//! Wake-ups through an eventfd, and watching another process for its death.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::ipc::PassFd;
use crate::shm::{SharedMemory, Words};
use crate::sys;
use crate::sys::reactor::ReadableFd;

/// Wake-ups for one primitive, in every process that holds it.
///
/// A sequence number in shared memory says *whether* something happened: a waiter
/// notes it, checks its condition, and waits only while the number is unchanged, so no
/// notification can slip between check and wait. *How* waiters learn of a change:
/// async waiters through an eventfd that tokio's reactor watches (each notification is
/// an edge; the eventfd is never drained, so one waiter cannot swallow another's
/// wake-up), blocking waiters through a futex on the sequence number itself.
///
/// Its three words (sequence number and waiter counts) live in its owner's page
/// ([`Notifier::in_page`]), and an owner with several notifiers (and internal locks)
/// gives them all one eventfd ([`Notifier::sharing`]): a primitive costs one mapping
/// and one wake-up descriptor however many ways it has to wait.
pub(crate) struct Notifier {
    /// Shared by the notifiers of one owner ([`sharing`](Notifier::sharing)).
    fd: Arc<ReadableFd>,
    /// The [`NOTIFIER_BYTES`] of the owner's page.
    words: Words,
}

/// Layout of the notifier's words, from `base`: the sequence number and how many
/// waiters of each kind. A waiter is counted before it last looks at the sequence
/// number, so a notification after that look reaches it.
const SEQ: usize = 0;
const BLOCKING_WAITERS: usize = 4;
const ASYNC_WAITERS: usize = 8;
/// Bytes a notifier occupies in its owner's page (4-byte aligned).
pub(crate) const NOTIFIER_BYTES: usize = 12;

/// Counts a waiter in a shared word for as long as it waits, cancellation included, so
/// that whoever changes the state knows whether anyone needs waking.
pub(crate) struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    pub(crate) fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// How often a blocking waiter that watches owners checks whether they died (a futex
/// cannot wait on a pidfd).
const OWNER_CHECK: Duration = Duration::from_millis(20);

impl Notifier {
    /// A notifier whose words are the [`NOTIFIER_BYTES`] of `page` from `base`: only
    /// its eventfd is a descriptor of its own.
    pub(crate) fn in_page(page: &SharedMemory, base: usize) -> Result<Notifier> {
        let fd: OwnedFd =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(io::Error::from)?
                .into();
        Ok(Self::from_parts(fd, page.clone(), base))
    }

    /// A notifier whose words are the [`NOTIFIER_BYTES`] of `page` from `base`, and
    /// whose eventfd is this one's: an owner with several notifiers (and locks) in its
    /// page needs one descriptor for all their wake-ups. A wake-up meant for one of them
    /// reaches async waiters of the others too, which look, find nothing, and wait on.
    pub(crate) fn sharing(&self, page: &SharedMemory, base: usize) -> Notifier {
        Notifier {
            fd: self.fd.clone(),
            words: Words::new(page, base, NOTIFIER_BYTES),
        }
    }

    /// The eventfd, for an owner that sends its page itself and rebuilds the notifier
    /// with [`from_wake_fd`](Self::from_wake_fd).
    pub(crate) fn wake_fd(&self) -> io::Result<PassFd> {
        self.fd.owned().try_clone().map(PassFd)
    }

    /// The other side of [`wake_fd`](Self::wake_fd): an [`in_page`](Self::in_page)
    /// notifier received in parts.
    pub(crate) fn from_wake_fd(fd: PassFd, page: &SharedMemory, base: usize) -> Notifier {
        Self::from_parts(fd.0, page.clone(), base)
    }

    /// [`wake_fd`](Self::wake_fd) for a primitive's `Serialize`.
    pub(crate) fn wake_fd_for_message<E: serde::ser::Error>(
        &self,
    ) -> std::result::Result<PassFd, E> {
        self.wake_fd().map_err(E::custom)
    }

    /// [`from_wake_fd`](Self::from_wake_fd) for a primitive's `Deserialize`: the page
    /// that came with the message must hold at least `min_len` bytes, so a short or
    /// foreign page is a decoding error rather than an access out of bounds.
    pub(crate) fn from_message<E: serde::de::Error>(
        fd: PassFd,
        page: &SharedMemory,
        min_len: usize,
        base: usize,
        what: &str,
    ) -> std::result::Result<Notifier, E> {
        if page.len() < min_len.max(base + NOTIFIER_BYTES) {
            return Err(E::custom(format_args!("{what} page too small")));
        }
        Ok(Self::from_wake_fd(fd, page, base))
    }

    fn from_parts(fd: OwnedFd, page: SharedMemory, base: usize) -> Notifier {
        Notifier {
            fd: Arc::new(ReadableFd::new(fd)),
            words: Words::new(&page, base, NOTIFIER_BYTES),
        }
    }

    fn seq(&self) -> &AtomicU32 {
        self.words.atomic(SEQ)
    }

    fn count(&self, which: usize) -> &AtomicU32 {
        self.words.atomic(which)
    }

    /// The current sequence number, to pass to `wait` after checking the condition.
    pub(crate) fn observe(&self) -> u32 {
        self.seq().load(SeqCst)
    }

    /// Wakes every current waiter, in every process. System calls only for the kinds
    /// of waiter there are.
    pub(crate) fn notify(&self) {
        self.seq().fetch_add(1, SeqCst);
        if self.count(BLOCKING_WAITERS).load(SeqCst) > 0 {
            sys::futex_wake_all(self.seq());
        }
        if self.count(ASYNC_WAITERS).load(SeqCst) > 0 {
            let _ = nix::unistd::write(self.fd.fd(), &1u64.to_ne_bytes());
        }
    }

    fn registration(&self) -> Result<&AsyncFd<crate::sys::reactor::Raw>> {
        Ok(self.fd.registration()?)
    }

    /// Registers with the reactor, so that every notification from now on wakes an
    /// async wait; call before `observe`.
    pub(crate) fn arm(&self) -> Result<()> {
        self.registration().map(drop)
    }

    /// Waits until the sequence number moves on from `seen`, or one of `owners` dies.
    pub(crate) async fn wait(&self, seen: u32, owners: &[OwnerWatch]) -> Result<()> {
        let reg = self.registration()?;
        let _counted = Counted::new(self.count(ASYNC_WAITERS));
        let mut deaths = futures_util::future::select_all(
            owners
                .iter()
                .map(|o| {
                    Box::pin(o.died())
                        as std::pin::Pin<
                            Box<dyn std::future::Future<Output = Result<()>> + Send + '_>,
                        >
                })
                .chain(std::iter::once(Box::pin(std::future::pending()) as _)),
        );
        loop {
            // Registered for readiness before looking: a notification after the look
            // then wakes this wait even if another waiter on the same eventfd clears
            // the readiness first (it may find its own number unchanged).
            let mut readable = std::pin::pin!(reg.readable());
            let early = std::future::poll_fn(|cx| Poll::Ready(readable.as_mut().poll(cx))).await;
            if self.observe() != seen {
                return Ok(());
            }
            let ready = match early {
                Poll::Ready(ready) => ready,
                Poll::Pending => tokio::select! {
                    ready = &mut readable => ready,
                    (died, _, _) = &mut deaths => return died,
                },
            };
            if self.observe() == seen {
                // A stale edge from an earlier notification; a new one arriving
                // meanwhile keeps the readiness (tokio's tick check).
                ready?.clear_ready();
            }
        }
    }

    /// [`wait`](Self::wait) until `deadline`; `Ok(false)` if it passed first.
    pub(crate) async fn wait_until(
        &self,
        seen: u32,
        owners: &[OwnerWatch],
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let Some(deadline) = deadline else {
            return self.wait(seen, owners).await.map(|()| true);
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, self.wait(seen, owners)).await {
            Ok(woken) => woken.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Blocking form of [`wait`](Self::wait); `Ok(false)` if `deadline` passed first.
    pub(crate) fn wait_blocking(
        &self,
        seen: u32,
        owners: &[OwnerWatch],
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let _counted = Counted::new(self.count(BLOCKING_WAITERS));
        loop {
            if self.observe() != seen {
                return Ok(true);
            }
            if owners
                .iter()
                .any(|o| sys::poll_one(o.fd(), false, 0).unwrap_or(true))
            {
                return Ok(true);
            }
            let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if timeout == Some(Duration::ZERO) {
                return Ok(false);
            }
            if !owners.is_empty() {
                timeout = Some(timeout.map_or(OWNER_CHECK, |t| t.min(OWNER_CHECK)));
            }
            sys::futex_wait(self.seq(), seen, timeout);
        }
    }
}

/// This process's token: pid in the high half, the low bits of its start time in the
/// low half. Never zero.
///
/// Computed once per process image: our children are started by `exec`, which gives
/// them fresh statics. (A program that forks by hand without exec would share its
/// parent's token, and must not use these primitives from both sides of that fork.)
pub(crate) fn token() -> u64 {
    static TOKEN: OnceLock<u64> = OnceLock::new();
    *TOKEN.get_or_init(|| {
        let pid = std::process::id();
        make_token(pid, start_time(pid).unwrap_or(0))
    })
}

fn make_token(pid: u32, start: u64) -> u64 {
    ((pid as u64) << 32) | (start & 0xffff_ffff)
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process behind `token` is still running (not exited, not a zombie, its
/// pid not reused). Reads `/proc` once; no descriptor is kept.
pub(crate) fn is_alive(token: u64) -> bool {
    if token == self::token() {
        return true;
    }
    let pid = (token >> 32) as u32;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let running = !matches!(fields.next(), Some("Z" | "X" | "x"));
    let start = fields.nth(18).and_then(|s| s.parse().ok());
    running && start.map(|s| make_token(pid, s)) == Some(token)
}

/// A live owner's pidfd, readable once it has exited; clones share the descriptor.
#[derive(Clone)]
pub(crate) struct OwnerWatch(Arc<Watch>);

enum Watch {
    /// Registered with the reactor, for async waits.
    Registered(AsyncFd<OwnedFd>),
    /// Plain, for blocking waits outside a runtime.
    Plain(OwnedFd),
}

impl OwnerWatch {
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match &*self.0 {
            Watch::Registered(afd) => afd.get_ref().as_fd(),
            Watch::Plain(fd) => fd.as_fd(),
        }
    }

    pub(crate) async fn died(&self) -> Result<()> {
        match &*self.0 {
            Watch::Registered(afd) => {
                afd.readable().await?.retain_ready();
                Ok(())
            }
            Watch::Plain(_) => std::future::pending().await,
        }
    }
}

/// Opens a watch on the process behind `token`; `None` if it is already gone (or its
/// pid now belongs to someone else).
pub(crate) fn watch_owner(token: u64) -> Result<Option<OwnerWatch>> {
    let pid = (token >> 32) as u32;
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(Error::Io(e)),
    };
    // Open first, then compare start times: if the pid was reused, the start differs.
    if start_time(pid).map(|s| make_token(pid, s)) != Some(token) {
        return Ok(None);
    }
    // An exited owner (a zombie) has a readable pidfd: that also counts as dead.
    if sys::poll_one(pidfd.as_fd(), false, 0).unwrap_or(false) {
        return Ok(None);
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(Some(OwnerWatch(Arc::new(Watch::Plain(pidfd)))));
    }
    let afd =
        sys::reactor::register(pidfd, Interest::READABLE).map_err(|(_, err)| Error::Io(err))?;
    Ok(Some(OwnerWatch(Arc::new(Watch::Registered(afd)))))
}
