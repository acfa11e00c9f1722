//! [`Event`]: a flag processes can wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{NOTIFIER_BYTES, Notifier, Patience, Step, deadline_after, waited_forever};
use crate::error::Result;
use crate::ipc::PassFd;
use crate::shm::SharedMemory;

/// Layout of the event's page: the flag, then the notifier's words.
const FLAG: usize = 0;
const WAKE: usize = 4;
const PAGE: usize = WAKE + NOTIFIER_BYTES;

/// A flag shared by processes: [`set`](Event::set) wakes every waiter, in every process.
///
/// ```
/// use multiprocess::{Event, spawn_process};
///
/// fn waiter(event: Event) -> bool {
///     event.wait_blocking().unwrap();
///     event.is_set()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let event = Event::new()?;
/// let child = spawn_process(waiter, event.clone())?;
/// event.set();
/// assert!(child.await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Event {
    inner: Arc<Inner>,
}

struct Inner {
    page: SharedMemory,
    wake: Notifier,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Event {
    /// A new event, not set.
    ///
    /// ```
    /// assert!(!multiprocess::Event::new()?.is_set());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new() -> Result<Event> {
        let page = SharedMemory::named("multiprocess-event", PAGE)?;
        let wake = Notifier::in_page(&page, WAKE)?;
        Ok(Event {
            inner: Arc::new(Inner { page, wake }),
        })
    }

    fn flag(&self) -> &AtomicU32 {
        self.inner.page.atomic(FLAG)
    }

    fn step(&self) -> Result<Step<()>> {
        Ok(if self.is_set() {
            Step::Ready(())
        } else {
            Step::Wait(Vec::new())
        })
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// ```
    /// let event = multiprocess::Event::new()?;
    /// event.set();
    /// assert!(event.is_set());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn set(&self) {
        self.flag().store(1, SeqCst);
        self.inner.wake.notify();
    }

    /// Clears the flag.
    ///
    /// ```
    /// let event = multiprocess::Event::new()?;
    /// event.set();
    /// event.clear();
    /// assert!(!event.is_set());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn clear(&self) {
        self.flag().store(0, SeqCst);
    }

    /// Whether the flag is set.
    ///
    /// See [`Event::set`] for an example.
    pub fn is_set(&self) -> bool {
        self.flag().load(SeqCst) != 0
    }

    /// Waits until the flag is set.
    ///
    /// Cancel safe: dropping it leaves nothing behind.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let event = multiprocess::Event::new()?;
    /// event.set();
    /// event.wait().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait(&self) -> Result<()> {
        self.wait_until(None).await.and_then(waited_forever)
    }

    /// [`wait`](Self::wait) for at most `timeout`; the flag on return, as Python's
    /// `wait(timeout)`: `Ok(false)` if it was not set in time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let event = multiprocess::Event::new()?;
    /// assert!(!event.wait_timeout(Duration::from_millis(10)).await?);
    /// event.set();
    /// assert!(event.wait_timeout(Duration::from_millis(10)).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        let set = self.wait_until(deadline_after(timeout)).await?;
        Ok(set.is_some())
    }

    async fn wait_until(&self, deadline: Option<Instant>) -> Result<Option<()>> {
        self.inner
            .wake
            .drive(None, Patience::Until(deadline), || self.step())
            .await
    }

    /// Waits until the flag is set, blocking the calling thread.
    ///
    /// See [`Event`] for an example.
    pub fn wait_blocking(&self) -> Result<()> {
        self.wait_blocking_until(None).and_then(waited_forever)
    }

    /// [`wait_timeout`](Self::wait_timeout), blocking the calling thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let event = multiprocess::Event::new()?;
    /// assert!(!event.wait_blocking_timeout(Duration::from_millis(10))?);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn wait_blocking_timeout(&self, timeout: Duration) -> Result<bool> {
        let set = self.wait_blocking_until(deadline_after(timeout))?;
        Ok(set.is_some())
    }

    fn wait_blocking_until(&self, deadline: Option<Instant>) -> Result<Option<()>> {
        self.inner
            .wake
            .drive_blocking(None, Patience::Until(deadline), || self.step())
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wake = self.inner.wake.wake_fd_for_message()?;
        (&self.inner.page, wake).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (page, wake) = <(SharedMemory, PassFd)>::deserialize(deserializer)?;
        let wake = Notifier::from_message(wake, &page, PAGE, WAKE, "event")?;
        Ok(Event {
            inner: Arc::new(Inner { page, wake }),
        })
    }
}
