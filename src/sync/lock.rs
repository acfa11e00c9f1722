//! [`Lock`]: a mutual-exclusion lock across processes, awaitable, robust to a holder's
//! death.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Counted, Notifier, token, watch_owner};
use crate::error::{Error, Result};
use crate::shm::SharedMemory;

const OWNER: usize = 0;
const WAITERS: usize = 8;
const POISONED_BY: usize = 12;

/// A lock shared by processes: at most one holder at a time, in any process.
///
/// Taking it is one atomic compare-and-swap when it is free; waiting goes through
/// tokio's reactor. If a process dies holding the lock, the next process waiting for it
/// notices at once (it watches the holder's pidfd), frees it and marks it poisoned:
/// from then on `lock` fails with [`Error::OwnerDied`] until someone who has checked
/// the guarded data calls [`clear_poison`](Lock::clear_poison) — the rule of std's
/// `Mutex`, across processes. Python's `multiprocessing.Lock` deadlocks instead.
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

#[derive(Serialize, Deserialize)]
struct Inner {
    page: SharedMemory,
    wake: Notifier,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("owner_pid", &(self.owner().load(SeqCst) >> 32))
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
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Whether this guard holds `lock` (or a handle to the same lock).
    pub(crate) fn is_of(&self, lock: &Lock) -> bool {
        std::sync::Arc::ptr_eq(&self.lock.inner, &lock.inner)
            || self.lock.page_id() == lock.page_id()
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
        Ok(Lock {
            inner: Arc::new(Inner {
                page: SharedMemory::named("multiprocess-lock", 16)?,
                wake: Notifier::new()?,
            }),
        })
    }

    /// Identifies the lock's shared page, the same in every handle to it.
    fn page_id(&self) -> *const AtomicU64 {
        self.owner()
    }

    fn owner(&self) -> &AtomicU64 {
        self.inner.page.atomic(OWNER)
    }

    fn waiters(&self) -> &AtomicU32 {
        self.inner.page.atomic(WAITERS)
    }

    fn poisoned_by(&self) -> &AtomicU32 {
        self.inner.page.atomic(POISONED_BY)
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
        self.owner()
            .compare_exchange(0, token(), SeqCst, SeqCst)
            .is_ok()
    }

    /// Frees the lock from a dead holder, once, and poisons it.
    fn recover(&self, dead: u64) {
        if self
            .owner()
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
            .owner()
            .compare_exchange(token(), 0, SeqCst, SeqCst)
            .is_ok()
            && self.waiters().load(SeqCst) > 0
        {
            self.inner.wake.notify();
        }
    }

    /// Takes the lock without waiting; `Ok(None)` if another holds it.
    ///
    /// See [`LockGuard`] for an example.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        self.poison_check(false)?;
        // Built only on success: a guard's drop releases the lock.
        Ok(if self.try_take() {
            Some(LockGuard { lock: self })
        } else {
            None
        })
    }

    /// Waits for the lock and takes it. `Err(OwnerDied)` if it is poisoned.
    ///
    /// See [`Lock`] for an example.
    pub async fn lock(&self) -> Result<LockGuard<'_>> {
        self.acquire(false).await?;
        Ok(LockGuard { lock: self })
    }

    pub(crate) async fn acquire(&self, ignore_poison: bool) -> Result<()> {
        loop {
            self.poison_check(ignore_poison)?;
            if self.try_take() {
                return Ok(());
            }
            self.inner.wake.arm()?;
            let _waiting = Counted::new(self.waiters());
            let seen = self.inner.wake.observe();
            if self.try_take() {
                return Ok(());
            }
            let holder = self.owner().load(SeqCst);
            if holder == 0 {
                continue;
            }
            match watch_owner(holder)? {
                None => self.recover(holder),
                Some(watch) => {
                    self.inner
                        .wake
                        .wait(seen, std::slice::from_ref(&watch))
                        .await?
                }
            }
        }
    }

    /// Waits for the lock and takes it, blocking the calling thread (for code without a
    /// runtime, such as a plain function in a child).
    ///
    /// See [`Lock`] for an example.
    pub fn lock_blocking(&self) -> Result<LockGuard<'_>> {
        self.acquire_blocking(false, None)?;
        Ok(LockGuard { lock: self })
    }

    pub(crate) fn acquire_blocking(
        &self,
        ignore_poison: bool,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        loop {
            self.poison_check(ignore_poison)?;
            if self.try_take() {
                return Ok(true);
            }
            let _waiting = Counted::new(self.waiters());
            let seen = self.inner.wake.observe();
            if self.try_take() {
                return Ok(true);
            }
            let holder = self.owner().load(SeqCst);
            if holder == 0 {
                continue;
            }
            match watch_owner(holder)? {
                None => self.recover(holder),
                Some(watch) => {
                    if !self.inner.wake.wait_blocking(
                        seen,
                        std::slice::from_ref(&watch),
                        deadline,
                    )? {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Releases a lock taken by [`acquire`](Self::acquire) without a guard.
    pub(crate) fn unlock(&self) {
        self.release();
    }
}

impl Serialize for Lock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inner::deserialize(deserializer).map(|inner| Lock {
            inner: Arc::new(inner),
        })
    }
}
