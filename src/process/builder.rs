//! [`ProcessBuilder`]: how a child is configured before it starts.

use std::ffi::OsStr;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Command, Process};
use crate::error::Result;
use crate::start::Options;
use crate::start::{self, Entry};

/// Configures and starts a child process running one of our functions.
///
/// Made by [`Process::builder`]. Every child starts with default signal dispositions
/// and no signal blocked (whatever the parent ignores or masks), with no descriptor
/// above stdio except its own control socket, and with the soft descriptor limit this
/// process started with (the crate raised its own at the first spawn; see the crate's
/// "Descriptors"). Defaults: the parent's environment and
/// working directory (the one of the moment of the spawn), named `Process-N`, killed
/// when its handle is dropped and when this process dies (even by `SIGKILL`), in the
/// parent's process group. `kill_on_drop(false)` makes a detached child: it outlives
/// both its handle and this process unless `die_with_parent(true)` says otherwise.
///
/// ```
/// use multiprocess::Process;
///
/// fn shout(s: String) -> String {
///     s.to_uppercase()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let mut child = Process::builder()
///     .name("shouter")
///     .env("GREETING", "hi")
///     .die_with_parent(true)
///     .spawn(shout, "quiet".to_string())?;
/// assert_eq!(child.name(), "shouter");
/// assert_eq!(child.join().await?, "QUIET");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ProcessBuilder {
    pub(crate) options: Options,
    launcher: Option<crate::Launcher>,
}

impl ProcessBuilder {
    /// Names the process: the name is its `argv[0]` and thread name (what `ps` and `top`
    /// show, truncated to 15 bytes) and appears in logs and errors.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().name("worker-1");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = Some(name.into());
        self
    }

    /// Sets an environment variable for the child.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().env("RUST_LOG", "debug");
    /// ```
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let entry = (key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self.options.env.push(entry);
        self
    }

    /// Removes an environment variable from the child's environment.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().env_remove("HTTP_PROXY");
    /// ```
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.options.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts the child with an empty environment (plus what [`env`](Self::env) adds).
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().env_clear().env("PATH", "/usr/bin");
    /// ```
    pub fn env_clear(mut self) -> Self {
        self.options.env_clear = true;
        self.options.env.clear();
        self
    }

    /// Sets the child's working directory.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().current_dir("/tmp");
    /// ```
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.options.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Whether dropping the [`Process`] handle kills the child (default `true`). Either
    /// way the child is reaped once it exits: no zombie is left behind.
    ///
    /// Unless [`die_with_parent`](Self::die_with_parent) is set explicitly, it follows
    /// this setting: a child that must not outlive its handle does not outlive this
    /// process either, however it dies; a detached child (`false`) outlives both.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().kill_on_drop(false);
    /// ```
    pub fn kill_on_drop(mut self, kill: bool) -> Self {
        self.options.kill_on_drop = kill;
        self
    }

    /// Whether the child gets `SIGKILL` when its parent process dies
    /// (`PR_SET_PDEATHSIG`; by default, the same as [`kill_on_drop`](Self::kill_on_drop),
    /// so `true` unless the child is detached). Linux ties that signal to the parent
    /// *thread*, so such children are spawned from a thread of the crate's that lives as
    /// long as the process: the child dies with the process, not with whichever thread
    /// happened to spawn it.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().die_with_parent(true);
    /// ```
    pub fn die_with_parent(mut self, die: bool) -> Self {
        self.options.die_with_parent = Some(die);
        self
    }

    /// Caps the child's address space at `bytes` (`RLIMIT_AS`, set in the child before
    /// it decodes its argument or, for a [`Command`], before it executes the program).
    /// An allocation beyond the cap fails in the child, which then typically aborts;
    /// that death is reported as [`Error::MemoryLimit`](crate::Error::MemoryLimit)
    /// rather than a bare signal. A panic the child reports is still a panic.
    ///
    /// The cap is on virtual memory, not resident memory: leave room for the program's
    /// mappings (a Rust binary with a few threads maps some tens of MiB before doing
    /// anything).
    ///
    /// ```
    /// use multiprocess::{Error, Process};
    ///
    /// fn hoard(mib: usize) -> usize {
    ///     let block = vec![1u8; mib << 20];
    ///     block.len()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let capped = Process::builder().memory_limit(512 << 20);
    /// assert_eq!(capped.spawn(hoard, 16)?.join().await?, 16 << 20);
    /// let err = capped.spawn(hoard, 1024)?.join().await.unwrap_err();
    /// assert!(matches!(err, Error::MemoryLimit { limit, .. } if limit == 512 << 20));
    /// # Ok(())
    /// # }
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.options.memory_limit = Some(bytes);
        self
    }

    /// Puts the child in process group `pgid`; `0` makes it the leader of a new group,
    /// so that a terminal's Ctrl-C does not reach it.
    ///
    /// ```
    /// let builder = multiprocess::Process::builder().process_group(0);
    /// ```
    pub fn process_group(mut self, pgid: i32) -> Self {
        self.options.process_group = Some(pgid);
        self
    }

    /// Whether killing the child reaches its own children too (default `false`).
    ///
    /// The child then leads a new process group (set before it runs anything, so
    /// every process it starts is born in it), and [`Process::kill`],
    /// [`Process::shutdown`]'s final kill and kill-on-drop send `SIGKILL` to the whole
    /// group: grandchildren, orphaned or not, go with it. Dropping the handle kills the
    /// group even after the child itself has exited, which is how orphans it left
    /// behind are cleaned up. `terminate` and `signal` still address the child alone.
    /// Replaces any [`process_group`](Self::process_group) setting.
    ///
    /// A process group rather than a subreaper: `PR_SET_CHILD_SUBREAPER` would make this
    /// whole process the parent of every orphan below it (someone else's to reap, and a
    /// change to the program's behaviour a library should not make), and it cannot be
    /// limited to one child. A descendant that moves to another group or session on
    /// purpose (`setsid`, a daemon) escapes, as it escapes a terminal's Ctrl-C.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut shell = multiprocess::Process::builder()
    ///     .kill_tree(true)
    ///     .command("sh")
    ///     .args(["-c", "sleep 1000 & wait"])
    ///     .spawn()?;
    /// shell.kill()?; // the shell and its `sleep`
    /// assert!(shell.join().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn kill_tree(mut self, kill_tree: bool) -> Self {
        self.options.kill_tree = kill_tree;
        self
    }

    /// What the child prints on its standard error if it panics (default
    /// [`PanicOutput::Tidy`](crate::PanicOutput::Tidy): one line with its name, pid,
    /// the message and where). Whatever is printed, `join` gives
    /// [`Error::Panicked`](crate::Error::Panicked) with the whole report.
    ///
    /// ```
    /// use multiprocess::{PanicOutput, Process};
    ///
    /// // std's full report (and backtrace, as RUST_BACKTRACE asks), naming the process.
    /// let builder = Process::builder().panic_output(PanicOutput::Full);
    /// ```
    pub fn panic_output(mut self, output: crate::PanicOutput) -> Self {
        self.options.panic_output = output;
        self
    }

    /// How the child is started (default: [`StartMethod::from_env`](crate::StartMethod::from_env)).
    ///
    /// ```
    /// use multiprocess::{Process, StartMethod};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = Process::builder()
    ///     .start_method(StartMethod::Forkserver)
    ///     .spawn(|x: u32| x * 3, 14)?;
    /// assert_eq!(child.join().await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_method(mut self, method: crate::StartMethod) -> Self {
        self.options.start_method = Some(method);
        self
    }

    /// Starts function children on another host, through `launcher` (ssh, Slurm's
    /// `srun`, or any command prefix): the handle's `join`, `join_timeout`,
    /// `terminate`, `kill`, `shutdown` and kill-on-drop mean what they mean locally
    /// (see [`Launcher`](crate::Launcher) for what differs). The argument cannot carry
    /// descriptors there. The name, environment, working directory, memory limit,
    /// `kill_tree` and panic output apply to the remote child; the start method to the
    /// local stand-in. External [`Command`]s ignore the launcher.
    ///
    /// ```
    /// use multiprocess::{Launcher, Process};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// // `env` runs the far side right here; `Launcher::ssh(host)` would run it there.
    /// let here = Launcher::command("env", Vec::<String>::new());
    /// let mut child = Process::builder().launcher(here).spawn(|x: u32| x * 2, 21)?;
    /// assert_eq!(child.join().await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn launcher(mut self, launcher: crate::Launcher) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// Starts a child that runs `f(arg)` and returns its handle. See
    /// [`spawn_process`](crate::spawn_process).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::Process::builder().spawn(|x: u32| x + 1, 41)?;
    /// assert_eq!(child.join().await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<Process<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.spawn_with(Entry::new::<start::RunSync<A, R>>(f), &arg)
    }

    /// Starts a child that runs the async function `f(arg)` on a current-thread runtime
    /// of its own.
    ///
    /// ```
    /// async fn double(x: u64) -> u64 {
    ///     tokio::task::yield_now().await;
    ///     x * 2
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::Process::builder().spawn_async(double, 21)?;
    /// assert_eq!(child.join().await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_async<A, F, R>(&self, f: fn(A) -> F, arg: A) -> Result<Process<R>>
    where
        A: Serialize + DeserializeOwned,
        F: Future<Output = R>,
        R: Serialize + DeserializeOwned,
    {
        self.spawn_with(Entry::new::<start::RunAsync<A, F, R>>(f), &arg)
    }

    fn spawn_with<A: Serialize, R>(
        &self,
        entry: std::io::Result<Entry>,
        arg: &A,
    ) -> Result<Process<R>> {
        let name = self.options.resolved_name();
        let options = Options {
            name: Some(name.clone()),
            ..self.options.clone()
        };
        if let Some(launcher) = &self.launcher {
            let (spawned, options) = crate::remote::spawn(launcher, &options, entry, arg)?;
            return Ok(Process::from_function(name, spawned, &options));
        }
        let spawned = start::spawn_function(&options, entry, arg)?;
        Ok(Process::from_function(name, spawned, &options))
    }

    /// Turns this configuration into a [`Command`] for an external program.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut ls = multiprocess::Process::builder()
    ///     .current_dir("/")
    ///     .command("ls")
    ///     .spawn()?;
    /// # ls.join().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command::with_options(program.as_ref(), self.options.clone())
    }
}
