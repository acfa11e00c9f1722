//! Starting a function child, by the fork server or by exec.

use std::io;

use serde::Serialize;

use super::child;
use super::protocol::Entry;
use super::control::{Spawned, control_socket, flush_in_background, start_message};
use super::exec::spawn_by_exec;
use super::forkserver;
use super::options::Options;
use crate::error::{Error, Result};
use crate::exit::{self, ExitWatch};
use crate::ipc::ReadHalf;

/// Starts a child running the function `entry` names, with `arg`.
pub(crate) fn spawn_function<A: Serialize>(
    options: &Options,
    entry: io::Result<Entry>,
    arg: &A,
) -> Result<Spawned> {
    // The hook must be in the binary for the child to find its way; using it here keeps
    // the linker from dropping it.
    std::hint::black_box(&child::BOOTSTRAP_HOOK);
    crate::limits::raise_descriptor_limit();
    exit::reap_orphans();
    let name = &options.resolved_name();
    let entry = entry.map_err(|source| Error::Spawn {
        program: name.to_string(),
        source,
    })?;
    let start = start_message(options, name, entry);
    options.check_current_dir()?;
    let spawned = match options.use_forkserver()? {
        true => match spawn_by_fork(&start, arg)? {
            Some(spawned) => spawned,
            None => spawn_by_exec(options, &start, arg)?,
        },
        false => spawn_by_exec(options, &start, arg)?,
    };
    tracing::debug!(pid = spawned.watch.pid(), name, "spawned function child");
    Ok(spawned)
}

/// Starts a child through the fork server; `None` if the server is unavailable.
fn spawn_by_fork<A: Serialize>(start: &super::protocol::Start, arg: &A) -> Result<Option<Spawned>> {
    let (control, write, child_end) = control_socket(start, arg)?;
    match forkserver::fork_child(&child_end, &start.name) {
        Ok((pid, pidfd)) => {
            drop(child_end);
            flush_in_background(write);
            Ok(Some(Spawned {
                watch: ExitWatch::from_pidfd(pid, pidfd),
                control: ReadHalf::new(control),
            }))
        }
        // Children without the preloads' work done would be a silent difference.
        Err(err @ Error::Bootstrap(_)) => Err(err),
        Err(err) => {
            tracing::warn!(error = %err, "fork server unavailable; starting by exec");
            // A server that failed half-way may have forked a child holding this
            // socket: it reads end of stream there and exits, and never runs this call
            // a second time, as the exec that follows gets a socket of its own.
            Ok(None)
        }
    }
}
