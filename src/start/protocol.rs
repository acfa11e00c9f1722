//! The messages on a function child's control socket.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::entry::Named;
use super::panic::{Panic, PanicOutput};
use crate::error::Error;
use crate::ipc::{ReadHalf, SocketFd, WriteHalf};

/// A function named for a child: called with the control socket, gives the exit code.
pub(crate) type Entry = Named<Control, i32>;

/// The child's end of the control socket, and what the start message said about panics.
pub(crate) struct Control {
    pub(super) read: ReadHalf,
    pub(super) write: WriteHalf,
    pub(super) socket: Arc<SocketFd>,
    pub(super) name: String,
    pub(super) panic_output: PanicOutput,
}

impl Control {
    /// The reading half and the socket, for a child that speaks on it in its own way.
    pub(crate) fn into_parts(self) -> (ReadHalf, Arc<SocketFd>) {
        (self.read, self.socket)
    }
}

/// Parent to child, first frame: what to run. The argument follows as the second frame.
#[derive(Serialize, Deserialize)]
pub(crate) struct Start {
    pub(crate) identity: Vec<u8>,
    /// The function to run, with the trampoline that runs it.
    pub(crate) entry: Entry,
    pub(crate) name: String,
    pub(crate) die_with_parent: bool,
    /// Lead a new process group before running anything.
    pub(crate) own_group: bool,
    pub(crate) parent_pid: u32,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) panic_output: PanicOutput,
}

/// Child to parent, the only frame: how the function ended.
///
/// Variants other than `Returned` do not mention `R`, and postcard encodes an enum as its
/// variant index then the fields, so a child that cannot know `R` (it refuses to start)
/// can send `Outcome::<()>::Refused` and the parent decodes it as any `Outcome<R>`.
#[derive(Serialize, Deserialize)]
pub(crate) enum Outcome<R> {
    Returned(R),
    Panicked(Panic),
    ArgumentUndecodable(String),
    ResultUnencodable(String),
    Refused(String),
    /// From the stand-in of a child on another host.
    ConnectionLost {
        host: String,
        reason: String,
    },
    /// From the stand-in of a child on another host.
    BuildMismatch {
        host: String,
        ours: Vec<u8>,
        theirs: Vec<u8>,
    },
    /// A fork-server child, set up as the start message asked (named, in its directory,
    /// group and limits), is about to run the function. Sent before the outcome, and
    /// only by fork-server children: the spawn returns once it has arrived.
    Started,
}

impl Outcome<()> {
    /// This outcome, which is no result, as an outcome of any result type.
    pub(crate) fn without_result<R>(self) -> Outcome<R> {
        match self {
            Outcome::Panicked(panic) => Outcome::Panicked(panic),
            Outcome::ArgumentUndecodable(msg) => Outcome::ArgumentUndecodable(msg),
            Outcome::ResultUnencodable(msg) => Outcome::ResultUnencodable(msg),
            Outcome::Refused(msg) => Outcome::Refused(msg),
            Outcome::ConnectionLost { host, reason } => Outcome::ConnectionLost { host, reason },
            Outcome::BuildMismatch { host, ours, theirs } => {
                Outcome::BuildMismatch { host, ours, theirs }
            }
            Outcome::Returned(()) | Outcome::Started => {
                Outcome::Refused("the child reported out of order".into())
            }
        }
    }
}

/// Parent to a parked fork-server child, before the start message: what the spawn
/// decides that the child could not know when it was forked.
#[derive(Serialize, Deserialize)]
pub(crate) struct Activate {
    /// The working directory to enter: the spawning process's at the time of the spawn,
    /// or the one the builder named.
    pub(crate) cwd: crate::ipc::PassFd,
}

impl<R> Outcome<R> {
    pub(crate) fn into_result(self) -> Result<R, Error> {
        match self {
            Outcome::Returned(value) => Ok(value),
            Outcome::Panicked(panic) => Err(panic.into()),
            Outcome::ArgumentUndecodable(msg) => Err(Error::Decode(format!("in the child: {msg}"))),
            Outcome::ResultUnencodable(msg) => Err(Error::Encode(format!("in the child: {msg}"))),
            Outcome::Refused(msg) => Err(Error::Bootstrap(msg)),
            Outcome::ConnectionLost { host, reason } => Err(Error::ConnectionLost { host, reason }),
            Outcome::BuildMismatch { host, ours, theirs } => Err(Error::BuildMismatch {
                host,
                ours: show_identity(&ours),
                theirs: show_identity(&theirs),
            }),
            Outcome::Started => Err(Error::Bootstrap(
                "the child reported its start twice".into(),
            )),
        }
    }
}

/// The environment variable that tells a re-executed binary it is a function child.
pub(crate) const CHILD_ENV: &str = "__MULTIPROCESS_CHILD";

/// Exit codes of a function child, for the cases the control socket already explains.
pub(crate) const EXIT_PANICKED: i32 = 101;
pub(crate) const EXIT_FAILED: i32 = 2;

/// A build identity for people: `build-id:` and hex digits, or the file's description.
fn show_identity(identity: &[u8]) -> String {
    match identity.strip_prefix(b"build-id:") {
        Some(id) => {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            format!("build-id:{hex}")
        }
        None if identity.is_empty() => "unknown".into(),
        None => String::from_utf8_lossy(identity).into_owned(),
    }
}
