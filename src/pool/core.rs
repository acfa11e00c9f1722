//! The pool's engine: a queue, a window of jobs per worker, and the bookkeeping that
//! turns every way a worker can end into an answer for each job.
//!
//! State lives behind one mutex, held only for short, non-blocking sections. Each
//! worker has two tasks: a writer feeding it jobs from its window and a reader taking
//! its replies and, at the end, its exit status. One watchdog task enforces timeouts.
//! Whatever happens to a worker, its reader reports the exit: the job it was running
//! fails with the cause (timeout, signal, exit code), the jobs queued behind it go back
//! to the front of the queue, and a new worker takes its place.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::claim::{Claim, ClaimBoard};
use super::protocol::{Encoded, FromWorker, Hello, JobData, JobIn, JobOut, Reply};
use crate::error::{Error, Result};
use crate::exit::Signaller;
use crate::ipc::Connection;
use crate::process::Process;

/// Starts one worker process given its end of the pipe.
pub(crate) type SpawnWorker =
    Box<dyn Fn(Connection<FromWorker, JobIn>, ClaimBoard) -> Result<Process<()>> + Send + Sync>;

/// What to do with a task whose handle is dropped while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelRunning {
    /// Let it finish and discard the result (the default).
    #[default]
    Finish,
    /// Kill its worker (a new one takes its place).
    KillWorker,
}

pub(crate) struct Config {
    pub(crate) workers: usize,
    /// A fixed number of jobs per worker, or `None` to adapt it to task length.
    pub(crate) window: Option<usize>,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) queue_capacity: usize,
    pub(crate) cancel_running: CancelRunning,
    pub(crate) memory_limit: Option<u64>,
    /// How long a new worker may take to say it is ready (initializer included).
    pub(crate) start_timeout: Duration,
    pub(crate) spawn: SpawnWorker,
}

/// A worker process just started: its connection, its handle, a way to signal it, and
/// its claim board.
type StartedWorker = (
    Connection<JobOut, FromWorker>,
    Process<()>,
    Signaller,
    ClaimBoard,
);

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
    /// Workers the pool is short of: being started, or waiting to be tried again after
    /// a start failed (out of descriptors or processes). Replacements are retried with
    /// backoff for as long as the pool lives.
    pub missing: usize,
    /// Attempts to start a worker that failed.
    pub start_failures: u64,
}

/// Where a job's answer goes, and the span that follows the job from queue to answer
/// (its id, then the pid of the worker that runs it).
struct Waiter {
    reply: oneshot::Sender<Result<Encoded>>,
    timeout: Option<Duration>,
    span: tracing::Span,
    /// Its handle let go of it on purpose: it runs although nobody awaits its answer.
    detached: bool,
}

impl Waiter {
    /// Nobody wants this job any more: its handle was dropped, not detached.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() && !self.detached
    }
}

struct Queued {
    job: Arc<JobData>,
    waiter: Waiter,
    /// When it joined the queue: it fails after the start timeout if no worker could
    /// be started all that time.
    since: Instant,
    // A place in the bounded queue, freed when the job leaves it. Jobs put back after
    // their worker died hold none: they were admitted once already.
    _permit: Option<OwnedSemaphorePermit>,
}

struct Running {
    job: Arc<JobData>,
    waiter: Waiter,
    claim: Claim,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KillReason {
    Timeout(u64, Duration),
    Cancelled(u64),
    Terminate,
    /// Never said it was ready within the start-up limit (stopped, stuck, starved).
    Startup,
    /// Broke its connection (a malformed or torn frame, or hung up on its own) and did
    /// not exit by itself.
    BrokenStream,
}

/// How long a worker whose connection broke may take to exit by itself (its own exit
/// status says more than our `SIGKILL` would) before it is killed.
const BROKEN_STREAM_GRACE: Duration = Duration::from_secs(1);

/// How long answers a dead worker sent may take to be read, when something other than
/// the worker (a process it forked) keeps its connection open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// The first wait before starting a worker again after a failed start, and the most
/// it grows to.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// How long a worker told to exit may take before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

struct WorkerSlot {
    key: u64,
    pid: u32,
    jobs: Option<mpsc::UnboundedSender<(Arc<JobData>, Claim)>>,
    /// Which of its jobs it has started, shared with it.
    board: ClaimBoard,
    tickets: u64,
    signaller: Signaller,
    window: VecDeque<Running>,
    head_deadline: Option<Instant>,
    head_started: Instant,
    // Smoothed time a job takes, seen from here (from becoming head to its answer).
    job_time: Option<Duration>,
    dispatched: u64,
    ready: bool,
    killed: Option<KillReason>,
    // Why its connection could not be read further, if it broke.
    broken: Option<String>,
}

impl WorkerSlot {
    /// A free cell of its board, and a fresh ticket, for one more job.
    fn next_claim(&mut self) -> Claim {
        let cell = (0..self.board.cells())
            .find(|&c| self.window.iter().all(|r| r.claim.cell as usize != c))
            .expect("a window never fills its board");
        self.tickets += 1;
        let claim = Claim {
            cell: cell as u32,
            ticket: self.tickets,
        };
        self.board.offer(claim);
        claim
    }

    /// Whether it can take a job now.
    fn open(&self, max: Option<u64>) -> bool {
        self.ready && self.killed.is_none() && self.jobs.is_some() && !self.retiring(max)
    }

    fn retiring(&self, max: Option<u64>) -> bool {
        max.is_some_and(|max| self.dispatched >= max)
    }

    fn kill(&mut self, reason: KillReason) {
        if self.killed.is_none() {
            self.killed = Some(reason);
            let _ = self.signaller.signal(libc::SIGKILL);
            kill_group(self.pid);
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

    fn record_job_time(&mut self) {
        let took = self.head_started.elapsed();
        self.job_time = Some(match self.job_time {
            None => took,
            Some(avg) => (avg * 4 + took) / 5,
        });
    }

    fn set_head_deadline(&mut self) {
        self.head_started = Instant::now();
        self.head_deadline = self
            .window
            .front()
            .and_then(|r| r.waiter.timeout)
            .map(|t| Instant::now() + t);
    }
}

/// Bounds of the adaptive window, and the dispatch round trip it aims to cover.
const MIN_WINDOW: usize = 2;
const MAX_WINDOW: usize = 32;
const ROUND_TRIP: Duration = Duration::from_micros(200);

struct State {
    queue: VecDeque<Queued>,
    workers: Vec<WorkerSlot>,
    closing: bool,
    terminated: bool,
    init_error: Option<String>,
    // Some worker has been ready: a later death during start-up is a fault to heal,
    // not a broken initializer.
    ever_ready: bool,
    // Replacements decided on but not yet in `workers`: `close` and `terminate` must
    // not take an empty `workers` for a finished pool while one is being started.
    starting: usize,
    next_worker: u64,
    /// Since when starting a worker has kept failing, and the last error.
    start_failure: Option<(Instant, String)>,
    stats: PoolStats,
}

impl State {
    /// Whether a worker that could not be started is still needed.
    fn wants_worker(&self) -> bool {
        !self.terminated && self.init_error.is_none() && (!self.closing || !self.queue.is_empty())
    }

    /// The last start error, while no worker is alive and starting one keeps failing:
    /// queued tasks then fail once they have waited the start timeout.
    fn starving(&self) -> Option<&str> {
        let (_, last) = self.start_failure.as_ref()?;
        let alive = self.workers.iter().any(|w| w.killed.is_none());
        (!alive).then_some(last.as_str())
    }
}

pub(crate) struct Core {
    state: Mutex<State>,
    next_job: std::sync::atomic::AtomicU64,
    /// Free places in the queue; a queued job holds one.
    pub(crate) space: Arc<Semaphore>,
    /// Something changed that `close`, `terminate` or `build` may be waiting for.
    changed: Notify,
    /// A head-of-window deadline changed (shared with the watchdog, which holds the core
    /// only weakly).
    deadlines: Arc<Notify>,
    config: Config,
}

impl Core {
    pub(crate) fn new(config: Config) -> Arc<Core> {
        Arc::new(Core {
            state: Mutex::new(State {
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
            }),
            next_job: std::sync::atomic::AtomicU64::new(1),
            space: Arc::new(Semaphore::new(config.queue_capacity)),
            changed: Notify::new(),
            deadlines: Arc::new(Notify::new()),
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        self.config.task_timeout
    }

    pub(crate) fn workers(&self) -> usize {
        self.config.workers
    }

    /// How many jobs a worker may hold at most.
    pub(crate) fn window(&self) -> usize {
        self.config.window.unwrap_or(MAX_WINDOW)
    }

    /// A fresh job id, without taking the state lock on every submission.
    pub(crate) fn next_job_id(&self) -> u64 {
        self.next_job
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the workers and the watchdog, and waits until every worker has said it is
    /// ready (or one failed to initialise).
    pub(crate) async fn start(self: &Arc<Core>) -> Result<()> {
        for _ in 0..self.config.workers {
            self.lock().starting += 1;
            self.spawn_worker(false).map_err(|(err, _)| err)?;
        }
        tokio::spawn(watchdog(Arc::downgrade(self), self.deadlines.clone()));
        loop {
            let changed = self.changed.notified();
            {
                let state = self.lock();
                if let Some(err) = &state.init_error {
                    return Err(Error::Bootstrap(format!(
                        "worker initialisation failed: {err}"
                    )));
                }
                if state.workers.iter().all(|w| w.ready) {
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    /// Starts one worker. The caller has counted it in `starting`, under the same lock
    /// as its decision to start it. A replacement that fails to start stays counted
    /// there while the pool still needs it, and is tried again later.
    /// On failure, says whether the worker is to be tried again.
    fn spawn_worker(self: &Arc<Core>, replacement: bool) -> Result<(), (Error, bool)> {
        let started = self.start_worker_process();
        let mut state = self.lock();
        let (ours, process, signaller, board) = match started {
            Ok(started) => started,
            Err(err) => {
                state.stats.start_failures += 1;
                let retry = replacement && state.wants_worker();
                if retry {
                    let message = err.to_string();
                    match &mut state.start_failure {
                        Some((_, last)) => *last = message,
                        None => state.start_failure = Some((Instant::now(), message)),
                    }
                } else {
                    state.starting -= 1;
                }
                drop(state);
                tracing::warn!(error = %err, retry, "could not start a pool worker");
                // The watchdog fails queued tasks if this lasts too long.
                self.deadlines.notify_one();
                self.changed.notify_waiters();
                return Err((err, retry));
            }
        };
        state.starting -= 1;
        state.start_failure = None;
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let pid = process.pid();
        state.next_worker += 1;
        let key = state.next_worker;
        let mut slot = WorkerSlot {
            key,
            pid,
            jobs: Some(jobs_tx),
            board,
            tickets: 0,
            signaller,
            window: VecDeque::new(),
            head_deadline: None,
            head_started: Instant::now(),
            job_time: None,
            dispatched: 0,
            ready: false,
            killed: None,
            broken: None,
        };
        if state.terminated {
            // Terminated while it started: it never gets a job.
            slot.jobs = None;
            slot.kill(KillReason::Terminate);
        }
        state.workers.push(slot);
        drop(state);
        tracing::debug!(pid, worker = key, "pool worker started");
        let (tx, rx) = ours.split();
        tokio::spawn(feed_worker(tx, jobs_rx));
        tokio::spawn(read_worker(self.clone(), key, rx, process));
        // The watchdog arms this worker's start-up deadline; `close` may hang it up.
        self.deadlines.notify_one();
        self.changed.notify_waiters();
        Ok(())
    }

    fn start_worker_process(
        &self,
    ) -> Result<StartedWorker> {
        let (ours, theirs) = crate::ipc::pipe::<JobOut, FromWorker>()?;
        let board = ClaimBoard::new(2 * self.window())?;
        let process = (self.config.spawn)(theirs.retype(), board.clone_handle())?;
        let signaller = process.signaller()?;
        Ok((ours, process, signaller, board))
    }

    /// Queues a job whose queue place is already reserved (or, for a detached job, that
    /// needs none: its data is already held).
    pub(crate) fn enqueue(
        &self,
        job: Arc<JobData>,
        timeout: Option<Duration>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<oneshot::Receiver<Result<Encoded>>> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.lock();
        if state.closing {
            return Err(Error::PoolClosed);
        }
        if let Some(err) = &state.init_error {
            return Err(Error::Bootstrap(format!(
                "worker initialisation failed: {err}"
            )));
        }
        let span = tracing::debug_span!("task", id = job.id, worker = tracing::field::Empty);
        let waiter = Waiter {
            reply,
            timeout,
            span,
            detached: false,
        };
        state.queue.push_back(Queued {
            job,
            waiter,
            since: Instant::now(),
            _permit: permit,
        });
        if state.starving().is_some() {
            self.deadlines.notify_one(); // Arms this job's start-timeout deadline.
        }
        self.dispatch(&mut state);
        Ok(answer)
    }

    /// Hands queued jobs to workers with room in their window, least loaded first; then
    /// gives idle workers the jobs other workers hold but have not started.
    fn dispatch(&self, state: &mut State) {
        self.dispatch_queue(state);
        while state.queue.is_empty() && self.take_back_for_idle(state) {
            self.dispatch_queue(state);
        }
    }

    /// Takes back a job a busy worker holds behind the one it runs, if a worker is idle;
    /// puts it at the front of the queue.
    fn take_back_for_idle(&self, state: &mut State) -> bool {
        let max = self.config.max_tasks_per_worker;
        if !state
            .workers
            .iter()
            .any(|w| w.open(max) && w.window.is_empty())
        {
            return false;
        }
        let Some(donor) = state
            .workers
            .iter_mut()
            .filter(|w| w.window.len() >= 2)
            .max_by_key(|w| w.window.len())
        else {
            return false;
        };
        let last = donor.window.back().expect("two jobs or more");
        if !donor.board.take_back(last.claim) {
            return false; // It has just started it.
        }
        let Running { job, waiter, .. } = donor.window.pop_back().expect("two jobs or more");
        tracing::trace!(parent: &waiter.span, worker = donor.pid, "task taken back for an idle worker");
        donor.dispatched -= 1;
        state.queue.push_front(Queued {
            job,
            waiter,
            since: Instant::now(),
            _permit: None,
        });
        true
    }

    fn dispatch_queue(&self, state: &mut State) {
        let mut deadline_set = false;
        while !state.queue.is_empty() {
            let max = self.config.max_tasks_per_worker;
            let fixed = self.config.window;
            let Some(slot) = state
                .workers
                .iter_mut()
                .filter(|w| w.open(max))
                .filter(|w| w.window.len() < w.capacity(fixed))
                .min_by_key(|w| w.window.len())
            else {
                break;
            };
            let Queued { job, waiter, .. } = state.queue.pop_front().expect("queue not empty");
            if waiter.abandoned() {
                continue; // Its handle was dropped while it waited.
            }
            // If the writer is gone the worker is dying; its reader will report the exit
            // and the job is settled with the rest of its window.
            let claim = slot.next_claim();
            if let Some(tx) = &slot.jobs {
                let _ = tx.send((job.clone(), claim));
            }
            waiter.span.record("worker", slot.pid);
            tracing::trace!(parent: &waiter.span, "task dispatched");
            slot.dispatched += 1;
            slot.window.push_back(Running { job, waiter, claim });
            if slot.window.len() == 1 {
                slot.set_head_deadline();
                deadline_set = true;
            }
        }
        if deadline_set {
            self.deadlines.notify_one();
        }
    }

    fn on_message(&self, key: u64, message: FromWorker) {
        let mut state = self.lock();
        match message {
            FromWorker::Hello(Hello::Ready) => {
                if let Some(slot) = state.workers.iter_mut().find(|w| w.key == key) {
                    slot.ready = true;
                }
                state.ever_ready = true;
            }
            FromWorker::Hello(Hello::InitFailed(err)) => {
                tracing::warn!(worker = key, error = %err, "pool worker failed to initialise");
                state.init_error.get_or_insert(err);
                let failure = state.init_error.clone().unwrap_or_default();
                for queued in state.queue.drain(..) {
                    let _ = queued
                        .waiter
                        .reply
                        .send(Err(Error::Bootstrap(failure.clone())));
                }
            }
            FromWorker::Reply(reply) => self.on_reply(&mut state, key, reply),
        }
        self.dispatch(&mut state);
        drop(state);
        self.changed.notify_waiters();
    }

    fn on_reply(&self, state: &mut State, key: u64, reply: Reply) {
        let max = self.config.max_tasks_per_worker;
        let Some(slot) = state.workers.iter_mut().find(|w| w.key == key) else {
            return;
        };
        let Some(index) = slot.window.iter().position(|r| r.job.id == reply.id) else {
            return;
        };
        if index == 0 {
            slot.record_job_time();
        }
        let running = slot.window.remove(index).expect("index in range");
        slot.set_head_deadline();
        if slot.retiring(max) && slot.window.is_empty() {
            // Its last task is done: hanging up makes it exit, and its reader replaces it.
            slot.jobs = None;
        }
        let fds = reply.fds.into_iter().map(|fd| fd.0).collect();
        let result = reply
            .result
            .map(|bytes| (bytes.into_vec(), fds))
            .map_err(Error::from);
        tracing::trace!(parent: &running.waiter.span, ok = result.is_ok(), "task answered");
        let _ = running.waiter.reply.send(result);
        state.stats.completed += 1;
        self.deadlines.notify_one();
    }

    /// Whether the pool has told this worker to exit (end of its job stream).
    fn hung_up_on(&self, key: u64) -> bool {
        let state = self.lock();
        state
            .workers
            .iter()
            .find(|w| w.key == key)
            .is_none_or(|w| w.jobs.is_none())
    }

    /// Kills a worker whose connection broke and which did not exit by itself.
    fn kill_broken(&self, key: u64, why: String) {
        let mut state = self.lock();
        if let Some(slot) = state.workers.iter_mut().find(|w| w.key == key) {
            tracing::warn!(worker = slot.pid, why, "pool worker broke its connection");
            if slot.killed.is_none() {
                slot.broken = Some(why);
                slot.kill(KillReason::BrokenStream);
            }
        }
    }

    /// A worker has exited and been reaped: settle its jobs and replace it.
    fn on_exit(self: &Arc<Core>, key: u64, status: ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        let respawn = {
            let mut state = self.lock();
            let Some(index) = state.workers.iter().position(|w| w.key == key) else {
                return;
            };
            let mut slot = state.workers.swap_remove(index);
            // Dead, recycled or closed: nothing it started outlives it.
            kill_group(slot.pid);
            let retired = slot.retiring(self.config.max_tasks_per_worker)
                && slot.window.is_empty()
                && status.success();
            let in_start_up = !slot.ready && !state.closing && !state.ever_ready;
            let failed_start = match slot.killed {
                _ if !in_start_up => None,
                None => Some(format!(
                    "worker {} exited during start-up ({status})",
                    slot.pid
                )),
                Some(KillReason::Startup) => Some(format!(
                    "worker {} was not ready within {:?}",
                    slot.pid, self.config.start_timeout
                )),
                Some(_) => None,
            };
            if let Some(failure) = failed_start {
                // Failing to start before any worker ever did would make every
                // replacement fail the same way.
                tracing::error!("{failure}");
                state.init_error.get_or_insert(failure.clone());
                for queued in state.queue.drain(..) {
                    let _ = queued
                        .waiter
                        .reply
                        .send(Err(Error::Bootstrap(failure.clone())));
                }
            }
            if let Some(head) = slot.window.pop_front() {
                let error = match slot.killed {
                    Some(KillReason::Timeout(id, after)) if id == head.job.id => {
                        state.stats.timed_out += 1;
                        tracing::warn!(
                            parent: &head.waiter.span,
                            job = id,
                            worker = slot.pid,
                            ?after,
                            "task timed out; worker killed"
                        );
                        Error::Timeout { after }
                    }
                    Some(KillReason::Terminate) => Error::PoolClosed,
                    // Nobody waits for a cancelled task's answer.
                    Some(KillReason::Cancelled(id)) if id == head.job.id => Error::PoolClosed,
                    _ => {
                        state.stats.failed += 1;
                        // Set only when it was killed for breaking its connection.
                        let broken = slot.broken.take();
                        tracing::warn!(
                            parent: &head.waiter.span,
                            job = head.job.id,
                            worker = slot.pid,
                            %status,
                            broken,
                            "worker died running a task"
                        );
                        match broken {
                            Some(why) => Error::Protocol(format!(
                                "pool worker {} broke its connection ({why}) and was killed",
                                slot.pid
                            )),
                            None => Error::from_capped_exit(status, self.config.memory_limit)
                                .unwrap_or(Error::WorkerDied {
                                    pid: slot.pid,
                                    signal: status.signal(),
                                    code: status.code(),
                                }),
                        }
                    }
                };
                let _ = head.waiter.reply.send(Err(error));
            }
            // Jobs it had not started go back to the front, in their order.
            while let Some(Running { job, waiter, .. }) = slot.window.pop_back() {
                if state.terminated {
                    let _ = waiter.reply.send(Err(Error::PoolClosed));
                    continue;
                }
                state.queue.push_front(Queued {
                    job,
                    waiter,
                    since: Instant::now(),
                    _permit: None,
                });
            }
            let replace = !state.terminated
                && state.init_error.is_none()
                && (!state.closing || !state.queue.is_empty());
            if replace {
                state.starting += 1;
                if retired {
                    state.stats.recycled += 1;
                } else {
                    state.stats.respawned += 1;
                }
            }
            tracing::debug!(worker = slot.pid, %status, retired, replace, "pool worker exited");
            replace
        };
        if respawn {
            // A failure is retried in the background; queued tasks wait for it.
            if let Err((_, true)) = self.spawn_worker(true) {
                tokio::spawn(retry_start(Arc::downgrade(self)));
            }
        }
        let mut state = self.lock();
        self.dispatch(&mut state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Lets a job run to its end although its handle goes away.
    pub(crate) fn detach(&self, id: u64) {
        let mut state = self.lock();
        let State { queue, workers, .. } = &mut *state;
        if let Some(q) = queue.iter_mut().find(|q| q.job.id == id) {
            q.waiter.detached = true;
            return;
        }
        for slot in workers.iter_mut() {
            if let Some(r) = slot.window.iter_mut().find(|r| r.job.id == id) {
                r.waiter.detached = true;
            }
        }
    }

    /// Removes a waiting job whose handle was dropped, or deals with a running one as
    /// configured.
    pub(crate) fn cancel(&self, id: u64) {
        let mut state = self.lock();
        if let Some(index) = state.queue.iter().position(|q| q.job.id == id) {
            state.queue.remove(index);
            return;
        }
        if self.config.cancel_running == CancelRunning::KillWorker {
            for slot in state.workers.iter_mut() {
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
        let state = self.lock();
        PoolStats {
            workers: state.workers.len(),
            busy: state
                .workers
                .iter()
                .filter(|w| !w.window.is_empty())
                .count(),
            queued: state.queue.len(),
            missing: state.starting,
            ..state.stats
        }
    }

    /// Stops taking work, lets queued and running jobs finish, then lets workers exit.
    /// A worker that has not exited `EXIT_GRACE` after being told to (stopped,
    /// stuck) is killed, so closing never waits on a worker forever.
    pub(crate) async fn close(&self) {
        self.lock().closing = true;
        self.space.close();
        let mut hung_up_at: Option<Instant> = None;
        loop {
            let changed = self.changed.notified();
            {
                let mut state = self.lock();
                let idle =
                    state.queue.is_empty() && state.workers.iter().all(|w| w.window.is_empty());
                if idle {
                    for slot in state.workers.iter_mut() {
                        slot.jobs = None; // End of stream: the worker exits.
                    }
                    let since = *hung_up_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= EXIT_GRACE {
                        for slot in state.workers.iter_mut() {
                            slot.kill(KillReason::Terminate);
                        }
                    }
                }
                if state.workers.is_empty() && state.starting == 0 {
                    return; // Same test as `all_gone`, under the lock already held.
                }
            }
            let _ = tokio::time::timeout(EXIT_GRACE, changed).await;
        }
    }

    /// Kills every worker now; queued and running jobs fail with `PoolClosed`.
    pub(crate) fn kill_all(&self) {
        let mut state = self.lock();
        state.closing = true;
        state.terminated = true;
        self.space.close();
        for queued in state.queue.drain(..) {
            let _ = queued.waiter.reply.send(Err(Error::PoolClosed));
        }
        for slot in state.workers.iter_mut() {
            slot.jobs = None;
            slot.kill(KillReason::Terminate);
        }
        drop(state);
        self.deadlines.notify_one();
    }

    pub(crate) async fn terminate(&self) {
        self.kill_all();
        loop {
            let changed = self.changed.notified();
            if self.all_gone() {
                return;
            }
            changed.await;
        }
    }

    /// No worker left, and none being started.
    fn all_gone(&self) -> bool {
        let state = self.lock();
        state.workers.is_empty() && state.starting == 0
    }

    /// Kills workers whose running job is past its deadline, and fails queued jobs when
    /// no worker could be started for too long; returns the next deadline.
    fn enforce_deadlines(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut next: Option<Instant> = None;
        let limit = self.config.start_timeout;
        if let Some(last) = state.starving().map(str::to_owned) {
            let (expired, waiting) = std::mem::take(&mut state.queue)
                .into_iter()
                .partition::<VecDeque<_>, _>(|q| q.since + limit <= now);
            state.queue = waiting;
            for queued in expired {
                let _ = queued.waiter.reply.send(Err(Error::Bootstrap(format!(
                    "no pool worker could be started for {limit:?} (last error: {last})"
                ))));
            }
            next = state.queue.iter().map(|q| q.since + limit).min();
        }
        for slot in state.workers.iter_mut() {
            if !slot.ready && slot.killed.is_none() {
                // `head_started` holds the spawn time until the worker is ready.
                let deadline = slot.head_started + self.config.start_timeout;
                if deadline <= now {
                    tracing::warn!(worker = slot.pid, "worker not ready in time; replacing it");
                    slot.kill(KillReason::Startup);
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
                continue;
            }
            let (Some(deadline), Some(head)) = (slot.head_deadline, slot.window.front()) else {
                continue;
            };
            if slot.killed.is_some() {
                continue;
            }
            if deadline <= now {
                let reason =
                    KillReason::Timeout(head.job.id, head.waiter.timeout.unwrap_or_default());
                slot.kill(reason);
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        next
    }
}

/// Tries again to start a worker that could not be started, with backoff, for as long
/// as the pool lives and needs it.
async fn retry_start(core: Weak<Core>) {
    let mut backoff = RETRY_FIRST;
    loop {
        tokio::time::sleep(backoff).await;
        let Some(core) = core.upgrade() else { return };
        {
            let mut state = core.lock();
            if !state.wants_worker() {
                state.starting -= 1;
                state.start_failure = None;
                drop(state);
                core.changed.notify_waiters();
                return;
            }
        }
        match core.spawn_worker(true) {
            Ok(()) => {
                let mut state = core.lock();
                core.dispatch(&mut state);
                drop(state);
                core.changed.notify_waiters();
                return;
            }
            Err((_, true)) => backoff = (backoff * 2).min(RETRY_MAX),
            Err((_, false)) => return,
        }
    }
}

/// Kills what is left of a worker's process group: every process a task forked that
/// did not leave the group. A worker leads its own group (it calls `setpgid` first
/// thing), and the group's id cannot be taken by a new process while any member lives.
fn kill_group(pid: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

async fn feed_worker(
    mut tx: crate::ipc::Sender<JobOut>,
    mut jobs: mpsc::UnboundedReceiver<(Arc<JobData>, Claim)>,
) {
    while let Some((job, claim)) = jobs.recv().await {
        if tx.send(JobOut(job, claim)).await.is_err() {
            return;
        }
    }
    // The pool hung up: end of stream tells the worker to exit.
    let _ = tx.close().await;
}

/// Reads a worker's answers until it exits. Its exit, not the end of its connection,
/// decides that it is gone: a grandchild the task forked may hold the connection open
/// long after the worker died.
async fn read_worker(
    core: Arc<Core>,
    key: u64,
    mut rx: crate::ipc::Receiver<FromWorker>,
    mut process: Process<()>,
) {
    let mut stream_end: Option<Error> = None;
    let mut broken_deadline: Option<Instant> = None;
    let status = loop {
        let grace = async {
            match broken_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            message = rx.recv(), if stream_end.is_none() => match message {
                Ok(message) => core.on_message(key, message),
                Err(end) => {
                    if !(matches!(end, Error::Disconnected) && core.hung_up_on(key)) {
                        // Nothing more can be read from it. A worker that is dying anyway
                        // (a torn answer, then exit) is given the moment it needs so its
                        // own status is reported; one that lives on would hold its tasks
                        // forever.
                        broken_deadline = Some(Instant::now() + BROKEN_STREAM_GRACE);
                    }
                    stream_end = Some(end);
                }
            },
            status = process.wait() => break status,
            () = grace => {
                broken_deadline = None;
                let why = stream_end.as_ref().map(ToString::to_string).unwrap_or_default();
                core.kill_broken(key, why);
            }
        }
    };
    if stream_end.is_none() {
        // Answers it sent before it exited are already in the socket: settle them first.
        // Its death closes its end at once, unless a descendant still holds it open.
        while let Ok(Ok(message)) = tokio::time::timeout(DRAIN_AFTER_EXIT, rx.recv()).await {
            core.on_message(key, message);
        }
    }
    let status = match status {
        Ok(status) => status,
        Err(err) => {
            tracing::error!(error = %err, "could not await a pool worker");
            std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL)
        }
    };
    core.on_exit(key, status);
}

async fn watchdog(core: Weak<Core>, deadlines: Arc<Notify>) {
    loop {
        let notified = deadlines.notified();
        let next = {
            let Some(core) = core.upgrade() else { return };
            if core.lock().terminated {
                return;
            }
            core.enforce_deadlines()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
