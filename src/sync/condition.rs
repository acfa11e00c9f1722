//! [`Condition`]: wait for a change announced by another process, under a [`Lock`].

use serde::{Deserialize, Serialize};

use super::{Lock, LockGuard, Notifier};
use crate::error::{Error, Result};

/// A condition variable across processes, like Python's `multiprocessing.Condition`:
/// a [`Lock`] plus the means to wait, with the lock released, until another process
/// announces a change.
///
/// As with every condition variable, a waiter can wake without a notification meant
/// for it: wait in a loop on the condition itself ([`wait_while`](Condition::wait_while)
/// does that). `notify_one` and `notify_all` both wake every waiter; the loop sorts out
/// who proceeds.
///
/// ```
/// use multiprocess::{Condition, Value, spawn_process};
///
/// fn producer(args: (Condition, Value<u32>)) {
///     let (cond, ready) = args;
///     let _held = cond.lock_blocking().unwrap();
///     ready.set(42);
///     cond.notify_all();
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let cond = Condition::new()?;
/// let ready = Value::new(0u32)?;
/// let child = spawn_process(producer, (cond.clone(), ready.clone()))?;
/// let guard = cond.lock().await?;
/// let _guard = cond.wait_while(guard, || ready.get() == 0).await?;
/// assert_eq!(ready.get(), 42);
/// # drop(_guard);
/// child.await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: Lock,
    wake: std::sync::Arc<Notifier>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish()
    }
}

impl Condition {
    /// A condition with a lock of its own.
    ///
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new() -> Result<Condition> {
        Ok(Condition {
            lock: Lock::new()?,
            wake: std::sync::Arc::new(Notifier::new()?),
        })
    }

    /// Takes the condition's lock.
    ///
    /// See [`Condition`] for an example.
    pub async fn lock(&self) -> Result<LockGuard<'_>> {
        self.lock.lock().await
    }

    /// Takes the condition's lock, blocking the calling thread.
    ///
    /// See [`Condition`] for an example.
    pub fn lock_blocking(&self) -> Result<LockGuard<'_>> {
        self.lock.lock_blocking()
    }

    fn check<'a>(&'a self, guard: &LockGuard<'a>) -> Result<()> {
        if !guard.is_of(&self.lock) {
            return Err(Error::BoundExceeded(
                "the guard is not of this condition's lock".into(),
            ));
        }
        Ok(())
    }

    /// Releases the lock, waits for a notification, and takes the lock again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let cond = multiprocess::Condition::new()?;
    /// let waiter = {
    ///     let cond = cond.clone();
    ///     tokio::spawn(async move {
    ///         let guard = cond.lock().await.unwrap();
    ///         drop(cond.wait(guard).await.unwrap());
    ///     })
    /// };
    /// while !waiter.is_finished() {
    ///     tokio::task::yield_now().await;
    ///     cond.notify_all();
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait<'a>(&'a self, guard: LockGuard<'a>) -> Result<LockGuard<'a>> {
        self.check(&guard)?;
        self.wake.arm()?;
        // Noted while the lock is held, so a notification sent after we release it (by
        // someone who then took the lock) is not missed.
        let seen = self.wake.observe();
        drop(guard);
        self.wake.wait(seen, &[]).await?;
        self.lock.lock().await
    }

    /// Waits, with the lock released, until `condition` no longer holds; returns with
    /// the lock held.
    ///
    /// See [`Condition`] for an example.
    pub async fn wait_while<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        mut condition: impl FnMut() -> bool,
    ) -> Result<LockGuard<'a>> {
        while condition() {
            guard = self.wait(guard).await?;
        }
        Ok(guard)
    }

    /// [`wait`](Self::wait), blocking the calling thread.
    ///
    /// ```no_run
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock_blocking()?;
    /// let guard = cond.wait_blocking(guard)?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn wait_blocking<'a>(&'a self, guard: LockGuard<'a>) -> Result<LockGuard<'a>> {
        self.check(&guard)?;
        let seen = self.wake.observe();
        drop(guard);
        self.wake.wait_blocking(seen, &[], None)?;
        self.lock.lock_blocking()
    }

    /// Wakes every waiter, in every process.
    ///
    /// See [`Condition`] for an example.
    pub fn notify_all(&self) {
        self.wake.notify();
    }

    /// Wakes a waiter (in fact every waiter: see [`Condition`]).
    ///
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// cond.notify_one();
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn notify_one(&self) {
        self.wake.notify();
    }
}
