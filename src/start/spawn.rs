//! The parent side of the `exec` start method.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use serde::Serialize;

use super::child::{self, Entry};
use super::forkserver;
use super::identity;
use super::options::Options;
use super::protocol::{CHILD_ENV, Start};
use crate::error::{Error, Result};
use crate::exit::{self, ExitWatch};
use crate::ipc::{ReadHalf, SocketFd, WriteHalf};
use crate::sys;

/// A freshly started function child.
pub(crate) struct Spawned {
    pub(crate) watch: ExitWatch,
    pub(crate) control: ReadHalf,
}

/// Starts a child running the function `entry` names, with `arg`.
pub(crate) fn spawn_function<A: Serialize>(
    options: &Options,
    entry: io::Result<Entry>,
    arg: &A,
) -> Result<Spawned> {
    // The hook must be in the binary for the child to find its way; using it here keeps
    // the linker from dropping it.
    std::hint::black_box(&child::BOOTSTRAP_HOOK);
    exit::reap_orphans();
    let name = &options.resolved_name();
    let entry = entry.map_err(|source| Error::Spawn {
        program: name.to_string(),
        source,
    })?;
    let start = Start {
        identity: identity::current().to_vec(),
        entry,
        name: name.to_string(),
        die_with_parent: options.dies_with_parent(),
        own_group: options.kill_tree,
        parent_pid: std::process::id(),
        memory_limit: options.memory_limit,
    };
    let (mut control, mut write, mut child_end) = control_socket(&start, arg)?;
    options.check_current_dir()?;
    let forked = match options.use_forkserver()? {
        true => match forkserver::fork_child(&child_end) {
            Ok(forked) => Some(forked),
            Err(err) => {
                tracing::warn!(error = %err, "fork server unavailable; starting by exec");
                // A server that failed half-way may have forked a child holding the
                // old socket: it reads end of stream there and exits, and never runs
                // this call a second time.
                (control, write, child_end) = control_socket(&start, arg)?;
                None
            }
        },
        false => None,
    };
    let watch = if let Some((pid, pidfd)) = forked {
        drop(child_end);
        ExitWatch::from_pidfd(pid, pidfd)
    } else {
        let mut command = std::process::Command::new("/proc/self/exe");
        command.arg0(name);
        options.apply(&mut command);
        command.env(CHILD_ENV, "1").stdin(Stdio::from(child_end));
        // The bootstrap applies the memory limit and the parent-death signal itself.
        ChildSetup::default().install(&mut command);
        let child =
            spawn_command(command, options.dies_with_parent()).map_err(|source| Error::Spawn {
                program: name.to_string(),
                source,
            })?;
        watch_or_kill(child)?
    };
    tracing::debug!(pid = watch.pid(), name, "spawned function child");
    flush_in_background(write);
    Ok(Spawned {
        watch,
        control: ReadHalf::new(control),
    })
}

/// A new control socket for a function child: our end, its writer holding the start
/// message and the argument, and the child's end.
fn control_socket<A: Serialize>(
    start: &Start,
    arg: &A,
) -> Result<(std::sync::Arc<SocketFd>, WriteHalf, std::os::fd::OwnedFd)> {
    let (parent_end, child_end) = sys::stream_socketpair()?;
    let socket = SocketFd::new(parent_end)?;
    let mut write = WriteHalf::new(socket.clone());
    write.encode(start)?;
    write.encode(arg)?;
    Ok((socket, write, child_end))
}

/// What a child does between fork and exec, on top of what std does (stdio, working
/// directory, process group).
#[derive(Default)]
pub(crate) struct ChildSetup {
    /// `(source, target)`: descriptors to put in place for the program, and no others.
    pub(crate) inherit: Vec<(RawFd, RawFd)>,
    pub(crate) memory_limit: Option<u64>,
    /// `SIGKILL` when this process dies; the pid is ours, checked after arming.
    pub(crate) die_with: Option<u32>,
}

impl ChildSetup {
    /// Installs the setup on `command`. Every child starts with default signal
    /// dispositions and an empty mask, and with no descriptor above stdio but those in
    /// `inherit`.
    pub(crate) fn install(self, command: &mut std::process::Command) {
        let ChildSetup {
            inherit,
            memory_limit,
            die_with,
        } = self;
        let after_fork = move || -> io::Result<()> {
            sys::reset_signals();
            sys::cloexec_from(3)?;
            for (source, target) in &inherit {
                sys::dup2_inheritable(*source, *target)?;
            }
            if let Some(limit) = memory_limit {
                sys::set_address_space_limit(limit)?;
            }
            if let Some(parent) = die_with {
                sys::set_parent_death_signal(libc::SIGKILL)?;
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(io::Error::other("parent exited during spawn"));
                }
            }
            Ok(())
        };
        // SAFETY: the closure runs between fork and exec and calls only sigaction,
        // sigprocmask, close_range, getrlimit, fcntl, dup2, setrlimit, prctl and
        // getppid, all async-signal-safe; `inherit` was allocated before the fork and
        // is only read.
        unsafe {
            command.pre_exec(after_fork);
        }
    }
}

/// Spawns `command`; from the parent-death thread when the child must die with us, so that
/// its parent thread is one that never exits.
pub(crate) fn spawn_command(
    mut command: std::process::Command,
    die_with_parent: bool,
) -> io::Result<std::process::Child> {
    if die_with_parent {
        super::parent_death_thread::run(move || command.spawn())
    } else {
        command.spawn()
    }
}

/// Starts watching a just-spawned child; if that fails the child is killed and reaped
/// rather than left behind.
pub(crate) fn watch_or_kill(mut child: std::process::Child) -> Result<ExitWatch> {
    match ExitWatch::new(child.id()) {
        Ok(watch) => Ok(watch),
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::Io(err))
        }
    }
}

/// Sends what did not fit in the socket buffer from a task, so spawning never waits
/// for the child to read.
fn flush_in_background(mut write: WriteHalf) {
    if !matches!(write.flush_now(), Ok(false)) {
        // Sent, or the child is already gone: joining it will say why.
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let _ = futures::future::poll_fn(|cx| write.poll_flush(cx)).await;
            });
        }
        Err(_) => {
            let _ = write.flush_blocking();
        }
    }
}
