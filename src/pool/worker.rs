//! The worker side of a pool: a function child that runs jobs until its pool hangs up.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::claim::{ClaimBoard, Claims};
use super::protocol::{CallEntry, CallInput, CallOutput, Encoded, Failure, StartArg};
use super::protocol::{FromWorker, Hello, JobIn, JobKind, Reply, ToWorkerIn};
use super::stateful::Worker;
use super::stream_link::StreamWorker;
use crate::ipc::{Connection, PassFd, wire};
use crate::start::entry::Trampoline;
use crate::start::panic::{self, Panic};
use crate::start::take_last_panic;

/// How a plain pool's worker starts.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct PlainStart {
    pub(crate) conn: Connection<FromWorker, ToWorkerIn>,
    /// An initializer call and its argument, run once before any job.
    pub(crate) init: Option<(CallEntry, StartArg)>,
    pub(crate) claims: Claims,
}

fn panic_failure() -> Failure {
    Failure::Panicked(take_last_panic().unwrap_or_else(Panic::unrecorded))
}

/// Calls `f(arg)`, catching its panic; the frames below are left out of short
/// backtraces.
fn call_caught<A, R>(f: fn(A) -> R, arg: A) -> Result<R, Failure> {
    let run = || panic::__rust_begin_short_backtrace(|| f(arg));
    std::panic::catch_unwind(AssertUnwindSafe(run)).map_err(|_| panic_failure())
}

/// The trampoline that runs `f` on a decoded argument, turning a panic into a
/// [`Failure`].
pub(crate) struct CallOne<A, R>(PhantomData<fn(A) -> R>);

impl<A: DeserializeOwned, R: Serialize> Trampoline for CallOne<A, R> {
    type Function = fn(A) -> R;
    type Input = CallInput;
    type Output = CallOutput;

    fn address(function: fn(A) -> R) -> usize {
        function as usize
    }

    fn run(f: fn(A) -> R, (payload, fds): CallInput) -> CallOutput {
        let arg: A =
            wire::decode_payload(&payload, fds).map_err(|e| Failure::Decode(e.to_string()))?;
        let value = call_caught(f, arg)?;
        wire::encode_value(&value).map_err(|e| Failure::Encode(e.to_string()))
    }
}

/// The trampoline that runs `f` on each element of a chunk; each element fails or
/// succeeds on its own.
pub(crate) struct CallChunk<A, R>(PhantomData<fn(A) -> R>);

impl<A: DeserializeOwned, R: Serialize> Trampoline for CallChunk<A, R> {
    type Function = fn(A) -> R;
    type Input = CallInput;
    type Output = CallOutput;

    fn address(function: fn(A) -> R) -> usize {
        function as usize
    }

    fn run(f: fn(A) -> R, (payload, fds): CallInput) -> CallOutput {
        let args: Vec<A> =
            wire::decode_payload(&payload, fds).map_err(|e| Failure::Decode(e.to_string()))?;
        let results: Vec<Result<R, Failure>> =
            args.into_iter().map(|arg| call_caught(f, arg)).collect();
        wire::encode_value(&results).map_err(|e| Failure::Encode(e.to_string()))
    }
}

fn fds_of(fds: Vec<PassFd>) -> Vec<OwnedFd> {
    fds.into_iter().map(|PassFd(fd)| fd).collect()
}

fn run_call(kind: JobKind, payload: Vec<u8>, fds: Vec<OwnedFd>) -> CallOutput {
    match kind {
        JobKind::Call(entry) => entry.call((payload, fds)),
        JobKind::Handle => Err(Failure::Decode(
            "a plain worker got a stateful request".into(),
        )),
    }
}

/// Makes this worker the leader of a process group of its own, before any task runs, so
/// that the pool can kill whatever a task forked along with the worker.
fn lead_own_group() {
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
}

/// The main loop of a plain pool's worker.
pub(crate) fn plain_worker(start: PlainStart) {
    lead_own_group();
    let PlainStart {
        mut conn,
        init,
        claims,
    } = start;
    let hello = match init {
        Some((entry, arg)) => match entry.call((arg.bytes.into_vec(), arg.fds)) {
            Ok(_) => Hello::Ready,
            Err(failure) => Hello::InitFailed(crate::Error::from(failure).to_string()),
        },
        None => Hello::Ready,
    };
    let failed = matches!(hello, Hello::InitFailed(_));
    if conn.send_blocking(FromWorker::Hello(hello)).is_err() || failed {
        return;
    }
    match claims {
        Claims::Board(board) => plain_local(conn, board),
        Claims::Messages => plain_stream(conn),
    }
}

fn plain_local(mut conn: Connection<FromWorker, ToWorkerIn>, board: ClaimBoard) {
    // The pool hanging up (end of stream) is the normal way to stop.
    while let Ok(message) = conn.recv_blocking() {
        let JobIn(id, kind, payload, fds, claim) = match message {
            ToWorkerIn::Job(job) => job,
            ToWorkerIn::TakeBack(_) => continue, // The board answers those.
            ToWorkerIn::Exit => return,
        };
        if !board.start(claim) {
            continue; // Taken back for an idle worker.
        }
        let _span = tracing::debug_span!("task", id, worker = std::process::id()).entered();
        let reply = reply_of(id, run_call(kind, payload.into_vec(), fds_of(fds)));
        // Each answer goes out before the next job starts: should that job kill the
        // worker, every earlier answer has arrived and only that job fails.
        if conn.send_blocking(FromWorker::Reply(reply)).is_err() {
            return;
        }
    }
}

fn plain_stream(conn: Connection<FromWorker, ToWorkerIn>) {
    let Ok(link) = StreamWorker::start(conn) else {
        return;
    };
    while let Some(JobIn(id, kind, payload, fds, _)) = link.next_blocking() {
        let _span = tracing::debug_span!("task", id, worker = std::process::id()).entered();
        link.answer(reply_of(
            id,
            run_call(kind, payload.into_vec(), fds_of(fds)),
        ));
    }
    link.finish();
}

/// The answer to job `id`, carrying the descriptors its result holds.
fn reply_of(id: u64, result: Result<Encoded, Failure>) -> Reply {
    let (result, fds) = match result {
        Ok((bytes, fds)) => (Ok(serde_bytes::ByteBuf::from(bytes)), fds),
        Err(failure) => (Err(failure), Vec::new()),
    };
    Reply {
        id,
        result,
        fds: fds.into_iter().map(PassFd).collect(),
    }
}

/// How a stateful pool's worker starts.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StatefulStart {
    pub(crate) conn: Connection<FromWorker, ToWorkerIn>,
    pub(crate) init: StartArg,
    pub(crate) claims: Claims,
}

/// The main loop of a stateful pool's worker, on a current-thread runtime of its own.
pub(crate) async fn stateful_worker<W: Worker>(start: StatefulStart) {
    lead_own_group();
    let StatefulStart {
        mut conn,
        init,
        claims,
    } = start;
    let init: W::Init = match wire::decode_payload(&init.bytes, init.fds) {
        Ok(init) => init,
        Err(e) => {
            let _ = conn
                .send(FromWorker::Hello(Hello::InitFailed(e.to_string())))
                .await;
            return;
        }
    };
    let mut worker = match AssertUnwindSafe(W::init(init)).catch_unwind().await {
        Ok(Ok(worker)) => worker,
        Ok(Err(message)) => {
            let _ = conn
                .send(FromWorker::Hello(Hello::InitFailed(message)))
                .await;
            return;
        }
        Err(_) => {
            let failure = crate::Error::from(panic_failure()).to_string();
            let _ = conn
                .send(FromWorker::Hello(Hello::InitFailed(failure)))
                .await;
            return;
        }
    };
    if conn.send(FromWorker::Hello(Hello::Ready)).await.is_err() {
        return;
    }
    match claims {
        Claims::Board(board) => stateful_local(conn, board, &mut worker).await,
        Claims::Messages => stateful_stream(conn, &mut worker).await,
    }
}

async fn stateful_local<W: Worker>(
    mut conn: Connection<FromWorker, ToWorkerIn>,
    board: ClaimBoard,
    worker: &mut W,
) {
    while let Ok(message) = conn.recv().await {
        let JobIn(id, _, payload, fds, claim) = match message {
            ToWorkerIn::Job(job) => job,
            ToWorkerIn::TakeBack(_) => continue, // The board answers those.
            ToWorkerIn::Exit => return,
        };
        if !board.start(claim) {
            continue; // Taken back for an idle worker.
        }
        let span = tracing::debug_span!("task", id, worker = std::process::id());
        let result = handle_one(worker, &payload, fds_of(fds))
            .instrument(span)
            .await;
        let reply = reply_of(id, result);
        if conn.send(FromWorker::Reply(reply)).await.is_err() {
            return;
        }
    }
}

async fn stateful_stream<W: Worker>(conn: Connection<FromWorker, ToWorkerIn>, worker: &mut W) {
    let Ok(link) = StreamWorker::start(conn) else {
        return;
    };
    while let Some(JobIn(id, _, payload, fds, _)) = link.next().await {
        let span = tracing::debug_span!("task", id, worker = std::process::id());
        let result = handle_one(worker, &payload, fds_of(fds))
            .instrument(span)
            .await;
        link.answer(reply_of(id, result));
    }
    link.finish();
}

async fn handle_one<W: Worker>(
    worker: &mut W,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<Encoded, Failure> {
    let request: W::Request =
        wire::decode_payload(payload, fds).map_err(|e| Failure::Decode(e.to_string()))?;
    let response = AssertUnwindSafe(worker.handle(request))
        .catch_unwind()
        .await
        .map_err(|_| panic_failure())?;
    wire::encode_value(&response).map_err(|e| Failure::Encode(e.to_string()))
}
