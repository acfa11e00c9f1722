//! [`PoolBuilder`]: a pool's settings, and how its workers are started.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::claim::{ClaimBoard, Claims};
use super::core::{Config, Core, SpawnWorker};
use super::join::{JoinKind, plain_kind, stateful_kind};
use super::process_pool::ProcessPool;
use super::protocol::{CallEntry, FromWorker, StartArg, ToWorkerIn, call_entry};
use super::state::{CancelRunning, Rules};
use super::stateful::{StatefulPool, Worker};
use super::worker::{CallOne, PlainStart, StatefulStart, plain_worker, stateful_worker};
use crate::error::{Error, Result};
use crate::ipc::wire;
use crate::process::Process;
use crate::start::PanicOutput;

/// Configures a [`ProcessPool`] (or a [`StatefulPool`]).
///
/// ```
/// use std::time::Duration;
/// use multiprocess::{CancelRunning, ProcessPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = ProcessPool::builder()
///     .workers(2)
///     .max_tasks_per_worker(1000)
///     .task_timeout(Duration::from_secs(30))
///     .queue_capacity(256)
///     .cancel_running(CancelRunning::KillWorker)
///     .build()
///     .await?;
/// assert_eq!(pool.apply(|x: u32| x * 2, 21).await?, 42);
/// # Ok(())
/// # }
/// ```
pub struct PoolBuilder {
    workers: usize,
    window: Option<usize>,
    max_tasks_per_worker: Option<u64>,
    task_timeout: Option<Duration>,
    queue_capacity: usize,
    cancel_running: CancelRunning,
    name: String,
    start_method: Option<crate::StartMethod>,
    memory_limit: Option<u64>,
    panic_output: PanicOutput,
    start_timeout: Duration,
    init: Option<(CallEntry, Arc<StartArg>)>,
    init_error: Option<Error>,
    listen: Option<(crate::Address, crate::AuthKey)>,
    launchers: Vec<crate::Launcher>,
}

impl Default for PoolBuilder {
    fn default() -> PoolBuilder {
        PoolBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            window: None,
            max_tasks_per_worker: None,
            task_timeout: None,
            queue_capacity: 1024,
            cancel_running: CancelRunning::Finish,
            name: "pool-worker".into(),
            start_method: None,
            memory_limit: None,
            panic_output: PanicOutput::Tidy,
            start_timeout: Duration::from_secs(60),
            init: None,
            init_error: None,
            listen: None,
            launchers: Vec::new(),
        }
    }
}

impl PoolBuilder {
    /// How many worker processes (default: the available parallelism). Zero makes
    /// `build` fail with [`Error::InvalidArgument`]: a pool without workers would
    /// never run a task.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let builder = multiprocess::ProcessPool::builder().workers(4);
    /// let none = multiprocess::ProcessPool::builder().workers(0).build().await;
    /// assert!(matches!(none, Err(multiprocess::Error::InvalidArgument(_))));
    /// # }
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Replaces a worker with a fresh process after it has run `tasks` tasks (a map
    /// chunk counts as one), as Python's `maxtasksperchild` does: a remedy for leaks.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().max_tasks_per_worker(500);
    /// ```
    pub fn max_tasks_per_worker(mut self, tasks: u64) -> Self {
        self.max_tasks_per_worker = Some(tasks.max(1));
        self
    }

    /// The time a task may run before its worker is killed and the task fails with
    /// [`Error::Timeout`] (default: no limit). Per-call overrides:
    /// [`ProcessPool::apply_timeout`], [`ProcessPool::submit_timeout`].
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().task_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many tasks may wait for a worker (default 1024). When the queue is full,
    /// a task is queued only once its [`TaskHandle`](crate::TaskHandle) is awaited, and `map` stops pulling
    /// inputs: memory stays bounded however fast work is offered.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().queue_capacity(64);
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// How many tasks each worker holds at once. By default this adapts to the tasks:
    /// two (one running, the next already on its way) for long tasks, up to 32 for tiny
    /// ones, so that a worker never waits for a round trip to the pool between tasks.
    /// A fixed number (1 for strict one-at-a-time dispatch) turns adaptation off.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().tasks_in_flight_per_worker(1);
    /// ```
    pub fn tasks_in_flight_per_worker(mut self, tasks: usize) -> Self {
        self.window = Some(tasks.max(1));
        self
    }

    /// What dropping the handle of a running task does (default: let it finish).
    ///
    /// ```
    /// use multiprocess::CancelRunning;
    /// let builder = multiprocess::ProcessPool::builder().cancel_running(CancelRunning::KillWorker);
    /// ```
    pub fn cancel_running(mut self, policy: CancelRunning) -> Self {
        self.cancel_running = policy;
        self
    }

    /// How workers (and their replacements) are started (default:
    /// [`StartMethod::from_env`](crate::StartMethod::from_env)).
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().start_method(multiprocess::StartMethod::Forkserver);
    /// ```
    pub fn start_method(mut self, method: crate::StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// How long a new worker may take to say it is ready, its
    /// [`initializer`](Self::initializer) included (default 60 s). A worker that takes
    /// longer (stuck, stopped, starved) is killed and replaced; if no worker of the pool
    /// has ever been ready, `build` fails with [`Error::Bootstrap`] instead, since every
    /// replacement would likely do the same.
    ///
    /// A replacement that cannot be started at all (the process is out of descriptors
    /// or processes) is tried again with backoff for as long as the pool lives
    /// ([`PoolStats::missing`](crate::PoolStats::missing) counts it meanwhile). Tasks queued while no worker is
    /// alive wait for it, and fail with [`Error::Bootstrap`] once they have waited this
    /// long.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder()
    ///     .worker_start_timeout(std::time::Duration::from_secs(300));
    /// ```
    pub fn worker_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Caps each worker's address space at `bytes` (see
    /// [`ProcessBuilder::memory_limit`](crate::ProcessBuilder::memory_limit)). A task
    /// whose allocation fails under the cap fails with [`Error::MemoryLimit`]; its worker
    /// is replaced like any other that dies.
    ///
    /// ```
    /// use multiprocess::{Error, ProcessPool};
    ///
    /// fn reserve(mib: usize) -> usize {
    ///     vec![0u8; mib << 20].len()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::builder().workers(1).worker_memory_limit(512 << 20).build().await?;
    /// assert!(matches!(pool.apply(reserve, 1024).await, Err(Error::MemoryLimit { .. })));
    /// assert_eq!(pool.apply(reserve, 1).await?, 1 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// What a worker prints on its standard error when a task (or the initializer)
    /// panics (default [`PanicOutput::Tidy`]: one line naming the worker). The task
    /// fails with [`Error::Panicked`], carrying the whole report, whatever is printed.
    ///
    /// ```
    /// use multiprocess::{Error, PanicOutput, ProcessPool};
    ///
    /// fn check(n: u32) -> u32 {
    ///     assert!(n < 10, "{n} is too large");
    ///     n
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::builder().workers(1).panic_output(PanicOutput::Silent).build().await?;
    /// let err = pool.apply(check, 12).await.unwrap_err();
    /// assert!(matches!(err, Error::Panicked { ref message, .. } if message == "12 is too large"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn panic_output(mut self, output: PanicOutput) -> Self {
        self.panic_output = output;
        self
    }

    /// The workers' process name prefix (default `pool-worker`).
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder().name("resizer");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs `f(arg)` once in every worker before it takes tasks (Python's
    /// `initializer`). A panic fails `build` with [`Error::Bootstrap`].
    ///
    /// ```
    /// fn warm_up(level: u32) {
    ///     assert!(level < 10);
    /// }
    /// let builder = multiprocess::ProcessPool::builder().initializer(warm_up, 3);
    /// ```
    pub fn initializer<A>(mut self, f: fn(A), arg: A) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        match (call_entry::<CallOne<A, ()>>(f), wire::encode_value(&arg)) {
            (Ok(entry), Ok(encoded)) => {
                self.init = Some((entry, Arc::new(StartArg::new(encoded))));
            }
            (Err(e), _) | (_, Err(e)) => self.init_error = Some(e),
        }
        self
    }

    /// Also takes workers that join by themselves: processes of this same program,
    /// started by anything (an `sbatch` script, a Kubernetes Job, a shell, another
    /// host), with two variables in their environment:
    ///
    /// - `MULTIPROCESS_POOL_ADDRESS`: the pool's address, as
    ///   [`listen_address`](ProcessPool::listen_address) gives it (`host:port`, or the
    ///   path of a Unix socket);
    /// - `MULTIPROCESS_POOL_KEY_FILE`: a file holding `authkey` (the file's bytes,
    ///   leading and trailing ASCII whitespace removed).
    ///
    /// Such a process never reaches its `main`: before it, the crate connects to the
    /// pool, both sides prove the key (see [`Listener`](crate::Listener)), the pool
    /// checks that the worker is the same build of the program as itself (a different
    /// build is refused, with both identities named on both sides), and the process
    /// runs as a worker until the pool tells it to exit. It exits with code 78 when it
    /// cannot join, and ends itself (and what its tasks started) with code 79 when its
    /// connection to the pool is lost.
    ///
    /// A joined worker is an ordinary one (tasks, timeouts, stateful workers), with
    /// these differences:
    /// - tasks whose argument or result holds descriptors fail with
    ///   [`Error::Encode`]: descriptors cannot cross a network connection;
    /// - the pool cannot signal it: a task past its timeout, a cancelled task, or
    ///   [`terminate`](ProcessPool::terminate) cuts its connection, and the worker
    ///   ends itself when it sees the cut;
    /// - a joined worker that dies, or whose connection is lost, fails only the task
    ///   it ran, with [`Error::WorkerDied`] whose `reason` says the connection was
    ///   lost; the tasks it held go to other workers;
    /// - it is not replaced: the pool starts only its own [`workers`](Self::workers).
    ///   After [`max_tasks_per_worker`](Self::max_tasks_per_worker) tasks it is told to
    ///   exit, and does not come back by itself;
    /// - [`close`](ProcessPool::close) tells it to exit once the work is done.
    ///
    /// With `.workers(0)` the pool has no worker of its own and `build` returns at
    /// once: tasks wait for workers to join. While no worker is alive, a queued task
    /// fails with [`Error::Bootstrap`] once it has waited
    /// [`worker_start_timeout`](Self::worker_start_timeout).
    /// Refused attempts (a wrong key, garbage or silence before the key is proven, a
    /// different build) are counted in [`PoolStats::refused`](crate::PoolStats::refused).
    ///
    /// ```
    /// use multiprocess::{AuthKey, ProcessPool};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let key = AuthKey::from("a secret shared with the workers' key file");
    /// let pool = ProcessPool::builder()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0".parse::<multiprocess::Address>()?, key)
    ///     .build()
    ///     .await?;
    /// let address = pool.listen_address().expect("it listens");
    /// // Start workers elsewhere with MULTIPROCESS_POOL_ADDRESS set to `address`.
    /// assert_eq!(pool.apply(|x: u32| x + 1, 1).await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen(
        mut self,
        address: impl Into<crate::Address>,
        authkey: impl Into<crate::AuthKey>,
    ) -> Self {
        std::hint::black_box(&super::join::JOIN_HOOK);
        self.listen = Some((address.into(), authkey.into()));
        self
    }

    /// Starts every worker through `launcher` (ssh, `srun`, a command prefix: see
    /// [`Launcher`](crate::Launcher)) instead of as a local child. Each is this same
    /// program on the far side, which joins the pool over the network as a worker that
    /// joins by itself does (see [`listen`](Self::listen) for what that means for
    /// descriptors, timeouts and crash isolation), except that the pool keeps
    /// [`workers`](Self::workers) of them: one that ends, or whose host or connection
    /// is lost, is launched again, with a backoff growing from 100 ms to 10 s.
    ///
    /// The workers connect back to the pool's listener: without
    /// [`listen`](Self::listen), the pool listens on 127.0.0.1 with a random key,
    /// which serves launchers whose far side is this host (a single-node `srun`, ssh to
    /// this machine, a container on the host network); for other hosts, give `listen`
    /// an address they can reach. `build` waits until every worker has joined, for at
    /// most the [`worker_start_timeout`](Self::worker_start_timeout), and then fails
    /// with [`Error::Bootstrap`] naming the last launch failure.
    ///
    /// ```no_run
    /// use multiprocess::{Launcher, ProcessPool};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::builder()
    ///     .workers(8)
    ///     .launcher(Launcher::srun(["--partition=cpu"]))
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn launcher(self, launcher: crate::Launcher) -> Self {
        self.hosts([launcher])
    }

    /// Starts the workers through these launchers, round-robin (`workers(4)` over two
    /// hosts is two on each); otherwise as [`launcher`](Self::launcher).
    ///
    /// ```no_run
    /// use multiprocess::{Launcher, ProcessPool};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::builder()
    ///     .workers(4)
    ///     .listen("10.0.0.5:7070".parse::<multiprocess::Address>()?, multiprocess::AuthKey::random()?)
    ///     .hosts([Launcher::ssh("node1"), Launcher::ssh("node2")])
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn hosts(mut self, launchers: impl IntoIterator<Item = crate::Launcher>) -> Self {
        self.launchers = launchers.into_iter().collect();
        self
    }

    /// For launched workers: the key they join with (the pool listens on loopback with
    /// a random key unless told where).
    fn launch_key(&mut self) -> Result<Option<crate::AuthKey>> {
        if self.launchers.is_empty() {
            return Ok(None);
        }
        if self.listen.is_none() {
            std::hint::black_box(&super::join::JOIN_HOOK);
            let loopback = "127.0.0.1:0".parse::<crate::Address>()?;
            self.listen = Some((loopback, crate::AuthKey::random()?));
        }
        Ok(self.listen.as_ref().map(|(_, key)| key.clone()))
    }

    /// Launches the workers, if launchers were given, and waits until they joined.
    async fn launch(&self, core: &Arc<Core>, key: Option<crate::AuthKey>) -> Result<()> {
        if let Some(key) = key {
            core.launch(&self.launchers, self.workers, &key, &self.name)?;
            core.joined(self.workers).await?;
        }
        Ok(())
    }

    fn check(&mut self) -> Result<()> {
        if self.workers == 0 && self.listen.is_none() {
            return Err(Error::InvalidArgument(
                "a pool needs at least one worker".into(),
            ));
        }
        match self.init_error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn config(&self, spawn: SpawnWorker, join: JoinKind) -> Config {
        Config {
            // Launched workers are not local children.
            workers: if self.launchers.is_empty() {
                self.workers
            } else {
                0
            },
            task_timeout: self.task_timeout,
            queue_capacity: self.queue_capacity,
            rules: Rules {
                window: self.window,
                max_tasks_per_worker: self.max_tasks_per_worker,
                cancel_running: self.cancel_running,
                memory_limit: self.memory_limit,
                start_timeout: self.start_timeout,
                joinable: self.listen.is_some(),
            },
            spawn,
            join: self.listen.is_some().then_some(join),
        }
    }

    /// Starts listening for workers that join, if asked to.
    async fn listen_on(&mut self, core: &Arc<Core>) -> Result<()> {
        if let Some((address, key)) = self.listen.take() {
            let listener = crate::Listener::builder()
                .address(address)
                .authkey(key)
                .bind()
                .await?;
            core.listen(listener);
        }
        Ok(())
    }

    /// Starts the workers and waits until each is ready.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::builder().workers(2).build().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn build(mut self) -> Result<ProcessPool> {
        self.check()?;
        let init = self.init.clone();
        let spawn = spawner(
            self.name.clone(),
            self.start_method,
            self.memory_limit,
            self.panic_output,
            move |builder, conn, board| {
                let init = match &init {
                    Some((entry, arg)) => Some((*entry, arg.duplicate()?)),
                    None => None,
                };
                let claims = Claims::Board(board);
                builder.spawn(plain_worker, PlainStart { conn, init, claims })
            },
        );
        let join = plain_kind(self.init.clone());
        let key = self.launch_key()?;
        let core = Core::new(self.config(spawn, join));
        // Made before the workers start, so that a failed start drops it and kills
        // those already started.
        let pool = ProcessPool::from_core(core.clone());
        self.listen_on(&core).await?;
        core.start().await?;
        self.launch(&core, key).await?;
        Ok(pool)
    }

    /// Starts a pool of stateful workers, each built from `init`
    /// (see [`Worker`]).
    ///
    /// See [`Worker`] for an example.
    pub async fn build_stateful<W: Worker>(mut self, init: W::Init) -> Result<StatefulPool<W>> {
        self.check()?;
        let init = StartArg::new(wire::encode_value(&init)?);
        let join = stateful_kind::<W>(init.duplicate()?)?;
        let spawn = spawner(
            self.name.clone(),
            self.start_method,
            self.memory_limit,
            self.panic_output,
            move |builder, conn, board| {
                let start = StatefulStart {
                    conn,
                    init: init.duplicate()?,
                    claims: Claims::Board(board),
                };
                builder.spawn_async(stateful_worker::<W>, start)
            },
        );
        let key = self.launch_key()?;
        let core = Core::new(self.config(spawn, join));
        // Made before the workers start, so that a failed start drops it and kills
        // those already started.
        let pool = StatefulPool::from_core(core.clone());
        self.listen_on(&core).await?;
        core.start().await?;
        self.launch(&core, key).await?;
        Ok(pool)
    }
}

/// Workers die with the pool's process, are killed with the pool, and carry a name.
fn spawner<F>(
    name: String,
    method: Option<crate::StartMethod>,
    memory_limit: Option<u64>,
    panic_output: PanicOutput,
    spawn: F,
) -> SpawnWorker
where
    F: Fn(
            crate::ProcessBuilder,
            crate::Connection<FromWorker, ToWorkerIn>,
            ClaimBoard,
        ) -> Result<Process<()>>
        + Send
        + Sync
        + 'static,
{
    let counter = AtomicU64::new(1);
    Box::new(move |conn, board| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let mut builder = Process::builder()
            .name(format!("{name}-{n}"))
            .die_with_parent(true)
            .kill_on_drop(true)
            .panic_output(panic_output);
        if let Some(method) = method {
            builder = builder.start_method(method);
        }
        if let Some(limit) = memory_limit {
            builder = builder.memory_limit(limit);
        }
        spawn(builder, conn, board)
    })
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("tasks_in_flight_per_worker", &self.window)
            .field("max_tasks_per_worker", &self.max_tasks_per_worker)
            .field("task_timeout", &self.task_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("cancel_running", &self.cancel_running)
            .field("name", &self.name)
            .field("start_method", &self.start_method)
            .field("worker_memory_limit", &self.memory_limit)
            .field("panic_output", &self.panic_output)
            .field("worker_start_timeout", &self.start_timeout)
            .field("initializer", &self.init.is_some())
            .field("listen", &self.listen.as_ref().map(|(address, _)| address))
            .field("launchers", &self.launchers)
            .finish()
    }
}

impl ProcessPool {
    /// Starts configuring a pool.
    ///
    /// ```
    /// let builder = multiprocess::ProcessPool::builder();
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }
}
