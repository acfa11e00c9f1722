//! [`Lock`]: a mutual-exclusion lock across processes, awaitable, robust to a holder's
//! death.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    Attempt, Counted, NOTIFIER_BYTES, Notifier, Patience, Step, deadline_after, token, watch_owner,
};
use crate::error::{Error, Result};
use crate::ipc::PassFd;
use crate::shm::{SharedMemory, Words};

/// Layout of the lock's page.
const OWNER: usize = 0;
const WAITERS: usize = 8;
const POISONED_BY: usize = 12;
const WAKE: usize = 16;
/// Words only an [`RLock`](super::RLock) uses: which thread of the holder holds it,
/// and how many times.
pub(super) const HOLDING_THREAD: usize = 32;
pub(super) const DEPTH: usize = 40;
const PAGE: usize = 48;
/// Bytes a lock occupies in its owner's page (8-byte aligned).
pub(crate) const LOCK_BYTES: usize = PAGE;
const _: () = assert!(WAKE + NOTIFIER_BYTES <= HOLDING_THREAD);

/// A lock shared by processes: at most one holder at a time, in any process.
///
/// Taking it is one atomic compare-and-swap when it is free; waiting goes through
/// tokio's reactor. If a process dies holding the lock, the next process waiting for it
/// notices at once (it watches the holder's pidfd), frees it and marks it poisoned:
/// from then on `lock` fails with [`Error::OwnerDied`] until someone who has checked
/// the guarded data calls [`clear_poison`](Lock::clear_poison) — the rule of std's
/// `Mutex`, across processes. Python's `multiprocessing.Lock` deadlocks instead.
///
/// Every wait comes in four forms (see the crate docs on waiting): [`lock`](Lock::lock),
/// [`lock_timeout`](Lock::lock_timeout), [`lock_blocking`](Lock::lock_blocking),
/// [`lock_blocking_timeout`](Lock::lock_blocking_timeout), plus
/// [`try_lock`](Lock::try_lock), which never waits.
///
/// ```
/// use multiprocess::{Lock, Value, spawn_process};
///
/// fn add(args: (Lock, Value<u64>)) {
///     let (lock, counter) = args;
///     for _ in 0..100 {
///         let _held = lock.lock_blocking().unwrap();
///         counter.set(counter.get() + 1);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let lock = Lock::new()?;
/// let counter = Value::new(0u64)?;
/// let children: Vec<_> = (0..3)
///     .map(|_| spawn_process(add, (lock.clone(), counter.clone())))
///     .collect::<Result<_, _>>()?;
/// for child in children {
///     child.await?;
/// }
/// assert_eq!(counter.get(), 300);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Lock {
    inner: Arc<Inner>,
}

struct Inner {
    /// The lock's words in its page.
    words: Words,
    wake: Notifier,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("owner", &self.owner())
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

/// Holds a [`Lock`]; dropping it releases the lock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let lock = multiprocess::Lock::new()?;
/// {
///     let _guard = lock.lock().await?;
///     assert!(lock.try_lock()?.is_none());
/// }
/// assert!(lock.try_lock()?.is_some());
/// # Ok(())
/// # }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Whether this guard holds `lock` (or a handle to the same lock).
    pub(crate) fn is_of(&self, lock: &Lock) -> bool {
        self.lock.same_as(lock)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

impl Lock {
    /// A new, free lock.
    ///
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new() -> Result<Lock> {
        let page = SharedMemory::named("multiprocess-lock", PAGE)?;
        let wake = Notifier::in_page(&page, WAKE)?;
        Ok(Lock {
            inner: Arc::new(Inner {
                words: Words::new(&page, 0, PAGE),
                wake,
            }),
        })
    }

    /// A lock whose words are the [`LOCK_BYTES`] of `page` from `base` (8-aligned),
    /// woken through `wakes`'s eventfd: an owner's internal lock that costs no
    /// descriptor or mapping of its own.
    pub(crate) fn in_page(page: &SharedMemory, base: usize, wakes: &Notifier) -> Lock {
        debug_assert!(base % 8 == 0 && base + PAGE <= page.len());
        Lock {
            inner: Arc::new(Inner {
                words: Words::new(page, base, PAGE),
                wake: wakes.sharing(page, base + WAKE),
            }),
        }
    }

    /// Whether `other` is a handle to the same lock, in this process or from another.
    pub(crate) fn same_as(&self, other: &Lock) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.page_id() == other.page_id()
    }

    /// Identifies the lock's shared page, the same in every handle to it.
    fn page_id(&self) -> *const AtomicU64 {
        self.owner_word()
    }

    fn owner_word(&self) -> &AtomicU64 {
        self.word(OWNER)
    }

    fn waiters(&self) -> &AtomicU32 {
        self.word(WAITERS)
    }

    fn poisoned_by(&self) -> &AtomicU32 {
        self.word(POISONED_BY)
    }

    /// A word of the lock, by its offset in the lock's layout (also for
    /// [`RLock`](super::RLock)).
    pub(super) fn word<A>(&self, offset: usize) -> &A {
        self.inner.words.atomic(offset)
    }

    /// Whether this process holds the lock.
    pub(super) fn held_here(&self) -> bool {
        self.owner_word().load(SeqCst) == token()
    }

    /// Whether some process (this one included) holds the lock right now.
    ///
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// let guard = lock.try_lock()?;
    /// assert!(lock.is_locked());
    /// drop(guard);
    /// assert!(!lock.is_locked());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_locked(&self) -> bool {
        self.owner_word().load(SeqCst) != 0
    }

    /// The pid of the process holding the lock right now, if any. A holder that died
    /// is reported until a waiter notices the death and frees the lock.
    ///
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// assert_eq!(lock.owner(), None);
    /// let _guard = lock.try_lock()?;
    /// assert_eq!(lock.owner(), Some(std::process::id()));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn owner(&self) -> Option<u32> {
        match self.owner_word().load(SeqCst) {
            0 => None,
            holder => Some((holder >> 32) as u32),
        }
    }

    /// Whether a holder died holding the lock (and the poison was not cleared).
    ///
    /// ```
    /// assert!(!multiprocess::Lock::new()?.is_poisoned());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.poisoned_by().load(SeqCst) != 0
    }

    /// Declares the guarded data sound again after a holder died.
    ///
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// lock.clear_poison();
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn clear_poison(&self) {
        self.poisoned_by().store(0, SeqCst);
    }

    fn poison_check(&self, ignore_poison: bool) -> Result<()> {
        match self.poisoned_by().load(SeqCst) {
            0 => Ok(()),
            _ if ignore_poison => Ok(()),
            pid => Err(Error::OwnerDied { pid }),
        }
    }

    fn try_take(&self) -> bool {
        self.owner_word()
            .compare_exchange(0, token(), SeqCst, SeqCst)
            .is_ok()
    }

    /// Frees the lock from a dead holder, once, and poisons it.
    fn recover(&self, dead: u64) {
        if self
            .owner_word()
            .compare_exchange(dead, 0, SeqCst, SeqCst)
            .is_ok()
        {
            tracing::warn!(
                pid = dead >> 32,
                "lock holder died; lock freed and poisoned"
            );
            self.poisoned_by().store((dead >> 32) as u32, SeqCst);
            self.inner.wake.notify();
        }
    }

    fn release(&self) {
        if self
            .owner_word()
            .compare_exchange(token(), 0, SeqCst, SeqCst)
            .is_ok()
            && self.waiters().load(SeqCst) > 0
        {
            self.inner.wake.notify();
        }
    }

    /// One attempt of the waiting layer: take the lock, or say whose death to watch
    /// for while waiting for its release.
    fn step(&self, ignore_poison: bool) -> Result<Step<()>> {
        self.poison_check(ignore_poison)?;
        if self.try_take() {
            return Ok(Step::Ready(()));
        }
        let holder = self.owner_word().load(SeqCst);
        if holder == 0 {
            return Ok(Step::Again);
        }
        match watch_owner(holder)? {
            None => {
                self.recover(holder);
                Ok(Step::Again)
            }
            Some(watch) => Ok(Step::Wait(vec![watch])),
        }
    }

    /// One attempt at taking the lock, as part of a larger operation run by either
    /// driver; `counted` (kept by the operation) counts it as a waiter once it waits,
    /// if it `enlist`s (a call that never waits does not).
    pub(crate) fn attempt<'a>(
        &'a self,
        counted: &mut Option<Counted<'a>>,
        enlist: bool,
        ignore_poison: bool,
    ) -> Result<Attempt<'a, ()>> {
        // A free lock is taken with its compare-and-swap alone, before any of the
        // bookkeeping a wait needs.
        if counted.is_none() {
            self.poison_check(ignore_poison)?;
            if self.try_take() {
                return Ok(Attempt::Ready(()));
            }
        }
        let waiters = enlist.then(|| self.waiters());
        self.inner
            .wake
            .attempt(waiters, counted, || self.step(ignore_poison))
    }

    fn guard(&self, taken: bool) -> Option<LockGuard<'_>> {
        // Built only once taken: a guard's drop releases the lock.
        taken.then(|| LockGuard { lock: self })
    }

    /// Takes the lock without waiting; `Ok(None)` if another holds it.
    /// `Err(OwnerDied)` if it is poisoned.
    ///
    /// See [`LockGuard`] for an example.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        self.poison_check(false)?;
        Ok(self.guard(self.try_take()))
    }

    /// Waits for the lock and takes it. `Err(OwnerDied)` if it is poisoned.
    ///
    /// Cancel safe: dropped before it returns, it leaves the lock as it was.
    ///
    /// See [`Lock`] for an example.
    pub async fn lock(&self) -> Result<LockGuard<'_>> {
        self.acquire(false).await?;
        Ok(LockGuard { lock: self })
    }

    /// [`lock`](Self::lock), waiting at most `timeout`: `Ok(None)` if the lock was not
    /// free in time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let lock = multiprocess::Lock::new()?;
    /// let held = lock.lock().await?;
    /// assert!(lock.lock_timeout(Duration::from_millis(10)).await?.is_none());
    /// drop(held);
    /// assert!(lock.lock_timeout(Duration::from_millis(10)).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
        let taken = self.acquire_until(false, deadline_after(timeout)).await?;
        Ok(self.guard(taken))
    }

    pub(crate) async fn acquire(&self, ignore_poison: bool) -> Result<()> {
        self.acquire_until(ignore_poison, None).await.map(drop)
    }

    /// Takes the lock, waiting through the reactor until `deadline`; `Ok(false)` if it
    /// passed first.
    pub(crate) async fn acquire_until(
        &self,
        ignore_poison: bool,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        // The uncontended case, without setting up a wait.
        self.poison_check(ignore_poison)?;
        if self.try_take() {
            return Ok(true);
        }
        let taken = self
            .inner
            .wake
            .drive(Some(self.waiters()), Patience::Until(deadline), || {
                self.step(ignore_poison)
            })
            .await?;
        Ok(taken.is_some())
    }

    /// Waits for the lock and takes it, blocking the calling thread (for code without a
    /// runtime, such as a plain function in a child).
    ///
    /// See [`Lock`] for an example.
    pub fn lock_blocking(&self) -> Result<LockGuard<'_>> {
        self.acquire_blocking(false, None)?;
        Ok(LockGuard { lock: self })
    }

    /// [`lock_blocking`](Self::lock_blocking), waiting at most `timeout`: `Ok(None)`
    /// if the lock was not free in time.
    ///
    /// ```
    /// use std::time::Duration;
    /// let lock = multiprocess::Lock::new()?;
    /// let held = lock.lock_blocking()?;
    /// assert!(lock.lock_blocking_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn lock_blocking_timeout(&self, timeout: Duration) -> Result<Option<LockGuard<'_>>> {
        let taken = self.acquire_blocking(false, deadline_after(timeout))?;
        Ok(self.guard(taken))
    }

    /// Takes the lock, blocking until `deadline`; `Ok(false)` if it passed first.
    pub(crate) fn acquire_blocking(
        &self,
        ignore_poison: bool,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let taken = self.inner.wake.drive_blocking(
            Some(self.waiters()),
            Patience::Until(deadline),
            || self.step(ignore_poison),
        )?;
        Ok(taken.is_some())
    }

    /// Releases a lock taken by [`acquire`](Self::acquire) without a guard.
    pub(crate) fn unlock(&self) {
        self.release();
    }
}

impl Serialize for Lock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wake = self.inner.wake.wake_fd_for_message()?;
        let words = &self.inner.words;
        (words.memory(), wake, words.base() as u32).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (page, wake, base) = <(SharedMemory, PassFd, u32)>::deserialize(deserializer)?;
        let base = base as usize;
        if base % 8 != 0 {
            return Err(serde::de::Error::custom("lock words misaligned"));
        }
        let wake = Notifier::from_message(wake, &page, base + PAGE, base + WAKE, "lock")?;
        Ok(Lock {
            inner: Arc::new(Inner {
                words: Words::new(&page, base, PAGE),
                wake,
            }),
        })
    }
}
