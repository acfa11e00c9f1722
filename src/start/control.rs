//! The parent's end of a function child's control socket: the start message and the
//! argument going out, the outcome coming back.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::Serialize;

use super::identity;
use super::options::Options;
use super::protocol::Entry;
use super::protocol::{Outcome, Start};
use crate::error::Result;
use crate::exit::ExitWatch;
use crate::ipc::{ReadHalf, SocketFd, WriteHalf};
use crate::sys;

/// A freshly started function child.
pub(crate) struct Spawned {
    pub(crate) watch: ExitWatch,
    pub(crate) control: ReadHalf,
    /// What a fork-server child reported instead of starting (it refused to).
    pub(crate) early: Option<Outcome<()>>,
}

/// What a child named `name` is told to run, and how.
pub(super) fn start_message(options: &Options, name: &str, entry: Entry) -> Start {
    Start {
        identity: identity::current().to_vec(),
        entry,
        name: name.to_string(),
        die_with_parent: options.dies_with_parent(),
        own_group: options.kill_tree,
        parent_pid: std::process::id(),
        memory_limit: options.memory_limit,
        panic_output: options.panic_output,
    }
}

/// A new control socket for a function child: our end, its writer holding the start
/// message and the argument, and the child's end.
pub(super) fn control_socket<A: Serialize>(
    start: &Start,
    arg: &A,
) -> Result<(Arc<SocketFd>, WriteHalf, OwnedFd)> {
    let (parent_end, child_end) = sys::stream_socketpair()?;
    let socket = SocketFd::new(parent_end)?;
    let mut write = WriteHalf::new(socket.clone());
    write.encode(start)?;
    write.encode(arg)?;
    Ok((socket, write, child_end))
}

/// Sends what did not fit in the socket buffer from a task, so spawning never waits
/// for the child to read.
pub(super) fn flush_in_background(mut write: WriteHalf) {
    if !matches!(write.flush_now(), Ok(false)) {
        // Sent, or the child is already gone: joining it will say why.
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let _ = std::future::poll_fn(|cx| write.poll_flush(cx)).await;
            });
        }
        Err(_) => {
            let _ = write.flush_blocking();
        }
    }
}
