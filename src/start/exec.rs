//! The `exec` start method: this program executed again, reaching the child's bootstrap
//! (see `child`) before `main`.

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use serde::Serialize;

use super::command::{ChildSetup, spawn_command, watch_or_kill};
use super::control::{Spawned, control_socket, flush_in_background};
use super::options::Options;
use super::protocol::{CHILD_ENV, Start};
use crate::error::{Error, Result};
use crate::ipc::ReadHalf;

/// Starts a child by executing this program again, told to run `start` with `arg`.
pub(super) fn spawn_by_exec<A: Serialize>(
    options: &Options,
    start: &Start,
    arg: &A,
) -> Result<Spawned> {
    let (control, write, child_end) = control_socket(start, arg)?;
    let name = &start.name;
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
    let watch = watch_or_kill(child)?;
    flush_in_background(write);
    Ok(Spawned {
        watch,
        control: ReadHalf::new(control),
        early: None,
    })
}
