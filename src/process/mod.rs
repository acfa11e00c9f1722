//! [`Process`]: the handle to a running child, whatever started it.

mod builder;
mod command;
mod current;

pub(crate) use crate::start::Options;
pub use crate::start::StartMethod;
pub use builder::ProcessBuilder;
pub use command::Command;
pub use current::{ActiveChild, CurrentProcess, active_children, current_process};

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::exit::{Exit, ExitWatch};
use crate::ipc::ReadHalf;
use crate::start::Spawned;
use crate::start::protocol::Outcome;

/// Runs `f(arg)` in a new child process and returns a handle to await its result.
///
/// The argument travels to the child as a frame, the result comes back the same way;
/// both need serde's `Serialize` and `Deserialize`. A [`Connection`](crate::Connection),
/// [`Sender`](crate::Sender) or [`Receiver`](crate::Receiver) inside `arg` arrives in the
/// child working, so parent and child can talk while it runs. `f` must be a plain
/// function (or a closure that captures nothing) of this program.
///
/// The child is this same binary started again; it runs `f` before reaching `main`, so
/// it pays for no runtime or set-up of yours. It is killed if the handle is dropped
/// before it finishes. Use [`Process::builder`] to change that, name it, and so on.
///
/// ```
/// fn fib(n: u64) -> u64 {
///     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let mut child = multiprocess::spawn_process(fib, 20)?;
/// println!("child {} computing", child.pid());
/// assert_eq!(child.join().await?, 6765);
/// # Ok(())
/// # }
/// ```
pub fn spawn_process<A, R>(f: fn(A) -> R, arg: A) -> Result<Process<R>>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    Process::builder().spawn(f, arg)
}

/// A child process: a function of ours (`Process<R>` yields its `R`) or an external
/// program (`Process<()>`, see [`Command`]).
///
/// Awaiting never blocks a runtime thread and never hangs on a dead child: every wait
/// ends with the result or an [`Error`] saying what happened to the child. The child is
/// always reaped; with kill-on-drop (the default) dropping the handle kills it first.
///
/// ```
/// use std::time::Duration;
/// use multiprocess::{Error, spawn_process};
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let mut slow = spawn_process(nap, 60_000)?;
/// let waited = slow.join_timeout(Duration::from_millis(50)).await;
/// assert!(matches!(waited, Err(Error::Timeout { .. })));
/// slow.kill()?;
/// assert!(matches!(slow.join().await, Err(Error::Signaled { signal: libc::SIGKILL, .. })));
/// # Ok(())
/// # }
/// ```
pub struct Process<R> {
    name: String,
    watch: ExitWatch,
    control: Option<ReadHalf>,
    outcome: Option<Result<Outcome<R>>>,
    joined: bool,
    kill_on_drop: bool,
    // The child leads its own process group, which killing it kills too.
    kill_tree: bool,
    // What an exit without an outcome means: a failure for a function, possibly
    // success for an external program.
    without_outcome: fn(ExitStatus) -> Result<R>,
    // The address-space cap it runs under, which explains some deaths by signal.
    memory_limit: Option<u64>,
    pub(crate) stdio: command::ChildStdio,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.watch.pid())
            .field("status", &self.watch.status())
            .finish_non_exhaustive()
    }
}

fn function_exit_without_outcome<R>(status: ExitStatus) -> Result<R> {
    Err(Error::from_exit_status(status))
}

impl Process<()> {
    /// Starts configuring a child; see [`ProcessBuilder`].
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().name("resizer");
    /// ```
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    pub(crate) fn from_command(
        name: String,
        watch: ExitWatch,
        options: &Options,
        stdio: command::ChildStdio,
    ) -> Process<()> {
        let mut watch = watch;
        watch.list_as(&name);
        Process {
            name,
            watch,
            control: None,
            outcome: None,
            joined: false,
            kill_on_drop: options.kill_on_drop,
            kill_tree: options.kill_tree,
            without_outcome: |status| match status.success() {
                true => Ok(()),
                false => Err(Error::from_exit_status(status)),
            },
            memory_limit: options.memory_limit,
            stdio,
        }
    }
}

impl<R> Process<R> {
    pub(crate) fn from_function(name: String, spawned: Spawned, options: &Options) -> Process<R> {
        let mut watch = spawned.watch;
        watch.list_as(&name);
        Process {
            name,
            watch,
            control: Some(spawned.control),
            outcome: spawned.early.map(|early| Ok(early.without_result())),
            joined: false,
            kill_on_drop: options.kill_on_drop,
            kill_tree: options.kill_tree,
            without_outcome: function_exit_without_outcome,
            memory_limit: options.memory_limit,
            stdio: Default::default(),
        }
    }

    /// The child's process id. For a child on another host (see
    /// [`ProcessBuilder::launcher`]), the id of its local stand-in, which signals and
    /// waits reach as they would the child's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let child = multiprocess::spawn_process(|()| std::process::id(), ())?;
    /// let pid = child.pid();
    /// assert_eq!(child.await?, pid);
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self) -> u32 {
        self.watch.pid()
    }

    /// The child's name (see [`ProcessBuilder::name`]).
    ///
    /// ```
    /// let child = multiprocess::Process::builder().name("n").spawn(|()| (), ())?;
    /// assert_eq!(child.name(), "n");
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status, once the child has exited and been reaped.
    ///
    /// `None` while it runs, and also for a child that another part of the program
    /// reaped first (a `waitpid(-1)` loop, `SIGCHLD` set to `SIG_IGN`): its status is
    /// then lost, although [`join`](Self::join) still returns a function's result.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(|()| (), ())?;
    /// child.join().await?;
    /// assert!(child.exit_status().unwrap().success());
    /// # Ok(())
    /// # }
    /// ```
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.watch.status()
    }

    /// How the child ended, as Python's `Process.exitcode`: `None` while it runs (or
    /// if another part of the program reaped it, see [`exit_status`](Self::exit_status)),
    /// its exit code if it exited, the negated signal number if a signal killed it.
    ///
    /// ```
    /// fn forever(_: ()) {
    ///     loop { std::thread::park(); }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(forever, ())?;
    /// assert_eq!(child.exitcode(), None);
    /// child.kill()?;
    /// let _ = child.join().await;
    /// assert_eq!(child.exitcode(), Some(-libc::SIGKILL));
    /// # Ok(())
    /// # }
    /// ```
    pub fn exitcode(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.watch.status()?;
        status
            .code()
            .or_else(|| status.signal().map(|signal| -signal))
    }

    /// The child's pidfd until it is reaped: readable once the child has exited, to
    /// wait on with any event loop (`poll`, `epoll`, tokio's `AsyncFd`). `None` once
    /// the child has been reaped (its descriptor is closed then, so that a program
    /// awaiting thousands of children does not hold one for each that ended), on
    /// kernels without pidfds (Linux before 5.3), and for a child reaped elsewhere
    /// before the crate could open one. A child started while half the descriptor limit
    /// was in use is watched without a pidfd (see the crate's "Descriptors"); asking
    /// for it here opens one then. See also the handle's [`AsFd`](std::os::fd::AsFd).
    ///
    /// ```
    /// let child = multiprocess::spawn_process(|()| (), ())?;
    /// assert!(child.pidfd().is_some());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.watch.pidfd()
    }

    /// Sends `SIGTERM`: asks the child to stop. A no-op once it has exited.
    ///
    /// ```
    /// fn forever(_: ()) {
    ///     loop { std::thread::park(); }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(forever, ())?;
    /// child.terminate()?;
    /// assert!(child.join().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn terminate(&self) -> Result<()> {
        self.signal(crate::Signal::SIGTERM)
    }

    /// Sends `SIGKILL`: stops the child at once. A no-op once it has exited.
    ///
    /// ```
    /// fn forever(_: ()) {
    ///     loop { std::thread::park(); }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(forever, ())?;
    /// child.kill()?;
    /// assert!(child.join().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// With [`kill_tree`](ProcessBuilder::kill_tree), the child's whole process group
    /// is killed, its own children included.
    pub fn kill(&self) -> Result<()> {
        self.signal(crate::Signal::SIGKILL)?;
        if self.kill_tree {
            crate::sys::kill_process_group(self.pid(), libc::SIGKILL)?;
        }
        Ok(())
    }

    /// Sends `signal` to the child (through its pidfd where available, so it can never
    /// reach a recycled pid). A no-op once the child has been reaped.
    ///
    /// ```
    /// use multiprocess::Signal;
    /// fn forever(_: ()) {
    ///     loop { std::thread::park(); }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(forever, ())?;
    /// child.signal(Signal::SIGINT)?;
    /// assert!(child.join().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn signal(&self, signal: crate::Signal) -> Result<()> {
        Ok(self.watch.signal(signal as i32)?)
    }

    /// A handle that can signal this child from elsewhere, safe against pid reuse.
    /// With [`kill_tree`](ProcessBuilder::kill_tree) it signals the child's whole group.
    pub(crate) fn signaller(&self) -> Result<crate::exit::Signaller> {
        let signaller = self.watch.signaller()?;
        Ok(match self.kill_tree {
            true => signaller.with_group(self.pid()),
            false => signaller,
        })
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Polls for the child's exit, reading its outcome meanwhile so that a child writing
    /// a large result never waits on us.
    fn poll_exit(&mut self, cx: &mut Context<'_>) -> Poll<Result<Exit>> {
        if self.outcome.is_none() {
            if let Some(control) = self.control.as_mut() {
                match control.poll_recv::<Outcome<R>>(cx) {
                    Poll::Ready(Some(outcome)) => self.outcome = Some(outcome),
                    Poll::Ready(None) => self.control = None,
                    Poll::Pending => {}
                }
            }
        }
        let exit = ready!(self.watch.poll_wait(cx))?;
        if self.outcome.is_none() {
            // Everything the child wrote is in the socket once it has exited, whoever
            // reaped it.
            if let Some(outcome) = self.control.as_mut().and_then(|c| c.recv_now()) {
                self.outcome = Some(outcome);
            }
        }
        self.control = None;
        Poll::Ready(Ok(exit))
    }

    /// Polls for the result alone: the outcome once it has arrived, or else the exit.
    fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<Result<R>> {
        if self.joined {
            return Poll::Ready(Err(Error::AlreadyJoined));
        }
        if self.outcome.is_none() {
            if let Some(control) = self.control.as_mut() {
                match control.poll_recv::<Outcome<R>>(cx) {
                    Poll::Ready(Some(outcome)) => self.outcome = Some(outcome),
                    Poll::Ready(None) => self.control = None,
                    Poll::Pending => {}
                }
            }
        }
        if let Some(outcome) = self.outcome.take() {
            self.joined = true;
            tracing::debug!(pid = self.pid(), name = %self.name, "child sent its result");
            return Poll::Ready(outcome.and_then(Outcome::into_result));
        }
        let exit = ready!(self.poll_exit(cx))?;
        Poll::Ready(self.finish(exit))
    }

    /// The exit status, or the error saying it is unknown.
    fn known_status(&self, exit: Exit) -> Result<ExitStatus> {
        exit.status()
            .ok_or(Error::ReapedElsewhere { pid: self.pid() })
    }

    fn finish(&mut self, exit: Exit) -> Result<R> {
        self.joined = true;
        tracing::debug!(pid = self.pid(), name = %self.name, ?exit, "child exited");
        match self.outcome.take() {
            Some(Ok(outcome)) => outcome.into_result(),
            Some(Err(err)) => Err(err),
            None => {
                let status = self.known_status(exit)?;
                match Error::from_capped_exit(status, self.memory_limit) {
                    Some(err) => Err(err),
                    None => (self.without_outcome)(status),
                }
            }
        }
    }

    /// Waits for the child to finish and returns its result.
    ///
    /// `join` waits for the child's *exit*, not only for its result, as Python's
    /// `Process.join()` does: once it returns, the child is gone and reaped,
    /// [`exit_status`](Self::exit_status) and [`exitcode`](Self::exitcode) are known, and
    /// a child that hangs after sending its result (in an exit handler, a thread it
    /// started) keeps `join` waiting, within the limit of
    /// [`join_timeout`](Self::join_timeout), rather than living on unnoticed. The exit
    /// costs more than the result: with a warm fork-server child, 0.24 ms to the exit
    /// reaped against 0.095 ms to the result on a 2-vCPU VM (see the crate's
    /// BENCHMARKS.md), because the child must tear down its address space and we must
    /// be woken for its pidfd and reap it.
    /// When only the value matters, [`result`](Self::result) returns as soon as it
    /// arrives and leaves the exit to the handle.
    ///
    /// The error says what went wrong: [`Error::Panicked`] with the child's panic
    /// message, [`Error::Signaled`] if a signal killed it, [`Error::Exited`] if it exited
    /// without a result, [`Error::MemoryLimit`] if it died as an allocation failed under
    /// its memory limit, [`Error::ReapedElsewhere`] if another part of the program reaped
    /// it before it sent a result (a function's result is returned even then). Cancel-safe: dropping the future loses nothing, and `join` can be
    /// called again. Once the result has been returned, later calls give
    /// [`Error::AlreadyJoined`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(|v: Vec<u8>| v.len(), vec![1, 2, 3])?;
    /// assert_eq!(child.join().await?, 3);
    /// assert!(matches!(child.join().await, Err(multiprocess::Error::AlreadyJoined)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn join(&mut self) -> Result<R> {
        if self.joined {
            return Err(Error::AlreadyJoined);
        }
        let status = std::future::poll_fn(|cx| self.poll_exit(cx)).await?;
        self.finish(status)
    }

    /// Waits for the function's result alone, not for the child's exit: returns as
    /// soon as the child has sent its result, while it is still exiting. The handle
    /// still watches the exit: [`wait`](Self::wait) gives its status, dropping the
    /// handle kills (with kill-on-drop) and reaps whatever is left. A child that ends
    /// without a result is awaited to its exit, as by `join`, to say why. Like `join`,
    /// it returns the result once; later calls of either give
    /// [`Error::AlreadyJoined`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(|x: u32| x * 2, 21)?;
    /// assert_eq!(child.result().await?, 42);
    /// assert!(child.wait().await?.success());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn result(&mut self) -> Result<R> {
        std::future::poll_fn(|cx| self.poll_result(cx)).await
    }

    /// [`join`](Self::join) with a time limit. On `Err(Timeout)` the child keeps running
    /// and the handle can be joined, killed or shut down as before.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(|x: i32| x, 5)?;
    /// assert_eq!(child.join_timeout(Duration::from_secs(30)).await?, 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        match tokio::time::timeout(timeout, self.join()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { after: timeout }),
        }
    }

    /// Returns the result if the child has finished, `Ok(None)` if it is still running.
    ///
    /// ```
    /// fn forever(_: ()) {
    ///     loop { std::thread::park(); }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(forever, ())?;
    /// assert!(child.try_join()?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_join(&mut self) -> Result<Option<R>> {
        if self.joined {
            return Err(Error::AlreadyJoined);
        }
        match self.poll_exit(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(status) => self.finish(status?).map(Some),
            Poll::Pending => Ok(None),
        }
    }

    /// Whether the child is still running (it has not exited, or has exited but is not
    /// reaped yet; this call reaps it if so).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(|()| (), ())?;
    /// child.wait().await?;
    /// assert!(!child.is_alive());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_alive(&mut self) -> bool {
        matches!(self.watch.try_wait(), Ok(None))
    }

    /// Waits for the child to exit and returns its exit status, without interpreting it.
    /// A function's result, if it sent one, stays available to [`join`](Self::join).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::Command::new("false").spawn()?;
    /// assert_eq!(child.wait().await?.code(), Some(1));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A child that another part of the program reaped first gives
    /// [`Error::ReapedElsewhere`]: it has ended, but its status is lost.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let exit = std::future::poll_fn(|cx| self.poll_exit(cx)).await?;
        self.known_status(exit)
    }

    /// Stops the child gracefully: `SIGTERM`, up to `grace` for it to exit, then
    /// `SIGKILL`. Returns how it exited. Never waits longer than `grace` plus the time
    /// the kernel takes to kill.
    ///
    /// ```
    /// use std::time::Duration;
    /// fn forever(_: ()) {
    ///     loop { std::thread::park(); }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::spawn_process(forever, ())?;
    /// let status = child.shutdown(Duration::from_secs(1)).await?;
    /// assert!(!status.success());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(exit) = self.watch.exit() {
            return self.known_status(exit);
        }
        self.terminate()?;
        if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
            return status;
        }
        tracing::debug!(pid = self.pid(), name = %self.name, "grace period over, killing");
        self.kill()?;
        self.wait().await
    }
}

/// A descriptor to wait on with anything, readable once the child has exited: its
/// pidfd (see [`Process::pidfd`]) until the child is reaped, and after that (or for a
/// child that another part of the program reaped) a descriptor that is always
/// readable, since the child has ended. Borrow it afresh after each wait: the pidfd is
/// closed when the child is reaped.
///
/// # Panics
///
/// On kernels without pidfds (Linux before 5.3), where a running child has no
/// descriptor to stand for it, and for a running child watched without a pidfd (started
/// past half the descriptor limit) when none can be opened now, the process being at its
/// limit; [`Process::pidfd`] says `None` in both cases instead.
///
/// ```
/// use std::os::fd::AsFd;
/// use tokio::io::{Interest, unix::AsyncFd};
///
/// fn nap(ms: u64) {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let child = multiprocess::spawn_process(nap, 10)?;
/// let pidfd = child.as_fd().try_clone_to_owned()?;
/// let exited = AsyncFd::with_interest(pidfd, Interest::READABLE)?;
/// let _ = exited.readable().await?;
/// # Ok(())
/// # }
/// ```
impl<R> std::os::fd::AsFd for Process<R> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match (self.watch.pidfd(), self.watch.exit()) {
            (Some(fd), _) => fd,
            (None, Some(_)) => crate::sys::always_readable(),
            (None, None) => panic!("this kernel has no pidfds (Linux 5.3 or later has them)"),
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> IntoFuture for Process<R> {
    type Output = Result<R>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R>> + Send>>;

    /// Awaiting a `Process` joins it.
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move { self.join().await })
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.kill_on_drop {
            if self.watch.exit().is_none() {
                let _ = self.watch.signal(libc::SIGKILL);
            }
            if self.kill_tree {
                // Also after the child exited: orphans it left in its group go too.
                let _ = crate::sys::kill_process_group(self.pid(), libc::SIGKILL);
            }
        }
        // The watch reaps whatever is left, now or in the background.
    }
}
