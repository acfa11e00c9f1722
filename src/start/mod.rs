//! How a child comes to life.
//!
//! The `exec` start method re-executes `/proc/self/exe`. The new image reaches our
//! bootstrap (see `child`) before `main`, learns over its control socket which function
//! to run, checks it is the same build as its parent, runs the function and reports.

mod child;
mod command;
mod control;
pub(crate) mod entry;
mod exec;
mod forkserver;
pub(crate) mod identity;
mod name;
mod options;
pub(crate) mod panic;
pub(crate) mod parent_death_thread;
mod preload;
pub(crate) mod protocol;
mod spawn;
mod warm;

pub(crate) use child::{RunAsync, RunSync, take_last_panic};
pub(crate) use command::{ChildSetup, spawn_command, watch_or_kill};
pub(crate) use control::Spawned;
pub(crate) use name::own_name;
pub(crate) use options::Options;
pub use options::StartMethod;
pub use panic::PanicOutput;
pub use preload::preload;
pub(crate) use protocol::Entry;
pub(crate) use spawn::spawn_function;
pub use warm::{ForkserverStats, forkserver_stats, set_max_parked};
