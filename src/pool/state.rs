//! The pool's rules, as transitions over plain data: a queue, a window of jobs per
//! worker, and what each event (a job queued, an answer, an exit, a deadline, a start
//! that failed, close, terminate) does to them.
//!
//! Nothing here touches a socket, a process or the clock's timers: a worker is seen
//! through a [`Link`], and the time is passed in where a rule depends on it. The pool's
//! engine (`core`) turns I/O into these events; tests drive them with a fake worker.
//!
//! The rules:
//! - A job goes to the open worker with the fewest jobs, in queue order.
//! - An idle worker takes back a job another worker holds but has not started.
//! - Exit decides death: when a worker exits, the job it was running fails with the
//!   cause (timeout, cancellation, termination, a broken connection, the exit status),
//!   and the jobs it had not started go back to the front of the queue.
//! - A worker that dies is replaced for as long as the pool lives; a replacement that
//!   cannot be started is retried with backoff ([`PoolStats::missing`] counts it), and
//!   queued jobs wait for it, or fail once no worker could be started for the start
//!   timeout, naming the last start failure.
//! - A worker that fails during start-up before any worker was ever ready fails the
//!   pool: every replacement would do the same.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::claim::Claim;
use super::protocol::{Encoded, JobData, Reply};
use crate::error::{Error, Result};

/// The pool's hold on one worker process.
pub(crate) trait Link {
    /// Hands a job to the worker. If the worker is going away the job is lost on the
    /// way; its exit then settles it with the rest of its window.
    fn send(&mut self, job: Arc<JobData>, claim: Claim);
    /// Marks `claim` offered on the worker's claim board.
    fn offer(&mut self, claim: Claim);
    /// Takes an offered job (`id`) back, or asks the worker for it.
    fn take_back(&mut self, claim: Claim, id: u64) -> TakeBack;
    /// Whether a job's descriptors can reach the worker (not over a byte stream).
    fn carries_fds(&self) -> bool;
    /// Whether the worker joined the pool by itself: it is not replaced when it goes.
    fn joined(&self) -> bool;
    /// How many jobs its claim board can hold.
    fn cells(&self) -> usize;
    /// Ends the worker's job stream: it exits once it has answered what it holds.
    fn hang_up(&mut self);
    /// Kills the worker (and whatever its tasks forked).
    fn kill(&mut self);
    /// The worker has exited: ends whatever its tasks left behind.
    fn exited(&mut self);
}

/// What came of taking a job back from a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeBack {
    /// It is the pool's again.
    Done,
    /// The worker has started it.
    Started,
    /// The worker was asked; its answer comes as an event.
    Asked,
}

/// What to do with a task whose handle is dropped while it runs.
///
/// ```
/// use multiprocess::{CancelRunning, ProcessPool};
/// let builder = ProcessPool::builder().cancel_running(CancelRunning::KillWorker);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelRunning {
    /// Let it finish and discard the result (the default).
    #[default]
    Finish,
    /// Kill its worker (a new one takes its place).
    KillWorker,
}

/// The settings the rules depend on.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// A fixed number of jobs per worker, or `None` to adapt it to task length.
    pub(crate) window: Option<usize>,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) cancel_running: CancelRunning,
    pub(crate) memory_limit: Option<u64>,
    /// How long a new worker may take to say it is ready (initializer included), and
    /// how long a queued job waits while no worker can be started.
    pub(crate) start_timeout: Duration,
    /// Workers may join by themselves: with none alive, queued tasks wait for one.
    pub(crate) joinable: bool,
}

impl Rules {
    /// How many jobs a worker may hold at most (its claim board has twice as many
    /// cells, so a job taken back never shares a cell with a new one).
    pub(crate) fn max_window(&self) -> usize {
        self.window.unwrap_or(MAX_WINDOW)
    }
}

/// A snapshot of a pool's counters.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = multiprocess::ProcessPool::new(1).await?;
/// pool.apply(|x: u8| x, 1).await?;
/// let stats = pool.stats();
/// assert_eq!((stats.workers, stats.completed), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker processes alive.
    pub workers: usize,
    /// Workers with at least one task.
    pub busy: usize,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks finished with a result (including a panic reported by a live worker).
    pub completed: u64,
    /// Tasks failed by their worker's death.
    pub failed: u64,
    /// Tasks failed by their timeout.
    pub timed_out: u64,
    /// Workers started to replace ones that died or were killed.
    pub respawned: u64,
    /// Workers retired after `max_tasks_per_worker` tasks and replaced.
    pub recycled: u64,
    /// Workers that asked to join (see
    /// [`PoolBuilder::listen`](crate::PoolBuilder::listen)) and were refused: a wrong
    /// key, garbage or silence before the key was proven, a different build.
    pub refused: u64,
    /// Workers the pool is short of: being started, or waiting to be tried again after
    /// a start failed (out of descriptors or processes). Replacements are retried with
    /// backoff for as long as the pool lives.
    pub missing: usize,
    /// Attempts to start a worker that failed.
    pub start_failures: u64,
}

/// Where a job's answer goes, and the span that follows the job from queue to answer
/// (its id, then the pid of the worker that runs it).
pub(crate) struct Waiter {
    pub(crate) reply: oneshot::Sender<Result<Encoded>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) span: tracing::Span,
    /// Its handle let go of it on purpose: it runs although nobody awaits its answer.
    pub(crate) detached: bool,
}

impl Waiter {
    /// Nobody wants this job any more: its handle was dropped, not detached.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() && !self.detached
    }
}

pub(crate) struct Queued {
    pub(crate) job: Arc<JobData>,
    pub(crate) waiter: Waiter,
    /// When it joined the queue: it fails after the start timeout if no worker could
    /// be started all that time.
    since: Instant,
    // A place in the bounded queue, freed when the job leaves it. Jobs put back after
    // their worker died hold none: they were admitted once already.
    _permit: Option<OwnedSemaphorePermit>,
}

pub(crate) struct Running {
    pub(crate) job: Arc<JobData>,
    pub(crate) waiter: Waiter,
    pub(crate) claim: Claim,
    /// The worker was asked to give it back (not asked again whatever it answers).
    asked: bool,
}

/// Why the pool killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillReason {
    Timeout(u64, Duration),
    Cancelled(u64),
    Terminate,
    /// Never said it was ready within the start-up limit (stopped, stuck, starved).
    Startup,
    /// Broke its connection (a malformed or torn frame, or hung up on its own) and did
    /// not exit by itself.
    BrokenStream,
}

/// How long a worker told to exit may take before it is killed.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Bounds of the adaptive window, and the dispatch round trip it aims to cover.
const MIN_WINDOW: usize = 2;
pub(crate) const MAX_WINDOW: usize = 32;
const ROUND_TRIP: Duration = Duration::from_micros(200);

pub(crate) struct WorkerSlot<L> {
    pub(crate) key: u64,
    pub(crate) pid: u32,
    pub(crate) link: L,
    /// The pool ended its job stream: it takes no more jobs.
    hung_up: bool,
    tickets: u64,
    pub(crate) window: VecDeque<Running>,
    head_deadline: Option<Instant>,
    /// When its head job became head (the spawn time until it is ready).
    head_started: Instant,
    // Smoothed time a job takes, seen from here (from becoming head to its answer).
    job_time: Option<Duration>,
    dispatched: u64,
    pub(crate) ready: bool,
    pub(crate) killed: Option<KillReason>,
    // Why its connection could not be read further, if it broke.
    broken: Option<String>,
    // Why the connection to a worker behind a byte stream ended, if not by our doing.
    pub(crate) lost: Option<String>,
}

impl<L: Link> WorkerSlot<L> {
    /// A free cell of its board, and a fresh ticket, for one more job.
    fn next_claim(&mut self) -> Claim {
        let cell = (0..self.link.cells())
            .find(|&c| self.window.iter().all(|r| r.claim.cell as usize != c))
            .expect("a window never fills its board");
        self.tickets += 1;
        let claim = Claim {
            cell: cell as u32,
            ticket: self.tickets,
        };
        self.link.offer(claim);
        claim
    }

    /// Whether it can take a job now.
    fn open(&self, max: Option<u64>) -> bool {
        self.ready && self.killed.is_none() && !self.hung_up && !self.retiring(max)
    }

    fn retiring(&self, max: Option<u64>) -> bool {
        max.is_some_and(|max| self.dispatched >= max)
    }

    fn kill(&mut self, reason: KillReason) {
        if self.killed.is_none() {
            self.killed = Some(reason);
            self.link.kill();
        }
    }

    fn hang_up(&mut self) {
        if !self.hung_up {
            self.hung_up = true;
            self.link.hang_up();
        }
    }

    /// How many jobs this worker may hold: enough to cover a dispatch round trip with
    /// work when jobs are short, two (one running, one ready) when they are long, so a
    /// long job never holds many others hostage.
    fn capacity(&self, fixed: Option<usize>) -> usize {
        if let Some(fixed) = fixed {
            return fixed;
        }
        match self.job_time {
            None => MIN_WINDOW,
            Some(job) => {
                let covering = ROUND_TRIP.as_nanos() / job.as_nanos().max(1);
                (covering as usize + 1).clamp(MIN_WINDOW, MAX_WINDOW)
            }
        }
    }

    fn record_job_time(&mut self, now: Instant) {
        let took = now.saturating_duration_since(self.head_started);
        self.job_time = Some(match self.job_time {
            None => took,
            Some(avg) => (avg * 4 + took) / 5,
        });
    }

    fn set_head_deadline(&mut self, now: Instant) {
        self.head_started = now;
        self.head_deadline = self
            .window
            .front()
            .and_then(|r| r.waiter.timeout)
            .map(|t| now + t);
    }

    /// The error for the job it was running when it exited with `status`.
    fn death_of_head(&mut self, head: u64, status: ExitStatus, rules: &Rules) -> Error {
        match self.killed {
            Some(KillReason::Timeout(id, after)) if id == head => Error::Timeout { after },
            Some(KillReason::Terminate) => Error::PoolClosed,
            // Nobody waits for a cancelled task's answer.
            Some(KillReason::Cancelled(id)) if id == head => Error::PoolClosed,
            // Set only when it was killed for breaking its connection.
            _ if self.lost.is_some() => Error::WorkerDied {
                pid: self.pid,
                signal: None,
                code: None,
                reason: self.lost.take(),
            },
            _ => match self.broken.take() {
                Some(why) => Error::Protocol(format!(
                    "pool worker {} broke its connection ({why}) and was killed",
                    self.pid
                )),
                None => Error::from_capped_exit(status, rules.memory_limit).unwrap_or(
                    Error::WorkerDied {
                        pid: self.pid,
                        signal: status.signal(),
                        code: status.code(),
                        reason: None,
                    },
                ),
            },
        }
    }
}

/// The whole state of a pool.
pub(crate) struct State<L> {
    pub(crate) rules: Rules,
    queue: VecDeque<Queued>,
    pub(crate) workers: Vec<WorkerSlot<L>>,
    pub(crate) closing: bool,
    pub(crate) terminated: bool,
    pub(crate) init_error: Option<String>,
    // Some worker has been ready: a later death during start-up is a fault to heal,
    // not a broken initializer.
    ever_ready: bool,
    // Workers decided on but not yet in `workers` (being started, or waiting to be
    // tried again): `close` and `terminate` must not take an empty `workers` for a
    // finished pool while one is on its way.
    starting: usize,
    next_worker: u64,
    /// Since when starting a worker has kept failing, and the last failure.
    start_failure: Option<(Instant, String)>,
    stats: PoolStats,
}

impl<L: Link> State<L> {
    pub(crate) fn new(rules: Rules) -> State<L> {
        State {
            rules,
            queue: VecDeque::new(),
            workers: Vec::new(),
            closing: false,
            terminated: false,
            init_error: None,
            ever_ready: false,
            starting: 0,
            next_worker: 1,
            start_failure: None,
            stats: PoolStats::default(),
        }
    }

    /// Whether a worker that could not be started is still needed.
    fn wants_worker(&self) -> bool {
        !self.terminated && self.init_error.is_none() && (!self.closing || !self.queue.is_empty())
    }

    /// Queues a job whose queue place is already reserved (or, for a detached job, that
    /// needs none) and hands out what can be handed out. Returns where its answer comes.
    pub(crate) fn enqueue(
        &mut self,
        job: Arc<JobData>,
        timeout: Option<Duration>,
        permit: Option<OwnedSemaphorePermit>,
        now: Instant,
    ) -> Result<oneshot::Receiver<Result<Encoded>>> {
        if self.closing {
            return Err(Error::PoolClosed);
        }
        if let Some(err) = &self.init_error {
            return Err(init_failed(err));
        }
        let (reply, answer) = oneshot::channel();
        let span = tracing::debug_span!("task", id = job.id, worker = tracing::field::Empty);
        let waiter = Waiter {
            reply,
            timeout,
            span,
            detached: false,
        };
        self.queue.push_back(Queued {
            job,
            waiter,
            since: now,
            _permit: permit,
        });
        Ok(answer)
    }

    /// Fails every queued job that `expired` picks with `error`. The one way queued jobs
    /// are failed (an initializer failed, the pool was terminated, no worker could be
    /// started for too long).
    fn fail_queued(&mut self, error: &Error, expired: impl Fn(&Queued) -> bool) {
        let (gone, waiting) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition::<VecDeque<_>, _>(|q| expired(q));
        self.queue = waiting;
        for queued in gone {
            let _ = queued.waiter.reply.send(Err(error.clone()));
        }
    }

    /// The pool cannot work: every worker would fail as this one did.
    fn fail_init(&mut self, failure: String) {
        let failure = self.init_error.get_or_insert(failure).clone();
        self.fail_queued(&Error::Bootstrap(failure), |_| true);
    }

    /// Hands queued jobs to workers with room in their window, least loaded first; then
    /// gives idle workers the jobs other workers hold but have not started. Returns
    /// whether a head-of-window deadline was set.
    pub(crate) fn dispatch(&mut self, now: Instant) -> bool {
        let mut deadline_set = self.dispatch_queue(now);
        while self.queue.is_empty() && self.take_back_for_idle() {
            deadline_set |= self.dispatch_queue(now);
        }
        deadline_set
    }

    fn dispatch_queue(&mut self, now: Instant) -> bool {
        let mut deadline_set = false;
        let max = self.rules.max_tasks_per_worker;
        let fixed = self.rules.window;
        while !self.queue.is_empty() {
            let Some(slot) = self
                .workers
                .iter_mut()
                .filter(|w| w.open(max))
                .filter(|w| w.window.len() < w.capacity(fixed))
                .min_by_key(|w| w.window.len())
            else {
                break;
            };
            let Queued { job, waiter, .. } = self.queue.pop_front().expect("queue not empty");
            if waiter.abandoned() {
                continue; // Its handle was dropped while it waited.
            }
            if !job.fds.is_empty() && !slot.link.carries_fds() {
                let _ = waiter.reply.send(Err(Error::Encode(format!(
                    "the task's argument holds descriptors, which cannot reach pool worker {} \
                     over its network connection",
                    slot.pid
                ))));
                continue;
            }
            let claim = slot.next_claim();
            slot.link.send(job.clone(), claim);
            waiter.span.record("worker", slot.pid);
            tracing::trace!(parent: &waiter.span, "task dispatched");
            slot.dispatched += 1;
            slot.window.push_back(Running {
                job,
                waiter,
                claim,
                asked: false,
            });
            if slot.window.len() == 1 {
                slot.set_head_deadline(now);
                deadline_set = true;
            }
        }
        deadline_set
    }

    /// Takes back a job a busy worker holds behind the one it runs, if a worker is idle;
    /// puts it at the front of the queue.
    fn take_back_for_idle(&mut self) -> bool {
        let max = self.rules.max_tasks_per_worker;
        if !self
            .workers
            .iter()
            .any(|w| w.open(max) && w.window.is_empty())
        {
            return false;
        }
        let Some(donor) = self
            .workers
            .iter_mut()
            .filter(|w| w.window.len() >= 2 && w.window.back().is_some_and(|r| !r.asked))
            .max_by_key(|w| w.window.len())
        else {
            return false;
        };
        let last = donor.window.back_mut().expect("two jobs or more");
        last.asked = true;
        match donor.link.take_back(last.claim, last.job.id) {
            TakeBack::Done => {}
            // It has just started it, or it will say.
            TakeBack::Started | TakeBack::Asked => return false,
        }
        let running = donor.window.pop_back().expect("two jobs or more");
        donor.dispatched -= 1;
        let pid = donor.pid;
        self.requeue_taken(running, pid);
        true
    }

    fn requeue_taken(&mut self, Running { job, waiter, .. }: Running, pid: u32) {
        tracing::trace!(parent: &waiter.span, worker = pid, "task taken back for an idle worker");
        self.queue.push_front(Queued {
            job,
            waiter,
            since: Instant::now(),
            _permit: None,
        });
    }

    /// A worker behind a byte stream gave back job `id` as asked: it goes to the front
    /// of the queue (the caller dispatches).
    pub(crate) fn on_taken_back(&mut self, key: u64, id: u64, now: Instant) {
        let Some(slot) = self.workers.iter_mut().find(|w| w.key == key) else {
            return;
        };
        let Some(index) = slot.window.iter().position(|r| r.job.id == id && r.asked) else {
            return;
        };
        let running = slot.window.remove(index).expect("index in range");
        slot.dispatched -= 1;
        let pid = slot.pid;
        if index == 0 {
            slot.set_head_deadline(now);
        }
        self.requeue_taken(running, pid);
    }

    /// A worker answered a job: the job's waiter gets the answer.
    pub(crate) fn on_reply(&mut self, key: u64, reply: Reply, now: Instant) {
        let max = self.rules.max_tasks_per_worker;
        let Some(slot) = self.workers.iter_mut().find(|w| w.key == key) else {
            return;
        };
        let Some(index) = slot.window.iter().position(|r| r.job.id == reply.id) else {
            return;
        };
        if index == 0 {
            slot.record_job_time(now);
        }
        let running = slot.window.remove(index).expect("index in range");
        slot.set_head_deadline(now);
        if slot.retiring(max) && slot.window.is_empty() {
            // Its last task is done: hanging up makes it exit, and its exit replaces it.
            slot.hang_up();
        }
        let fds = reply.fds.into_iter().map(|fd| fd.0).collect();
        let result = reply
            .result
            .map(|bytes| (bytes.into_vec(), fds))
            .map_err(Error::from);
        tracing::trace!(parent: &running.waiter.span, ok = result.is_ok(), "task answered");
        let _ = running.waiter.reply.send(result);
        self.stats.completed += 1;
    }

    /// Lets a job run to its end although its handle goes away.
    pub(crate) fn detach(&mut self, id: u64) {
        let queued = self.queue.iter_mut().map(|q| (q.job.id, &mut q.waiter));
        let held = self
            .workers
            .iter_mut()
            .flat_map(|w| w.window.iter_mut())
            .map(|r| (r.job.id, &mut r.waiter));
        if let Some((_, waiter)) = queued.chain(held).find(|(job, _)| *job == id) {
            waiter.detached = true;
        }
    }

    /// Removes a waiting job whose handle was dropped, or deals with a running one as
    /// the rules say.
    pub(crate) fn cancel(&mut self, id: u64) {
        if let Some(index) = self.queue.iter().position(|q| q.job.id == id) {
            self.queue.remove(index);
            return;
        }
        if self.rules.cancel_running == CancelRunning::KillWorker {
            for slot in self.workers.iter_mut() {
                if slot.window.front().is_some_and(|r| r.job.id == id) {
                    tracing::debug!(
                        job = id,
                        worker = slot.pid,
                        "cancelled running task; killing worker"
                    );
                    slot.kill(KillReason::Cancelled(id));
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            workers: self.workers.len(),
            busy: self.workers.iter().filter(|w| !w.window.is_empty()).count(),
            queued: self.queue.len(),
            missing: self.starting,
            ..self.stats
        }
    }
}

/// The error for a task of a pool whose workers cannot initialise.
pub(crate) fn init_failed(err: &str) -> Error {
    Error::Bootstrap(format!("worker initialisation failed: {err}"))
}

mod lives;
#[cfg(test)]
mod tests;
