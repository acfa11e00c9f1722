//! Awaiting a child's exit without a thread per child and without polling.
//!
//! Two backends, chosen once per process:
//! - **pidfd** (Linux 5.3+): each child's pidfd is registered with tokio's reactor; when it
//!   turns readable, `waitid(P_PIDFD)` collects the status.
//! - **SIGCHLD**: one `tokio::signal` stream drives a non-blocking `waitpid` over the
//!   children we registered (never `waitpid(-1)`, so other people's children are left
//!   alone).
//!
//! Setting `MULTIPROCESS_REAPER=sigchld` (or `pidfd`) forces a backend, which is how the
//! test suite runs against both.
//!
//! A child whose handle is dropped before it was reaped is not forgotten: a background
//! task (or, without a runtime, the next spawn) reaps it, so no zombie is left behind.
//!
//! Signals always go through a pidfd where the kernel has them, whatever the backend,
//! so a signal never reaches a process that took over a recycled pid.
//!
//! Except when descriptors run short: a child started while half the descriptor limit
//! is in use is watched through the `SIGCHLD` registry without a pidfd, whatever the
//! backend, so that it costs one descriptor (its control socket) instead of two. By
//! pid is safe for a child nobody else reaps (its pid stays its own until we reap it);
//! see `unless_scarce`.
//!
//! Another part of the program may reap our child first (a `waitpid(-1)` loop, a
//! library reaping by pid, `SIGCHLD` set to `SIG_IGN`). The child has then ended with a
//! status nobody can tell us: the watch reports [`Exit::ReapedElsewhere`] and stops.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use futures_util::task::AtomicWaker;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sys;

/// How this process awaits the exit of its children.
///
/// ```
/// let reaper = multiprocess::reaper();
/// println!("children are awaited with {reaper:?}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaper {
    /// A pidfd per child, made readable in tokio's reactor when the child exits.
    Pidfd,
    /// One `SIGCHLD` stream driving `waitpid` on our own children.
    Sigchld,
}

/// The exit backend in use, probed once: pidfd where the kernel has it, unless the
/// `MULTIPROCESS_REAPER` environment variable says `sigchld` (or `pidfd`).
///
/// ```
/// use multiprocess::Reaper;
/// assert!(matches!(multiprocess::reaper(), Reaper::Pidfd | Reaper::Sigchld));
/// ```
pub fn reaper() -> Reaper {
    static CHOICE: OnceLock<Reaper> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let forced = std::env::var("MULTIPROCESS_REAPER").ok();
        match forced.as_deref() {
            Some("sigchld") => Reaper::Sigchld,
            Some("pidfd") | None | Some(_) if sys::pidfd_supported() => Reaper::Pidfd,
            _ => Reaper::Sigchld,
        }
    })
}

/// Watches one child of ours until it has been reaped.
pub(crate) struct ExitWatch {
    pid: u32,
    exit: Option<Exit>,
    kind: Option<Kind>,
    // Its entry in the list of active children (0: none).
    listed: u64,
}

/// How a child of ours ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// We reaped it and know its status.
    Status(ExitStatus),
    /// Someone else reaped it (`ECHILD`): it has ended, its status is unknown.
    ReapedElsewhere,
}

impl Exit {
    pub(crate) fn status(self) -> Option<ExitStatus> {
        match self {
            Exit::Status(status) => Some(status),
            Exit::ReapedElsewhere => None,
        }
    }
}

/// Turns a wait's `ECHILD` into the end it means: the child is no longer ours to reap.
fn reaped_elsewhere_on_echild(result: io::Result<Option<ExitStatus>>) -> io::Result<Option<Exit>> {
    match result {
        Ok(status) => Ok(status.map(Exit::Status)),
        Err(err) if err.raw_os_error() == Some(libc::ECHILD) => Ok(Some(Exit::ReapedElsewhere)),
        Err(err) => Err(err),
    }
}

/// Opens a pidfd for a child just spawned, and checks it names our child: a child that
/// exited and was reaped elsewhere before we got here (`SIGCHLD` ignored) gives `None`,
/// even if its pid has been taken by another process since.
fn open_child_pidfd(pid: u32) -> io::Result<Option<OwnedFd>> {
    let fd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(err) => return Err(err),
    };
    match sys::waitid_pidfd_peek(fd.as_fd()) {
        Err(err) if err.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        _ => Ok(Some(fd)),
    }
}

/// Keeps a new child's pidfd unless descriptors are running short; then the child is
/// watched through `SIGCHLD` instead, for one descriptor less per live child.
///
/// Reaping and signalling by pid are then safe as long as nobody else reaps our
/// children: a pid we have not reaped stays ours (alive or a zombie) and cannot be
/// recycled. A program that reaps children it does not own (`waitpid(-1)`) and runs
/// near its descriptor limit loses that guarantee for the children started meanwhile.
fn unless_scarce(pidfd: OwnedFd) -> Option<OwnedFd> {
    match crate::limits::descriptors_scarce(pidfd.as_fd()) {
        true => None,
        false => Some(pidfd),
    }
}

enum Kind {
    Pidfd(Pidfd),
    Sigchld(Arc<Slot>),
}

/// A pidfd, registered with the reactor the first time it is awaited (so a process can
/// be spawned outside a runtime and awaited inside one).
struct Pidfd {
    raw: Option<OwnedFd>,
    registered: Option<AsyncFd<OwnedFd>>,
}

impl Pidfd {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match (&self.registered, &self.raw) {
            (Some(afd), _) => afd.get_ref().as_fd(),
            (None, Some(fd)) => fd.as_fd(),
            (None, None) => unreachable!("a pidfd is always held one way or the other"),
        }
    }

    fn registered(&mut self) -> io::Result<&AsyncFd<OwnedFd>> {
        if self.registered.is_none() {
            let fd = self.raw.take().expect("unregistered pidfd");
            match sys::reactor::register(fd, Interest::READABLE) {
                Ok(afd) => self.registered = Some(afd),
                Err((fd, err)) => {
                    self.raw = Some(fd);
                    return Err(err);
                }
            }
        }
        Ok(self.registered.as_ref().expect("just registered"))
    }
}

impl ExitWatch {
    /// Starts watching `pid`, a child this process has just spawned (it may already
    /// have been reaped by someone else if `SIGCHLD` is ignored).
    pub(crate) fn new(pid: u32) -> io::Result<ExitWatch> {
        let pidfd = match (reaper(), sys::pidfd_supported()) {
            (Reaper::Pidfd, _) | (Reaper::Sigchld, true) => match open_child_pidfd(pid)? {
                Some(fd) => Some(fd),
                None => return Ok(ExitWatch::reaped_elsewhere(pid)),
            },
            (Reaper::Sigchld, false) => None,
        };
        Ok(ExitWatch::watching(pid, pidfd.and_then(unless_scarce)))
    }

    /// Starts watching a child of ours whose pidfd we already hold, perhaps opened a
    /// while ago: whether descriptors are short is judged from `just_opened` too.
    pub(crate) fn from_old_pidfd(
        pid: u32,
        pidfd: OwnedFd,
        just_opened: BorrowedFd<'_>,
    ) -> ExitWatch {
        let scarce = crate::limits::descriptors_scarce(just_opened)
            || crate::limits::descriptors_scarce(pidfd.as_fd());
        let pidfd = match scarce {
            true => None,
            false => Some(pidfd),
        };
        ExitWatch::watching(pid, pidfd)
    }

    /// Waits, blocking the calling thread, for a child that has been killed to exit, and
    /// reaps it. For a thread of the crate's own, never a runtime's.
    pub(crate) fn reap_killed_blocking(&mut self) {
        while matches!(self.try_wait(), Ok(None)) {
            let Some(pidfd) = self.pidfd() else { return };
            let _ = sys::poll_one(pidfd, false, -1);
        }
    }

    fn watching(pid: u32, pidfd: Option<OwnedFd>) -> ExitWatch {
        // Made with the first child rather than when a handle is first asked for it,
        // so that the process's descriptor count does not grow later.
        let _ = sys::always_readable();
        let kind = match (reaper(), pidfd) {
            (Reaper::Pidfd, Some(pidfd)) => Kind::Pidfd(Pidfd {
                raw: Some(pidfd),
                registered: None,
            }),
            (_, pidfd) => Kind::Sigchld(registry().register(pid, pidfd)),
        };
        ExitWatch {
            pid,
            exit: None,
            kind: Some(kind),
            listed: 0,
        }
    }

    fn reaped_elsewhere(pid: u32) -> ExitWatch {
        ExitWatch {
            pid,
            exit: Some(Exit::ReapedElsewhere),
            kind: None,
            listed: 0,
        }
    }

    /// Lists the child among the active children under `name` until it is reaped.
    pub(crate) fn list_as(&mut self, name: &str) {
        if self.exit.is_none() {
            self.listed = active::add(self.pid, name);
        }
    }

    /// Takes the child off the list of active children (the fork server's zygote).
    pub(crate) fn unlist(&mut self) {
        active::remove(self.pid, std::mem::take(&mut self.listed));
    }

    /// The child's pidfd, until it is reaped. `None` where the kernel has no pidfds.
    pub(crate) fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.kind {
            Some(Kind::Pidfd(pidfd)) => Some(pidfd.fd()),
            Some(Kind::Sigchld(slot)) => slot.pidfd(self.pid),
            None => None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, if the child has been reaped by us already.
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        self.exit.and_then(Exit::status)
    }

    /// How the child ended, once it has.
    pub(crate) fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Reaps the child if it has exited, without waiting.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<Exit>> {
        if self.exit.is_none() {
            let exit = match self.kind.as_ref() {
                Some(Kind::Pidfd(pidfd)) => {
                    reaped_elsewhere_on_echild(sys::waitid_pidfd(pidfd.fd()))?
                }
                Some(Kind::Sigchld(slot)) => slot.try_reap(self.pid)?,
                None => None,
            };
            if let Some(exit) = exit {
                self.reaped(exit);
            }
        }
        Ok(self.exit)
    }

    /// Records the end and lets go of the pidfd or registry slot at once: a reaped
    /// child needs neither, and a process awaiting thousands of children should not
    /// hold a descriptor for each one it has already seen exit.
    fn reaped(&mut self, exit: Exit) {
        self.exit = Some(exit);
        self.let_go();
    }

    fn let_go(&mut self) {
        if let Some(Kind::Sigchld(slot)) = self.kind.take() {
            let _ = registry().forget(self.pid, &slot);
        }
        self.unlist();
    }

    /// Polls for the child's exit.
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Exit>> {
        if let Some(exit) = self.try_wait()? {
            return Poll::Ready(Ok(exit));
        }
        let exit = match self.kind.as_mut().expect("an unreaped child has a watch") {
            Kind::Pidfd(pidfd) => loop {
                let afd = pidfd.registered()?;
                let mut guard = ready!(afd.poll_read_ready(cx))?;
                match reaped_elsewhere_on_echild(sys::waitid_pidfd(afd.get_ref().as_fd()))? {
                    Some(exit) => break exit,
                    None => guard.clear_ready(),
                }
            },
            Kind::Sigchld(slot) => {
                slot.waker.register(cx.waker());
                registry().ensure_driver()?;
                match slot.try_reap(self.pid)? {
                    Some(exit) => exit,
                    None => return Poll::Pending,
                }
            }
        };
        self.reaped(exit);
        Poll::Ready(Ok(exit))
    }

    /// Waits for the child's exit.
    pub(crate) async fn wait(&mut self) -> io::Result<Exit> {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// Sends `signal` unless the child has been reaped already (then it is a no-op).
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        let result = match self.kind.as_ref() {
            Some(Kind::Pidfd(pidfd)) => sys::pidfd_send_signal(pidfd.fd(), signal),
            Some(Kind::Sigchld(slot)) => slot.signal(self.pid, signal),
            None => Ok(()),
        };
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }
}

/// Signals a child from anywhere, after its watch may have moved on: through a
/// duplicate of its pidfd, or under the SIGCHLD slot's lock, so never to a recycled pid;
/// and, for a child leading its own process group, to that whole group too.
pub(crate) struct Signaller {
    target: Target,
    group: Option<u32>,
}

enum Target {
    Pidfd(OwnedFd),
    Sigchld(u32, Arc<Slot>),
    Reaped,
}

impl Signaller {
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        let result = match &self.target {
            Target::Pidfd(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
            Target::Sigchld(pid, slot) => slot.signal(*pid, signal),
            Target::Reaped => Ok(()),
        };
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
        match self.group {
            Some(pgid) => sys::kill_process_group(pgid, signal),
            None => Ok(()),
        }
    }

    /// Also signals the process group `pgid` (the child's own).
    pub(crate) fn with_group(self, pgid: u32) -> Signaller {
        Signaller {
            group: Some(pgid),
            ..self
        }
    }
}

impl ExitWatch {
    pub(crate) fn signaller(&self) -> io::Result<Signaller> {
        let target = match self.kind.as_ref() {
            Some(Kind::Pidfd(pidfd)) => Target::Pidfd(sys::dup_cloexec(pidfd.fd(), 3)?),
            Some(Kind::Sigchld(slot)) => Target::Sigchld(self.pid, slot.clone()),
            None => Target::Reaped,
        };
        Ok(Signaller {
            target,
            group: None,
        })
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        let Some(kind) = self.kind.take() else { return };
        let orphan = ExitWatch {
            pid: self.pid,
            exit: None,
            kind: Some(kind),
            listed: std::mem::take(&mut self.listed),
        };
        adopt_orphan(orphan);
    }
}

/// Takes over a child nobody waits for any more and makes sure it is reaped.
fn adopt_orphan(mut orphan: ExitWatch) {
    match orphan.try_wait() {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(err) => {
            // Nothing more can be learnt about it; letting go here (rather than leaving
            // it to the orphan's own drop) is what ends the adoption.
            tracing::warn!(pid = orphan.pid, error = %err, "cannot reap a dropped child");
            orphan.let_go();
            return;
        }
    }
    if let Some(Kind::Sigchld(slot)) = &orphan.kind {
        // The SIGCHLD driver reaps orphans on its sweeps. The driver that ran may have
        // died with its runtime and no waiter is left to start another, so start one
        // here; outside a runtime the next spawn sweeps the orphans instead.
        slot.orphan.store(true, Ordering::Release);
        registry().orphans.fetch_add(1, Ordering::AcqRel);
        orphan.kind = None;
        let _ = registry().ensure_driver();
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let mut adopted = Adopted(Some(orphan));
            handle.spawn(async move {
                if let Some(orphan) = adopted.0.as_mut() {
                    let _ = orphan.wait().await;
                }
            });
        }
        Err(_) => park_orphan(orphan),
    }
}

/// An orphan in the care of a runtime task. A runtime shutting down drops its tasks
/// unfinished; the orphan then goes to the list reaped on each spawn, because
/// spawning again on a dying runtime would be dropped at once, and so on forever.
struct Adopted(Option<ExitWatch>);

impl Drop for Adopted {
    fn drop(&mut self) {
        if let Some(orphan) = self
            .0
            .take()
            .filter(|o| o.kind.is_some() && o.exit.is_none())
        {
            park_orphan(orphan);
        }
    }
}

fn park_orphan(orphan: ExitWatch) {
    orphans()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(orphan);
}

fn orphans() -> &'static Mutex<Vec<ExitWatch>> {
    static ORPHANS: Mutex<Vec<ExitWatch>> = Mutex::new(Vec::new());
    &ORPHANS
}

/// Reaps orphans that have exited since they were adopted. Called on every spawn, so
/// orphans left outside a runtime never accumulate.
pub(crate) fn reap_orphans() {
    let finished: Vec<ExitWatch> = {
        let mut list = orphans().lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = Vec::with_capacity(list.len());
        let mut done = Vec::new();
        for mut watch in list.drain(..) {
            match watch.try_wait() {
                Ok(None) => kept.push(watch),
                Ok(Some(_)) => done.push(watch),
                Err(_) => {
                    watch.let_go();
                    done.push(watch);
                }
            }
        }
        *list = kept;
        done
    };
    drop(finished);
    // Only the orphans: awaited children are the driver's business, and sweeping them
    // all on every spawn would make spawning n children cost n² waitpids.
    registry().sweep_orphans();
}

/// Our children that have not been reaped, with their names, for `active_children`.
pub(crate) mod active {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    // pid -> (entry, name). The entry tells a recycled pid's new child from the old.
    static LIST: Mutex<BTreeMap<u32, (u64, String)>> = Mutex::new(BTreeMap::new());

    fn list() -> std::sync::MutexGuard<'static, BTreeMap<u32, (u64, String)>> {
        LIST.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(pid: u32, name: &str) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let entry = NEXT.fetch_add(1, Ordering::Relaxed);
        list().insert(pid, (entry, name.to_string()));
        entry
    }

    pub(crate) fn remove(pid: u32, entry: u64) {
        let mut list = list();
        if entry != 0 && list.get(&pid).is_some_and(|(e, _)| *e == entry) {
            list.remove(&pid);
        }
    }

    /// `(pid, name)` of every child listed.
    pub(crate) fn snapshot() -> Vec<(u32, String)> {
        list()
            .iter()
            .map(|(pid, (_, name))| (*pid, name.clone()))
            .collect()
    }
}

// ---- SIGCHLD backend ----

pub(crate) struct Slot {
    exit: Mutex<Option<Exit>>,
    waker: AtomicWaker,
    orphan: AtomicBool,
    // Where the kernel has pidfds, the child is reaped and signalled through one even
    // under this backend: a pid reaped by someone else and recycled can then never be
    // reaped or signalled by mistake. Without, `kill` under the lock below is the best
    // there is, and is safe unless someone else reaps our children. A child watched
    // without one to spare descriptors gets one on demand, when the program asks for it.
    pidfd: OnceLock<OwnedFd>,
}

impl Slot {
    /// Reaping and signalling both hold the lock, so a pid is never signalled after we
    /// reaped it (and it was possibly recycled).
    fn try_reap(&self, pid: u32) -> io::Result<Option<Exit>> {
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_none() {
            *exit = reaped_elsewhere_on_echild(match self.pidfd.get() {
                Some(fd) => sys::waitid_pidfd(fd.as_fd()),
                None => sys::waitpid_nohang(pid),
            })?;
        }
        Ok(*exit)
    }

    fn signal(&self, pid: u32, signal: i32) -> io::Result<()> {
        let exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_some() {
            return Ok(());
        }
        match self.pidfd.get() {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), signal),
            None => sys::kill(pid, signal),
        }
    }

    /// The child's pidfd, opened now if it was watched without one. Opened under the
    /// lock, while the child is unreaped and its pid therefore still names it.
    fn pidfd(&self, pid: u32) -> Option<std::os::fd::BorrowedFd<'_>> {
        if self.pidfd.get().is_none() && sys::pidfd_supported() {
            let exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
            if exit.is_none() && self.pidfd.get().is_none() {
                if let Ok(fd) = sys::pidfd_open(pid) {
                    let _ = self.pidfd.set(fd);
                }
            }
        }
        self.pidfd.get().map(|fd| fd.as_fd())
    }
}

struct Registry {
    children: Mutex<HashMap<u32, Arc<Slot>>>,
    driver_alive: AtomicBool,
    // How many slots may be orphans (never fewer than there are), so that a spawn
    // need not look through thousands of awaited children to find none.
    orphans: AtomicUsize,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        children: Mutex::new(HashMap::new()),
        driver_alive: AtomicBool::new(false),
        orphans: AtomicUsize::new(0),
    })
}

impl Registry {
    fn register(&self, pid: u32, pidfd: Option<OwnedFd>) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            exit: Mutex::new(None),
            waker: AtomicWaker::new(),
            orphan: AtomicBool::new(false),
            pidfd: pidfd.map(OnceLock::from).unwrap_or_default(),
        });
        self.lock().insert(pid, slot.clone());
        slot
    }

    /// Forgets `pid` if it still names `slot`: a pid reaped elsewhere may have been
    /// recycled for a newer child of ours, whose slot must stay.
    fn forget(&self, pid: u32, slot: &Arc<Slot>) -> bool {
        let mut children = self.lock();
        let ours = children.get(&pid).is_some_and(|s| Arc::ptr_eq(s, slot));
        if ours {
            children.remove(&pid);
        }
        ours
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Slot>>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One pass of `waitpid(pid, WNOHANG)` over our children; wakes those that exited
    /// and drops orphans once reaped.
    fn sweep(&self, only_orphans: bool) {
        let slots: Vec<(u32, Arc<Slot>)> = self
            .lock()
            .iter()
            .filter(|(_, s)| !only_orphans || s.orphan.load(Ordering::Acquire))
            .map(|(p, s)| (*p, s.clone()))
            .collect();
        let mut reaped_orphans = Vec::new();
        for (pid, slot) in slots {
            let exited = !matches!(slot.try_reap(pid), Ok(None));
            if exited {
                slot.waker.wake();
                if slot.orphan.load(Ordering::Acquire) {
                    reaped_orphans.push((pid, slot));
                }
            }
        }
        for (pid, slot) in reaped_orphans {
            if self.forget(pid, &slot) {
                self.orphans.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Reaps the orphans that have exited, if there may be any.
    fn sweep_orphans(&self) {
        if self.orphans.load(Ordering::Acquire) > 0 {
            self.sweep(true);
        }
    }

    fn wake_all(&self) {
        for slot in self.lock().values() {
            slot.waker.wake();
        }
    }

    /// Makes sure a driver task runs on some live runtime. A driver dies with its
    /// runtime; its guard then wakes every waiter so that one of them starts a new one.
    fn ensure_driver(&'static self) -> io::Result<()> {
        if self.driver_alive.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle,
            Err(_) => {
                self.driver_alive.store(false, Ordering::Release);
                return Err(io::Error::other(
                    "awaiting a child requires a tokio runtime",
                ));
            }
        };
        let signals = {
            let _enter = handle.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        };
        let mut signals = match signals {
            Ok(signals) => signals,
            Err(e) => {
                self.driver_alive.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let guard = DriverGuard(self);
        handle.spawn(async move {
            let _guard = guard;
            loop {
                // The stream exists before this sweep, so no exit can slip between them.
                registry().sweep(false);
                if signals.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(())
    }
}

struct DriverGuard(&'static Registry);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.driver_alive.store(false, Ordering::Release);
        self.0.wake_all();
    }
}
