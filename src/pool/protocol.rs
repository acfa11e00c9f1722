//! Messages between a pool and its workers.
//!
//! The pool's side of each worker is a byte stream of frames, with nothing that ties it
//! to a local process beyond the optional descriptors, so a worker could as well sit
//! behind a wrapper command (ssh, `srun`) running the same binary.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use super::claim::Claim;
use crate::error::Error;
use crate::ipc::PassFd;
use crate::ipc::wire::FdsOut;
use crate::start::entry::{Named, Trampoline};
use crate::start::panic::Panic;

/// What a job asks a worker to do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub(crate) enum JobKind {
    /// Call a plain function.
    Call(CallEntry),
    /// Hand the payload to a stateful worker's `handle`.
    Handle,
}

/// A job as the pool keeps it: shared between the queue and a worker's window, so a job
/// requeued after its worker died is not copied.
pub(crate) struct JobData {
    pub(crate) id: u64,
    pub(crate) kind: JobKind,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// The pool's outgoing view of a job; serializes exactly as [`JobIn`] deserializes.
pub(crate) struct JobOut(pub(crate) Arc<JobData>, pub(crate) Claim);

impl Serialize for JobOut {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let job = &*self.0;
        (
            job.id,
            job.kind,
            serde_bytes::Bytes::new(&job.payload),
            FdsOut(&job.fds),
            self.1,
        )
            .serialize(serializer)
    }
}

/// What the pool sends a worker; serializes exactly as [`ToWorkerIn`] deserializes.
#[derive(Serialize)]
pub(crate) enum ToWorker {
    /// A job to run.
    Job(JobOut),
    /// Over a stream link: give back job `id` unless it has started (the answer is
    /// [`FromWorker::TakenBack`] or [`FromWorker::AlreadyStarted`]).
    TakeBack(u64),
    /// Over a stream link: finish what you hold, then exit.
    Exit,
}

/// What a worker receives from its pool.
#[derive(Deserialize)]
pub(crate) enum ToWorkerIn {
    Job(JobIn),
    TakeBack(u64),
    Exit,
}

/// A job as a worker receives it.
#[derive(Deserialize)]
pub(crate) struct JobIn(
    pub(crate) u64,
    pub(crate) JobKind,
    pub(crate) serde_bytes::ByteBuf,
    pub(crate) Vec<PassFd>,
    pub(crate) Claim,
);

/// Why a job failed inside a live worker.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) enum Failure {
    Panicked(Panic),
    Decode(String),
    Encode(String),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        match failure {
            Failure::Panicked(panic) => panic.into(),
            Failure::Decode(msg) => Error::Decode(format!("in the worker: {msg}")),
            Failure::Encode(msg) => Error::Encode(format!("in the worker: {msg}")),
        }
    }
}

/// A worker's answer to one job: the encoded result and the descriptors it carries
/// (a `Queue`, `Connection` or `SharedMemory` returned by the task).
#[derive(Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) result: Result<serde_bytes::ByteBuf, Failure>,
    pub(crate) fds: Vec<PassFd>,
}

/// An encoded value and the descriptors it carries.
pub(crate) type Encoded = (Vec<u8>, Vec<OwnedFd>);

/// An argument sent to every worker at its start (an initializer's, a stateful
/// worker's `Init`), with its descriptors; each worker gets its own duplicates.
pub(crate) struct StartArg {
    pub(crate) bytes: serde_bytes::ByteBuf,
    pub(crate) fds: Vec<OwnedFd>,
}

impl StartArg {
    pub(crate) fn new((bytes, fds): Encoded) -> StartArg {
        StartArg {
            bytes: serde_bytes::ByteBuf::from(bytes),
            fds,
        }
    }
}

impl StartArg {
    /// A copy for one more worker, with descriptors of its own.
    pub(crate) fn duplicate(&self) -> crate::Result<StartArg> {
        let fds = self
            .fds
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<std::io::Result<_>>()?;
        Ok(StartArg {
            bytes: self.bytes.clone(),
            fds,
        })
    }
}

impl Serialize for StartArg {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.bytes, FdsOut(&self.fds)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StartArg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (bytes, fds) = <(serde_bytes::ByteBuf, Vec<PassFd>)>::deserialize(deserializer)?;
        Ok(StartArg {
            bytes,
            fds: fds.into_iter().map(|PassFd(fd)| fd).collect(),
        })
    }
}

/// Sent once by a worker after start-up, before any reply.
#[derive(Serialize, Deserialize)]
pub(crate) enum Hello {
    Ready,
    InitFailed(String),
}

/// Worker to pool: the hello, then replies (and, over a stream link, the answers to
/// take-back requests).
#[derive(Serialize, Deserialize)]
pub(crate) enum FromWorker {
    Hello(Hello),
    Reply(Reply),
    /// The job had not started: it is the pool's again, and will not run here.
    TakenBack(u64),
    /// The job has started (or is done): it stays with this worker.
    AlreadyStarted(u64),
}

/// What a call's trampoline gets: the argument's bytes and descriptors.
pub(crate) type CallInput = (Vec<u8>, Vec<OwnedFd>);
/// What a call's trampoline gives: the result's bytes and descriptors, or the failure.
pub(crate) type CallOutput = Result<Encoded, Failure>;
/// A plain function named for a worker.
pub(crate) type CallEntry = Named<CallInput, CallOutput>;

/// Names `function`, run through the trampoline `T`, for a worker of the same build.
pub(crate) fn call_entry<T: Trampoline<Input = CallInput, Output = CallOutput>>(
    function: T::Function,
) -> crate::Result<CallEntry> {
    CallEntry::new::<T>(function).map_err(|source| Error::Spawn {
        program: "pool task".into(),
        source,
    })
}
