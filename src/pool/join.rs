//! Workers that join a pool by themselves: a process of this same program, started by
//! anything (a batch script, a container orchestrator, a shell), finds the pool's
//! address and key file in its environment, connects, proves the key, compares build
//! identities with the pool, and then runs as an ordinary worker over the connection.
//!
//! The process becomes a worker before `main`: a hook in `.init_array` (as for function
//! children) recognises the variables, so the program's own `main` never runs there.

use std::ffi::OsString;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::claim::Claims;
use super::core::Core;
use super::protocol::{CallEntry, StartArg};
use super::stateful::Worker;
use super::worker::{PlainStart, StatefulStart, plain_worker, stateful_worker};
use crate::error::{Error, Result};
use crate::ipc::Connection;
use crate::net::{Address, AuthKey, Client};
use crate::start::entry::{Named, Trampoline};
use crate::start::identity;

/// The variable naming the pool's address (`host:port`, or a Unix socket path).
pub(crate) const ADDRESS_ENV: &str = "MULTIPROCESS_POOL_ADDRESS";
/// The variable naming the file that holds the pool's key.
pub(crate) const KEY_FILE_ENV: &str = "MULTIPROCESS_POOL_KEY_FILE";

/// Exit code of a worker that could not join (no key, refused, a different build).
pub(crate) const EXIT_REFUSED: i32 = 78;
/// Exit code of a worker whose connection to the pool ended without being told to exit.
pub(crate) const EXIT_LOST: i32 = 79;

/// How long the pool waits for a connected worker to introduce itself.
const INTRODUCTION_LIMIT: Duration = Duration::from_secs(10);

/// A joining worker's introduction.
#[derive(Serialize, Deserialize)]
pub(crate) struct Introduction {
    #[serde(with = "serde_bytes")]
    identity: Vec<u8>,
    pid: u32,
    host: String,
}

/// The pool's answer: its own identity, and why it refuses the worker, if it does.
#[derive(Serialize, Deserialize)]
pub(crate) struct Verdict {
    #[serde(with = "serde_bytes")]
    identity: Vec<u8>,
    refused: Option<String>,
}

/// What a joined worker runs.
#[derive(Serialize, Deserialize)]
pub(crate) enum WorkerKind {
    Plain(Option<(CallEntry, StartArg)>),
    Stateful(Named<StatefulStart, ()>, StartArg),
}

/// Makes what a joining worker is to run (each gets its own copy of start arguments).
pub(crate) type JoinKind = Box<dyn Fn() -> Result<WorkerKind> + Send + Sync>;

/// A start argument holding descriptors cannot cross a network connection.
fn streamable(arg: StartArg) -> Result<StartArg> {
    if arg.fds.is_empty() {
        Ok(arg)
    } else {
        Err(Error::Encode(
            "the workers' start argument holds descriptors, which cannot cross a network \
             connection"
                .into(),
        ))
    }
}

/// What joined workers of a plain pool run.
pub(crate) fn plain_kind(init: Option<(CallEntry, Arc<StartArg>)>) -> JoinKind {
    Box::new(move || {
        let init = match &init {
            Some((entry, arg)) => Some((*entry, streamable(arg.duplicate()?)?)),
            None => None,
        };
        Ok(WorkerKind::Plain(init))
    })
}

/// What joined workers of a stateful pool of `W` run.
pub(crate) fn stateful_kind<W: Worker>(init: StartArg) -> Result<JoinKind> {
    let entry = Named::new::<RunStateful>(run_stateful::<W>).map_err(|source| Error::Spawn {
        program: "pool worker".into(),
        source,
    })?;
    Ok(Box::new(move || {
        Ok(WorkerKind::Stateful(entry, streamable(init.duplicate()?)?))
    }))
}

/// The trampoline naming a stateful worker's main loop for a joined worker.
struct RunStateful(PhantomData<()>);

impl Trampoline for RunStateful {
    type Function = fn(StatefulStart);
    type Input = StatefulStart;
    type Output = ();

    fn address(function: fn(StatefulStart)) -> usize {
        function as usize
    }

    fn run(function: fn(StatefulStart), start: StatefulStart) {
        function(start)
    }
}

fn run_stateful<W: Worker>(start: StatefulStart) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(stateful_worker::<W>(start)),
        Err(err) => eprintln!("multiprocess: a pool worker could not build its runtime: {err}"),
    }
}

/// The pool's side of a joining worker: the introduction, the identity check, the
/// verdict, what to run; then the worker is the pool's.
pub(crate) async fn admit(core: Arc<Core>, mut conn: Connection<Verdict, Introduction>) {
    let introduction = match conn.recv_timeout(INTRODUCTION_LIMIT).await {
        Ok(introduction) => introduction,
        Err(err) => {
            tracing::warn!(error = %err, "a worker that connected did not introduce itself");
            core.refused_join();
            return;
        }
    };
    let Introduction {
        identity: theirs,
        pid,
        host,
    } = introduction;
    let ours = identity::current();
    let kind = if theirs == ours {
        core.join_kind()
    } else {
        Err(Error::Bootstrap(format!(
            "worker {pid} on {host} is a different build ({}) of the program than the pool ({})",
            describe(&theirs),
            describe(ours)
        )))
    };
    let refused = kind.as_ref().err().map(ToString::to_string);
    let verdict = Verdict {
        identity: ours.to_vec(),
        refused: refused.clone(),
    };
    let sent = conn.send(verdict).await;
    let kind = match (kind, sent) {
        (Ok(kind), Ok(())) => kind,
        (Err(_), _) | (_, Err(_)) => {
            let why = refused.unwrap_or_else(|| "it hung up".into());
            tracing::warn!(pid, host, why, "refused a pool worker");
            core.refused_join();
            return;
        }
    };
    let mut conn = conn.retype::<WorkerKind, ()>();
    if let Err(err) = conn.send(kind).await {
        tracing::warn!(pid, host, error = %err, "a joining pool worker hung up");
        return;
    }
    core.adopt(conn.retype(), pid);
}

/// A build identity as text: the build id in hex, or the file's identity as it is.
fn describe(identity: &[u8]) -> String {
    match identity.strip_prefix(b"build-id:") {
        Some(id) => {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            format!("build-id {hex}")
        }
        None => String::from_utf8_lossy(identity).into_owned(),
    }
}

#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()`s that the loader calls once
// at start-up; this entry is exactly such a function and is sound to run then (it uses
// only std facilities that need no runtime set-up).
#[unsafe(link_section = ".init_array")]
pub(crate) static JOIN_HOOK: extern "C" fn() = join_hook;

extern "C" fn join_hook() {
    let Some(address) = std::env::var_os(ADDRESS_ENV) else {
        return;
    };
    let key_file = std::env::var_os(KEY_FILE_ENV);
    // SAFETY: this runs from `.init_array`, before `main`, while the process has a
    // single thread, so nothing can read the environment concurrently.
    unsafe {
        std::env::remove_var(ADDRESS_ENV);
        std::env::remove_var(KEY_FILE_ENV);
    }
    let code = std::panic::catch_unwind(|| join_main(address, key_file)).unwrap_or(EXIT_REFUSED);
    std::process::exit(code);
}

fn join_main(address: OsString, key_file: Option<OsString>) -> i32 {
    crate::sys::ignore_sigpipe();
    match join(address, key_file) {
        Ok(()) => 0,
        Err(why) => {
            eprintln!("multiprocess: this process could not join its pool: {why}");
            EXIT_REFUSED
        }
    }
}

fn join(address: OsString, key_file: Option<OsString>) -> std::result::Result<(), String> {
    let address = address
        .to_str()
        .ok_or_else(|| format!("{ADDRESS_ENV} is not UTF-8"))?;
    let address: Address = address
        .parse()
        .map_err(|e| format!("{ADDRESS_ENV}={address:?}: {e}"))?;
    let key_file = key_file.ok_or_else(|| format!("{KEY_FILE_ENV} is not set"))?;
    let key = std::fs::read(&key_file)
        .map_err(|e| format!("reading the key file {}: {e}", key_file.to_string_lossy()))?;
    let key = key.trim_ascii();
    if key.is_empty() {
        return Err(format!(
            "the key file {} is empty",
            key_file.to_string_lossy()
        ));
    }
    join_with(address, AuthKey::from(key))
}

/// Joins the pool at `address` with `key`, then works for it until told to exit.
pub(crate) fn join_with(address: Address, key: AuthKey) -> std::result::Result<(), String> {
    let mut conn = Client::new(address.clone(), key)
        .connect_blocking::<Introduction, Verdict>()
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let introduction = Introduction {
        identity: identity::current().to_vec(),
        pid: std::process::id(),
        host: hostname(),
    };
    conn.send_blocking(introduction)
        .map_err(|e| format!("introducing itself to {address}: {e}"))?;
    let verdict = conn
        .recv_blocking()
        .map_err(|e| format!("waiting for the pool at {address}: {e}"))?;
    if let Some(why) = verdict.refused {
        return Err(format!("the pool at {address} refused it: {why}"));
    }
    if verdict.identity != identity::current() {
        return Err(format!(
            "the pool at {address} is a different build ({}) of the program than this worker ({})",
            describe(&verdict.identity),
            describe(identity::current())
        ));
    }
    let mut conn = conn.retype::<(), WorkerKind>();
    let kind = conn
        .recv_blocking()
        .map_err(|e| format!("waiting for the pool at {address}: {e}"))?;
    let conn = conn.retype();
    match kind {
        WorkerKind::Plain(init) => plain_worker(PlainStart {
            conn,
            init,
            claims: Claims::Messages,
        }),
        WorkerKind::Stateful(entry, init) => entry.call(StatefulStart {
            conn,
            init,
            claims: Claims::Messages,
        }),
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "an unnamed host".into())
}
