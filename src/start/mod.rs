//! How a child comes to life.
//!
//! The `exec` start method re-executes `/proc/self/exe`. The new image reaches our
//! bootstrap (see `child`) before `main`, learns over its control socket which function
//! to run, checks it is the same build as its parent, runs the function and reports.

pub(crate) mod parent_death_thread;
mod child;
pub(crate) mod entry;
mod forkserver;
mod options;
pub(crate) mod identity;
pub(crate) mod protocol;
pub(crate) mod spawn;

pub use options::StartMethod;
pub(crate) use options::Options;
pub(crate) use child::{Entry, RunAsync, RunSync, take_last_panic};
pub(crate) use spawn::{Spawned, spawn_function};
