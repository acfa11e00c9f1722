//! The crate's error type.

use std::fmt;
use std::io;
use std::time::Duration;

/// Everything that can go wrong when running work in another process.
///
/// Each variant says what happened in terms of the child: it panicked, was killed by a
/// signal, exited with a failure code, took too long, or went away.
///
/// ```
/// use multiprocess::Error;
///
/// fn describe(err: &Error) -> &'static str {
///     match err {
///         Error::Panicked { .. } => "the child panicked",
///         Error::Signaled { .. } => "the child was killed by a signal",
///         Error::Exited { .. } => "the child exited with a failure code",
///         Error::Timeout { .. } => "the child took too long",
///         Error::Disconnected => "the other side went away",
///         _ => "something else",
///     }
/// }
/// assert_eq!(describe(&Error::Disconnected), "the other side went away");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The child panicked (a pool task: the worker running it). Displays as one line,
    /// the one the child prints by default
    /// ([`PanicOutput::Tidy`](crate::PanicOutput::Tidy)); the whole report, backtrace
    /// included, is [`panic_report`](Error::panic_report).
    #[error("{}", one_line(.process, *.pid, .location.as_deref(), .message))]
    #[non_exhaustive]
    Panicked {
        /// The panic payload, if it was a string.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
        /// The name of the process that panicked.
        process: String,
        /// Its process id.
        pid: u32,
        /// The backtrace of the panic, when the child's environment asked for one as
        /// it asks std for one (`RUST_LIB_BACKTRACE`, else `RUST_BACKTRACE`: unset or
        /// `0` for none, `full` for every frame, anything else for the frames of the
        /// program's own code): `stack backtrace:` and the frames, as std prints them.
        backtrace: Option<String>,
    },
    /// The child was terminated by a signal before it produced a result.
    #[error("child killed by signal {} ({}){}", .signal, signal_name(*.signal), if *.core_dumped { ", core dumped" } else { "" })]
    Signaled {
        /// The signal number, e.g. `libc::SIGKILL` (9).
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// The child exited with `code` before producing a result (a function child that
    /// calls `std::process::exit(0)` reports code 0 here), or an external program
    /// exited non-zero.
    #[error("child exited with code {code}")]
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A child started with a memory limit
    /// ([`ProcessBuilder::memory_limit`](crate::ProcessBuilder::memory_limit)) died the
    /// way a program dies when an allocation fails under that limit: Rust and C++ abort
    /// (`SIGABRT`), C code that misses a failed `malloc` faults (`SIGSEGV`, `SIGBUS`).
    /// The kernel does not say why a process aborted, so a capped child that aborts for
    /// another reason is reported here too; `signal` keeps what was seen.
    #[error("child died by signal {} ({}) under its memory limit of {limit} bytes: an allocation failed", .signal, signal_name(*.signal))]
    MemoryLimit {
        /// The limit the child ran under, in bytes of address space.
        limit: u64,
        /// The signal that ended it.
        signal: i32,
    },
    /// A wait ran out of time. For [`Process::join_timeout`](crate::Process::join_timeout)
    /// the child keeps running and the handle can be awaited again.
    #[error("timed out after {after:?}")]
    Timeout {
        /// How long was waited.
        after: Duration,
    },
    /// The other end of a connection is closed.
    #[error("the other side disconnected")]
    Disconnected,
    /// A frame's announced length exceeds the connection's maximum. Checked before any
    /// allocation; the connection cannot be read further.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// A value could not be serialized.
    #[error("failed to encode a message: {0}")]
    Encode(String),
    /// A well-framed payload could not be deserialized into the expected type. The
    /// connection stays usable: the next frame can still be read.
    #[error("failed to decode a message: {0}")]
    Decode(String),
    /// The byte stream broke the framing rules (garbage header, truncated frame, missing
    /// descriptors). The connection cannot be read further.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The child could not start running the requested function (for example it is a
    /// different build of the program).
    #[error("child failed to start: {0}")]
    Bootstrap(String),
    /// The connection to a child on another host (see [`Launcher`](crate::Launcher))
    /// was lost or broke the protocol before the child's exit was known: the launcher
    /// could not connect or exited, the stream closed, fell silent past the heartbeat
    /// limit, or carried something else than the agent's messages (a login banner on
    /// standard output, another program). The far side kills the child when it notices.
    #[error("lost the child on {host}: {reason}")]
    ConnectionLost {
        /// The far side, as the launcher names it (see [`Launcher::host`](crate::Launcher::host)).
        host: String,
        /// What was seen.
        reason: String,
    },
    /// The program a launcher ran on another host is a different build from this one,
    /// so no function of ours can be named there. Nothing was run.
    #[error(
        "{host} runs a different build of the program: its identity is {theirs}, ours is {ours}"
    )]
    BuildMismatch {
        /// The far side, as the launcher names it, and its host name.
        host: String,
        /// This program's build identity.
        ours: String,
        /// The far side's.
        theirs: String,
    },
    /// The process could not be spawned.
    #[error("failed to spawn `{program}`: {source}")]
    Spawn {
        /// What was being started.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The working directory set for a child
    /// ([`ProcessBuilder::current_dir`](crate::ProcessBuilder::current_dir)) cannot be
    /// entered: it is missing, not a directory, or not accessible. Nothing was started.
    #[error("cannot start the child in `{}`: {source}", .path.display())]
    CurrentDir {
        /// The directory asked for.
        path: std::path::PathBuf,
        /// Why it cannot be used (`NotFound` when it does not exist).
        #[source]
        source: io::Error,
    },
    /// `MULTIPROCESS_START_METHOD` names no start method of this crate (`exec` and
    /// `forkserver` are; Python's `spawn` and `fork` are not). Spawns that use the
    /// default start method fail with this rather than guess.
    #[error(
        "MULTIPROCESS_START_METHOD={value:?} is not a start method (use \"exec\" or \"forkserver\")"
    )]
    UnknownStartMethod {
        /// The value found in the environment.
        value: String,
    },
    /// A pool worker died (killed by a signal or exited) while running this task. The
    /// pool has replaced it.
    #[error("pool worker {pid} died while running the task ({})", reason.clone().unwrap_or_else(|| describe_death(*.signal, *.code)))]
    WorkerDied {
        /// The worker's process id (on its own host, for a worker that joined over
        /// the network).
        pid: u32,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// What is known instead of an exit status, for a worker that is not our child
        /// (its connection was lost).
        reason: Option<String>,
    },
    /// A setting or argument is outside what it can be (for example a pool of zero
    /// workers).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The pool was closed or terminated before the task could run.
    #[error("the pool is closed")]
    PoolClosed,
    /// A process died in the middle of something it held: a [`Lock`](crate::Lock) or
    /// [`RLock`](crate::RLock) (what it guarded may be half-updated; every later `lock`
    /// gives this error until `clear_poison`, like std's `Mutex` poisoning), or a
    /// [`Queue`](crate::Queue)'s read lock or a message it was writing (the queue can no
    /// longer be trusted, and later calls give this error).
    #[error("process {pid} died holding a lock or in the middle of a message")]
    OwnerDied {
        /// The process that died.
        pid: u32,
    },
    /// The queue (or channel) was closed and has nothing left.
    #[error("closed")]
    Closed,
    /// A call that never waits (`try_put`) found no room for the message right now:
    /// the queue is full, or putting it would mean waiting for another producer or for
    /// the socket. Python's `queue.Full`.
    #[error("full")]
    Full,
    /// A call that never waits (`try_get`) found no message it could take right now.
    /// Python's `queue.Empty`.
    #[error("empty")]
    Empty,
    /// A release or `task_done` past what was acquired or put.
    #[error("{0}")]
    BoundExceeded(String),
    /// The child ended, but another part of the program reaped it first (a
    /// `waitpid(-1)` loop, a library reaping by pid, `SIGCHLD` set to `SIG_IGN`), so
    /// its exit status is lost. A function child's result, if it sent one, is still
    /// returned by `join`; this error comes when there is none to return.
    #[error("child {pid} was reaped by another part of the program: its exit status is unknown")]
    ReapedElsewhere {
        /// The child's process id.
        pid: u32,
    },
    /// A [`Barrier`](crate::Barrier) is broken: a wait timed out or was cancelled while
    /// counted, the barrier's action panicked, a waiting party died, or it was aborted or
    /// reset while this party waited. Every wait gives this error until
    /// [`Barrier::reset`](crate::Barrier::reset), as Python's `BrokenBarrierError`.
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// Descriptors sent to this process (a [`Connection`](crate::Connection), a
    /// [`Queue`](crate::Queue), a [`PassFd`](crate::PassFd) inside a message) could not
    /// be installed: it has as many descriptors open as its limit allows
    /// (`RLIMIT_NOFILE`, what `EMFILE` means). The message that carried them is lost and
    /// the channel it came on is unusable: close descriptors, or raise the limit, before
    /// exchanging descriptors again.
    ///
    /// ```
    /// let err = multiprocess::Error::DescriptorLimit { limit: 1024 };
    /// assert!(err.to_string().contains("limit of 1024 open descriptors"));
    /// ```
    #[error(
        "descriptors sent to this process could not be received: it has reached its limit \
         of {limit} open descriptors (RLIMIT_NOFILE, EMFILE); the message carrying them is lost"
    )]
    DescriptorLimit {
        /// The soft descriptor limit in force.
        limit: u64,
    },
    /// The result of this process was already taken by an earlier `join`.
    #[error("the process result was already taken")]
    AlreadyJoined,
    /// A connection by address ([`Listener`](crate::Listener) /
    /// [`Client`](crate::Client)) failed its authentication: the peer does not hold the
    /// same authkey, does not speak this crate's handshake, or did not finish it in time.
    /// Nothing the peer sent was decoded. Python's `AuthenticationError`.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// A TLS connection by address ([`Listener`](crate::Listener) /
    /// [`Client`](crate::Client) with the `tls` feature) could not be set up: the
    /// certificate is not trusted or not valid for the server name, the TLS handshake
    /// failed, or one side uses TLS and the other does not.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// Another I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `Result<T, multiprocess::Error>`.
///
/// ```
/// fn parse(s: &str) -> multiprocess::Result<u32> {
///     s.parse().map_err(|e| multiprocess::Error::Decode(format!("{e}")))
/// }
/// assert!(parse("7").is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe_death(signal: Option<i32>, code: Option<i32>) -> String {
    match (signal, code) {
        (Some(signal), _) => format!("signal {signal} ({})", signal_name(signal)),
        (None, Some(code)) => format!("exit code {code}"),
        (None, None) => "unknown cause".to_string(),
    }
}

/// The conventional name of a signal number, for messages.
pub(crate) fn signal_name(signal: i32) -> SignalName {
    SignalName(signal)
}

pub(crate) struct SignalName(i32);

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match nix::sys::signal::Signal::try_from(self.0) {
            Ok(sig) => f.write_str(sig.as_str()),
            Err(_) => write!(f, "SIGRT{}", self.0 - libc::SIGRTMIN()),
        }
    }
}

impl Error {
    /// The whole report of a panic, as std prints it but naming the process: where it
    /// panicked, the message, and the backtrace if one was captured. `None` for other
    /// errors.
    ///
    /// ```
    /// fn fail(_: ()) {
    ///     panic!("no more room");
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let err = multiprocess::Process::builder()
    ///     .name("packer")
    ///     .panic_output(multiprocess::PanicOutput::Silent)
    ///     .spawn(fail, ())?
    ///     .join()
    ///     .await
    ///     .unwrap_err();
    /// let report = err.panic_report().unwrap();
    /// assert!(report.starts_with("process 'packer' (pid "));
    /// assert!(report.contains(" panicked at "));
    /// assert!(report.contains(":\nno more room\n"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn panic_report(&self) -> Option<String> {
        match self {
            Error::Panicked {
                message,
                location,
                process,
                pid,
                backtrace,
            } => Some(full_report(
                process,
                *pid,
                location.as_deref(),
                message,
                backtrace.as_deref(),
            )),
            _ => None,
        }
    }

    /// Maps a non-success exit status to the error that describes it.
    pub(crate) fn from_exit_status(status: std::process::ExitStatus) -> Error {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Error::Exited { code },
            (None, Some(signal)) => Error::Signaled {
                signal,
                core_dumped: status.core_dumped(),
            },
            (None, None) => Error::Exited { code: -1 },
        }
    }

    /// The error for a child that ran under `limit` and ended with `status` without
    /// reporting an outcome: `MemoryLimit` for the signals an exhausted address space
    /// ends in, otherwise what the status says.
    pub(crate) fn from_capped_exit(
        status: std::process::ExitStatus,
        limit: Option<u64>,
    ) -> Option<Error> {
        use std::os::unix::process::ExitStatusExt;
        let limit = limit?;
        match status.signal()? {
            signal @ (libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS) => {
                Some(Error::MemoryLimit { limit, signal })
            }
            _ => None,
        }
    }

    /// Whether this error means the peer is gone (EOF, reset, broken pipe).
    pub(crate) fn from_io(err: io::Error) -> Error {
        match err.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => Error::Disconnected,
            _ => Error::Io(err),
        }
    }
}

/// An error can be cloned, so that one failure can be given to every task it ends (each
/// input of a `map` chunk whose worker died, every task queued on a pool that cannot
/// start). An I/O error inside is copied as its OS error code when it has one, and as
/// its kind and message otherwise: what `Display`, `kind()` and `raw_os_error()` show
/// is kept; only a custom inner error value is not.
///
/// ```
/// use multiprocess::Error;
///
/// let err = Error::Io(std::io::Error::from_raw_os_error(libc::EMFILE));
/// let copy = err.clone();
/// assert_eq!(copy.to_string(), err.to_string());
/// assert!(matches!(copy, Error::Io(e) if e.raw_os_error() == Some(libc::EMFILE)));
/// ```
impl Clone for Error {
    fn clone(&self) -> Error {
        match self {
            Error::Panicked {
                message,
                location,
                process,
                pid,
                backtrace,
            } => Error::Panicked {
                message: message.clone(),
                location: location.clone(),
                process: process.clone(),
                pid: *pid,
                backtrace: backtrace.clone(),
            },
            Error::Signaled {
                signal,
                core_dumped,
            } => Error::Signaled {
                signal: *signal,
                core_dumped: *core_dumped,
            },
            Error::Exited { code } => Error::Exited { code: *code },
            Error::MemoryLimit { limit, signal } => Error::MemoryLimit {
                limit: *limit,
                signal: *signal,
            },
            Error::Timeout { after } => Error::Timeout { after: *after },
            Error::DescriptorLimit { limit } => Error::DescriptorLimit { limit: *limit },
            Error::Disconnected => Error::Disconnected,
            Error::FrameTooLarge { len, max } => Error::FrameTooLarge {
                len: *len,
                max: *max,
            },
            Error::Encode(msg) => Error::Encode(msg.clone()),
            Error::Decode(msg) => Error::Decode(msg.clone()),
            Error::Protocol(msg) => Error::Protocol(msg.clone()),
            Error::Bootstrap(msg) => Error::Bootstrap(msg.clone()),
            Error::ConnectionLost { host, reason } => Error::ConnectionLost {
                host: host.clone(),
                reason: reason.clone(),
            },
            Error::BuildMismatch { host, ours, theirs } => Error::BuildMismatch {
                host: host.clone(),
                ours: ours.clone(),
                theirs: theirs.clone(),
            },
            Error::Authentication(msg) => Error::Authentication(msg.clone()),
            Error::Tls(msg) => Error::Tls(msg.clone()),
            Error::Spawn { program, source } => Error::Spawn {
                program: program.clone(),
                source: clone_io(source),
            },
            Error::CurrentDir { path, source } => Error::CurrentDir {
                path: path.clone(),
                source: clone_io(source),
            },
            Error::UnknownStartMethod { value } => Error::UnknownStartMethod {
                value: value.clone(),
            },
            Error::WorkerDied {
                pid,
                signal,
                code,
                reason,
            } => Error::WorkerDied {
                pid: *pid,
                signal: *signal,
                code: *code,
                reason: reason.clone(),
            },
            Error::InvalidArgument(msg) => Error::InvalidArgument(msg.clone()),
            Error::PoolClosed => Error::PoolClosed,
            Error::OwnerDied { pid } => Error::OwnerDied { pid: *pid },
            Error::Closed => Error::Closed,
            Error::Full => Error::Full,
            Error::Empty => Error::Empty,
            Error::BoundExceeded(msg) => Error::BoundExceeded(msg.clone()),
            Error::ReapedElsewhere { pid } => Error::ReapedElsewhere { pid: *pid },
            Error::BrokenBarrier => Error::BrokenBarrier,
            Error::AlreadyJoined => Error::AlreadyJoined,
            Error::Io(err) => Error::Io(clone_io(err)),
        }
    }
}

/// An I/O error with the same code, or the same kind and message.
fn clone_io(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

// How a child's panic reads, here beside `Error::Panicked`; the child's panic hook
// prints the same text.

/// The one-line form: what `Tidy` prints and what `Error::Panicked` displays.
pub(crate) fn one_line(process: &str, pid: u32, location: Option<&str>, message: &str) -> String {
    let mut line = format!("process '{process}' (pid {pid}) panicked");
    if let Some(location) = location {
        line.push_str(" at ");
        line.push_str(location);
    }
    line.push_str(": ");
    for c in message.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c => line.push(c),
        }
    }
    line
}

/// The multi-line form: std's report, naming the process.
pub(crate) fn full_report(
    process: &str,
    pid: u32,
    location: Option<&str>,
    message: &str,
    backtrace: Option<&str>,
) -> String {
    let mut report = format!("process '{process}' (pid {pid}) panicked");
    if let Some(location) = location {
        report.push_str(" at ");
        report.push_str(location);
    }
    report.push_str(":\n");
    report.push_str(message);
    report.push('\n');
    if let Some(backtrace) = backtrace {
        report.push_str(backtrace);
    }
    report
}

#[cfg(test)]
mod clone_tests {
    use super::*;

    #[test]
    fn a_clone_reads_and_matches_as_the_original() {
        let errors = [
            Error::Io(io::Error::from_raw_os_error(libc::EMFILE)),
            Error::Io(io::Error::new(io::ErrorKind::InvalidData, "bad header")),
            Error::Spawn {
                program: "worker".into(),
                source: io::Error::from_raw_os_error(libc::EAGAIN),
            },
            Error::WorkerDied {
                pid: 7,
                signal: Some(9),
                code: None,
                reason: None,
            },
            Error::Panicked {
                message: "boom".into(),
                location: Some("src/main.rs:1:1".into()),
                process: "Process-1".into(),
                pid: 42,
                backtrace: Some("stack backtrace:\n".into()),
            },
        ];
        for err in &errors {
            let copy = err.clone();
            assert_eq!(copy.to_string(), err.to_string());
            assert_eq!(std::mem::discriminant(&copy), std::mem::discriminant(err));
            if let (Error::Io(a), Error::Io(b)) = (&copy, err) {
                assert_eq!((a.kind(), a.raw_os_error()), (b.kind(), b.raw_os_error()));
            }
        }
    }
}
