//! The near side: a small local process that stands for the remote child.
//!
//! It is an ordinary function child of the caller (so the handle, reaping, pidfds and
//! kill-on-drop work unchanged), started with the job to send. It runs the launcher with
//! a socket as its stdin and stdout, checks the agent's build identity before anything
//! names a function, sends the job, forwards the remote child's frames to the caller
//! whole, turns signals it receives into in-band requests, sends heartbeats, and at the
//! end exits the way the remote child exited (or reports a lost connection).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde::{Deserialize, Serialize};

use super::Launcher;
use super::envelope::{
    Envelope, Inbox, Job, Outbox, Read, RemoteExit, set_nonblocking, write_some,
};
use super::wait::{Watched, poll_fds};
use crate::ipc::SocketFd;
use crate::ipc::wire;
use crate::start::entry::Trampoline;
use crate::start::protocol::{Control, EXIT_FAILED, Outcome};
use crate::start::{ChildSetup, identity};
use crate::sys;

/// What the proxy is started with.
#[derive(Serialize, Deserialize)]
pub(super) struct RemoteJob {
    pub(super) launcher: Launcher,
    pub(super) job: Job,
}

/// The trampoline that hands the proxy its control socket as it is.
pub(super) struct RunProxy;

impl Trampoline for RunProxy {
    type Function = fn(Control) -> i32;
    type Input = Control;
    type Output = i32;

    fn address(function: fn(Control) -> i32) -> usize {
        function as usize
    }

    fn run(function: fn(Control) -> i32, control: Control) -> i32 {
        function(control)
    }
}

/// The signals turned into in-band requests once the agent is there.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// How long a launcher may take to exit after the remote child's exit, or after its
/// stream closed, before it is killed.
const LAUNCHER_GRACE: Duration = Duration::from_secs(10);

/// The exit code of the far side's shell when the shipped copy is not there yet.
pub(super) const NOT_SHIPPED: i32 = 97;

/// How the remote run ended.
enum End {
    Exited(RemoteExit),
    /// Lost while the launcher may still run: it is killed at once.
    Lost(String),
    /// Lost as the stream closed: the launcher is exiting, with a status worth telling.
    Closed(String),
    Mismatch {
        host: String,
        theirs: Vec<u8>,
    },
    /// A forwarded signal arrived before the agent could take it: the proxy dies by it.
    Signaled(i32),
}

/// The proxy's body: never returns normally but by exiting as the remote child did.
pub(super) fn run(control: Control) -> i32 {
    let (mut read, socket) = control.into_parts();
    let job: RemoteJob = match read.recv_blocking(None) {
        Some(Ok(job)) => job,
        _ => return EXIT_FAILED,
    };
    let Ok(signals) = catch_signals() else {
        return EXIT_FAILED;
    };
    let mut proxy = Proxy {
        host: job.launcher.host(),
        launcher: job.launcher,
        parent: socket,
        to_parent: Vec::new(),
        frames: Vec::new(),
        signals,
        spawned: None,
        ended: None,
        heard: false,
    };
    let end = proxy.run(job.job);
    proxy.finish(end)
}

fn catch_signals() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for signal in FORWARDED {
        mask.add(signal);
    }
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

/// A launcher process.
struct Spawned {
    pidfd: OwnedFd,
    program: String,
}

struct Proxy {
    host: String,
    launcher: Launcher,
    parent: Arc<SocketFd>,
    /// Whole frames of the remote child's, waiting for the caller to read them.
    to_parent: Vec<u8>,
    /// Bytes of the remote child's stream not yet a whole frame.
    frames: Vec<u8>,
    signals: SignalFd,
    /// The launcher and our end of its stdio.
    spawned: Option<(Spawned, OwnedFd)>,
    /// A launcher already reaped: its status, if it exited by itself, and its name.
    ended: Option<(Option<ExitStatus>, String)>,
    /// Whether any byte came from the far side.
    heard: bool,
}

impl Proxy {
    fn run(&mut self, job: Job) -> End {
        let identity = cache_key();
        let deadline = Instant::now() + self.launcher.connect_limit();
        let argv = match self.launcher.agent_command(&identity) {
            Ok(argv) => argv,
            Err(err) => return End::Lost(err.to_string()),
        };
        let mut job = Some(job);
        if let Err(end) = self.launch(&argv) {
            return end;
        }
        let end = self.relay(&mut job, deadline);
        if !self.launcher.ships() || self.heard || !matches!(end, End::Closed(_)) {
            return end;
        }
        // Without a copy there, the far side says so by its exit code: ship, run again.
        let (spawned, stream) = self.spawned.take().expect("the launcher ran");
        drop(stream);
        let status = end_launcher(&spawned, LAUNCHER_GRACE);
        if status.and_then(|s| s.code()) != Some(NOT_SHIPPED) {
            self.ended = Some((status, spawned.program));
            return end;
        }
        if let Err(end) = self.ship(&identity, deadline) {
            return end;
        }
        if let Err(end) = self.launch(&argv) {
            return end;
        }
        self.relay(&mut job, deadline)
    }

    fn launch(&mut self, argv: &[std::ffi::OsString]) -> Result<(), End> {
        match start_launcher(argv, self.launcher.launcher_env(), None) {
            Ok((spawned, Some(stream))) => {
                self.spawned = Some((spawned, stream));
                Ok(())
            }
            Ok((_, None)) => unreachable!("a stream was asked for"),
            Err(err) => Err(End::Lost(err)),
        }
    }

    /// Copies this program to the far side unless it is there already.
    fn ship(&mut self, identity: &str, deadline: Instant) -> Result<(), End> {
        let argv = self
            .launcher
            .ship_command(identity)
            .map_err(|err| End::Lost(err.to_string()))?;
        let exe = File::open("/proc/self/exe").map_err(|err| End::Lost(err.to_string()))?;
        let (shipper, _) =
            start_launcher(&argv, self.launcher.launcher_env(), Some(exe)).map_err(End::Lost)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut watched = [
                Watched::read(shipper.pidfd.as_fd()),
                Watched::read(self.signals.as_fd()),
            ];
            let ready = poll_fds(&mut watched, Some(left)).unwrap_or_default();
            if let Ok(Some(status)) = sys::waitid_pidfd(shipper.pidfd.as_fd()) {
                return match status.success() {
                    true => Ok(()),
                    false => Err(End::Lost(format!(
                        "copying the program there failed: `{}` {}",
                        shipper.program,
                        describe(status)
                    ))),
                };
            }
            let signal = match ready.get(1) {
                Some(true) => self.take_signal(),
                _ => None,
            };
            if signal.is_some() || Instant::now() >= deadline {
                let _ = sys::pidfd_send_signal(shipper.pidfd.as_fd(), libc::SIGKILL);
                let _ = poll_fds(&mut [Watched::read(shipper.pidfd.as_fd())], None);
                let _ = sys::waitid_pidfd(shipper.pidfd.as_fd());
                return Err(match signal {
                    Some(signal) => End::Signaled(signal),
                    None => End::Lost(format!(
                        "copying the program there took longer than {:?}",
                        self.launcher.connect_limit()
                    )),
                });
            }
        }
    }

    fn take_signal(&mut self) -> Option<i32> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Some(info.ssi_signo as i32),
            _ => None,
        }
    }

    /// Talks with the agent until the remote child exits or the connection is lost.
    fn relay(&mut self, job: &mut Option<Job>, deadline: Instant) -> End {
        let heartbeat = self.launcher.heartbeat_interval();
        let silence = heartbeat * 4;
        let mut inbox = Inbox::expecting_greeting();
        let mut outbox = Outbox::default();
        let mut connected = false;
        let mut closed = false;
        let mut last_heard = Instant::now();
        let mut last_sent = Instant::now();
        loop {
            loop {
                let envelope = match inbox.next() {
                    Ok(Some(envelope)) => envelope,
                    Ok(None) => break,
                    Err(err) => return End::Lost(err),
                };
                match (envelope, connected) {
                    (Envelope::Hello(hello), false) => {
                        if hello.identity != identity::current() {
                            return End::Mismatch {
                                host: format!("{} (host {})", self.host, hello.host),
                                theirs: hello.identity,
                            };
                        }
                        connected = true;
                        if let Some(job) = job.take() {
                            outbox.push(&Envelope::Job(job));
                        }
                    }
                    (Envelope::Data(bytes), true) => {
                        if let Err(err) = self.take_frames(&bytes) {
                            return End::Lost(err);
                        }
                    }
                    (Envelope::Exit(exit), true) => return End::Exited(exit),
                    (Envelope::Heartbeat, true) => {}
                    (other, _) => {
                        return End::Lost(format!(
                            "the agent sent an unexpected {} message",
                            other.kind()
                        ));
                    }
                }
            }
            if closed {
                return End::Closed(match inbox.truncated() {
                    true => "the stream ended in the middle of a message".into(),
                    false => "the connection closed".into(),
                });
            }
            let (_, stream) = self.spawned.as_ref().expect("the launcher runs");
            if outbox.flush(stream.as_fd()).is_err() {
                // The far side is gone; what it sent last is still to be read.
                outbox = Outbox::default();
            }
            let _ = self.flush_to_parent();
            let now = Instant::now();
            if !connected && now >= deadline {
                return End::Lost(format!(
                    "no answer within {:?}",
                    self.launcher.connect_limit()
                ));
            }
            if connected && now.duration_since(last_heard) > silence {
                return End::Lost(format!(
                    "nothing heard for {:?} (the heartbeat is every {heartbeat:?})",
                    now.duration_since(last_heard)
                ));
            }
            if connected && now.duration_since(last_sent) >= heartbeat {
                outbox.push(&Envelope::Heartbeat);
                last_sent = now;
                continue;
            }
            let timeout = match connected {
                true => heartbeat,
                false => heartbeat.min(deadline.saturating_duration_since(now)),
            };
            let (_, stream) = self.spawned.as_ref().expect("the launcher runs");
            let mut stream_flags = nix::poll::PollFlags::POLLIN;
            if outbox.pending() {
                stream_flags |= nix::poll::PollFlags::POLLOUT;
            }
            let mut watched = vec![
                Watched::new(stream.as_fd(), stream_flags),
                Watched::read(self.signals.as_fd()),
            ];
            if !self.to_parent.is_empty() {
                watched.push(Watched::write(self.parent.fd()));
            }
            let ready = match poll_fds(&mut watched, Some(timeout)) {
                Ok(ready) => ready,
                Err(err) => return End::Lost(format!("waiting failed: {err}")),
            };
            if ready[0] {
                match inbox.fill(stream.as_fd()) {
                    Ok(Read::Drained) => last_heard = Instant::now(),
                    Ok(Read::Closed) => closed = true,
                    Err(err) => return End::Lost(format!("reading the stream failed: {err}")),
                }
                self.heard |= !inbox.untouched();
            }
            if ready[1] {
                if let Some(signal) = self.take_signal() {
                    match connected {
                        true => outbox.push(&Envelope::Signal(signal)),
                        false => return End::Signaled(signal),
                    }
                }
            }
        }
    }

    /// Adds the remote child's bytes, keeping whole frames for the caller.
    fn take_frames(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.frames.extend_from_slice(bytes);
        while self.frames.len() >= wire::HEADER_LEN {
            let header = wire::read_header(&self.frames, crate::DEFAULT_MAX_FRAME_LEN)
                .map_err(|err| format!("the child's stream: {err}"))?;
            if header.n_fds != 0 {
                return Err("the child's stream announces descriptors".into());
            }
            let whole = wire::HEADER_LEN + header.len;
            if self.frames.len() < whole {
                break;
            }
            self.to_parent.extend(self.frames.drain(..whole));
        }
        Ok(())
    }

    /// Writes what the caller takes now.
    fn flush_to_parent(&mut self) -> std::io::Result<()> {
        while !self.to_parent.is_empty() {
            match write_some(self.parent.fd(), &self.to_parent) {
                Ok((n, _)) => {
                    self.to_parent.drain(..n);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Ends the launcher, tells the caller what happened, and exits as the remote
    /// child did.
    fn finish(mut self, end: End) -> ! {
        let grace = match &end {
            End::Exited(_) | End::Closed(_) => LAUNCHER_GRACE,
            _ => Duration::ZERO,
        };
        let launcher_status = match self.spawned.take() {
            Some((spawned, stream)) => {
                // Closed first: a launcher (or a relay in it) may wait for its end.
                drop(stream);
                Some((end_launcher(&spawned, grace), spawned.program))
            }
            None => self.ended.take(),
        };
        let outcome = match end {
            End::Exited(exit) => {
                self.deliver(None);
                exit_like(exit)
            }
            End::Signaled(signal) => exit_like(RemoteExit::Signal(signal)),
            End::Lost(mut reason) | End::Closed(mut reason) => {
                if let Some((Some(status), program)) = launcher_status {
                    reason.push_str(&format!(" (`{program}` {})", describe(status)));
                }
                let host = self.host.clone();
                self.deliver(Some(&Outcome::<()>::ConnectionLost { host, reason }));
                EXIT_FAILED
            }
            End::Mismatch { host, theirs } => {
                let ours = identity::current().to_vec();
                self.deliver(Some(&Outcome::<()>::BuildMismatch { host, ours, theirs }));
                EXIT_FAILED
            }
        };
        std::process::exit(outcome)
    }

    /// Writes the frames still queued, then `last`, waiting for the caller to take them.
    fn deliver(&mut self, last: Option<&Outcome<()>>) {
        if let Some(outcome) = last {
            let mut frame = Vec::new();
            if wire::encode_frame(outcome, &mut frame, crate::DEFAULT_MAX_FRAME_LEN).is_ok() {
                self.to_parent.extend(frame);
            }
        }
        while !self.to_parent.is_empty() {
            if self.flush_to_parent().is_err() {
                return;
            }
            let _ = poll_fds(&mut [Watched::write(self.parent.fd())], None);
        }
    }
}

/// Starts a launcher command: with a socket as its stdin and stdout (returned), or
/// with `stdin` and no output.
fn start_launcher(
    argv: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    stdin: Option<File>,
) -> Result<(Spawned, Option<OwnedFd>), String> {
    let program = argv[0].to_string_lossy().into_owned();
    let fail = |err: std::io::Error| format!("cannot start `{program}`: {err}");
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)));
    let ours = match stdin {
        Some(file) => {
            command.stdin(file).stdout(Stdio::null());
            None
        }
        None => {
            let (ours, theirs) = sys::stream_socketpair().map_err(fail)?;
            let theirs_out = theirs.try_clone().map_err(fail)?;
            command.stdin(theirs).stdout(theirs_out);
            set_nonblocking(ours.as_fd()).map_err(fail)?;
            Some(ours)
        }
    };
    ChildSetup {
        die_with: Some(std::process::id()),
        ..ChildSetup::default()
    }
    .install(&mut command);
    // The proxy is single-threaded: the spawning thread lives as long as it does.
    let child = command.spawn().map_err(fail)?;
    let pid = child.id();
    let pidfd = match sys::pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(err) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            return Err(fail(err));
        }
    };
    // The socket's other end lives in the launcher only, so its exit closes the stream.
    drop(command);
    Ok((Spawned { pidfd, program }, ours))
}

/// Waits `grace` for the launcher to exit, then kills it; reaps it. Its status, if it
/// exited by itself.
fn end_launcher(spawned: &Spawned, grace: Duration) -> Option<ExitStatus> {
    let _ = poll_fds(&mut [Watched::read(spawned.pidfd.as_fd())], Some(grace));
    if let Ok(Some(status)) = sys::waitid_pidfd(spawned.pidfd.as_fd()) {
        return Some(status);
    }
    let _ = sys::pidfd_send_signal(spawned.pidfd.as_fd(), libc::SIGKILL);
    let _ = poll_fds(&mut [Watched::read(spawned.pidfd.as_fd())], None);
    let _ = sys::waitid_pidfd(spawned.pidfd.as_fd());
    None
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

/// The name of this build's cached copy on other hosts.
fn cache_key() -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(identity::current());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The proxy's exit status for the remote child's: the same code, or death by the same
/// signal (without a core dump of the proxy).
fn exit_like(exit: RemoteExit) -> i32 {
    match exit {
        RemoteExit::Code(code) => code,
        RemoteExit::Signal(signal) => {
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            if let Ok(signal) = Signal::try_from(signal) {
                let default = nix::sys::signal::SigAction::new(
                    nix::sys::signal::SigHandler::SigDfl,
                    nix::sys::signal::SaFlags::empty(),
                    SigSet::empty(),
                );
                // SAFETY: installing the default action runs no code of ours.
                let _ = unsafe { nix::sys::signal::sigaction(signal, &default) };
                let mut only = SigSet::empty();
                only.add(signal);
                let _ = nix::sys::signal::raise(signal);
                let _ = only.thread_unblock();
            }
            // A signal whose default is not to end the process: say it the shell's way.
            128 + signal
        }
    }
}
