//! [`Command`]: an external program under the same [`Process`] handle.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;

use super::Process;
use crate::error::{Error, Result};
use crate::ipc::Connection;
use crate::start::Options;
use crate::start::{ChildSetup, spawn_command, watch_or_kill};
use crate::{exit, sys};

/// An external program, started with the same handle semantics as a function child:
/// `join`, `join_timeout`, `terminate`, `kill`, `shutdown`, kill-on-drop, reaping.
///
/// Joining gives `Ok(())` for exit code 0 and the usual [`Error::Exited`] or
/// [`Error::Signaled`] otherwise. A [`channel`](Command::channel) gives the program a
/// framed connection on a descriptor number of your choice, for programs that speak our
/// frames (another binary built with this crate, see [`Connection::from_fd`]).
///
/// ```
/// use multiprocess::{Command, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let mut ok = Command::new("true").spawn()?;
/// ok.join().await?;
///
/// let mut failing = Command::new("sh").args(["-c", "exit 3"]).spawn()?;
/// assert!(matches!(failing.join().await, Err(Error::Exited { code: 3 })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    options: Options,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    // (descriptor number in the child, our copy of the child's end)
    channels: Vec<(RawFd, OwnedFd)>,
}

/// The piped standard streams of an external program.
#[derive(Debug, Default)]
pub(crate) struct ChildStdio {
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
}

impl Command {
    /// Prepares to run `program` (looked up in `PATH` if it has no slash), with default
    /// options; use [`ProcessBuilder::command`](crate::ProcessBuilder::command) to set them.
    ///
    /// ```
    /// let mut cmd = multiprocess::Command::new("sleep");
    /// cmd.arg("1");
    /// ```
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command::with_options(program.as_ref(), Options::default())
    }

    pub(crate) fn with_options(program: &OsStr, options: Options) -> Command {
        Command {
            program: program.to_owned(),
            args: Vec::new(),
            options,
            stdin: None,
            stdout: None,
            stderr: None,
            channels: Vec::new(),
        }
    }

    /// Adds an argument.
    ///
    /// ```
    /// let mut cmd = multiprocess::Command::new("echo");
    /// cmd.arg("hello").arg("world");
    /// ```
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    ///
    /// ```
    /// let mut cmd = multiprocess::Command::new("ls");
    /// cmd.args(["-l", "-a"]);
    /// ```
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets the program's standard input (inherited by default).
    ///
    /// ```
    /// let mut cmd = multiprocess::Command::new("cat");
    /// cmd.stdin(std::process::Stdio::null());
    /// ```
    pub fn stdin(&mut self, stdio: impl Into<Stdio>) -> &mut Command {
        self.stdin = Some(stdio.into());
        self
    }

    /// Sets the program's standard output (inherited by default).
    ///
    /// ```
    /// let mut cmd = multiprocess::Command::new("echo");
    /// cmd.stdout(std::process::Stdio::piped());
    /// ```
    pub fn stdout(&mut self, stdio: impl Into<Stdio>) -> &mut Command {
        self.stdout = Some(stdio.into());
        self
    }

    /// Sets the program's standard error (inherited by default).
    ///
    /// ```
    /// let mut cmd = multiprocess::Command::new("ls");
    /// cmd.stderr(std::process::Stdio::null());
    /// ```
    pub fn stderr(&mut self, stdio: impl Into<Stdio>) -> &mut Command {
        self.stderr = Some(stdio.into());
        self
    }

    /// Opens a framed connection to the program on descriptor `child_fd` (3 or above)
    /// and returns our end. The program inherits the other end at that number and
    /// nothing else of ours.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// // `cat` echoes our frames back unchanged: a round trip through another program.
    /// let mut cmd = multiprocess::Command::new("sh");
    /// cmd.args(["-c", "exec cat <&3 >&3"]);
    /// let mut conn = cmd.channel::<String, String>(3)?;
    /// let mut echo = cmd.spawn()?;
    /// conn.send("ping".to_string()).await?;
    /// assert_eq!(conn.recv().await?, "ping");
    /// drop(conn);
    /// echo.join().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn channel<S, R>(&mut self, child_fd: RawFd) -> Result<Connection<S, R>> {
        if child_fd < 3 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a channel's descriptor must be 3 or above (0-2 are stdio)",
            )));
        }
        let (ours, theirs) = sys::stream_socketpair()?;
        self.channels.retain(|(fd, _)| *fd != child_fd);
        self.channels.push((child_fd, theirs));
        Connection::from_fd(ours)
    }

    /// Starts the program.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut child = multiprocess::Command::new("true").spawn()?;
    /// child.join().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn(&mut self) -> Result<Process<()>> {
        crate::limits::raise_descriptor_limit();
        exit::reap_orphans();
        self.options.check_current_dir()?;
        let name = self
            .options
            .name
            .clone()
            .unwrap_or_else(|| self.program.to_string_lossy().into_owned());
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args);
        self.options.apply(&mut command);
        if let Some(stdin) = self.stdin.take() {
            command.stdin(stdin);
        }
        if let Some(stdout) = self.stdout.take() {
            command.stdout(stdout);
        }
        if let Some(stderr) = self.stderr.take() {
            command.stderr(stderr);
        }
        let inherited = self.prepare_channels()?;
        self.install_pre_exec(&mut command, &inherited);
        let spawned = spawn_command(command, self.options.dies_with_parent());
        self.channels.clear();
        drop(inherited);
        let mut child = spawned.map_err(|source| Error::Spawn {
            program: name.clone(),
            source,
        })?;
        let stdio = ChildStdio {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        };
        let watch = watch_or_kill(child)?;
        tracing::debug!(pid = watch.pid(), name, "spawned command");
        Ok(Process::from_command(name, watch, &self.options, stdio))
    }

    /// Copies each channel's descriptor above every target number, so that putting one
    /// in place in the child can never overwrite another's source.
    fn prepare_channels(&self) -> Result<Vec<(RawFd, OwnedFd)>> {
        let floor = self.channels.iter().map(|(fd, _)| *fd).max().unwrap_or(2) + 1;
        self.channels
            .iter()
            .map(|(target, fd)| Ok((*target, sys::dup_cloexec(fd.as_fd(), floor)?)))
            .collect()
    }

    fn install_pre_exec(
        &self,
        command: &mut std::process::Command,
        inherited: &[(RawFd, OwnedFd)],
    ) {
        ChildSetup {
            inherit: inherited
                .iter()
                .map(|(target, fd)| (fd.as_raw_fd(), *target))
                .collect(),
            memory_limit: self.options.memory_limit,
            die_with: self.options.dies_with_parent().then(std::process::id),
        }
        .install(command);
    }
}

impl Process<()> {
    /// Takes the program's standard input, if it was set to [`Stdio::piped`].
    ///
    /// ```
    /// use tokio::io::AsyncWriteExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut cat = multiprocess::Command::new("cat")
    ///     .stdin(std::process::Stdio::piped())
    ///     .stdout(std::process::Stdio::null())
    ///     .spawn()?;
    /// let mut input = cat.take_stdin()?.unwrap();
    /// input.write_all(b"hello").await?;
    /// drop(input);
    /// cat.join().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_stdin(&mut self) -> Result<Option<tokio::process::ChildStdin>> {
        Ok(self
            .stdio
            .stdin
            .take()
            .map(tokio::process::ChildStdin::from_std)
            .transpose()?)
    }

    /// Takes the program's standard output, if it was set to [`Stdio::piped`].
    ///
    /// ```
    /// use tokio::io::AsyncReadExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut echo = multiprocess::Command::new("echo")
    ///     .arg("hi")
    ///     .stdout(std::process::Stdio::piped())
    ///     .spawn()?;
    /// let mut out = String::new();
    /// echo.take_stdout()?.unwrap().read_to_string(&mut out).await?;
    /// echo.join().await?;
    /// assert_eq!(out, "hi\n");
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_stdout(&mut self) -> Result<Option<tokio::process::ChildStdout>> {
        Ok(self
            .stdio
            .stdout
            .take()
            .map(tokio::process::ChildStdout::from_std)
            .transpose()?)
    }

    /// Takes the program's standard error, if it was set to [`Stdio::piped`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let mut ls = multiprocess::Command::new("ls")
    ///     .arg("/nonexistent")
    ///     .stderr(std::process::Stdio::piped())
    ///     .spawn()?;
    /// assert!(ls.take_stderr()?.is_some());
    /// assert!(ls.join().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_stderr(&mut self) -> Result<Option<tokio::process::ChildStderr>> {
        Ok(self
            .stdio
            .stderr
            .take()
            .map(tokio::process::ChildStderr::from_std)
            .transpose()?)
    }
}
