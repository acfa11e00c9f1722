//! [`Semaphore`] and [`BoundedSemaphore`] across processes; permits of a holder that
//! dies come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::Lock;
use super::{Counted, Notifier, OwnerWatch, token, watch_owner};
use crate::error::{Error, Result};
use crate::shm::SharedMemory;

const PERMITS: usize = 0;
const WAITERS: usize = 4;
const HELD: usize = 8;
const BOUNDED: usize = 12;
const SLOTS: usize = 64;
const SLOT_SIZE: usize = 16;
const PAGE: usize = 4096;
/// How many processes may hold permits at the same time.
const MAX_HOLDERS: usize = (PAGE - SLOTS) / SLOT_SIZE;

/// A counting semaphore shared by processes, awaitable.
///
/// Each process's permits are recorded against it, so when a holder dies its permits
/// come back to the semaphore: the next waiter notices the death at once (it watches
/// the holders' pidfds) and takes over. Python's semaphores lose those permits for good.
/// At most 252 processes can hold permits of one semaphore at the same time.
///
/// `release` without a held permit adds a permit, as Python's `Semaphore` does; a
/// [`BoundedSemaphore`] refuses that.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let sem = multiprocess::Semaphore::new(2)?;
/// let a = sem.acquire().await?;
/// let b = sem.acquire().await?;
/// assert!(sem.try_acquire()?.is_none());
/// drop(a);
/// assert!(sem.try_acquire()?.is_some());
/// # drop(b);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
}

#[derive(Serialize, Deserialize)]
struct Inner {
    table: SharedMemory,
    meta: Lock,
    wake: Notifier,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("available", &self.available())
            .finish()
    }
}

/// One permit of a [`Semaphore`], given back when dropped (or kept with
/// [`forget`](SemaphorePermit::forget)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let sem = multiprocess::Semaphore::new(1)?;
/// sem.acquire().await?.forget();
/// assert_eq!(sem.available(), 0);
/// sem.release()?;
/// assert_eq!(sem.available(), 1);
/// # Ok(())
/// # }
/// ```
#[must_use = "the permit is released as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit held past the guard; give it back with [`Semaphore::release`].
    ///
    /// See [`SemaphorePermit`] for an example.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        let _ = self.sem.release_blocking_meta();
    }
}

/// What one try at a permit found.
enum Attempt {
    Taken,
    /// A dead holder's permits were just reclaimed: try again at once.
    Retry,
    /// Wait for a release or for one of these holders to die.
    Wait(Vec<OwnerWatch>),
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    ///
    /// ```
    /// let sem = multiprocess::Semaphore::new(3)?;
    /// assert_eq!(sem.available(), 3);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(permits: u32) -> Result<Semaphore> {
        Self::create(permits, false)
    }

    fn create(permits: u32, bounded: bool) -> Result<Semaphore> {
        let table = SharedMemory::named("multiprocess-semaphore", PAGE)?;
        table.atomic::<AtomicU32>(PERMITS).store(permits, SeqCst);
        table
            .atomic::<AtomicU32>(BOUNDED)
            .store(bounded as u32, SeqCst);
        Ok(Semaphore {
            inner: Arc::new(Inner {
                table,
                meta: Lock::new()?,
                wake: Notifier::new()?,
            }),
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.inner.table.atomic(offset)
    }

    fn slot(&self, index: usize) -> (&AtomicU64, &AtomicU64) {
        let base = SLOTS + index * SLOT_SIZE;
        (
            self.inner.table.atomic(base),
            self.inner.table.atomic(base + 8),
        )
    }

    /// Permits free right now.
    ///
    /// ```
    /// assert_eq!(multiprocess::Semaphore::new(5)?.available(), 5);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn available(&self) -> u32 {
        self.word(PERMITS)
            .load(SeqCst)
            .saturating_sub(self.word(HELD).load(SeqCst))
    }

    /// Takes a permit for this process; the meta lock is held.
    fn take_locked(&self) -> Result<bool> {
        if self.word(HELD).load(SeqCst) >= self.word(PERMITS).load(SeqCst) {
            return Ok(false);
        }
        let me = token();
        let index = (0..MAX_HOLDERS)
            .find(|i| self.slot(*i).0.load(SeqCst) == me)
            .or_else(|| (0..MAX_HOLDERS).find(|i| self.slot(*i).0.load(SeqCst) == 0))
            .ok_or_else(|| {
                Error::BoundExceeded(format!("more than {MAX_HOLDERS} processes hold permits"))
            })?;
        let (owner, count) = self.slot(index);
        owner.store(me, SeqCst);
        count.fetch_add(1, SeqCst);
        self.word(HELD).fetch_add(1, SeqCst);
        Ok(true)
    }

    /// The holders other than this process; the meta lock is held.
    fn other_holders(&self) -> Vec<u64> {
        let me = token();
        (0..MAX_HOLDERS)
            .map(|i| self.slot(i))
            .filter(|(owner, count)| {
                count.load(SeqCst) > 0 && owner.load(SeqCst) != me && owner.load(SeqCst) != 0
            })
            .map(|(owner, _)| owner.load(SeqCst))
            .collect()
    }

    /// Gives back a dead holder's permits; the meta lock is held.
    fn reclaim_locked(&self, dead: u64) {
        for i in 0..MAX_HOLDERS {
            let (owner, count) = self.slot(i);
            if owner.load(SeqCst) == dead {
                let permits = count.swap(0, SeqCst) as u32;
                owner.store(0, SeqCst);
                self.word(HELD).fetch_sub(permits, SeqCst);
                tracing::warn!(
                    pid = dead >> 32,
                    permits,
                    "semaphore holder died; permits returned"
                );
            }
        }
    }

    /// Watches the other holders; reclaims the permits of any already dead.
    fn watch_holders(&self, holders: Vec<u64>) -> Result<(Vec<OwnerWatch>, bool)> {
        let mut watches = Vec::new();
        let mut reclaimed = false;
        for holder in holders {
            match watch_owner(holder)? {
                Some(watch) => watches.push(watch),
                None => {
                    self.inner.meta.acquire_blocking(true, None)?;
                    self.reclaim_locked(holder);
                    self.inner.meta.unlock();
                    reclaimed = true;
                }
            }
        }
        Ok((watches, reclaimed))
    }

    /// With the meta lock held (and released here): takes a permit, or says whose
    /// death to watch for while waiting.
    fn attempt_locked(&self) -> Result<Attempt> {
        let taken = self.take_locked();
        let holders = self.other_holders();
        self.inner.meta.unlock();
        if taken? {
            return Ok(Attempt::Taken);
        }
        let (watches, reclaimed) = self.watch_holders(holders)?;
        Ok(if reclaimed {
            Attempt::Retry
        } else {
            Attempt::Wait(watches)
        })
    }

    /// Takes a permit without waiting; `Ok(None)` if there is none.
    ///
    /// See [`Semaphore`] for an example.
    pub fn try_acquire(&self) -> Result<Option<SemaphorePermit<'_>>> {
        self.inner.meta.acquire_blocking(true, None)?;
        let taken = self.take_locked();
        self.inner.meta.unlock();
        // Built only on success: a permit's drop gives a permit back.
        Ok(if taken? {
            Some(SemaphorePermit { sem: self })
        } else {
            None
        })
    }

    /// Waits for a permit and takes it.
    ///
    /// See [`Semaphore`] for an example.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>> {
        loop {
            self.inner.wake.arm()?;
            let waiting = Counted::new(self.word(WAITERS));
            let seen = self.inner.wake.observe();
            self.inner.meta.acquire(true).await?;
            match self.attempt_locked()? {
                Attempt::Taken => return Ok(SemaphorePermit { sem: self }),
                Attempt::Retry => {}
                Attempt::Wait(watches) => self.inner.wake.wait(seen, &watches).await?,
            }
            drop(waiting);
        }
    }

    /// Waits for a permit and takes it, blocking the calling thread.
    ///
    /// ```
    /// let sem = multiprocess::Semaphore::new(1)?;
    /// let permit = sem.acquire_blocking()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn acquire_blocking(&self) -> Result<SemaphorePermit<'_>> {
        loop {
            let _waiting = Counted::new(self.word(WAITERS));
            let seen = self.inner.wake.observe();
            self.inner.meta.acquire_blocking(true, None)?;
            match self.attempt_locked()? {
                Attempt::Taken => return Ok(SemaphorePermit { sem: self }),
                Attempt::Retry => {}
                Attempt::Wait(watches) => {
                    self.inner.wake.wait_blocking(seen, &watches, None)?;
                }
            }
        }
    }

    /// Gives back a permit this process holds (one taken and
    /// [`forget`](SemaphorePermit::forget)-ed). Without one, a plain semaphore gains a
    /// permit and a bounded one fails with [`Error::BoundExceeded`].
    ///
    /// See [`SemaphorePermit`] for an example.
    pub fn release(&self) -> Result<()> {
        self.release_blocking_meta()
    }

    fn release_blocking_meta(&self) -> Result<()> {
        self.inner.meta.acquire_blocking(true, None)?;
        let me = token();
        let mine = (0..MAX_HOLDERS).find(|i| {
            let (owner, count) = self.slot(*i);
            owner.load(SeqCst) == me && count.load(SeqCst) > 0
        });
        let result = match mine {
            Some(index) => {
                let (owner, count) = self.slot(index);
                if count.fetch_sub(1, SeqCst) == 1 {
                    owner.store(0, SeqCst);
                }
                self.word(HELD).fetch_sub(1, SeqCst);
                Ok(())
            }
            None if self.word(BOUNDED).load(SeqCst) != 0 => Err(Error::BoundExceeded(
                "released a bounded semaphore more often than it was acquired".into(),
            )),
            None => {
                self.word(PERMITS).fetch_add(1, SeqCst);
                Ok(())
            }
        };
        self.inner.meta.unlock();
        if result.is_ok() && self.word(WAITERS).load(SeqCst) > 0 {
            self.inner.wake.notify();
        }
        result
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inner::deserialize(deserializer).map(|inner| Semaphore {
            inner: Arc::new(inner),
        })
    }
}

/// A [`Semaphore`] that refuses to be released more often than acquired, like Python's
/// `BoundedSemaphore`. Dereferences to [`Semaphore`].
///
/// ```
/// let sem = multiprocess::BoundedSemaphore::new(1)?;
/// assert!(matches!(sem.release(), Err(multiprocess::Error::BoundExceeded(_))));
/// # Ok::<(), multiprocess::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundedSemaphore(Semaphore);

impl BoundedSemaphore {
    /// A bounded semaphore with `permits` permits.
    ///
    /// See [`BoundedSemaphore`] for an example.
    pub fn new(permits: u32) -> Result<BoundedSemaphore> {
        Semaphore::create(permits, true).map(BoundedSemaphore)
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;

    fn deref(&self) -> &Semaphore {
        &self.0
    }
}
