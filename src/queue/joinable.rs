//! [`JoinableQueue`]: a [`Queue`] that counts unfinished messages, by delegation.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Queue;
use crate::error::{Error, Result};
use crate::sync::{Patience, Step, deadline_after, waited_forever, within};
use std::sync::atomic::Ordering::SeqCst;

/// A [`Queue`] that also counts unfinished messages, like Python's `JoinableQueue`:
/// every `put` adds one, [`task_done`](JoinableQueue::task_done) takes one away, and
/// [`join`](JoinableQueue::join) waits until none is left. Every [`Queue`] call is
/// there too, and [`queue`](JoinableQueue::queue) gives the plain queue.
///
/// ```
/// use multiprocess::{JoinableQueue, spawn_process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     while let Ok(_job) = q.get_blocking() {
///         q.task_done().unwrap();
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let q = JoinableQueue::new(8)?;
/// let child = spawn_process(worker, q.clone())?;
/// for job in 0..20 {
///     q.put(job).await?;
/// }
/// q.join().await?;
/// q.close();
/// child.await?;
/// # Ok(())
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished", &self.unfinished())
            .finish()
    }
}

impl<T> AsRef<Queue<T>> for JoinableQueue<T> {
    fn as_ref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> JoinableQueue<T> {
    /// A joinable queue holding at most `capacity` messages.
    ///
    /// See [`JoinableQueue`] for an example.
    pub fn new(capacity: u32) -> Result<JoinableQueue<T>> {
        Ok(JoinableQueue {
            queue: Queue::with_join(capacity, true)?,
        })
    }

    /// The plain queue underneath, sharing its messages (a `put` through it is not
    /// counted as unfinished).
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(2)?;
    /// assert_eq!(q.queue().capacity(), 2);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    /// Messages put but not yet marked done.
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(2)?;
    /// q.put_blocking(1u8)?;
    /// assert_eq!(q.unfinished(), 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn unfinished(&self) -> u32 {
        self.queue.shared().unfinished.0.load(SeqCst)
    }

    /// Marks one message as processed. More calls than messages put is
    /// [`Error::BoundExceeded`], except after
    /// [`shutdown_immediate`](Queue::shutdown_immediate), which zeroes the count while
    /// messages taken before it may still be in hand.
    ///
    /// See [`JoinableQueue`] for an example.
    pub fn task_done(&self) -> Result<()> {
        let unfinished = &self.queue.shared().unfinished.0;
        let mut now = unfinished.load(SeqCst);
        loop {
            if now == 0 && self.queue.is_shut_down_now() {
                // Messages taken before the count was zeroed may still be marked done.
                return Ok(());
            }
            if now == 0 {
                return Err(Error::BoundExceeded(
                    "task_done called more times than put".into(),
                ));
            }
            match unfinished.compare_exchange(now, now - 1, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        if now == 1 {
            self.queue.notify_done();
        }
        Ok(())
    }

    /// Waits until every message put has been marked done.
    ///
    /// See [`JoinableQueue`] for an example.
    pub async fn join(&self) -> Result<()> {
        let done = self.done()?;
        done.drive(None, Patience::FOREVER, || self.join_step())
            .await
            .and_then(waited_forever)
    }

    /// One attempt of `join`.
    fn join_step(&self) -> Result<Step<()>> {
        Ok(
            match self.unfinished() == 0 || self.queue.is_shut_down_now() {
                true => Step::Ready(()),
                false => Step::Wait(Vec::new()),
            },
        )
    }

    /// Waits until every message put has been marked done, blocking the calling thread.
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(2)?;
    /// q.join_blocking()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn join_blocking(&self) -> Result<()> {
        let done = self.done()?;
        done.drive_blocking(None, Patience::FOREVER, || self.join_step())
            .and_then(waited_forever)
    }

    /// [`join`](Self::join) with a time limit: [`Error::Timeout`] if messages are
    /// still unfinished after `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::JoinableQueue::new(2)?;
    /// q.put(1u8).await?;
    /// let waited = q.join_timeout(Duration::from_millis(10)).await;
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn join_timeout(&self, timeout: Duration) -> Result<()> {
        let done = self.done()?;
        let patience = Patience::Until(deadline_after(timeout));
        let joined = done.drive(None, patience, || self.join_step()).await;
        within(joined?, timeout)
    }

    /// [`join_blocking`](Self::join_blocking) with a time limit: [`Error::Timeout`] if
    /// messages are still unfinished after `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::JoinableQueue::new(2)?;
    /// q.put_blocking(1u8)?;
    /// let waited = q.join_blocking_timeout(Duration::from_millis(10));
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// q.get_blocking()?;
    /// q.task_done()?;
    /// q.join_blocking_timeout(Duration::from_millis(10))?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn join_blocking_timeout(&self, timeout: Duration) -> Result<()> {
        let done = self.done()?;
        let patience = Patience::Until(deadline_after(timeout));
        let joined = done.drive_blocking(None, patience, || self.join_step());
        within(joined?, timeout)
    }

    /// What `join` waits on; a plain queue received as a joinable one has none.
    fn done(&self) -> Result<&crate::sync::Notifier> {
        self.queue.inner.done.as_ref().ok_or_else(|| {
            Error::Decode("a plain Queue was received where a JoinableQueue was expected".into())
        })
    }
}

/// Every [`Queue`] call, on the queue underneath.
impl<T> JoinableQueue<T> {
    /// [`Queue::capacity`].
    ///
    /// ```
    /// assert_eq!(multiprocess::JoinableQueue::<u8>::new(3)?.capacity(), 3);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn capacity(&self) -> u32 {
        self.queue.capacity()
    }

    /// [`Queue::len`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(3)?;
    /// q.put_blocking(1u8)?;
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn len(&self) -> u32 {
        self.queue.len()
    }

    /// [`Queue::is_empty`].
    ///
    /// ```
    /// assert!(multiprocess::JoinableQueue::<u8>::new(1)?.is_empty());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// [`Queue::is_full`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(1)?;
    /// q.put_blocking(1u8)?;
    /// assert!(q.is_full());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// [`Queue::is_closed`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(1)?;
    /// q.close();
    /// assert!(q.is_closed());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// [`Queue::close`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(1)?;
    /// q.close();
    /// assert!(matches!(q.put_blocking(1), Err(multiprocess::Error::Closed)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn close(&self) {
        self.queue.close()
    }

    /// [`Queue::shutdown`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(1)?;
    /// q.shutdown();
    /// assert!(q.is_closed());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.queue.shutdown()
    }

    /// [`Queue::shutdown_immediate`]: also zeroes the unfinished count, and waiting
    /// [`join`](JoinableQueue::join)s return.
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(2)?;
    /// q.put_blocking(1u8)?;
    /// q.shutdown_immediate();
    /// assert_eq!(q.unfinished(), 0);
    /// q.join_blocking()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn shutdown_immediate(&self) {
        self.queue.shutdown_immediate()
    }
}

/// The putting calls, each counting the message as unfinished.
impl<T: Serialize> JoinableQueue<T> {
    /// [`Queue::put`].
    ///
    /// See [`JoinableQueue`] for an example.
    pub async fn put(&self, message: T) -> Result<()> {
        self.queue.put(message).await
    }

    /// [`Queue::put_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::JoinableQueue::new(1)?;
    /// q.put_timeout(1u8, Duration::from_secs(1)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_timeout(&self, message: T, timeout: Duration) -> Result<()> {
        self.queue.put_timeout(message, timeout).await
    }

    /// [`Queue::put_blocking`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(1)?;
    /// q.put_blocking(1u8)?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn put_blocking(&self, message: T) -> Result<()> {
        self.queue.put_blocking(message)
    }

    /// [`Queue::put_blocking_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::JoinableQueue::new(1)?;
    /// q.put_blocking_timeout(1u8, Duration::from_secs(1))?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn put_blocking_timeout(&self, message: T, timeout: Duration) -> Result<()> {
        self.queue.put_blocking_timeout(message, timeout)
    }

    /// [`Queue::try_put`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::new(1)?;
    /// q.try_put(1u8)?;
    /// assert!(matches!(q.try_put(2), Err(multiprocess::Error::Full)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn try_put(&self, message: T) -> Result<()> {
        self.queue.try_put(message)
    }
}

/// The taking calls.
impl<T: DeserializeOwned> JoinableQueue<T> {
    /// [`Queue::get`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::JoinableQueue::new(1)?;
    /// q.put(1u8).await?;
    /// assert_eq!(q.get().await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self) -> Result<T> {
        self.queue.get().await
    }

    /// [`Queue::get_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let q = multiprocess::JoinableQueue::<u8>::new(1)?;
    /// let waited = q.get_timeout(Duration::from_millis(10)).await;
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_timeout(timeout).await
    }

    /// [`Queue::get_blocking`].
    ///
    /// See [`JoinableQueue`] for an example.
    pub fn get_blocking(&self) -> Result<T> {
        self.queue.get_blocking()
    }

    /// [`Queue::get_blocking_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let q = multiprocess::JoinableQueue::<u8>::new(1)?;
    /// let waited = q.get_blocking_timeout(Duration::from_millis(10));
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn get_blocking_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_blocking_timeout(timeout)
    }

    /// [`Queue::try_get`].
    ///
    /// ```
    /// let q = multiprocess::JoinableQueue::<u8>::new(1)?;
    /// assert!(matches!(q.try_get(), Err(multiprocess::Error::Empty)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<T> {
        self.queue.try_get()
    }
}
