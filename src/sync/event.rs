//! [`Event`]: a flag processes can wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Notifier;
use crate::error::Result;
use crate::shm::SharedMemory;

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

#[derive(Serialize, Deserialize)]
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
        Ok(Event {
            inner: Arc::new(Inner {
                page: SharedMemory::named("multiprocess-event", 8)?,
                wake: Notifier::new()?,
            }),
        })
    }

    fn flag(&self) -> &AtomicU32 {
        self.inner.page.atomic(0)
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
        self.inner.wake.arm()?;
        loop {
            let seen = self.inner.wake.observe();
            if self.is_set() {
                return Ok(());
            }
            self.inner.wake.wait(seen, &[]).await?;
        }
    }

    /// Waits until the flag is set, blocking the calling thread.
    ///
    /// See [`Event`] for an example.
    pub fn wait_blocking(&self) -> Result<()> {
        loop {
            let seen = self.inner.wake.observe();
            if self.is_set() {
                return Ok(());
            }
            self.inner.wake.wait_blocking(seen, &[], None)?;
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inner::deserialize(deserializer).map(|inner| Event {
            inner: Arc::new(inner),
        })
    }
}
