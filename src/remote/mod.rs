//! Children on other hosts: a [`Launcher`] runs this same program elsewhere as an agent
//! that starts the function child there, and a local proxy process stands for it.
//!
//! ```text
//! caller ── control socket ── proxy ── launcher (ssh, srun, ...) ── agent ── child
//!           (frames)                   (envelopes on stdio)          (control socket)
//! ```
//!
//! The proxy is an ordinary function child of the caller, so the [`Process`] handle
//! works unchanged: the frames the remote child writes reach the caller whole, and the
//! proxy exits the way the remote child did.
//!
//! [`Process`]: crate::Process

mod agent;
mod envelope;
mod launcher;
mod proxy;
mod wait;

pub use launcher::Launcher;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ipc::wire;
use crate::start::protocol::{Entry, Start};
use crate::start::{self, Options, Spawned, identity};

/// Starts a child on the far side of `launcher` running the function `entry` names,
/// with `arg`. `options` name the child; the returned proxy options are those its
/// handle must use.
pub(crate) fn spawn<A: Serialize>(
    launcher: &Launcher,
    options: &Options,
    entry: std::io::Result<Entry>,
    arg: &A,
) -> Result<(Spawned, Options)> {
    // The hook must be in the binary for the far side to become an agent.
    std::hint::black_box(&agent::AGENT_HOOK);
    launcher.check()?;
    let name = options.resolved_name();
    let entry = entry.map_err(|source| Error::Spawn {
        program: name.clone(),
        source,
    })?;
    let job = envelope::Job {
        frames: control_frames(options, &name, entry, arg)?,
        name: name.clone(),
        heartbeat_ms: launcher.heartbeat_interval().as_millis() as u64,
        kill_tree: options.kill_tree,
        env_clear: options.env_clear,
        env: options.env.clone(),
        current_dir: options.current_dir.clone(),
    };
    let proxy_options = Options {
        name: Some(name),
        kill_on_drop: options.kill_on_drop,
        die_with_parent: options.die_with_parent,
        start_method: options.start_method,
        panic_output: options.panic_output,
        ..Options::default()
    };
    let entry = Entry::new::<proxy::RunProxy>(proxy::run);
    let remote = proxy::RemoteJob {
        launcher: launcher.clone(),
        job,
    };
    let spawned = start::spawn_function(&proxy_options, entry, &remote)?;
    // What the remote child died of under a memory limit is interpreted as locally.
    let handle_options = Options {
        memory_limit: options.memory_limit,
        ..proxy_options
    };
    Ok((spawned, handle_options))
}

/// The envelope reader on `data` arriving in small pieces, as the proxy reads the
/// agent (after its greeting) and as the agent reads the proxy.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_envelopes(data: &[u8]) {
    for greeting in [true, false] {
        let mut inbox = match greeting {
            true => envelope::Inbox::expecting_greeting(),
            false => envelope::Inbox::plain(),
        };
        for piece in data.chunks(7) {
            inbox.feed(piece);
            while let Ok(Some(_)) = inbox.next() {}
        }
    }
}

/// The remote child's first two control frames: what to run, and the argument.
fn control_frames<A: Serialize>(
    options: &Options,
    name: &str,
    entry: Entry,
    arg: &A,
) -> Result<Vec<u8>> {
    let start = Start {
        identity: identity::current().to_vec(),
        entry,
        name: name.to_string(),
        // The agent arms the parent-death signal itself: it is the parent there.
        die_with_parent: false,
        own_group: options.kill_tree,
        parent_pid: 0,
        memory_limit: options.memory_limit,
        panic_output: options.panic_output,
    };
    let mut frames = Vec::new();
    wire::encode_frame(&start, &mut frames, crate::DEFAULT_MAX_FRAME_LEN)?;
    let fds = wire::encode_frame(arg, &mut frames, crate::DEFAULT_MAX_FRAME_LEN)?;
    if !fds.is_empty() {
        return Err(Error::Encode(
            "the argument carries descriptors (a pipe, queue, lock, ...), which cannot travel to another host"
                .into(),
        ));
    }
    Ok(frames)
}
