//! The pool's engine: it starts worker processes, turns what they do (answers, exits,
//! broken connections) and the passing of time into events for the pool's rules
//! (`state`), and carries out what the rules decide.
//!
//! State lives behind one mutex, held only for short, non-blocking sections. Each
//! worker has two tasks: a writer feeding it jobs and a reader taking its replies and,
//! at the end, its exit status. One watchdog task enforces deadlines. A replacement
//! that cannot be started is tried again with backoff by a task of its own.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::claim::{Claim, ClaimBoard};
use super::join::JoinKind;
use super::protocol::{Encoded, FromWorker, JobData, JobOut, ToWorker, ToWorkerIn};
use super::state::{Link, PoolStats, Rules, State, TakeBack, init_failed};
use crate::error::{Error, Result};
use crate::exit::Signaller;
use crate::ipc::Connection;
use crate::net::{Address, Listener};
use crate::process::Process;

/// Starts one worker process given its end of the pipe.
pub(crate) type SpawnWorker = Box<
    dyn Fn(Connection<FromWorker, ToWorkerIn>, ClaimBoard) -> Result<Process<()>> + Send + Sync,
>;

pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) queue_capacity: usize,
    pub(crate) rules: Rules,
    pub(crate) spawn: SpawnWorker,
    /// What a worker that joins by itself is to run, for a pool that listens.
    pub(crate) join: Option<JoinKind>,
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

/// What goes down a worker's job stream.
pub(crate) enum Feed {
    Job(Arc<JobData>, Claim),
    TakeBack(u64),
    Exit,
}

/// The pool's hold on a live worker: its job stream, and how jobs are claimed and the
/// worker is ended.
pub(crate) struct Live {
    pid: u32,
    jobs: Option<mpsc::UnboundedSender<Feed>>,
    end: End,
}

enum End {
    /// A child process sharing a claim board with the pool.
    Local {
        board: ClaimBoard,
        signaller: Signaller,
    },
    /// A worker that joined over a network connection: cutting the connection is the
    /// one way to end it (it then ends itself).
    Stream {
        cells: usize,
        cut: Option<oneshot::Sender<()>>,
    },
}

impl Live {
    fn feed(&self, item: Feed) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(item).is_ok())
    }
}

impl Link for Live {
    fn send(&mut self, job: Arc<JobData>, claim: Claim) {
        self.feed(Feed::Job(job, claim));
    }

    fn offer(&mut self, claim: Claim) {
        if let End::Local { board, .. } = &self.end {
            board.offer(claim);
        }
    }

    fn take_back(&mut self, claim: Claim, id: u64) -> TakeBack {
        match &self.end {
            End::Local { board, .. } if board.take_back(claim) => TakeBack::Done,
            End::Local { .. } => TakeBack::Started,
            End::Stream { .. } if self.feed(Feed::TakeBack(id)) => TakeBack::Asked,
            End::Stream { .. } => TakeBack::Started,
        }
    }

    fn carries_fds(&self) -> bool {
        matches!(self.end, End::Local { .. })
    }

    fn joined(&self) -> bool {
        matches!(self.end, End::Stream { .. })
    }

    fn cells(&self) -> usize {
        match &self.end {
            End::Local { board, .. } => board.cells(),
            End::Stream { cells, .. } => *cells,
        }
    }

    fn hang_up(&mut self) {
        if self.joined() {
            // A joined worker takes the end of its stream for a lost pool.
            self.feed(Feed::Exit);
        }
        self.jobs = None; // End of stream: the worker exits.
    }

    fn kill(&mut self) {
        match &mut self.end {
            End::Local { signaller, .. } => {
                let _ = signaller.signal(libc::SIGKILL);
                kill_group(self.pid);
            }
            End::Stream { cut, .. } => {
                self.jobs = None;
                if let Some(cut) = cut.take() {
                    let _ = cut.send(());
                }
            }
        }
    }

    fn exited(&mut self) {
        if !self.joined() {
            kill_group(self.pid);
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

pub(crate) struct Core {
    state: Mutex<State<Live>>,
    next_job: AtomicU64,
    /// Free places in the queue; a queued job holds one.
    pub(crate) space: Arc<Semaphore>,
    /// Something changed that `close`, `terminate` or `build` may be waiting for.
    changed: Notify,
    /// A deadline changed (shared with the watchdog, which holds the core only weakly).
    deadlines: Arc<Notify>,
    config: Config,
    /// For a pool that listens: where, the listener (for its counters), and its task.
    listening: Mutex<Option<Listening>>,
    /// The tasks keeping launched workers running, and the last launch failure.
    launching: Mutex<(Vec<tokio::task::AbortHandle>, Option<String>)>,
}

struct Listening {
    address: Address,
    listener: Arc<Listener>,
    accepting: tokio::task::AbortHandle,
}

impl Core {
    pub(crate) fn new(config: Config) -> Arc<Core> {
        Arc::new(Core {
            state: Mutex::new(State::new(config.rules.clone())),
            next_job: AtomicU64::new(1),
            space: Arc::new(Semaphore::new(config.queue_capacity)),
            changed: Notify::new(),
            deadlines: Arc::new(Notify::new()),
            config,
            listening: Mutex::new(None),
            launching: Mutex::new((Vec::new(), None)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<Live>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        self.config.task_timeout
    }

    /// How many workers to plan work for: its own, or those that joined, at least one.
    pub(crate) fn workers(&self) -> usize {
        let joined = self.lock().workers.len();
        self.config.workers.max(joined).max(1)
    }

    /// How many jobs a worker may hold at most.
    pub(crate) fn window(&self) -> usize {
        self.config.rules.max_window()
    }

    /// A fresh job id, without taking the state lock on every submission.
    pub(crate) fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands out what can be handed out, then wakes whoever waits for a change.
    fn settle(&self, mut state: MutexGuard<'_, State<Live>>) {
        if state.dispatch(Instant::now()) {
            self.deadlines.notify_one();
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Starts the workers and the watchdog, and waits until every worker has said it is
    /// ready (or one failed to initialise).
    pub(crate) async fn start(self: &Arc<Core>) -> Result<()> {
        for _ in 0..self.config.workers {
            self.lock().will_start();
            self.spawn_worker(false).map_err(|(err, _)| err)?;
        }
        tokio::spawn(watchdog(Arc::downgrade(self), self.deadlines.clone()));
        loop {
            let changed = self.changed.notified();
            {
                let state = self.lock();
                if let Some(err) = &state.init_error {
                    return Err(init_failed(err));
                }
                if state.all_ready() {
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    /// Starts one worker. The caller has counted it (`will_start`), under the same lock
    /// as its decision to start it. On failure, says whether it is to be tried again.
    fn spawn_worker(self: &Arc<Core>, replacement: bool) -> Result<(), (Error, bool)> {
        let started = self.start_worker_process();
        let mut state = self.lock();
        let (ours, process, link, jobs) = match started {
            Ok(started) => started,
            Err((step, err)) => {
                let retry =
                    state.start_failed(replacement, step_failed(step, &err), Instant::now());
                drop(state);
                tracing::warn!(error = %err, retry, "could not start a pool worker");
                // The watchdog fails queued tasks if this lasts too long.
                self.deadlines.notify_one();
                self.changed.notify_waiters();
                return Err((err, retry));
            }
        };
        let pid = process.pid();
        let key = state.started(pid, link, Instant::now());
        drop(state);
        tracing::debug!(pid, worker = key, "pool worker started");
        let (tx, rx) = ours.split();
        tokio::spawn(feed_worker(tx, jobs));
        tokio::spawn(read_worker(self.clone(), key, rx, process));
        // The watchdog arms this worker's start-up deadline; `close` may hang it up.
        self.deadlines.notify_one();
        self.changed.notify_waiters();
        Ok(())
    }

    /// A worker process, its connection, the pool's link to it and the receiving end
    /// of its job stream; on failure, the step that failed.
    fn start_worker_process(&self) -> Result<StartedWorker, (StartStep, Error)> {
        let (ours, theirs) =
            crate::ipc::pipe::<ToWorker, FromWorker>().map_err(|e| (StartStep::Connection, e))?;
        let board = ClaimBoard::new(2 * self.window()).map_err(|e| (StartStep::Board, e))?;
        let process = (self.config.spawn)(theirs.retype(), board.clone_handle())
            .map_err(|e| (StartStep::Spawn, e))?;
        let signaller = process.signaller().map_err(|e| (StartStep::Pidfd, e))?;
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let link = Live {
            pid: process.pid(),
            jobs: Some(jobs_tx),
            end: End::Local { board, signaller },
        };
        Ok((ours, process, link, jobs_rx))
    }

    /// Queues a job whose queue place is already reserved (or, for a detached job, that
    /// needs none: its data is already held).
    pub(crate) fn enqueue(
        &self,
        job: Arc<JobData>,
        timeout: Option<Duration>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<oneshot::Receiver<Result<Encoded>>> {
        let mut state = self.lock();
        let answer = state.enqueue(job, timeout, permit, Instant::now())?;
        if state.starving().is_some() {
            self.deadlines.notify_one(); // Arms this job's start-timeout deadline.
        }
        if state.dispatch(Instant::now()) {
            self.deadlines.notify_one();
        }
        Ok(answer)
    }

    fn on_message(&self, key: u64, message: FromWorker) {
        let mut state = self.lock();
        match message {
            FromWorker::Hello(hello) => state.on_hello(key, hello),
            FromWorker::Reply(reply) => {
                state.on_reply(key, reply, Instant::now());
                self.deadlines.notify_one();
            }
            FromWorker::TakenBack(id) => {
                state.on_taken_back(key, id, Instant::now());
                self.deadlines.notify_one();
            }
            // It keeps the job; it is not asked again.
            FromWorker::AlreadyStarted(_) => {}
        }
        self.settle(state);
    }

    /// A worker has exited and been reaped: settle its jobs and replace it.
    fn on_exit(self: &Arc<Core>, key: u64, status: ExitStatus) {
        let respawn = self.lock().on_exit(key, status);
        // A failure is retried in the background; queued tasks wait for it.
        if respawn && let Err((_, true)) = self.spawn_worker(true) {
            tokio::spawn(retry_start(Arc::downgrade(self)));
        }
        self.settle(self.lock());
    }

    /// Lets a job run to its end although its handle goes away.
    pub(crate) fn detach(&self, id: u64) {
        self.lock().detach(id);
    }

    /// Removes a waiting job whose handle was dropped, or deals with a running one as
    /// configured.
    pub(crate) fn cancel(&self, id: u64) {
        self.lock().cancel(id);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let mut stats = self.lock().stats();
        if let Some(listening) = &*self.listening() {
            stats.refused += listening.listener.rejected();
        }
        stats
    }

    /// Stops taking work, lets queued and running jobs finish, then lets workers exit.
    /// A worker that has not exited `EXIT_GRACE` after being told to (stopped,
    /// stuck) is killed, so closing never waits on a worker forever.
    pub(crate) async fn close(&self) {
        self.space.close();
        self.stop_listening();
        let mut idle_since: Option<Instant> = None;
        loop {
            let changed = self.changed.notified();
            if self.lock().close_step(&mut idle_since, Instant::now()) {
                self.stop_launching();
                return;
            }
            let _ = tokio::time::timeout(super::state::EXIT_GRACE, changed).await;
        }
    }

    /// Kills every worker now; queued and running jobs fail with `PoolClosed`.
    pub(crate) fn kill_all(&self) {
        self.space.close();
        self.stop_listening();
        self.stop_launching();
        self.lock().terminate();
        self.deadlines.notify_one();
    }

    pub(crate) async fn terminate(&self) {
        self.kill_all();
        loop {
            let changed = self.changed.notified();
            if self.lock().all_gone() {
                return;
            }
            changed.await;
        }
    }
}

/// A worker just started: its connection, its process, the pool's link to it, and the
/// receiving end of its job stream.
type StartedWorker = (
    Connection<ToWorker, FromWorker>,
    Process<()>,
    Live,
    mpsc::UnboundedReceiver<Feed>,
);

/// The steps of starting a worker, to say which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartStep {
    Connection,
    Board,
    Spawn,
    Pidfd,
}

/// What a start failure reads as: the step that failed and why, in the words of the
/// step (a descriptor that could not be passed to the new worker surfaces from the
/// encoder, but is no encoding problem of the user's).
fn step_failed(step: StartStep, err: &Error) -> String {
    match (step, err) {
        (StartStep::Connection, err) => format!("creating its connection: {err}"),
        (StartStep::Board, err) => format!("creating its claim board: {err}"),
        (StartStep::Spawn, Error::Encode(why)) => {
            format!("passing its descriptors to the new process: {why}")
        }
        (StartStep::Spawn, err) => format!("spawning its process: {err}"),
        (StartStep::Pidfd, err) => format!("opening its pidfd: {err}"),
    }
}

/// Tries again to start a worker that could not be started, with backoff, for as long
/// as the pool lives and needs it.
async fn retry_start(core: Weak<Core>) {
    let mut backoff = RETRY_FIRST;
    loop {
        tokio::time::sleep(backoff).await;
        let Some(core) = core.upgrade() else { return };
        if !core.lock().retry_wanted() {
            core.changed.notify_waiters();
            return;
        }
        match core.spawn_worker(true) {
            Ok(()) => {
                core.settle(core.lock());
                return;
            }
            Err((_, true)) => backoff = next_backoff(backoff),
            Err((_, false)) => return,
        }
    }
}

/// The wait before the next attempt: doubled, up to `RETRY_MAX`.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(RETRY_MAX)
}

async fn feed_worker(
    mut tx: crate::ipc::Sender<ToWorker>,
    mut jobs: mpsc::UnboundedReceiver<Feed>,
) {
    while let Some(item) = jobs.recv().await {
        let message = match item {
            Feed::Job(job, claim) => ToWorker::Job(JobOut(job, claim)),
            Feed::TakeBack(id) => ToWorker::TakeBack(id),
            Feed::Exit => ToWorker::Exit,
        };
        if tx.send(message).await.is_err() {
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
                    if !(matches!(end, Error::Disconnected) && core.lock().hung_up_on(key)) {
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
                core.lock().kill_broken(key, why);
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
            ExitStatus::from_raw(libc::SIGKILL)
        }
    };
    core.on_exit(key, status);
}

impl Core {
    fn listening(&self) -> MutexGuard<'_, Option<Listening>> {
        self.listening.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where workers may join this pool, if it listens.
    pub(crate) fn listen_address(&self) -> Option<Address> {
        self.listening().as_ref().map(|l| l.address.clone())
    }

    /// Takes workers that join by themselves through `listener`.
    pub(crate) fn listen(self: &Arc<Core>, listener: Listener) {
        let listener = Arc::new(listener);
        let address = listener.address().clone();
        let task = tokio::spawn(accept_joiners(Arc::downgrade(self), listener.clone()));
        *self.listening() = Some(Listening {
            address,
            listener,
            accepting: task.abort_handle(),
        });
    }

    fn stop_listening(&self) {
        if let Some(listening) = &*self.listening() {
            listening.accepting.abort();
        }
    }

    fn launching(&self) -> MutexGuard<'_, (Vec<tokio::task::AbortHandle>, Option<String>)> {
        self.launching.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn closing(&self) -> bool {
        self.lock().closing
    }

    /// Keeps `n` workers launched, spread round-robin over `launchers`; they join
    /// through this pool's listener.
    pub(crate) fn launch(
        self: &Arc<Core>,
        launchers: &[crate::Launcher],
        n: usize,
        key: &crate::AuthKey,
        name: &str,
    ) -> Result<()> {
        let address = self
            .listen_address()
            .ok_or_else(|| Error::InvalidArgument("a launched pool must listen".into()))?;
        let ticket = super::launched::Ticket {
            address: address.to_string(),
            key: key.as_bytes().to_vec(),
        };
        let mut launching = self.launching();
        for (i, launcher) in launchers.iter().cycle().take(n).enumerate() {
            let task = tokio::spawn(super::launched::supervise(
                Arc::downgrade(self),
                launcher.clone(),
                ticket.clone(),
                format!("{name}-{}", i + 1),
            ));
            launching.0.push(task.abort_handle());
        }
        Ok(())
    }

    pub(crate) fn launch_failed(&self, why: String) {
        self.launching().1 = Some(why);
    }

    fn stop_launching(&self) {
        for task in &self.launching().0 {
            task.abort();
        }
    }

    /// Waits until `n` workers have joined, or fails once the start timeout passed.
    pub(crate) async fn joined(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + self.config.rules.start_timeout;
        loop {
            let changed = self.changed.notified();
            if self.lock().workers.iter().filter(|w| w.ready).count() >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let last = self.launching().1.clone().unwrap_or_else(|| "none".into());
                return Err(Error::Bootstrap(format!(
                    "fewer than {n} launched pool workers joined within {:?} (last launch \
                     failure: {last})",
                    self.config.rules.start_timeout
                )));
            }
        }
    }

    /// What a worker that joins is to run: refused if this pool cannot tell it.
    pub(crate) fn join_kind(&self) -> Result<super::join::WorkerKind> {
        match &self.config.join {
            Some(kind) => kind(),
            None => Err(Error::InvalidArgument("this pool takes no workers".into())),
        }
    }

    /// A worker that joined and was told what to run becomes one of the pool's.
    pub(crate) fn adopt(self: &Arc<Core>, conn: Connection<ToWorker, FromWorker>, pid: u32) {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (cut_tx, cut_rx) = oneshot::channel();
        let link = Live {
            pid,
            jobs: Some(jobs_tx),
            end: End::Stream {
                cells: 2 * self.window(),
                cut: Some(cut_tx),
            },
        };
        let mut state = self.lock();
        if state.closing {
            return; // Dropping its connection ends it.
        }
        state.will_start();
        let key = state.started(pid, link, Instant::now());
        drop(state);
        tracing::info!(pid, worker = key, "pool worker joined");
        let (tx, rx) = conn.split();
        tokio::spawn(feed_worker(tx, jobs_rx));
        tokio::spawn(read_joined(self.clone(), key, rx, cut_rx));
        self.deadlines.notify_one();
        self.changed.notify_waiters();
    }

    pub(crate) fn refused_join(&self) {
        self.lock().refused_join();
    }
}

async fn accept_joiners(core: Weak<Core>, listener: Arc<Listener>) {
    loop {
        let accepted = listener.accept().await;
        let Some(core) = core.upgrade() else { return };
        match accepted {
            Ok(conn) => {
                tokio::spawn(super::join::admit(core, conn));
            }
            Err(err) => {
                tracing::error!(error = %err, "the pool stopped taking workers");
                return;
            }
        }
    }
}

/// Reads a joined worker's answers until its connection ends (which is its end, as
/// far as the pool can know) or the pool cuts it.
async fn read_joined(
    core: Arc<Core>,
    key: u64,
    mut rx: crate::ipc::Receiver<FromWorker>,
    mut cut: oneshot::Receiver<()>,
) {
    let end = loop {
        tokio::select! {
            biased;
            message = rx.recv() => match message {
                Ok(message) => core.on_message(key, message),
                Err(end) => break Some(end),
            },
            _ = &mut cut => break None,
        }
    };
    drop(rx);
    let status = match end {
        Some(Error::Disconnected) if core.lock().hung_up_on(key) => ExitStatus::from_raw(0),
        Some(end) => {
            core.lock()
                .lost(key, format!("the connection to it was lost: {end}"));
            ExitStatus::from_raw(libc::SIGKILL)
        }
        // Cut by the pool, which knows why.
        None => ExitStatus::from_raw(libc::SIGKILL),
    };
    core.on_exit(key, status);
}

async fn watchdog(core: Weak<Core>, deadlines: Arc<Notify>) {
    loop {
        let notified = deadlines.notified();
        let next = {
            let Some(core) = core.upgrade() else { return };
            let mut state = core.lock();
            if state.terminated {
                return;
            }
            state.enforce_deadlines(Instant::now())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_a_ceiling() {
        let mut waits = vec![RETRY_FIRST];
        for _ in 0..12 {
            waits.push(next_backoff(*waits.last().unwrap()));
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(waits[1], RETRY_FIRST * 2);
        assert_eq!(*waits.last().unwrap(), RETRY_MAX);
    }
}
