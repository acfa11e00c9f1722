//! The far side: this program started by a launcher with the agent's arguments.
//!
//! Its hook runs from `.init_array`, before `main`, like the function child's bootstrap.
//! It moves its standard output aside (whatever the function prints goes to standard
//! error instead, so it cannot corrupt the stream), greets the proxy with its build
//! identity, receives the job, starts the function child on this host the usual way
//! (this program executed again, a control socket on its stdin), and relays: the
//! child's control stream goes out in data envelopes, signal requests come in, and the
//! child's exit status is the last envelope. A closed or silent stream makes it kill the
//! child and exit, so nothing outlives the connection.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::envelope::{
    DATA_CHUNK, Envelope, GREETING, Hello, Inbox, Job, Outbox, Read, RemoteExit, set_nonblocking,
};
use super::wait::{Watched, poll_fds};
use crate::start::{ChildSetup, identity, protocol::CHILD_ENV};
use crate::sys;

/// The argument that makes this program an agent.
pub(crate) const MARKER: &str = "__multiprocess_agent__";

/// How long the agent waits for (the next bytes of) its job before giving up.
const JOB_LIMIT: Duration = Duration::from_secs(120);

/// The heartbeat until the job has arrived, when the agent does not know the proxy's
/// yet: the job follows the greeting at once, so this lasts as long as its transfer,
/// and is short enough for the shortest heartbeat a launcher can have.
const FIRST_HEARTBEAT: Duration = Duration::from_millis(10);

/// Exit codes of the agent itself; the proxy reads the envelope, not these.
const EXIT_LOST: i32 = 3;
const EXIT_REFUSED: i32 = 4;

#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()`s that the loader calls once
// at start-up; this entry is exactly such a function and is sound to run then (it uses
// only std facilities that need no runtime set-up).
#[unsafe(link_section = ".init_array")]
pub(crate) static AGENT_HOOK: extern "C" fn() = agent_hook;

extern "C" fn agent_hook() {
    if !invoked_as_agent() {
        return;
    }
    let code = std::panic::catch_unwind(agent_main).unwrap_or(EXIT_REFUSED);
    std::process::exit(code);
}

/// Whether the arguments are exactly the agent's marker (read from `/proc`, since the
/// environment does not cross ssh).
fn invoked_as_agent() -> bool {
    let Ok(cmdline) = std::fs::read("/proc/self/cmdline") else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let _program = args.next();
    args.next() == Some(MARKER.as_bytes()) && matches!(args.next(), None | Some(b""))
}

/// The agent's two ends of the stream: its former stdin and stdout. They stay in
/// blocking mode, as their open file descriptions may be shared with processes of the
/// launcher (a relay reading the same socket, a shell): the agent reads and writes them
/// only when `poll` says it can, once per wakeup (see `envelope`).
struct Stream {
    input: OwnedFd,
    output: OwnedFd,
}

fn take_stdio() -> std::io::Result<Stream> {
    let input = sys::dup_cloexec(std::io::stdin().as_fd(), 3)?;
    let output = sys::dup_cloexec(std::io::stdout().as_fd(), 3)?;
    sys::stdin_from_dev_null()?;
    // Prints (ours, a library's, the function's) go to standard error from now on.
    sys::dup2_inheritable(2, 1)?;
    Ok(Stream { input, output })
}

fn agent_main() -> i32 {
    sys::ignore_sigpipe();
    let Ok(stream) = take_stdio() else {
        return EXIT_REFUSED;
    };
    let mut link = Link::new(stream, JOB_LIMIT);
    link.outbox.push_raw(GREETING);
    link.outbox.push(&Envelope::Hello(Hello {
        identity: identity::current().to_vec(),
        host: hostname(),
        pid: std::process::id(),
    }));
    let Some(job) = link.wait_for_job() else {
        return EXIT_LOST;
    };
    link.silence_limit = job.heartbeat_interval() * 4;
    link.heartbeat = job.heartbeat_interval();
    let child = match Child::start(&job) {
        Ok(child) => child,
        Err(err) => {
            eprintln!("multiprocess agent: cannot start the child: {err}");
            link.outbox
                .push(&Envelope::Exit(RemoteExit::Code(EXIT_REFUSED)));
            link.flush_before(Instant::now() + link.silence_limit);
            return EXIT_REFUSED;
        }
    };
    link.relay(child)
}

impl Job {
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.clamp(10, 3_600_000))
    }
}

/// This host's name, for messages.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

/// The function child on this host.
struct Child {
    pidfd: OwnedFd,
    pid: u32,
    control: Option<OwnedFd>,
    to_child: Outbox,
    kill_tree: bool,
}

impl Child {
    fn start(job: &Job) -> std::io::Result<Child> {
        let (ours, theirs) = sys::stream_socketpair()?;
        let mut command = std::process::Command::new("/proc/self/exe");
        command.arg0(&job.name);
        if job.env_clear {
            command.env_clear();
        }
        for (key, value) in &job.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &job.current_dir {
            command.current_dir(dir);
        }
        command
            .env(CHILD_ENV, "1")
            .stdin(std::process::Stdio::from(theirs));
        command.stdout(std::process::Stdio::from(sys::dup_cloexec(
            std::io::stderr().as_fd(),
            3,
        )?));
        ChildSetup {
            die_with: Some(std::process::id()),
            ..ChildSetup::default()
        }
        .install(&mut command);
        // The agent is single-threaded: the spawning thread lives as long as it does.
        let spawned = command.spawn()?;
        let pid = spawned.id();
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(err) => {
                let _ = sys::kill(pid, libc::SIGKILL);
                return Err(err);
            }
        };
        set_nonblocking(ours.as_fd())?;
        let mut to_child = Outbox::default();
        to_child.push_raw(&job.frames);
        Ok(Child {
            pidfd,
            pid,
            control: Some(ours),
            to_child,
            kill_tree: job.kill_tree,
        })
    }

    fn signal(&self, signal: i32) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), signal);
    }

    /// Kills the child (and its group, if it leads one) and reaps it.
    fn kill_and_reap(self) {
        self.signal(libc::SIGKILL);
        if self.kill_tree {
            let _ = sys::kill_process_group(self.pid, libc::SIGKILL);
        }
        let _ = poll_fds(&mut [Watched::read(self.pidfd.as_fd())], None);
        let _ = sys::waitid_pidfd(self.pidfd.as_fd());
    }

    /// Reads what the child wrote so far into data envelopes; false at end of stream.
    fn read_control(&mut self, outbox: &mut Outbox) -> bool {
        let Some(control) = &self.control else {
            return false;
        };
        let mut chunk = vec![0u8; DATA_CHUNK];
        loop {
            match nix::unistd::read(control.as_fd(), &mut chunk) {
                Ok(0) => {
                    self.control = None;
                    return false;
                }
                Ok(n) => outbox.push(&Envelope::Data(chunk[..n].to_vec())),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => {
                    self.control = None;
                    return false;
                }
            }
        }
    }
}

/// The agent's side of the stream.
struct Link {
    stream: Stream,
    inbox: Inbox,
    outbox: Outbox,
    last_heard: Instant,
    last_sent: Instant,
    silence_limit: Duration,
    heartbeat: Duration,
}

impl Link {
    fn new(stream: Stream, silence_limit: Duration) -> Link {
        Link {
            stream,
            inbox: Inbox::plain(),
            outbox: Outbox::default(),
            last_heard: Instant::now(),
            last_sent: Instant::now(),
            silence_limit,
            heartbeat: FIRST_HEARTBEAT,
        }
    }

    /// Sends the greeting and waits for the job; `None` if the stream ended or broke.
    fn wait_for_job(&mut self) -> Option<Job> {
        loop {
            if let Some(envelope) = self.step(None).ok()? {
                return match envelope {
                    Envelope::Job(job) => Some(job),
                    _ => None,
                };
            }
        }
    }

    /// One round: writes what it can, waits for input (or the child), and returns the
    /// next envelope that came in. `Err` when the stream is over.
    fn step(&mut self, child: Option<&Child>) -> Result<Option<Envelope>, ()> {
        if let Some(envelope) = self.inbox.next().map_err(drop)? {
            return Ok(Some(envelope));
        }
        if self.outbox.flush(self.stream.output.as_fd()).is_err() {
            return Err(());
        }
        let now = Instant::now();
        if now.duration_since(self.last_heard) > self.silence_limit {
            return Err(());
        }
        if now.duration_since(self.last_sent) >= self.heartbeat {
            self.outbox.push(&Envelope::Heartbeat);
            self.last_sent = now;
        }
        let timeout = self.heartbeat.min(self.silence_limit);
        let mut watched = vec![Watched::read(self.stream.input.as_fd())];
        if self.outbox.pending() {
            watched.push(Watched::write(self.stream.output.as_fd()));
        }
        let child_fds = child.map(|c| c.watched());
        if let Some(fds) = &child_fds {
            watched.extend(fds.iter().copied());
        }
        let ready = poll_fds(&mut watched, Some(timeout)).map_err(drop)?;
        if ready[0] {
            match self.inbox.fill(self.stream.input.as_fd()) {
                Ok(Read::Drained) => self.last_heard = Instant::now(),
                Ok(Read::Closed) | Err(_) => return Err(()),
            }
        }
        Ok(None)
    }

    /// Relays until the child exits (0) or the stream is lost (the child is killed).
    fn relay(&mut self, mut child: Child) -> i32 {
        loop {
            if child.control.is_some() {
                child.read_control(&mut self.outbox);
            }
            if let Some(control) = &child.control {
                if child.to_child.flush(control.as_fd()).is_err() {
                    child.to_child = Outbox::default();
                }
            }
            if let Ok(Some(status)) = sys::waitid_pidfd(child.pidfd.as_fd()) {
                // Everything the child wrote is in the socket once it has exited.
                child.read_control(&mut self.outbox);
                self.outbox.push(&Envelope::Exit(remote_exit(status)));
                self.flush_before(Instant::now() + self.silence_limit);
                return 0;
            }
            match self.step(Some(&child)) {
                Ok(Some(Envelope::Signal(signal))) => child.signal(signal),
                Ok(Some(Envelope::Data(bytes))) => child.to_child.push_raw(&bytes),
                Ok(Some(Envelope::Heartbeat)) | Ok(None) => {}
                Ok(Some(_)) | Err(()) => {
                    child.kill_and_reap();
                    return EXIT_LOST;
                }
            }
        }
    }

    /// Writes what is queued, for as long as `deadline` allows.
    fn flush_before(&mut self, deadline: Instant) {
        while self.outbox.pending() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            let mut watched = [Watched::write(self.stream.output.as_fd())];
            if poll_fds(&mut watched, Some(left)).is_err()
                || self.outbox.flush(self.stream.output.as_fd()).is_err()
            {
                return;
            }
        }
    }
}

impl Child {
    /// What the relay waits on besides the stream: the control socket and the pidfd.
    fn watched(&self) -> Vec<Watched<'_>> {
        let mut watched = vec![Watched::read(self.pidfd.as_fd())];
        if let Some(control) = &self.control {
            let mut flags = PollFlags::POLLIN;
            if self.to_child.pending() {
                flags |= PollFlags::POLLOUT;
            }
            watched.push(Watched::new(control.as_fd(), flags));
        }
        watched
    }
}

fn remote_exit(status: ExitStatus) -> RemoteExit {
    match (status.code(), status.signal()) {
        (Some(code), _) => RemoteExit::Code(code),
        (None, Some(signal)) => RemoteExit::Signal(signal),
        (None, None) => RemoteExit::Code(EXIT_LOST),
    }
}
