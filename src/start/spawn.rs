//! Starting a function child, by the fork server or by exec.

use std::io;

use serde::Serialize;

use super::child;
use super::control::{Spawned, start_message};
use super::exec::spawn_by_exec;
use super::options::Options;
use super::protocol::Entry;
use super::warm;
use crate::error::{Error, Result};
use crate::exit;

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
        true => match warm::spawn(options, &start, arg)? {
            Some(spawned) => spawned,
            None => spawn_by_exec(options, &start, arg)?,
        },
        false => spawn_by_exec(options, &start, arg)?,
    };
    tracing::debug!(pid = spawned.watch.pid(), name, "spawned function child");
    Ok(spawned)
}
