//! [`RLock`]: a lock the holding thread may take again.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lock::{DEPTH, HOLDING_THREAD};
use super::{Lock, deadline_after};
use crate::error::Result;

/// A re-entrant lock shared by processes, like Python's `multiprocessing.RLock`: the
/// thread that holds it may take it again, and it is free once every guard is dropped.
/// Re-entry is per (process, thread); any other thread or process waits. A holder that
/// dies poisons it, as a [`Lock`] (`Error::OwnerDied` until
/// [`clear_poison`](RLock::clear_poison)).
///
/// ```
/// let rlock = multiprocess::RLock::new()?;
/// let outer = rlock.lock_blocking()?;
/// let inner = rlock.try_lock()?.expect("the holding thread takes it again");
/// drop(inner);
/// assert!(rlock.is_locked());
/// drop(outer);
/// assert!(!rlock.is_locked());
/// # Ok::<(), multiprocess::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RLock {
    lock: Lock,
}

/// Holds an [`RLock`] once; dropping it gives that hold back. Stays on the thread
/// that took it (it is not `Send`).
///
/// See [`RLock`] for an example.
#[must_use = "the hold is given back as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RLockGuard<'a> {
    rlock: &'a RLock,
    _same_thread: PhantomData<*const ()>,
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        self.rlock.exit();
    }
}

fn this_thread() -> u64 {
    nix::unistd::gettid().as_raw() as u64
}

impl RLock {
    /// A new, free re-entrant lock.
    ///
    /// See [`RLock`] for an example.
    pub fn new() -> Result<RLock> {
        Ok(RLock { lock: Lock::new()? })
    }

    fn thread(&self) -> &AtomicU64 {
        self.lock.word(HOLDING_THREAD)
    }

    fn depth(&self) -> &AtomicU32 {
        self.lock.word(DEPTH)
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            rlock: self,
            _same_thread: PhantomData,
        }
    }

    /// Takes it again if this thread holds it.
    fn reenter(&self) -> Option<RLockGuard<'_>> {
        if self.lock.held_here() && self.thread().load(SeqCst) == this_thread() {
            self.depth().fetch_add(1, SeqCst);
            return Some(self.guard());
        }
        None
    }

    /// Records the first hold by this thread, the lock just taken.
    fn entered(&self) -> RLockGuard<'_> {
        self.thread().store(this_thread(), SeqCst);
        self.depth().store(1, SeqCst);
        self.guard()
    }

    fn exit(&self) {
        if self.depth().fetch_sub(1, SeqCst) == 1 {
            self.thread().store(0, SeqCst);
            self.lock.unlock();
        }
    }

    /// Whether some thread of some process holds it.
    ///
    /// See [`RLock`] for an example.
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// The pid of the process holding it, if any.
    ///
    /// ```
    /// let rlock = multiprocess::RLock::new()?;
    /// let _held = rlock.lock_blocking()?;
    /// assert_eq!(rlock.owner(), Some(std::process::id()));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn owner(&self) -> Option<u32> {
        self.lock.owner()
    }

    /// Whether a holder died holding it.
    ///
    /// ```
    /// assert!(!multiprocess::RLock::new()?.is_poisoned());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.lock.is_poisoned()
    }

    /// Declares the guarded data sound again after a holder died.
    ///
    /// ```
    /// multiprocess::RLock::new()?.clear_poison();
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn clear_poison(&self) {
        self.lock.clear_poison()
    }

    /// Takes it without waiting (again, if this thread holds it); `Ok(None)` if another
    /// thread or process holds it.
    ///
    /// See [`RLock`] for an example.
    pub fn try_lock(&self) -> Result<Option<RLockGuard<'_>>> {
        if let Some(again) = self.reenter() {
            return Ok(Some(again));
        }
        Ok(self.lock.try_lock()?.map(|held| {
            std::mem::forget(held);
            self.entered()
        }))
    }

    /// Waits for it and takes it (at once, if this thread holds it).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let rlock = multiprocess::RLock::new()?;
    /// let outer = rlock.lock().await?;
    /// let inner = rlock.lock().await?;
    /// # drop((inner, outer));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock(&self) -> Result<RLockGuard<'_>> {
        if let Some(again) = self.reenter() {
            return Ok(again);
        }
        self.lock.acquire(false).await?;
        Ok(self.entered())
    }

    /// [`lock`](Self::lock), waiting at most `timeout`: `Ok(None)` if it was not free
    /// in time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let rlock = multiprocess::RLock::new()?;
    /// assert!(rlock.lock_timeout(Duration::from_millis(10)).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<Option<RLockGuard<'_>>> {
        if let Some(again) = self.reenter() {
            return Ok(Some(again));
        }
        let taken = self
            .lock
            .acquire_until(false, deadline_after(timeout))
            .await?;
        Ok(taken.then(|| self.entered()))
    }

    /// Waits for it and takes it, blocking the calling thread.
    ///
    /// See [`RLock`] for an example.
    pub fn lock_blocking(&self) -> Result<RLockGuard<'_>> {
        if let Some(again) = self.reenter() {
            return Ok(again);
        }
        self.lock.acquire_blocking(false, None)?;
        Ok(self.entered())
    }

    /// [`lock_blocking`](Self::lock_blocking), waiting at most `timeout`: `Ok(None)`
    /// if it was not free in time.
    ///
    /// ```
    /// use std::time::Duration;
    /// let rlock = multiprocess::RLock::new()?;
    /// assert!(rlock.lock_blocking_timeout(Duration::from_millis(10))?.is_some());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn lock_blocking_timeout(&self, timeout: Duration) -> Result<Option<RLockGuard<'_>>> {
        if let Some(again) = self.reenter() {
            return Ok(Some(again));
        }
        let taken = self.lock.acquire_blocking(false, deadline_after(timeout))?;
        Ok(taken.then(|| self.entered()))
    }
}
