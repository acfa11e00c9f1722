//! Pool workers started through launchers ([`PoolBuilder::launcher`],
//! [`PoolBuilder::hosts`]): each is a remote function child that joins the pool's
//! listener, and a supervisor task per worker starts it again, with backoff, whenever
//! it ends while the pool still wants it.
//!
//! [`PoolBuilder::launcher`]: crate::PoolBuilder::launcher
//! [`PoolBuilder::hosts`]: crate::PoolBuilder::hosts

use std::sync::Weak;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::core::Core;
use crate::net::{Address, AuthKey};
use crate::{Launcher, Process};

/// Where a launched worker finds its pool.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Ticket {
    pub(crate) address: String,
    #[serde(with = "serde_bytes")]
    pub(crate) key: Vec<u8>,
}

/// The first wait before launching a worker again, and the most it grows to. A worker
/// that lived longer than `STEADY` starts the backoff afresh.
const RELAUNCH_FIRST: Duration = Duration::from_millis(100);
const RELAUNCH_MAX: Duration = Duration::from_secs(10);
const STEADY: Duration = Duration::from_secs(30);

/// The far side of a launcher: joins the pool and works for it until told to exit.
fn launched_worker(ticket: Ticket) -> Result<(), String> {
    let address: Address = ticket
        .address
        .parse()
        .map_err(|e| format!("the pool's address {:?}: {e}", ticket.address))?;
    super::join::join_with(address, AuthKey::from(ticket.key))
}

/// Keeps one worker launched through `launcher` for as long as the pool is open.
pub(crate) async fn supervise(core: Weak<Core>, launcher: Launcher, ticket: Ticket, name: String) {
    let mut backoff = RELAUNCH_FIRST;
    loop {
        match core.upgrade() {
            Some(core) if !core.closing() => {}
            _ => return,
        }
        let started = Instant::now();
        let spawned = Process::builder()
            .launcher(launcher.clone())
            .name(name.clone())
            .kill_on_drop(true)
            .spawn(launched_worker, ticket.clone());
        let failure = match spawned {
            Ok(mut process) => match process.join().await {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why),
                Err(err) => Some(err.to_string()),
            },
            Err(err) => Some(err.to_string()),
        };
        if let Some(why) = &failure {
            tracing::warn!(worker = name, why, "a launched pool worker ended");
            if let Some(core) = core.upgrade() {
                core.launch_failed(why.clone());
            }
        }
        backoff = if started.elapsed() >= STEADY {
            RELAUNCH_FIRST
        } else {
            (backoff * 2).min(RELAUNCH_MAX)
        };
        tokio::time::sleep(backoff).await;
    }
}
