//! [`Barrier`]: processes wait for each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Notifier;
use crate::error::Result;
use crate::shm::SharedMemory;

const ARRIVED: usize = 0;
const GENERATION: usize = 4;
const PARTIES: usize = 8;

/// Makes `parties` waiters (in any processes) wait until all have arrived, then
/// releases them together; reusable, round after round. One waiter per round is told
/// it is the leader.
///
/// A party that dies before arriving leaves the others waiting, as in Python; bound the
/// wait with `tokio::time::timeout` where that matters.
///
/// ```
/// use multiprocess::{Barrier, spawn_process};
///
/// fn party(barrier: Barrier) -> bool {
///     barrier.wait_blocking().unwrap()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let barrier = Barrier::new(3)?;
/// let a = spawn_process(party, barrier.clone())?;
/// let b = spawn_process(party, barrier.clone())?;
/// let mine = barrier.wait().await?;
/// let leaders = [mine, a.await?, b.await?].iter().filter(|l| **l).count();
/// assert_eq!(leaders, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Barrier {
    inner: Arc<Inner>,
}

#[derive(Serialize, Deserialize)]
struct Inner {
    page: SharedMemory,
    wake: Notifier,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .finish()
    }
}

impl Barrier {
    /// A barrier for `parties` waiters.
    ///
    /// ```
    /// let barrier = multiprocess::Barrier::new(4)?;
    /// assert_eq!(barrier.parties(), 4);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(parties: u32) -> Result<Barrier> {
        let page = SharedMemory::named("multiprocess-barrier", 12)?;
        page.atomic::<AtomicU32>(PARTIES)
            .store(parties.max(1), SeqCst);
        Ok(Barrier {
            inner: Arc::new(Inner {
                page,
                wake: Notifier::new()?,
            }),
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.inner.page.atomic(offset)
    }

    /// How many waiters each round needs.
    ///
    /// See [`Barrier::new`] for an example.
    pub fn parties(&self) -> u32 {
        self.word(PARTIES).load(SeqCst)
    }

    /// Arrives; returns the generation to wait for, or `None` for the last to arrive
    /// (who has already released the round).
    fn arrive(&self) -> Option<u32> {
        let generation = self.word(GENERATION).load(SeqCst);
        let arrived = self.word(ARRIVED).fetch_add(1, SeqCst) + 1;
        if arrived >= self.parties() {
            self.word(ARRIVED).store(0, SeqCst);
            self.word(GENERATION).fetch_add(1, SeqCst);
            self.inner.wake.notify();
            return None;
        }
        Some(generation)
    }

    /// Waits until all parties have arrived. `Ok(true)` for exactly one of them.
    ///
    /// See [`Barrier`] for an example.
    pub async fn wait(&self) -> Result<bool> {
        self.inner.wake.arm()?;
        let Some(generation) = self.arrive() else {
            return Ok(true);
        };
        loop {
            let seen = self.inner.wake.observe();
            if self.word(GENERATION).load(SeqCst) != generation {
                return Ok(false);
            }
            self.inner.wake.wait(seen, &[]).await?;
        }
    }

    /// Waits until all parties have arrived, blocking the calling thread.
    ///
    /// See [`Barrier`] for an example.
    pub fn wait_blocking(&self) -> Result<bool> {
        let Some(generation) = self.arrive() else {
            return Ok(true);
        };
        loop {
            let seen = self.inner.wake.observe();
            if self.word(GENERATION).load(SeqCst) != generation {
                return Ok(false);
            }
            self.inner.wake.wait_blocking(seen, &[], None)?;
        }
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inner::deserialize(deserializer).map(|inner| Barrier {
            inner: Arc::new(inner),
        })
    }
}
