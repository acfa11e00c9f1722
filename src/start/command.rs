//! Starting a program with std's `Command`, for an external program and for this one
//! re-executed: what the child does between fork and exec, from which thread it is
//! spawned, and watching its exit.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;

use super::parent_death_thread;
use crate::error::{Error, Result};
use crate::exit::ExitWatch;
use crate::sys;

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
    /// dispositions and an empty mask, with no descriptor above stdio but those in
    /// `inherit`, and with the soft descriptor limit this process started with (the
    /// crate raised its own, see `limits`).
    pub(crate) fn install(self, command: &mut std::process::Command) {
        let ChildSetup {
            inherit,
            memory_limit,
            die_with,
        } = self;
        // Read before the fork: the child only compares and sets.
        let raised = crate::limits::raised();
        let after_fork = move || -> io::Result<()> {
            sys::reset_signals();
            if let Some(raised) = raised {
                raised.restore_in_child()?;
            }
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
        // sigprocmask, getrlimit, setrlimit, close_range, fcntl, dup2, prctl and
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
        parent_death_thread::run(move || command.spawn())
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
