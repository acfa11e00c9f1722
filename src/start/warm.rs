//! Warm children: fork-server children forked ahead of demand and parked, so that a
//! spawn hands its work to a process that already exists instead of waiting for a fork.
//!
//! A parked child is a child of ours (forked by the zygote as its sibling) blocked on
//! its control socket; we hold its pidfd and the other end of that socket. A spawn
//! takes one, sends it what the spawn decides (working directory, start message,
//! argument) and waits for the child to say it is set up (named, in its group, under
//! its limits), which takes one exchange over a socket. The zygote forks the
//! replacement meanwhile, on a thread of ours (`mp-warm`) that keeps the pool.
//!
//! How many are kept parked follows demand: a spawn that finds none doubles the number
//! wanted (from one, up to [`set_max_parked`], 16 by default); every [`IDLE_STEP`] without a spawn halves
//! it, so a process that stops spawning has none parked a few seconds later.
//!
//! A parked child is nobody's business but ours until a spawn takes it: it is not
//! listed among the active children, has no handle, and bears the name `mp-parked`. It
//! dies with this process (`PR_SET_PDEATHSIG`, until a spawn says otherwise), is killed
//! and reaped as soon as it is not wanted or its zygote has gone, and is reaped at once
//! if something else kills it.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use serde::Serialize;

use super::control::{Spawned, flush_in_background};
use super::forkserver;
use super::options::Options;
use super::preload;
use super::protocol::{Activate, Outcome, Start};
use crate::error::{Error, Result};
use crate::exit::ExitWatch;
use crate::ipc::{PassFd, ReadHalf, SocketFd, WriteHalf};
use crate::sys;

/// The most children kept parked at once unless [`set_max_parked`] says otherwise. Each
/// costs this process two descriptors and the system a small process sharing the
/// zygote's memory copy-on-write (see the crate's benchmarks for its size).
pub(crate) const MAX_PARKED: usize = 16;

static MAX: AtomicUsize = AtomicUsize::new(MAX_PARKED);

fn max_parked() -> usize {
    MAX.load(Ordering::Relaxed)
}

/// Sets the most children the fork server keeps parked ahead of demand (16 unless
/// set); 0 parks none, so that every fork-server spawn waits for its own fork. Children
/// parked beyond the new number are let go at once.
///
/// ```
/// // A process short of memory or of descriptors: no child forked ahead.
/// multiprocess::set_max_parked(0);
/// assert_eq!(multiprocess::forkserver_stats().max_parked, 0);
/// ```
pub fn set_max_parked(max: usize) {
    MAX.store(max, Ordering::Relaxed);
    let mut pool = pool();
    pool.target = pool.target.min(max);
    drop(pool);
    if let Some(keeper) = KEEPER.get() {
        keeper.wake();
    }
}

/// Each stretch this long without a spawn halves the number of children kept parked.
pub(crate) const IDLE_STEP: Duration = Duration::from_millis(500);

/// How long a parked child may take to say it is set up, once given work: only a
/// stopped or starved one takes this long, and the spawn then goes on without it.
const START_LIMIT: Duration = Duration::from_secs(5);

/// How long after a spawn the keeper waits before it has the zygote fork a
/// replacement, so as not to compete with the child just started.
const REFILL_AFTER: Duration = Duration::from_millis(2);

/// Spawns try this many parked children that turn out dead before starting by exec.
const ATTEMPTS: usize = 4;

/// A child parked on its control socket, waiting for work. Dropped, it is let go:
/// killed, and reaped before the drop returns, so it never lingers as a zombie.
pub(super) struct Parked {
    pid: u32,
    // Shared only with the keeper thread's wait, for as long as it waits. `None` once
    // a spawn has taken the child.
    pidfd: Option<Arc<OwnedFd>>,
    control: Option<OwnedFd>,
}

impl Parked {
    pub(super) fn new(pid: u32, pidfd: OwnedFd, control: OwnedFd) -> Parked {
        Parked {
            pid,
            pidfd: Some(Arc::new(pidfd)),
            control: Some(control),
        }
    }

    fn pidfd(&self) -> &Arc<OwnedFd> {
        self.pidfd.as_ref().expect("a parked child has its pidfd")
    }

    /// Whether it has exited (it is then a zombie until dropped).
    fn has_exited(&self) -> bool {
        exited(self.pidfd())
    }

    /// The child's pidfd, for a spawn that has given it work: it is the spawn's now.
    fn into_pidfd(mut self) -> OwnedFd {
        let mut pidfd = self.pidfd.take().expect("a parked child has its pidfd");
        loop {
            // The keeper thread holds a share only while it waits, and the spawn that
            // took this child has woken it: short of a descriptor to copy it into, the
            // share comes back at once.
            pidfd = match Arc::try_unwrap(pidfd) {
                Ok(pidfd) => return pidfd,
                Err(shared) => match sys::dup_cloexec(shared.as_fd(), 3) {
                    Ok(copy) => return copy,
                    Err(_) => shared,
                },
            };
            std::thread::yield_now();
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            let _ = sys::reap_pidfd_blocking(pidfd.as_fd());
        }
    }
}

/// Whether the process behind `pidfd` has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    sys::poll_one(pidfd.as_fd(), false, 0).unwrap_or(true)
}

/// The zygote children are parked from.
struct Server {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    /// Which registration of preloads it ran.
    preloads: u64,
}

struct Pool {
    /// Oldest first.
    parked: VecDeque<Parked>,
    /// How many are wanted.
    target: usize,
    /// Since when no spawn has come (or since the target last halved).
    quiet_since: Option<Instant>,
    server: Option<Server>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    parked: VecDeque::new(),
    target: 0,
    quiet_since: None,
    server: None,
});

fn pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// Halves the target for every idle step that has passed.
    fn settle(&mut self, now: Instant) {
        while let Some(since) = self.quiet_since {
            if self.target == 0 || now.duration_since(since) < IDLE_STEP {
                break;
            }
            self.target /= 2;
            self.quiet_since = Some(since + IDLE_STEP);
        }
    }

    /// Counts a spawn: the target grows if it found none parked.
    fn spawned(&mut self, now: Instant, found: bool) {
        self.settle(now);
        self.quiet_since = Some(now);
        if !found {
            self.target = (self.target * 2).max(1).min(max_parked());
        }
    }

    /// The oldest parked child still alive, if it comes from a zygote that ran the
    /// preloads of `preloads`. Dead ones met on the way are reaped.
    fn take(&mut self, preloads: u64) -> Option<Parked> {
        if self.server.as_ref().is_none_or(|s| s.preloads != preloads) {
            return None;
        }
        while let Some(parked) = self.parked.pop_front() {
            if !parked.has_exited() {
                return Some(parked);
            }
            drop(parked);
        }
        None
    }

    /// Brings the pool in line: children that died reaped, all of them let go if the
    /// zygote has gone, the oldest let go beyond the target. Returns the pid of a
    /// zygote found gone.
    fn tidy(&mut self, now: Instant) -> Option<u32> {
        self.settle(now);
        let gone = match &self.server {
            Some(server) if exited(&server.pidfd) => Some(server.pid),
            _ => None,
        };
        if gone.is_some() {
            self.server = None;
        }
        let (alive, dead): (VecDeque<Parked>, VecDeque<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| !p.has_exited());
        self.parked = alive;
        drop(dead);
        self.target = self.target.min(max_parked());
        let keep = match self.server {
            Some(_) => self.target,
            None => 0,
        };
        while self.parked.len() > keep {
            if let Some(parked) = self.parked.pop_front() {
                drop(parked);
            }
        }
        gone
    }

    /// The zygote to ask for one more parked child, if one is wanted.
    fn wants_more(&self) -> Option<u32> {
        self.server
            .as_ref()
            .filter(|_| self.parked.len() < self.target)
            .map(|s| s.pid)
    }

    /// How long the keeper may wait before the target next halves (-1: no limit).
    fn wait_ms(&self, now: Instant) -> i32 {
        match (self.target, self.quiet_since) {
            (1.., Some(since)) => {
                let left = (since + IDLE_STEP).saturating_duration_since(now);
                (left.as_millis() as i32).saturating_add(1)
            }
            _ => -1,
        }
    }
}

/// Makes the zygote `watch` watches, which ran the preloads of `preloads`, the one
/// children are parked from; children parked from an earlier one are let go.
pub(super) fn serve_from(watch: &ExitWatch, preloads: u64) {
    let Some(pidfd) = watch.pidfd().and_then(|fd| sys::dup_cloexec(fd, 3).ok()) else {
        // Without a pidfd to watch it by, no child is parked ahead of demand.
        return;
    };
    let old = {
        let mut pool = pool();
        pool.server = Some(Server {
            pid: watch.pid(),
            pidfd: Arc::new(pidfd),
            preloads,
        });
        std::mem::take(&mut pool.parked)
    };
    drop(old);
    keeper().wake();
}

/// The oldest child parked for a spawn, counting the spawn.
fn take(preloads: u64) -> Option<Parked> {
    let parked = {
        let mut pool = pool();
        let parked = pool.take(preloads);
        pool.spawned(Instant::now(), parked.is_some());
        parked
    };
    if let Some(keeper) = KEEPER.get() {
        keeper.wake();
    }
    parked
}

/// Starts a child through the fork server, by a parked child given the work; `None`
/// if the server is unavailable (the caller starts the child by exec).
pub(super) fn spawn<A: Serialize>(
    options: &Options,
    start: &Start,
    arg: &A,
) -> Result<Option<Spawned>> {
    let cwd = match &options.current_dir {
        Some(dir) => sys::open_directory(dir).map_err(|source| Error::CurrentDir {
            path: dir.clone(),
            source,
        })?,
        None => sys::open_current_dir()?,
    };
    let preloads = preload::generation();
    for _ in 0..ATTEMPTS {
        let parked = match take(preloads) {
            Some(parked) => parked,
            None => match forkserver::park_now() {
                Ok(parked) => parked,
                // Children without the preloads' work done would be a silent difference.
                Err(err @ Error::Bootstrap(_)) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "fork server unavailable; starting by exec");
                    return Ok(None);
                }
            },
        };
        if let Some(spawned) = activate(parked, &cwd, start, arg)? {
            return Ok(Some(spawned));
        }
    }
    Ok(None)
}

/// Gives `parked` the work, and waits for it to say it is set up. `None` if it turns
/// out to have died (killed while parked) or does not answer: it is reaped (killed
/// first) and the work goes to another.
fn activate<A: Serialize>(
    mut parked: Parked,
    cwd: &OwnedFd,
    start: &Start,
    arg: &A,
) -> Result<Option<Spawned>> {
    let control = parked
        .control
        .take()
        .expect("a parked child has its socket");
    let socket = SocketFd::new(control)?;
    let mut write = WriteHalf::new(socket.clone());
    let mut read = ReadHalf::new(socket);
    let encoded = cwd
        .try_clone()
        .map_err(Error::Io)
        .and_then(|cwd| write.encode(&Activate { cwd: PassFd(cwd) }))
        .and_then(|()| write.encode(start))
        .and_then(|()| write.encode(arg));
    if let Err(err) = encoded {
        drop(parked);
        return Err(err);
    }
    let first = match write.flush_now() {
        Ok(_) => read.recv_blocking::<Outcome<()>>(Some(START_LIMIT)),
        Err(_) => None,
    };
    let early = match first {
        Some(Ok(Outcome::Started)) => None,
        Some(Ok(refused)) => Some(refused),
        Some(Err(err @ (Error::Decode(_) | Error::FrameTooLarge { .. }))) => {
            drop(parked);
            return Err(err);
        }
        None | Some(Err(_)) => {
            tracing::debug!(pid = parked.pid, "a parked child did not take its work");
            drop(parked);
            return Ok(None);
        }
    };
    flush_in_background(write);
    let pid = parked.pid;
    let pidfd = parked.into_pidfd();
    Ok(Some(Spawned {
        watch: ExitWatch::from_old_pidfd(pid, pidfd, cwd.as_fd()),
        control: read,
        early,
    }))
}

/// What the fork server holds right now, as [`forkserver_stats`] reports it.
///
/// ```
/// let stats = multiprocess::forkserver_stats();
/// assert!(stats.parked.len() <= stats.max_parked);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForkserverStats {
    /// The zygote's pid, while one is running.
    pub server: Option<u32>,
    /// The pids of the children parked right now, oldest first: children of this
    /// process that no handle owns yet.
    pub parked: Vec<u32>,
    /// How many children are wanted parked, as demand has set it.
    pub target: usize,
    /// The most children ever kept parked.
    pub max_parked: usize,
}

/// What the fork server holds right now: its zygote, and the children parked ahead of
/// demand (see [`StartMethod::Forkserver`](crate::StartMethod::Forkserver)). For
/// diagnostics: a parked child is a child of this process (in `/proc`, named
/// `mp-parked`) that no [`Process`](crate::Process) owns and
/// [`active_children`](crate::active_children) does not list. Each one parked costs this
/// process two descriptors (its pidfd and its control socket).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// multiprocess::spawn_process(|()| (), ())?.await?;
/// let stats = multiprocess::forkserver_stats();
/// println!("fork server {:?}, {} parked", stats.server, stats.parked.len());
/// # Ok(())
/// # }
/// ```
pub fn forkserver_stats() -> ForkserverStats {
    let mut pool = pool();
    pool.settle(Instant::now());
    ForkserverStats {
        server: pool.server.as_ref().map(|s| s.pid),
        parked: pool.parked.iter().map(|p| p.pid).collect(),
        target: pool.target,
        max_parked: max_parked(),
    }
}

/// The thread that keeps the pool: it asks the zygote for children as they are wanted,
/// and lets them go when they are not.
struct Keeper {
    wake: EventFd,
}

static KEEPER: OnceLock<Keeper> = OnceLock::new();

fn keeper() -> &'static Keeper {
    KEEPER.get_or_init(|| {
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .expect("an eventfd: the process is out of descriptors");
        std::thread::Builder::new()
            .name("mp-warm".into())
            .spawn(keep_pool)
            .expect("cannot start the thread that keeps parked children");
        Keeper { wake }
    })
}

impl Keeper {
    fn wake(&self) {
        let _ = self.wake.write(1);
    }
}

fn keep_pool() {
    // The keeper is set once this thread's creator returns.
    let keeper = loop {
        match KEEPER.get() {
            Some(keeper) => break keeper,
            None => std::thread::yield_now(),
        }
    };
    loop {
        let _ = keeper.wake.read();
        let (wanted, watched, wait_ms, server_gone) = {
            let mut pool = pool();
            let now = Instant::now();
            let server_gone = pool.tidy(now);
            let watched: Vec<Arc<OwnedFd>> = pool
                .server
                .iter()
                .map(|s| s.pidfd.clone())
                .chain(pool.parked.iter().map(|p| p.pidfd().clone()))
                .collect();
            (pool.wants_more(), watched, pool.wait_ms(now), server_gone)
        };
        if let Some(pid) = server_gone {
            // Reaped now rather than at the next spawn, which may never come.
            forkserver::forget_dead(pid);
        }
        if let Some(server) = wanted {
            let since = pool().quiet_since.map(|t| t.elapsed());
            match since {
                // Not while the child just taken starts: on a machine with few CPUs the
                // fork would compete with it.
                Some(since) if since < REFILL_AFTER => {
                    let left = (REFILL_AFTER - since).as_millis() as i32 + 1;
                    let _ = sys::poll_readable(&[keeper.wake.as_fd()], left);
                }
                _ => park_one_ahead(server),
            }
            drop(watched);
            continue;
        }
        let mut fds = vec![keeper.wake.as_fd()];
        fds.extend(watched.iter().map(|fd| fd.as_fd()));
        let _ = sys::poll_readable(&fds, wait_ms);
    }
}

/// Asks zygote `server` for one more parked child and adds it to the pool. The child's
/// descriptors are received under the pool's lock, so that they join this process and
/// the pool in one step, as the statistics show it.
fn park_one_ahead(server: u32) {
    let answered = forkserver::park_ahead(server, |take| {
        let mut pool = pool();
        match take() {
            Ok(parked) => pool.parked.push_back(parked),
            Err(err) => {
                tracing::debug!(error = %err, "the fork server parked no child");
                // Nothing more is asked of this zygote until a spawn says otherwise.
                pool.target = 0;
            }
        }
    });
    if !answered {
        pool().target = 0;
    }
}
