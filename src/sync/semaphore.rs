//! [`Semaphore`] and [`BoundedSemaphore`] across processes: Python's counters, plus the
//! permits of a guard whose process dies coming back.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    NOTIFIER_BYTES, Notifier, Patience, Step, deadline_after, token, waited_forever, watch_owner,
};
use crate::error::{Error, Result};
use crate::ipc::PassFd;
use crate::shm::SharedMemory;

/// Layout of the semaphore's page: the value, waiters, the bound, the notifier's words,
/// then one slot per process holding guarded permits (owner token, how many).
const VALUE: usize = 0;
const WAITERS: usize = 4;
const BOUND: usize = 8;
const WAKE: usize = 16;
const SLOTS: usize = 64;
const SLOT_SIZE: usize = 16;
const PAGE: usize = 4096;
const _: () = assert!(WAKE + NOTIFIER_BYTES <= SLOTS);
/// How many processes' guards are tracked for recovery at the same time.
const MAX_HOLDERS: usize = (PAGE - SLOTS) / SLOT_SIZE;
/// A slot's owner while a dead holder's permits are being given back.
const RECLAIMING: u64 = u64::MAX;

/// A counting semaphore shared by processes, like Python's
/// `multiprocessing.Semaphore`: a counter that [`acquire`](Semaphore::acquire)
/// decrements (waiting while it is zero) and [`release`](Semaphore::release)
/// increments. A permit taken in one process may be released in another, as in the
/// classic producer and consumer pair of semaphores; [`get_value`](Semaphore::get_value)
/// is the counter.
///
/// **Holder death.** A permit taken by `acquire` comes as a [`SemaphorePermit`] guard,
/// which gives it back when dropped. If a process dies while such guards are alive,
/// their permits come back to the counter: the next waiter notices the death at once
/// (it watches those processes' pidfds) and adds them back. This applies only to
/// permits held by a live guard at the moment of death. A permit whose guard was
/// dropped, or released with [`SemaphorePermit::release`], or handed on with
/// [`SemaphorePermit::forget`] (to be released later by whoever, in any process, calls
/// [`Semaphore::release`]) belongs to nobody: the counter alone says where it is, as in
/// Python, and a death changes nothing. Guards of at most 252 processes at a time are
/// tracked; beyond that a guard still works but its permits are not recovered.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let sem = multiprocess::Semaphore::new(2)?;
/// let a = sem.acquire().await?;
/// let b = sem.acquire().await?;
/// assert!(sem.try_acquire()?.is_none());
/// drop(a);
/// assert_eq!(sem.get_value(), 1);
/// assert!(sem.try_acquire()?.is_some());
/// # drop(b);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
}

struct Inner {
    page: SharedMemory,
    wake: Notifier,
    /// Where this process's slot was last found, to skip the search.
    slot_hint: AtomicUsize,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .finish()
    }
}

/// One permit of a [`Semaphore`], given back when dropped. While it lives, the permit
/// comes back to the semaphore if this process dies.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let sem = multiprocess::Semaphore::new(1)?;
/// sem.acquire().await?.forget();
/// assert_eq!(sem.get_value(), 0);
/// sem.release()?;
/// assert_eq!(sem.get_value(), 1);
/// # Ok(())
/// # }
/// ```
#[must_use = "the permit is released as soon as it is dropped"]
#[derive(Debug)]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
    /// The slot recording this guard, if it is tracked.
    slot: Option<usize>,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken but no longer guarded: nobody gives it back unless
    /// someone, in any process, calls [`Semaphore::release`], and it is not given back
    /// if this process dies. Python's `acquire()` without a matching `release()`.
    ///
    /// See [`SemaphorePermit`] for an example.
    pub fn forget(mut self) {
        self.untrack();
        std::mem::forget(self);
    }

    /// Gives the permit back now, reporting what dropping the guard cannot: for a
    /// [`BoundedSemaphore`] whose value was raised to its bound meanwhile by
    /// [`Semaphore::release`], `Err(BoundExceeded)` (the permit is then dropped).
    ///
    /// ```
    /// let sem = multiprocess::BoundedSemaphore::new(1)?;
    /// let permit = sem.acquire_blocking()?;
    /// sem.release()?; // back to its bound while the guard lives
    /// assert!(permit.release().is_err());
    /// assert_eq!(sem.get_value(), 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn release(mut self) -> Result<()> {
        self.untrack();
        let sem = self.sem;
        std::mem::forget(self);
        sem.add(1)
    }

    fn untrack(&mut self) {
        if let Some(index) = self.slot.take() {
            self.sem.slot_count(index).fetch_sub(1, SeqCst);
        }
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        self.untrack();
        if let Err(err) = self.sem.add(1) {
            tracing::warn!(%err, "semaphore permit dropped above the bound; not given back");
        }
    }
}

impl Semaphore {
    /// A semaphore whose value starts at `value`.
    ///
    /// ```
    /// let sem = multiprocess::Semaphore::new(3)?;
    /// assert_eq!(sem.get_value(), 3);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(value: u32) -> Result<Semaphore> {
        Self::create(value, u32::MAX)
    }

    fn create(value: u32, bound: u32) -> Result<Semaphore> {
        let page = SharedMemory::named("multiprocess-semaphore", PAGE)?;
        page.atomic::<AtomicU32>(VALUE).store(value, SeqCst);
        page.atomic::<AtomicU32>(BOUND).store(bound, SeqCst);
        let wake = Notifier::in_page(&page, WAKE)?;
        Ok(Self::from_parts(page, wake))
    }

    fn from_parts(page: SharedMemory, wake: Notifier) -> Semaphore {
        Semaphore {
            inner: Arc::new(Inner {
                page,
                wake,
                slot_hint: AtomicUsize::new(usize::MAX),
            }),
        }
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.inner.page.atomic(offset)
    }

    fn slot_owner(&self, index: usize) -> &AtomicU64 {
        self.inner.page.atomic(SLOTS + index * SLOT_SIZE)
    }

    fn slot_count(&self, index: usize) -> &AtomicU32 {
        self.inner.page.atomic(SLOTS + index * SLOT_SIZE + 8)
    }

    /// The semaphore's value: how many `acquire` calls would succeed without waiting.
    /// Python's `get_value()`.
    ///
    /// ```
    /// assert_eq!(multiprocess::Semaphore::new(5)?.get_value(), 5);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn get_value(&self) -> u32 {
        self.word(VALUE).load(SeqCst)
    }

    /// The same as [`get_value`](Self::get_value).
    ///
    /// ```
    /// assert_eq!(multiprocess::Semaphore::new(5)?.available(), 5);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn available(&self) -> u32 {
        self.get_value()
    }

    /// Decrements the value if it is above zero.
    fn take(&self) -> bool {
        self.word(VALUE)
            .fetch_update(SeqCst, SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }

    /// Adds `n` to the value, refusing to pass the bound, and wakes waiters.
    fn add(&self, n: u32) -> Result<()> {
        let bound = self.word(BOUND).load(SeqCst);
        self.word(VALUE)
            .fetch_update(SeqCst, SeqCst, |v| {
                v.checked_add(n).filter(|next| *next <= bound)
            })
            .map_err(|_| Error::BoundExceeded(self.bound_message(bound)))?;
        self.wake_waiters();
        Ok(())
    }

    fn bound_message(&self, bound: u32) -> String {
        if bound == u32::MAX {
            "semaphore value would overflow".into()
        } else {
            format!("semaphore released too many times: its value is bounded by {bound}")
        }
    }

    /// Adds what a dead holder's guards held, up to the bound.
    fn add_capped(&self, n: u32) {
        let bound = self.word(BOUND).load(SeqCst);
        let _ = self.word(VALUE).fetch_update(SeqCst, SeqCst, |v| {
            Some(v.saturating_add(n).min(bound.max(v)))
        });
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        if self.word(WAITERS).load(SeqCst) > 0 {
            self.inner.wake.notify();
        }
    }

    /// Records one more guarded permit against this process; `None` if the table is
    /// full (the guard then goes untracked).
    fn track(&self) -> Option<usize> {
        let index = self.own_slot().or_else(|| {
            self.sweep_dead();
            self.own_slot()
        });
        match index {
            Some(index) => {
                self.slot_count(index).fetch_add(1, SeqCst);
                Some(index)
            }
            None => {
                tracing::warn!(
                    "more than {MAX_HOLDERS} processes hold semaphore guards; this one is not \
                     recovered if its process dies"
                );
                None
            }
        }
    }

    /// This process's slot, claimed now if it has none.
    fn own_slot(&self) -> Option<usize> {
        let me = token();
        let hint = self.inner.slot_hint.load(SeqCst);
        if hint < MAX_HOLDERS && self.slot_owner(hint).load(SeqCst) == me {
            return Some(hint);
        }
        let found = (0..MAX_HOLDERS)
            .find(|i| self.slot_owner(*i).load(SeqCst) == me)
            .or_else(|| {
                (0..MAX_HOLDERS).find(|i| {
                    self.slot_owner(*i)
                        .compare_exchange(0, me, SeqCst, SeqCst)
                        .is_ok()
                })
            })?;
        self.inner.slot_hint.store(found, SeqCst);
        Some(found)
    }

    /// Frees the slots of processes that are gone (giving back what their guards held).
    fn sweep_dead(&self) {
        let owners: HashSet<u64> = (0..MAX_HOLDERS)
            .map(|i| self.slot_owner(i).load(SeqCst))
            .filter(|o| *o != 0 && *o != RECLAIMING && *o != token())
            .collect();
        for owner in owners {
            if matches!(watch_owner(owner), Ok(None)) {
                self.reclaim(owner);
            }
        }
    }

    /// Gives back the permits the dead process `dead` held through guards, once.
    fn reclaim(&self, dead: u64) {
        for index in 0..MAX_HOLDERS {
            let owner = self.slot_owner(index);
            if owner
                .compare_exchange(dead, RECLAIMING, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            let permits = self.slot_count(index).swap(0, SeqCst);
            owner.store(0, SeqCst);
            if permits > 0 {
                tracing::warn!(
                    pid = dead >> 32,
                    permits,
                    "semaphore holder died; its guarded permits returned"
                );
                self.add_capped(permits);
            }
        }
    }

    fn try_take(&self) -> Option<SemaphorePermit<'_>> {
        // The value first: a death between the two steps loses the permit rather than
        // inventing one.
        self.take().then(|| SemaphorePermit {
            sem: self,
            slot: self.track(),
        })
    }

    /// One attempt of the waiting layer: take a permit, or say whose death to watch for
    /// (the processes holding guards) while waiting for a release.
    fn step(&self) -> Result<Step<SemaphorePermit<'_>>> {
        if let Some(permit) = self.try_take() {
            return Ok(Step::Ready(permit));
        }
        let me = token();
        let holders: HashSet<u64> = (0..MAX_HOLDERS)
            .filter(|i| self.slot_count(*i).load(SeqCst) > 0)
            .map(|i| self.slot_owner(i).load(SeqCst))
            .filter(|o| *o != 0 && *o != RECLAIMING && *o != me)
            .collect();
        let mut watches = Vec::with_capacity(holders.len());
        for holder in holders {
            match watch_owner(holder)? {
                Some(watch) => watches.push(watch),
                None => {
                    self.reclaim(holder);
                    return Ok(Step::Again);
                }
            }
        }
        Ok(Step::Wait(watches))
    }

    /// Takes a permit without waiting; `Ok(None)` if the value is zero.
    ///
    /// See [`Semaphore`] for an example.
    pub fn try_acquire(&self) -> Result<Option<SemaphorePermit<'_>>> {
        Ok(self.try_take())
    }

    /// Waits for a permit and takes it.
    ///
    /// Cancel safe: dropped before it returns, it has taken nothing.
    ///
    /// See [`Semaphore`] for an example.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>> {
        self.acquire_until(None).await.and_then(waited_forever)
    }

    /// [`acquire`](Self::acquire), waiting at most `timeout`: `Ok(None)` if no permit
    /// came in time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let sem = multiprocess::Semaphore::new(0)?;
    /// assert!(sem.acquire_timeout(Duration::from_millis(10)).await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<SemaphorePermit<'_>>> {
        self.acquire_until(deadline_after(timeout)).await
    }

    async fn acquire_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<SemaphorePermit<'_>>> {
        self.inner
            .wake
            .drive(Some(self.word(WAITERS)), Patience::Until(deadline), || {
                self.step()
            })
            .await
    }

    /// Waits for a permit and takes it, blocking the calling thread.
    ///
    /// ```
    /// let sem = multiprocess::Semaphore::new(1)?;
    /// let permit = sem.acquire_blocking()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn acquire_blocking(&self) -> Result<SemaphorePermit<'_>> {
        self.acquire_blocking_until(None).and_then(waited_forever)
    }

    /// [`acquire_blocking`](Self::acquire_blocking), waiting at most `timeout`:
    /// `Ok(None)` if no permit came in time.
    ///
    /// ```
    /// use std::time::Duration;
    /// let sem = multiprocess::Semaphore::new(0)?;
    /// assert!(sem.acquire_blocking_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn acquire_blocking_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<SemaphorePermit<'_>>> {
        self.acquire_blocking_until(deadline_after(timeout))
    }

    fn acquire_blocking_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<SemaphorePermit<'_>>> {
        self.inner
            .wake
            .drive_blocking(Some(self.word(WAITERS)), Patience::Until(deadline), || {
                self.step()
            })
    }

    /// Increments the value, waking a waiter: Python's `release()`. Any process may
    /// release, whether or not it acquired (a permit handed on with
    /// [`forget`](SemaphorePermit::forget), or a producer signalling a consumer). A
    /// [`BoundedSemaphore`] at its bound refuses with [`Error::BoundExceeded`].
    ///
    /// See [`SemaphorePermit`] for an example.
    pub fn release(&self) -> Result<()> {
        self.add(1)
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wake = self.inner.wake.wake_fd_for_message()?;
        (&self.inner.page, wake).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (page, wake) = <(SharedMemory, PassFd)>::deserialize(deserializer)?;
        let wake = Notifier::from_message(wake, &page, PAGE, WAKE, "semaphore")?;
        Ok(Semaphore::from_parts(page, wake))
    }
}

/// A [`Semaphore`] whose value never exceeds its initial value, like Python's
/// `BoundedSemaphore`: a [`release`](Semaphore::release) that would raise it above
/// fails with [`Error::BoundExceeded`] (Python raises `ValueError`), whichever process
/// acquired. Dereferences to [`Semaphore`].
///
/// ```
/// let sem = multiprocess::BoundedSemaphore::new(1)?;
/// assert!(matches!(sem.release(), Err(multiprocess::Error::BoundExceeded(_))));
/// sem.acquire_blocking()?.forget();
/// sem.release()?;
/// # Ok::<(), multiprocess::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundedSemaphore(Semaphore);

impl BoundedSemaphore {
    /// A bounded semaphore whose value starts at, and never exceeds, `value`.
    ///
    /// See [`BoundedSemaphore`] for an example.
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        Semaphore::create(value, value).map(BoundedSemaphore)
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;

    fn deref(&self) -> &Semaphore {
        &self.0
    }
}
