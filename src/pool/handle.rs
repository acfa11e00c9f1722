//! [`TaskHandle`]: a task submitted to a pool, as a future for its result, and how a
//! task gets into the pool's queue.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, TryAcquireError, oneshot};

use super::core::Core;
use super::protocol::{Encoded, JobData, JobKind};
use crate::error::{Error, Result};
use crate::ipc::wire;

/// Encodes a job and queues it (or prepares to, if the queue is full).
pub(crate) fn submit_job<A: Serialize, R>(
    core: &Arc<Core>,
    kind: JobKind,
    arg: &A,
    timeout: Option<Duration>,
) -> TaskHandle<R> {
    let (payload, fds) = match wire::encode_value(arg) {
        Ok(encoded) => encoded,
        Err(err) => return TaskHandle::failed(core, err),
    };
    let job = Arc::new(JobData {
        id: core.next_job_id(),
        kind,
        payload,
        fds,
    });
    let mut handle = TaskHandle {
        core: core.clone(),
        id: job.id,
        state: HandleState::Failed(None),
        _result: PhantomData,
    };
    handle.state = match core.space.clone().try_acquire_owned() {
        Ok(permit) => handle.enqueue(job, timeout, permit),
        Err(TryAcquireError::NoPermits) => HandleState::WaitingForRoom {
            job,
            timeout,
            room: Box::pin(core.space.clone().acquire_owned()),
        },
        Err(TryAcquireError::Closed) => HandleState::Failed(Some(Error::PoolClosed)),
    };
    handle
}

fn enqueue_on(
    core: &Core,
    job: Arc<JobData>,
    timeout: Option<Duration>,
    permit: OwnedSemaphorePermit,
) -> HandleState {
    match core.enqueue(job, timeout, Some(permit)) {
        Ok(answer) => HandleState::Queued(answer),
        Err(err) => HandleState::Failed(Some(err)),
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

enum HandleState {
    WaitingForRoom {
        job: Arc<JobData>,
        timeout: Option<Duration>,
        room: Acquire,
    },
    Queued(oneshot::Receiver<Result<Encoded>>),
    Failed(Option<Error>),
}

/// A task submitted to a pool: a future for its result. Dropping it cancels the task
/// (see [`ProcessPool::submit`](crate::ProcessPool::submit)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let pool = multiprocess::ProcessPool::new(1).await?;
/// let handle: multiprocess::TaskHandle<u32> = pool.submit(|x: u32| x, 7);
/// assert_eq!(handle.await?, 7);
/// # Ok(())
/// # }
/// ```
#[must_use = "a task is cancelled when its handle is dropped"]
pub struct TaskHandle<R> {
    core: Arc<Core>,
    id: u64,
    state: HandleState,
    _result: PhantomData<fn() -> R>,
}

impl<R> TaskHandle<R> {
    /// A handle for a task that failed before it could be queued.
    pub(crate) fn failed(core: &Arc<Core>, err: Error) -> TaskHandle<R> {
        TaskHandle {
            core: core.clone(),
            id: 0,
            state: HandleState::Failed(Some(err)),
            _result: PhantomData,
        }
    }

    fn enqueue(
        &self,
        job: Arc<JobData>,
        timeout: Option<Duration>,
        permit: OwnedSemaphorePermit,
    ) -> HandleState {
        enqueue_on(&self.core, job, timeout, permit)
    }
}

impl<R> TaskHandle<R> {
    /// Whether the task's outcome is in: awaiting the handle now returns at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = multiprocess::ProcessPool::new(1).await?;
    /// let handle = pool.submit(|x: u32| x + 1, 1);
    /// while !handle.is_finished() {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    /// }
    /// assert_eq!(handle.await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        match &self.state {
            HandleState::WaitingForRoom { .. } => false,
            HandleState::Queued(answer) => !answer.is_empty(),
            HandleState::Failed(_) => true,
        }
    }

    /// Lets the task run to its end without awaiting it (Python's `apply_async` with
    /// the result thrown away): dropping a handle cancels its task, detaching does not,
    /// and [`ProcessPool::close`](crate::ProcessPool::close) waits for a detached task like any other. A task still
    /// waiting for room in a full queue is queued at once, past the queue's capacity.
    ///
    /// ```
    /// use multiprocess::{ProcessPool, Value};
    ///
    /// fn record(seen: Value<u32>) {
    ///     seen.set(7);
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let pool = ProcessPool::new(1).await?;
    /// let seen = Value::new(0u32)?;
    /// pool.submit(record, seen.clone()).detach();
    /// pool.close().await;
    /// assert_eq!(seen.get(), 7);
    /// # Ok(())
    /// # }
    /// ```
    pub fn detach(mut self) {
        match std::mem::replace(&mut self.state, HandleState::Failed(None)) {
            HandleState::Queued(_answer) => self.core.detach(self.id),
            HandleState::WaitingForRoom { job, timeout, .. } => {
                // Its data is held already: queuing it past the queue's capacity holds
                // no more memory than waiting for room would.
                if let Ok(_answer) = self.core.enqueue(job, timeout, None) {
                    self.core.detach(self.id);
                }
            }
            HandleState::Failed(_) => {}
        }
    }
}

impl<R> std::fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            HandleState::WaitingForRoom { .. } => "waiting for room in the queue",
            HandleState::Queued(_) if self.is_finished() => "finished",
            HandleState::Queued(_) => "queued or running",
            HandleState::Failed(Some(_)) => "failed",
            HandleState::Failed(None) => "done",
        };
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("state", &state)
            .finish()
    }
}

impl<R: DeserializeOwned> Future for TaskHandle<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                HandleState::WaitingForRoom { job, timeout, room } => {
                    let next = match room.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(permit)) => {
                            enqueue_on(&this.core, job.clone(), *timeout, permit)
                        }
                        Poll::Ready(Err(_)) => HandleState::Failed(Some(Error::PoolClosed)),
                    };
                    this.state = next;
                }
                HandleState::Queued(answer) => {
                    let result = match Pin::new(answer).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(Ok((bytes, fds)))) => wire::decode_payload(&bytes, fds),
                        Poll::Ready(Ok(Err(err))) => Err(err),
                        // The pool dropped the task without an answer: it is gone.
                        Poll::Ready(Err(_)) => Err(Error::PoolClosed),
                    };
                    this.state = HandleState::Failed(None);
                    return Poll::Ready(result);
                }
                HandleState::Failed(err) => {
                    return Poll::Ready(Err(err.take().unwrap_or(Error::AlreadyJoined)));
                }
            }
        }
    }
}

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        if let HandleState::Queued(_) = self.state {
            self.core.cancel(self.id);
        }
    }
}
