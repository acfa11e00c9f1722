//! [`Condition`]: wait for a change announced by another process, under a [`Lock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    LOCK_BYTES, Lock, LockGuard, NOTIFIER_BYTES, Notifier, Patience, Step, deadline_after,
    is_alive, passed, token,
};
use crate::error::{Error, Result};
use crate::ipc::PassFd;
use crate::shm::SharedMemory;

/// Layout of the condition's page: the next waiter's ticket, the notifier's words, then
/// the words of its own lock, then one slot per waiter (its state, its process).
const NEXT_TICKET: usize = 0;
const WAKE: usize = 16;
/// The words of the condition's own lock (one it was not given).
const LOCK: usize = 32;
const SLOTS: usize = LOCK + LOCK_BYTES;
const SLOT_SIZE: usize = 16;
const PAGE: usize = 4096;
const _: () = assert!(WAKE + NOTIFIER_BYTES <= LOCK && LOCK % 8 == 0);
/// How many waiters, in all processes, may wait at the same time.
const MAX_WAITERS: usize = (PAGE - SLOTS) / SLOT_SIZE;

/// A slot's state: free, waiting with a ticket, or woken by a notification issued when
/// the next ticket was `bound` (so it was meant for a waiter with a smaller ticket).
const FREE: u64 = 0;
const WAITING: u64 = 1;
const WOKEN: u64 = 2;

fn waiting(ticket: u64) -> u64 {
    (ticket << 2) | WAITING
}

fn woken(bound: u64) -> u64 {
    (bound << 2) | WOKEN
}

fn kind(state: u64) -> u64 {
    state & 3
}

fn number(state: u64) -> u64 {
    state >> 2
}

/// A condition variable across processes, like Python's `multiprocessing.Condition`:
/// a [`Lock`] plus the means to wait, with the lock released, until another process
/// announces a change.
///
/// [`notify(n)`](Condition::notify) wakes exactly `n` waiters (fewer if fewer wait),
/// [`notify_one`](Condition::notify_one) one, [`notify_all`](Condition::notify_all)
/// every one, as in Python; the longest waiting go first. A waiter only takes a
/// notification issued after it started waiting. Notify while holding the lock, as
/// Python requires: then "started waiting" is well defined.
///
/// Our additions: every wait has a timeout form and a blocking form (see the crate
/// docs); a cancelled async wait never leaves the lock held, and a notification that
/// reached a wait cancelled before it returned passes on to the next eligible waiter
/// instead of being lost; a waiter whose process died is skipped. At most 251 waiters
/// may wait at the same time (then [`Error::BoundExceeded`]).
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
#[derive(Clone)]
pub struct Condition {
    lock: Lock,
    inner: Arc<Inner>,
}

struct Inner {
    page: SharedMemory,
    wake: Notifier,
    /// The lock's words are in `page` (a condition made with its own lock).
    lock_in_page: bool,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("n_waiting", &self.n_waiting())
            .finish()
    }
}

/// Where one waiter stands; dropping it before the wait returned withdraws the waiter
/// or passes its notification on.
struct Waiter<'a> {
    cond: &'a Condition,
    state: WaiterState,
}

enum WaiterState {
    Waiting { index: usize, ticket: u64 },
    Woken { bound: u64 },
    Done,
}

impl Waiter<'_> {
    /// Whether a notification reached this waiter (taking it if so).
    fn woken(&mut self) -> bool {
        match self.state {
            WaiterState::Waiting { index, .. } => {
                let state = self.cond.slot_state(index).load(SeqCst);
                if kind(state) != WOKEN {
                    return false;
                }
                self.cond.free(index);
                self.state = WaiterState::Woken {
                    bound: number(state),
                };
                true
            }
            WaiterState::Woken { .. } => true,
            WaiterState::Done => false,
        }
    }

    /// Stops waiting; `true` if a notification reached this waiter meanwhile.
    fn withdraw(&mut self) -> bool {
        if let WaiterState::Waiting { index, ticket } = self.state {
            if self
                .cond
                .slot_state(index)
                .compare_exchange(waiting(ticket), FREE, SeqCst, SeqCst)
                .is_ok()
            {
                self.state = WaiterState::Done;
                return false;
            }
        }
        self.woken()
    }

    fn finish(&mut self) {
        self.state = WaiterState::Done;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.withdraw() {
            if let WaiterState::Woken { bound } = self.state {
                self.cond.wake(1, bound);
            }
        }
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
        let (page, wake) = Self::page()?;
        Ok(Condition {
            lock: Lock::in_page(&page, LOCK, &wake),
            inner: Arc::new(Inner {
                page,
                wake,
                lock_in_page: true,
            }),
        })
    }

    /// A new condition's page, and its notifier (whose eventfd its own lock shares).
    fn page() -> Result<(SharedMemory, Notifier)> {
        let page = SharedMemory::named("multiprocess-condition", PAGE)?;
        page.atomic::<AtomicU64>(NEXT_TICKET).store(1, SeqCst);
        let wake = Notifier::in_page(&page, WAKE)?;
        Ok((page, wake))
    }

    /// A condition over an existing lock, like Python's `Condition(lock)`.
    ///
    /// ```
    /// let lock = multiprocess::Lock::new()?;
    /// let cond = multiprocess::Condition::with_lock(lock.clone())?;
    /// let guard = cond.lock_blocking()?;
    /// assert!(lock.is_locked());
    /// # drop(guard);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn with_lock(lock: Lock) -> Result<Condition> {
        let (page, wake) = Self::page()?;
        Ok(Condition {
            lock,
            inner: Arc::new(Inner {
                page,
                wake,
                lock_in_page: false,
            }),
        })
    }

    /// How many waits on this condition, in all processes, are registered right now:
    /// waiting, or notified and not yet returned. A wait that returned, timed out or
    /// was cancelled is not counted.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock().await?;
    /// let (guard, timed_out) = cond.wait_timeout(guard, Duration::from_millis(1)).await?;
    /// assert!(timed_out);
    /// assert_eq!(cond.n_waiting(), 0);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    pub fn n_waiting(&self) -> usize {
        (0..MAX_WAITERS)
            .filter(|&index| self.slot_state(index).load(SeqCst) != FREE)
            .count()
    }

    fn next_ticket(&self) -> &AtomicU64 {
        self.inner.page.atomic(NEXT_TICKET)
    }

    fn slot_state(&self, index: usize) -> &AtomicU64 {
        self.inner.page.atomic(SLOTS + index * SLOT_SIZE)
    }

    fn slot_owner(&self, index: usize) -> &AtomicU64 {
        self.inner.page.atomic(SLOTS + index * SLOT_SIZE + 8)
    }

    fn free(&self, index: usize) {
        self.slot_owner(index).store(0, SeqCst);
        self.slot_state(index).store(FREE, SeqCst);
    }

    /// Takes a ticket and a slot for a new waiter.
    fn register(&self) -> Result<Waiter<'_>> {
        let ticket = self.next_ticket().fetch_add(1, SeqCst);
        let claim = |cond: &Self| {
            (0..MAX_WAITERS).find(|i| {
                cond.slot_owner(*i).load(SeqCst) == 0
                    && cond
                        .slot_state(*i)
                        .compare_exchange(FREE, waiting(ticket), SeqCst, SeqCst)
                        .is_ok()
            })
        };
        let index = match claim(self) {
            Some(index) => index,
            None => {
                self.sweep_dead();
                claim(self).ok_or_else(|| {
                    Error::BoundExceeded(format!(
                        "more than {MAX_WAITERS} waiters on one condition"
                    ))
                })?
            }
        };
        self.slot_owner(index).store(token(), SeqCst);
        Ok(Waiter {
            cond: self,
            state: WaiterState::Waiting { index, ticket },
        })
    }

    /// Frees the slots of waiters whose process is gone.
    fn sweep_dead(&self) {
        for index in 0..MAX_WAITERS {
            let state = self.slot_state(index).load(SeqCst);
            let owner = self.slot_owner(index).load(SeqCst);
            if state != FREE
                && owner != 0
                && !is_alive(owner)
                && self
                    .slot_state(index)
                    .compare_exchange(state, FREE, SeqCst, SeqCst)
                    .is_ok()
            {
                self.slot_owner(index).store(0, SeqCst);
            }
        }
    }

    /// Wakes up to `n` of the waiters whose ticket is below `bound`, oldest first,
    /// skipping waiters whose process died.
    fn wake(&self, n: usize, bound: u64) {
        let mut candidates: Vec<(u64, usize)> = (0..MAX_WAITERS)
            .filter_map(|i| {
                let state = self.slot_state(i).load(SeqCst);
                (kind(state) == WAITING && number(state) < bound).then(|| (number(state), i))
            })
            .collect();
        candidates.sort_unstable();
        let mut woken_count = 0;
        for (ticket, index) in candidates {
            if woken_count == n {
                break;
            }
            let owner = self.slot_owner(index).load(SeqCst);
            let state = self.slot_state(index);
            if owner != 0 && !is_alive(owner) {
                if state
                    .compare_exchange(waiting(ticket), FREE, SeqCst, SeqCst)
                    .is_ok()
                {
                    self.slot_owner(index).store(0, SeqCst);
                }
                continue;
            }
            if state
                .compare_exchange(waiting(ticket), woken(bound), SeqCst, SeqCst)
                .is_ok()
            {
                woken_count += 1;
            }
        }
        if woken_count > 0 {
            self.inner.wake.notify();
        }
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
    /// Cancel safe: dropped before it returns, it leaves the lock released and passes
    /// on any notification it had received.
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
    ///     let _held = cond.lock().await?;
    ///     cond.notify_one();
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait<'a>(&'a self, guard: LockGuard<'a>) -> Result<LockGuard<'a>> {
        let (guard, _) = self.wait_until(guard, None).await?;
        Ok(guard)
    }

    /// [`wait`](Self::wait) for at most `timeout`. The lock is held again on return
    /// either way; the `bool` says whether the time ran out without a notification
    /// (std's `Condvar::wait_timeout`; Python's `wait` returns its negation).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock().await?;
    /// let (guard, timed_out) = cond.wait_timeout(guard, Duration::from_millis(10)).await?;
    /// assert!(timed_out);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool)> {
        self.wait_until(guard, deadline_after(timeout)).await
    }

    async fn wait_until<'a>(
        &'a self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> Result<(LockGuard<'a>, bool)> {
        self.check(&guard)?;
        self.inner.wake.arm()?;
        let mut waiter = self.register()?;
        drop(guard);
        let notified = self
            .inner
            .wake
            .drive(None, Patience::Until(deadline), || {
                Ok(ready_if(waiter.woken()))
            })
            .await?;
        let timed_out = notified.is_none() && !waiter.withdraw();
        let guard = self.lock.lock().await?;
        waiter.finish();
        Ok((guard, timed_out))
    }

    /// Waits, with the lock released, until `condition` no longer holds; returns with
    /// the lock held. Python's `wait_for` with the condition negated.
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

    /// [`wait_while`](Self::wait_while) for at most `timeout`; the `bool` says whether
    /// the time ran out with `condition` still holding (Python's `wait_for` returns its
    /// negation).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock().await?;
    /// let (guard, timed_out) = cond
    ///     .wait_while_timeout(guard, || true, Duration::from_millis(10))
    ///     .await?;
    /// assert!(timed_out);
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_while_timeout<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        mut condition: impl FnMut() -> bool,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool)> {
        let deadline = deadline_after(timeout);
        while condition() {
            if passed(deadline) {
                return Ok((guard, true));
            }
            guard = self.wait_until(guard, deadline).await?.0;
        }
        Ok((guard, false))
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
        let (guard, _) = self.wait_blocking_until(guard, None)?;
        Ok(guard)
    }

    /// [`wait_timeout`](Self::wait_timeout), blocking the calling thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock_blocking()?;
    /// let (guard, timed_out) = cond.wait_blocking_timeout(guard, Duration::from_millis(10))?;
    /// assert!(timed_out);
    /// # drop(guard);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn wait_blocking_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool)> {
        self.wait_blocking_until(guard, deadline_after(timeout))
    }

    fn wait_blocking_until<'a>(
        &'a self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> Result<(LockGuard<'a>, bool)> {
        self.check(&guard)?;
        let mut waiter = self.register()?;
        drop(guard);
        let notified = self
            .inner
            .wake
            .drive_blocking(None, Patience::Until(deadline), || {
                Ok(ready_if(waiter.woken()))
            })?;
        let timed_out = notified.is_none() && !waiter.withdraw();
        let guard = self.lock.lock_blocking()?;
        waiter.finish();
        Ok((guard, timed_out))
    }

    /// [`wait_while`](Self::wait_while), blocking the calling thread.
    ///
    /// ```no_run
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock_blocking()?;
    /// let guard = cond.wait_while_blocking(guard, || false)?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn wait_while_blocking<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        mut condition: impl FnMut() -> bool,
    ) -> Result<LockGuard<'a>> {
        while condition() {
            guard = self.wait_blocking(guard)?;
        }
        Ok(guard)
    }

    /// [`wait_while_timeout`](Self::wait_while_timeout), blocking the calling thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cond = multiprocess::Condition::new()?;
    /// let guard = cond.lock_blocking()?;
    /// let (guard, timed_out) =
    ///     cond.wait_while_blocking_timeout(guard, || true, Duration::from_millis(10))?;
    /// assert!(timed_out);
    /// # drop(guard);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn wait_while_blocking_timeout<'a>(
        &'a self,
        mut guard: LockGuard<'a>,
        mut condition: impl FnMut() -> bool,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool)> {
        let deadline = deadline_after(timeout);
        while condition() {
            if passed(deadline) {
                return Ok((guard, true));
            }
            guard = self.wait_blocking_until(guard, deadline)?.0;
        }
        Ok((guard, false))
    }

    /// Wakes up to `n` waiters, in any processes, the longest waiting first: Python's
    /// `notify(n)`.
    ///
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let _held = cond.lock_blocking()?;
    /// cond.notify(2);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn notify(&self, n: usize) {
        if n > 0 {
            self.wake(n, self.next_ticket().load(SeqCst));
        }
    }

    /// Wakes one waiter, the longest waiting.
    ///
    /// ```
    /// let cond = multiprocess::Condition::new()?;
    /// let _held = cond.lock_blocking()?;
    /// cond.notify_one();
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn notify_one(&self) {
        self.notify(1);
    }

    /// Wakes every waiter, in every process.
    ///
    /// See [`Condition`] for an example.
    pub fn notify_all(&self) {
        self.notify(usize::MAX);
    }
}

fn ready_if(woken: bool) -> Step<()> {
    if woken {
        Step::Ready(())
    } else {
        Step::Wait(Vec::new())
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wake = self.inner.wake.wake_fd_for_message()?;
        // A lock in the condition's page comes with the page.
        let lock = (!self.inner.lock_in_page).then_some(&self.lock);
        (lock, &self.inner.page, wake).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (lock, page, wake) = <(Option<Lock>, SharedMemory, PassFd)>::deserialize(deserializer)?;
        let wake = Notifier::from_message(wake, &page, PAGE, WAKE, "condition")?;
        let lock_in_page = lock.is_none();
        Ok(Condition {
            lock: lock.unwrap_or_else(|| Lock::in_page(&page, LOCK, &wake)),
            inner: Arc::new(Inner {
                page,
                wake,
                lock_in_page,
            }),
        })
    }
}
