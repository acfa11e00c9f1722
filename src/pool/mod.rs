//! [`ProcessPool`]: long-lived worker processes for CPU-bound work awaited from async
//! code, that heal themselves whatever a task does to its worker.
//!
//! One module per job: `builder` (settings, starting workers), `process_pool` and
//! `stateful` (the two kinds of pool users hold), `handle` (a task as a future),
//! `map` (chunked streams of tasks), `state` (the pool's rules, as transitions over
//! plain data), `core` (the engine that feeds those rules events from real worker
//! processes), and the worker side: `worker`, `protocol`, `claim`.

mod builder;
mod claim;
mod core;
mod handle;
mod join;
mod launched;
mod map;
mod process_pool;
mod protocol;
mod state;
mod stateful;
mod stream_link;
mod worker;

pub use builder::PoolBuilder;
pub use handle::TaskHandle;
pub use process_pool::ProcessPool;
pub use state::{CancelRunning, PoolStats};
pub use stateful::{StatefulPool, Worker};

/// Decodes the pool's wire messages from arbitrary bytes (for fuzzing).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_decode(data: &[u8]) {
    let _ = crate::ipc::wire::decode_payload::<protocol::ToWorkerIn>(data, Vec::new());
    let _ = crate::ipc::wire::decode_payload::<protocol::FromWorker>(data, Vec::new());
}
