//! [`Barrier`]: processes wait for each other, round after round, with the semantics of
//! Python's `multiprocessing.Barrier`.
//!
//! State lives in one shared page: a single 64-bit *round* word (generation, phase,
//! arrivals) that readers load without a lock, and one slot per party holding the
//! process token of whoever arrived at that index in the current round, so that a
//! party's death can be observed through its pidfd. Every change is made under an
//! internal [`Lock`] and ends in one store of the round word, so a process killed in
//! the middle of a change leaves either the old round or the new one.
//!
//! A party learns its round was released when the generation moves on. The generation
//! moves only when a round is released, or when a reset completes, and a reset completes
//! only once every party counted in the old round has left it; so a party still
//! counted that sees a new generation knows its round was released, however late it
//! looks.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::Lock;
use super::{
    Attempt, Counted, LOCK_BYTES, NOTIFIER_BYTES, Notifier, OwnerWatch, Patience, Wait, drive,
    drive_blocking, token, waited_forever, watch_owner,
};
use crate::error::{Error, Result};
use crate::ipc::PassFd;
use crate::shm::SharedMemory;
use crate::start::entry::{CallPlain, Named};

const ROUND: usize = 0;
const PARTIES: usize = 8;
const WAKE: usize = 12;
/// The internal lock's words.
const GUARD: usize = 24;
const SLOTS: usize = GUARD + LOCK_BYTES;
const SLOT_SIZE: usize = 8;
const _: () = assert!(WAKE + NOTIFIER_BYTES <= GUARD && SLOTS % SLOT_SIZE == 0);

/// How many times a party tries the internal lock before it waits for it.
const ENTER_SPINS: u32 = 100;

/// The most parties one barrier can have.
const MAX_PARTIES: u32 = 1 << 16;

/// Makes `parties` waiters (in any processes, tasks or threads) wait until all have
/// arrived, then releases them together; reusable, round after round. Python's
/// `multiprocessing.Barrier`, awaitable.
///
/// [`wait`](Barrier::wait) returns the party's arrival index in its round, `0` for the
/// first to arrive up to `parties - 1` for the last, which runs the barrier's action (if
/// it has one, see [`with_action`](Barrier::with_action)) and releases the others.
///
/// A barrier *breaks*, as in Python, when a wait times out, when the action panics, and
/// on [`abort`](Barrier::abort): every party waiting gets [`Error::BrokenBarrier`], and
/// so does every later wait, until [`reset`](Barrier::reset). On top of Python's rules:
///
/// - **Cancel safety.** Dropping a [`wait`](Barrier::wait) future (for example through
///   `tokio::time::timeout` or `select!`) after it was counted in a round that has not
///   been released breaks the barrier, exactly as a timed-out wait does; dropped before
///   it was counted, or after its round was released, it leaves no trace. A round is
///   never released one party short.
/// - **Party death.** A process that dies while one of its parties is waiting breaks
///   the barrier: the other parties watch every waiting process's pidfd and learn of the
///   death at once, instead of waiting forever as in Python.
///
/// ```
/// use multiprocess::{Barrier, spawn_process};
///
/// fn party(barrier: Barrier) -> u32 {
///     barrier.wait_blocking().unwrap()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let barrier = Barrier::new(3)?;
/// let a = spawn_process(party, barrier.clone())?;
/// let b = spawn_process(party, barrier.clone())?;
/// let mine = barrier.wait().await?;
/// let mut indices = [mine, a.await?, b.await?];
/// indices.sort();
/// assert_eq!(indices, [0, 1, 2]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Barrier {
    inner: Arc<Inner>,
}

struct Inner {
    page: SharedMemory,
    /// Serialises changes to the round word and the slots.
    guard: Lock,
    wake: Notifier,
    action: Option<Action>,
}

/// The function run once per round before the release. Crosses to a child named by its
/// address in the executable's code, like a child's own function.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Action(Named<(), ()>);

/// Where the current round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Parties are arriving.
    Filling = 0,
    /// All arrived; the last one runs the action, then releases the round.
    Releasing = 1,
    /// Broken until reset: waits fail.
    Broken = 2,
    /// Reset while parties were counted: they are leaving with `BrokenBarrier`; new
    /// arrivals wait for them to be gone.
    Resetting = 3,
}

/// The round word: generation, phase and how many parties arrived, read and written as
/// one 64-bit value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Round {
    generation: u32,
    phase: Phase,
    arrived: u32,
}

impl Round {
    fn pack(self) -> u64 {
        (u64::from(self.generation) << 32) | ((self.phase as u64) << 24) | u64::from(self.arrived)
    }

    fn unpack(word: u64) -> Round {
        let phase = match (word >> 24) & 0xff {
            0 => Phase::Filling,
            1 => Phase::Releasing,
            3 => Phase::Resetting,
            _ => Phase::Broken,
        };
        Round {
            generation: (word >> 32) as u32,
            phase,
            arrived: (word & 0xff_ffff) as u32,
        }
    }

    /// The first round of the next generation.
    fn next(self) -> Round {
        Round {
            generation: self.generation.wrapping_add(1),
            phase: Phase::Filling,
            arrived: 0,
        }
    }

    fn with_phase(self, phase: Phase) -> Round {
        Round { phase, ..self }
    }
}

/// A party counted in a round.
#[derive(Clone, Copy, Debug)]
struct Party {
    generation: u32,
    index: u32,
    /// Arrived last: runs the action and releases the round.
    last: bool,
}

/// What an arrival found.
enum Arrival {
    Counted(Party),
    /// Arrived last at a barrier without an action, and released the round at once.
    Released(u32),
    Broken,
    /// Busy releasing or resetting the round of this generation: try again once it
    /// moves on.
    Busy,
}

/// Holds the barrier's internal lock.
struct Held<'a> {
    barrier: &'a Barrier,
    /// The round changed: wake everyone once the lock is free again, so that the
    /// parties woken do not find it still taken.
    changed: std::cell::Cell<bool>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.barrier.inner.guard.unlock();
        if self.changed.get() {
            self.barrier.inner.wake.notify();
        }
    }
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Barrier {
    /// A barrier for `parties` waiters (at least 1, at most 65536).
    ///
    /// ```
    /// let barrier = multiprocess::Barrier::new(4)?;
    /// assert_eq!(barrier.parties(), 4);
    /// assert!(multiprocess::Barrier::new(0).is_err());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(parties: u32) -> Result<Barrier> {
        Self::create(parties, None)
    }

    /// A barrier for `parties` waiters whose last arrival in each round runs `action`
    /// before the round is released, as Python's `Barrier(parties, action)`. The action
    /// runs in whichever process that party is in, on the thread of its wait (for an
    /// async wait, a runtime thread: keep it short). If it panics the barrier breaks: the
    /// other parties get [`Error::BrokenBarrier`] and the panic continues in the party
    /// that ran it, as Python re-raises the action's exception there.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// static ROUNDS: AtomicU32 = AtomicU32::new(0);
    ///
    /// fn count_round() {
    ///     ROUNDS.fetch_add(1, Ordering::SeqCst);
    /// }
    ///
    /// let barrier = multiprocess::Barrier::with_action(1, count_round)?;
    /// barrier.wait_blocking()?;
    /// barrier.wait_blocking()?;
    /// assert_eq!(ROUNDS.load(Ordering::SeqCst), 2);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn with_action(parties: u32, action: fn()) -> Result<Barrier> {
        let Ok(action) = Named::new::<CallPlain>(action) else {
            return Err(invalid(
                "a barrier action must be a function of this executable",
            ));
        };
        Self::create(parties, Some(Action(action)))
    }

    fn create(parties: u32, action: Option<Action>) -> Result<Barrier> {
        if !(1..=MAX_PARTIES).contains(&parties) {
            return Err(invalid(&format!(
                "a barrier needs between 1 and {MAX_PARTIES} parties, not {parties}"
            )));
        }
        let page =
            SharedMemory::named("multiprocess-barrier", SLOTS + SLOT_SIZE * parties as usize)?;
        page.atomic::<AtomicU32>(PARTIES).store(parties, SeqCst);
        let wake = Notifier::in_page(&page, WAKE)?;
        Ok(Barrier {
            inner: Arc::new(Inner {
                guard: Lock::in_page(&page, GUARD, &wake),
                wake,
                page,
                action,
            }),
        })
    }

    /// How many waiters each round needs.
    ///
    /// See [`Barrier::new`] for an example.
    pub fn parties(&self) -> u32 {
        let capacity = (self.inner.page.len().saturating_sub(SLOTS) / SLOT_SIZE) as u32;
        self.inner
            .page
            .atomic::<AtomicU32>(PARTIES)
            .load(SeqCst)
            .clamp(1, capacity.max(1))
    }

    /// How many parties are waiting in the current round (0 while it is broken or being
    /// reset), as Python's `n_waiting`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// assert_eq!(barrier.n_waiting(), 0);
    /// let waiter = barrier.clone();
    /// let first = tokio::spawn(async move { waiter.wait().await });
    /// while barrier.n_waiting() == 0 {
    ///     tokio::task::yield_now().await;
    /// }
    /// assert_eq!(barrier.wait().await?, 1);
    /// assert_eq!(first.await.unwrap()?, 0);
    /// assert_eq!(barrier.n_waiting(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn n_waiting(&self) -> u32 {
        let round = self.round();
        match round.phase {
            Phase::Filling => round.arrived,
            _ => 0,
        }
    }

    /// Whether the barrier is broken (a wait timed out or was cancelled, the action
    /// panicked, a waiting party died, or [`abort`](Barrier::abort) was called), as
    /// Python's `broken`.
    ///
    /// ```
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// assert!(!barrier.is_broken());
    /// barrier.abort()?;
    /// assert!(barrier.is_broken());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn is_broken(&self) -> bool {
        self.round().phase == Phase::Broken
    }

    /// Breaks the barrier: every waiting party gets [`Error::BrokenBarrier`], and so does
    /// every later wait until [`reset`](Barrier::reset). Python's `abort`, used to stop a
    /// group of parties when one of them cannot go on.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// barrier.abort()?;
    /// assert!(matches!(
    ///     barrier.wait().await,
    ///     Err(multiprocess::Error::BrokenBarrier)
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn abort(&self) -> Result<()> {
        let held = self.enter_blocking()?;
        let round = self.round();
        if round.phase != Phase::Broken {
            self.store(round.with_phase(Phase::Broken), &held);
        }
        Ok(())
    }

    /// Returns the barrier to its empty, unbroken state, as Python's `reset`. Parties
    /// waiting at that moment get [`Error::BrokenBarrier`]; new arrivals wait until they
    /// have left, then start a fresh round.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let barrier = multiprocess::Barrier::new(1)?;
    /// barrier.abort()?;
    /// barrier.reset()?;
    /// assert!(!barrier.is_broken());
    /// assert_eq!(barrier.wait().await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reset(&self) -> Result<()> {
        let held = self.enter_blocking()?;
        self.clear_dead_slots(self.round(), &held);
        let round = self.round();
        if self.anyone_counted(round) {
            if round.phase != Phase::Resetting {
                self.store(round.with_phase(Phase::Resetting), &held);
            }
        } else {
            self.store(round.next(), &held);
        }
        Ok(())
    }

    /// Waits until all parties have arrived; returns this party's arrival index, from
    /// `0` (first) to `parties - 1` (last, which ran the action). Fails with
    /// [`Error::BrokenBarrier`] if the barrier is or becomes broken.
    ///
    /// Cancel safe in the sense of the [`Barrier`] rules: dropped while counted in a
    /// round not yet released, it breaks the barrier.
    ///
    /// See [`Barrier`] for an example.
    pub async fn wait(&self) -> Result<u32> {
        self.wait_until(None).await
    }

    /// [`wait`](Barrier::wait), for at most `timeout`. A wait that times out breaks the
    /// barrier: it gets [`Error::BrokenBarrier`], as do the other waiting parties and every
    /// later wait until [`reset`](Barrier::reset), as Python's `wait(timeout)`. (Should the
    /// round have been complete already, its action still running, the wait goes on until
    /// that round is released. A wait that could not even take part, because the barrier
    /// was still busy releasing or resetting an earlier round when the time ran out, gets
    /// [`Error::Timeout`] and leaves the barrier as it is.)
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// let alone = barrier.wait_timeout(Duration::from_millis(10)).await;
    /// assert!(matches!(alone, Err(multiprocess::Error::BrokenBarrier)));
    /// assert!(barrier.is_broken());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(Some(Instant::now() + timeout)).await
    }

    /// [`wait`](Barrier::wait), blocking the calling thread (for code without a
    /// runtime, such as a plain function in a child).
    ///
    /// See [`Barrier`] for an example.
    pub fn wait_blocking(&self) -> Result<u32> {
        self.wait_blocking_until(None)
    }

    /// [`wait_timeout`](Barrier::wait_timeout), blocking the calling thread.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let barrier = multiprocess::Barrier::new(2)?;
    /// let alone = barrier.wait_blocking_timeout(Duration::from_millis(10));
    /// assert!(matches!(alone, Err(multiprocess::Error::BrokenBarrier)));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn wait_blocking_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_blocking_until(Some(Instant::now() + timeout))
    }

    async fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        let mut waiting = Waiting::new(self, deadline);
        let result = drive(Patience::FOREVER, || waiting.attempt()).await?;
        waiting.finish(waited_forever(result)?)
    }

    fn wait_blocking_until(&self, deadline: Option<Instant>) -> Result<u32> {
        let mut waiting = Waiting::new(self, deadline);
        let result = drive_blocking(Patience::FOREVER, || waiting.attempt())?;
        waiting.finish(waited_forever(result)?)
    }

    fn round_word(&self) -> &AtomicU64 {
        self.inner.page.atomic(ROUND)
    }

    fn round(&self) -> Round {
        Round::unpack(self.round_word().load(SeqCst))
    }

    /// The token of the party that arrived at `index` in the current round, 0 once it
    /// has left.
    fn slot(&self, index: u32) -> &AtomicU64 {
        self.inner.page.atomic(SLOTS + SLOT_SIZE * index as usize)
    }

    /// Publishes `round`; everyone who waits on the barrier is woken when the lock is
    /// given back.
    fn store(&self, round: Round, held: &Held<'_>) {
        self.round_word().store(round.pack(), SeqCst);
        held.changed.set(true);
    }

    /// One attempt at taking the internal lock, for a waiter run by either driver.
    fn attempt_enter<'a>(
        &'a self,
        counted: &mut Option<Counted<'a>>,
    ) -> Result<Attempt<'a, Held<'a>>> {
        if self.try_enter() {
            return Ok(Attempt::Ready(self.entered()));
        }
        Ok(match self.inner.guard.attempt(counted, true, true)? {
            Attempt::Ready(()) => Attempt::Ready(self.entered()),
            Attempt::Again => Attempt::Again,
            Attempt::Wait(wait) => Attempt::Wait(wait),
        })
    }

    fn enter_blocking(&self) -> Result<Held<'_>> {
        if !self.try_enter() {
            self.inner.guard.acquire_blocking(true, None)?;
        }
        Ok(self.entered())
    }

    /// Takes the internal lock if it comes free within a short spin. It is only ever
    /// held for a few instructions, while parties of one round tend to arrive together:
    /// spinning spares most of them the cost of waiting (a pidfd on the holder, a
    /// wake-up).
    fn try_enter(&self) -> bool {
        for _ in 0..ENTER_SPINS {
            match self.inner.guard.try_lock() {
                Ok(Some(guard)) => {
                    // Released by `Held`'s drop, like a lock taken by `acquire`.
                    std::mem::forget(guard);
                    return true;
                }
                Ok(None) => std::hint::spin_loop(),
                // Poisoned: `acquire` recovers it.
                Err(_) => return false,
            }
        }
        false
    }

    /// The lock is taken. If its last holder died holding it, that process may have
    /// been counted in the round: settle its slots as any dead party's.
    fn entered(&self) -> Held<'_> {
        let held = Held {
            barrier: self,
            changed: std::cell::Cell::new(false),
        };
        if self.inner.guard.is_poisoned() {
            let round = self.round();
            self.clear_dead_slots(round, &held);
            self.inner.guard.clear_poison();
        }
        held
    }

    fn arrive(&self, held: &Held<'_>) -> Arrival {
        let round = self.round();
        match round.phase {
            Phase::Broken => Arrival::Broken,
            Phase::Releasing | Phase::Resetting => Arrival::Busy,
            Phase::Filling => {
                let index = round.arrived;
                let arrived = index + 1;
                let last = arrived >= self.parties();
                if last && self.inner.action.is_none() {
                    self.store(round.next(), held);
                    return Arrival::Released(index);
                }
                self.slot(index).store(token(), SeqCst);
                let phase = if last {
                    Phase::Releasing
                } else {
                    Phase::Filling
                };
                let arrival = Round {
                    arrived,
                    phase,
                    ..round
                };
                if index == 0 {
                    // Nobody waits in this round yet.
                    self.round_word().store(arrival.pack(), SeqCst);
                } else {
                    // Waking the others lets them watch the new party.
                    self.store(arrival, held);
                }
                Arrival::Counted(Party {
                    generation: round.generation,
                    index,
                    last,
                })
            }
        }
    }

    /// The last party, its action done: releases the round, unless it broke meanwhile.
    fn release(&self, party: Party, action_ok: bool, held: &Held<'_>) -> Result<u32> {
        let round = self.round();
        if round.generation == party.generation && round.phase == Phase::Releasing {
            if action_ok {
                self.store(round.next(), held);
                return Ok(party.index);
            }
            self.store(round.with_phase(Phase::Broken), held);
        }
        self.leave(party, held)
    }

    /// A counted party leaves: `Ok` if its round was released, else its slot is freed
    /// (completing a reset it was the last to hold up) and it gets `BrokenBarrier`.
    fn leave(&self, party: Party, held: &Held<'_>) -> Result<u32> {
        let round = self.round();
        if round.generation != party.generation {
            return Ok(party.index);
        }
        let _ = self
            .slot(party.index)
            .compare_exchange(token(), 0, SeqCst, SeqCst);
        self.settle(round, held);
        Err(Error::BrokenBarrier)
    }

    /// A counted party gives up (timed out, or its wait was dropped). In a round still
    /// filling that breaks the barrier. `None` if the round is complete and about to be
    /// released: giving up is too late.
    fn give_up(&self, party: Party, held: &Held<'_>) -> Option<Result<u32>> {
        let round = self.round();
        if round.generation != party.generation {
            return Some(Ok(party.index));
        }
        match round.phase {
            Phase::Filling => {
                tracing::debug!(index = party.index, "barrier wait given up; barrier broken");
                self.store(round.with_phase(Phase::Broken), held);
                Some(self.leave(party, held))
            }
            Phase::Releasing => None,
            Phase::Broken | Phase::Resetting => Some(self.leave(party, held)),
        }
    }

    /// A counted party's wait was dropped: it gives up, or, in a complete round, leaves
    /// it (releasing it first if it is the last party, whose action has run).
    fn withdraw(&self, party: Party, action_ok: bool, held: &Held<'_>) {
        if self.give_up(party, held).is_none() {
            let _ = match party.last {
                true => self.release(party, action_ok, held),
                false => self.leave(party, held),
            };
        }
    }

    /// `dead` died while counted in the round of `generation`: frees its slots and, if
    /// the round can no longer be released, breaks the barrier.
    fn bury(&self, dead: u64, generation: u32, held: &Held<'_>) {
        let round = self.round();
        if round.generation != generation {
            return;
        }
        let mut releaser_died = false;
        let mut freed = false;
        for index in 0..round.arrived.min(self.parties()) {
            if self
                .slot(index)
                .compare_exchange(dead, 0, SeqCst, SeqCst)
                .is_ok()
            {
                freed = true;
                releaser_died |= index + 1 == round.arrived;
            }
        }
        if !freed {
            return;
        }
        let breaks = match round.phase {
            Phase::Filling => true,
            Phase::Releasing => releaser_died,
            Phase::Broken | Phase::Resetting => false,
        };
        if breaks {
            tracing::warn!(
                pid = dead >> 32,
                "barrier party died while waiting; barrier broken"
            );
            self.store(round.with_phase(Phase::Broken), held);
        } else {
            self.settle(round, held);
        }
    }

    /// Frees the slots of parties whose process is gone.
    fn clear_dead_slots(&self, round: Round, held: &Held<'_>) {
        for index in 0..round.arrived.min(self.parties()) {
            let party = self.slot(index).load(SeqCst);
            if party != 0 && party != token() && matches!(watch_owner(party), Ok(None)) {
                self.bury(party, round.generation, held);
            }
        }
    }

    fn anyone_counted(&self, round: Round) -> bool {
        (0..round.arrived.min(self.parties())).any(|index| self.slot(index).load(SeqCst) != 0)
    }

    /// Completes a reset once nobody counted in the old round is left.
    fn settle(&self, round: Round, held: &Held<'_>) {
        if round.phase == Phase::Resetting && !self.anyone_counted(round) {
            self.store(round.next(), held);
        }
    }
}

/// What a waiter does next.
enum Next {
    Done(Result<u32>),
    /// Take the internal lock and do this.
    Lock(Task),
    /// Wait for a notification after `seen`, a watched party's death, or `until`.
    Sleep {
        seen: u32,
        until: Option<Instant>,
    },
}

/// Changes a waiter makes under the internal lock.
enum Task {
    Arrive,
    Release,
    Leave,
    GiveUp,
    Bury { dead: Vec<u64>, generation: u32 },
}

/// What has become of the action, for the last party.
enum ActionRun {
    NotRun,
    Ran,
    Panicked(Box<dyn Any + Send>),
}

/// One wait, as a sequence of non-blocking steps that the async and the blocking drivers
/// run alike. Dropped while counted in an unreleased round (a cancelled future), it
/// gives the wait up, which breaks the barrier.
struct Waiting<'a> {
    barrier: &'a Barrier,
    started: Instant,
    deadline: Option<Instant>,
    party: Option<Party>,
    action: ActionRun,
    outcome: Option<Result<u32>>,
    /// The other processes counted in the watched generation's round, and their pidfds.
    watched_generation: u32,
    watched: Vec<u64>,
    watches: Vec<OwnerWatch>,
    /// Counted as a waiter for the internal lock.
    counted: Option<Counted<'a>>,
}

impl<'a> Waiting<'a> {
    fn new(barrier: &'a Barrier, deadline: Option<Instant>) -> Waiting<'a> {
        Waiting {
            barrier,
            started: Instant::now(),
            deadline,
            party: None,
            action: ActionRun::NotRun,
            outcome: None,
            watched_generation: 0,
            watched: Vec::new(),
            watches: Vec::new(),
            counted: None,
        }
    }

    /// One attempt of the wait, for either driver: ready with the wait's result.
    fn attempt(&mut self) -> Result<Attempt<'a, Result<u32>>> {
        match self.next() {
            Next::Done(result) => Ok(Attempt::Ready(result)),
            Next::Lock(task) => {
                let barrier = self.barrier;
                match barrier.attempt_enter(&mut self.counted)? {
                    Attempt::Ready(held) => {
                        self.counted = None;
                        self.locked(task, &held);
                        Ok(Attempt::Again)
                    }
                    Attempt::Again => Ok(Attempt::Again),
                    Attempt::Wait(wait) => Ok(Attempt::Wait(wait)),
                }
            }
            Next::Sleep { seen, until } => Ok(Attempt::Wait(Wait::Notified {
                notifier: &self.barrier.inner.wake,
                seen,
                owners: self.watches.clone(),
                until,
            })),
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// How long was waited, once the deadline has passed.
    fn expired_after(&self) -> Option<Duration> {
        self.expired().then(|| self.started.elapsed())
    }

    fn next(&mut self) -> Next {
        if let Some(outcome) = self.outcome.take() {
            return Next::Done(outcome);
        }
        let seen = self.barrier.inner.wake.observe();
        let round = self.barrier.round();
        let mut until = self.deadline;
        match self.party {
            None => {
                if matches!(round.phase, Phase::Filling | Phase::Broken) {
                    return Next::Lock(Task::Arrive);
                }
                if let Some(after) = self.expired_after() {
                    return Next::Done(Err(Error::Timeout { after }));
                }
            }
            Some(party) => {
                if round.generation != party.generation {
                    return Next::Done(Ok(party.index));
                }
                match round.phase {
                    Phase::Broken | Phase::Resetting => return Next::Lock(Task::Leave),
                    Phase::Releasing if party.last => {
                        self.run_action();
                        return Next::Lock(Task::Release);
                    }
                    // The round is complete: only its release or breaking ends the wait.
                    Phase::Releasing => until = None,
                    Phase::Filling if self.expired() => return Next::Lock(Task::GiveUp),
                    Phase::Filling => {}
                }
            }
        }
        let dead = self.watch(round);
        if !dead.is_empty() {
            return Next::Lock(Task::Bury {
                dead,
                generation: round.generation,
            });
        }
        Next::Sleep { seen, until }
    }

    fn locked(&mut self, task: Task, held: &Held<'_>) {
        let barrier = self.barrier;
        let action_ok = matches!(self.action, ActionRun::Ran);
        self.outcome = match (task, self.party) {
            (Task::Arrive, None) => match barrier.arrive(held) {
                Arrival::Counted(party) => {
                    self.party = Some(party);
                    None
                }
                Arrival::Released(index) => Some(Ok(index)),
                Arrival::Broken => Some(Err(Error::BrokenBarrier)),
                Arrival::Busy => None,
            },
            (Task::Release, Some(party)) => Some(barrier.release(party, action_ok, held)),
            (Task::Leave, Some(party)) => Some(barrier.leave(party, held)),
            (Task::GiveUp, Some(party)) => barrier.give_up(party, held),
            (Task::Bury { dead, generation }, _) => {
                for token in dead {
                    barrier.bury(token, generation, held);
                }
                None
            }
            _ => None,
        };
    }

    fn run_action(&mut self) {
        if !matches!(self.action, ActionRun::NotRun) {
            return;
        }
        self.action = match self.barrier.inner.action {
            None => ActionRun::Ran,
            Some(Action(action)) => match catch_unwind(AssertUnwindSafe(|| action.call(()))) {
                Ok(()) => ActionRun::Ran,
                Err(panic) => ActionRun::Panicked(panic),
            },
        };
    }

    /// Watches every other process counted in `round`; returns those already gone.
    fn watch(&mut self, round: Round) -> Vec<u64> {
        if round.generation != self.watched_generation {
            self.watched.clear();
            self.watches.clear();
            self.watched_generation = round.generation;
        }
        let mut dead = Vec::new();
        for at in (0..self.watches.len()).rev() {
            if crate::sys::poll_one(self.watches[at].fd(), false, 0).unwrap_or(true) {
                dead.push(self.watched.swap_remove(at));
                self.watches.swap_remove(at);
            }
        }
        let barrier = self.barrier;
        for index in 0..round.arrived.min(barrier.parties()) {
            let party = barrier.slot(index).load(SeqCst);
            if party == 0
                || party == token()
                || dead.contains(&party)
                || self.watched.contains(&party)
            {
                continue;
            }
            match watch_owner(party) {
                Ok(Some(watch)) => {
                    self.watched.push(party);
                    self.watches.push(watch);
                }
                Ok(None) => dead.push(party),
                // Out of descriptors or the like: the death is still seen by the others
                // or at the next look.
                Err(_) => {}
            }
        }
        dead
    }

    /// The wait's result; a panic of the action continues here, in the party that ran
    /// it, once the barrier is broken.
    fn finish(mut self, result: Result<u32>) -> Result<u32> {
        self.party = None;
        if let ActionRun::Panicked(panic) = std::mem::replace(&mut self.action, ActionRun::Ran) {
            resume_unwind(panic);
        }
        result
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(party) = self.party.take() else {
            return;
        };
        let action_ok = matches!(self.action, ActionRun::Ran);
        // The internal lock is held for a few instructions at a time, so the spin of
        // `try_enter` almost always takes it. When it does not (its holder is
        // descheduled, stopped, or died holding it), a dropped async wait must not
        // block its runtime's thread: a task withdraws the party once it has the lock.
        // Until then the party stays counted, as if it had been dropped a moment later.
        if self.barrier.try_enter() {
            let held = self.barrier.entered();
            self.barrier.withdraw(party, action_ok, &held);
            return;
        }
        let withdrawal = Withdrawal {
            barrier: self.barrier.clone(),
            party: Some(party),
            action_ok,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(withdrawal.run())),
            // Outside a runtime: the drop withdraws it here, waiting for the lock.
            Err(_) => drop(withdrawal),
        }
    }
}

/// The withdrawal of a dropped wait's party, for when the internal lock was not free.
struct Withdrawal {
    barrier: Barrier,
    party: Option<Party>,
    action_ok: bool,
}

impl Withdrawal {
    async fn run(mut self) {
        let barrier = &self.barrier;
        let mut counted = None;
        let entered = drive(Patience::FOREVER, || barrier.attempt_enter(&mut counted)).await;
        // On an error the drop tries once more, blocking.
        if let (Ok(Some(held)), Some(party)) = (entered, self.party.take()) {
            barrier.withdraw(party, self.action_ok, &held);
        }
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        // Not done by a task (no runtime, or the runtime is shutting down).
        if let Some(party) = self.party.take() {
            if let Ok(held) = self.barrier.enter_blocking() {
                self.barrier.withdraw(party, self.action_ok, &held);
            }
        }
    }
}

fn invalid(message: &str) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        message.to_string(),
    ))
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let inner = &self.inner;
        let wake = inner.wake.wake_fd_for_message()?;
        (&inner.page, wake, inner.action).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (page, wake, action) =
            <(SharedMemory, PassFd, Option<Action>)>::deserialize(deserializer)?;
        let wake = Notifier::from_message(wake, &page, SLOTS + SLOT_SIZE, WAKE, "barrier")?;
        Ok(Barrier {
            inner: Arc::new(Inner {
                guard: Lock::in_page(&page, GUARD, &wake),
                page,
                wake,
                action,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait dropped while the internal lock is held elsewhere (by a holder that is
    /// descheduled or stopped; here, this test) does not wait for the lock on the
    /// runtime's thread: the party is withdrawn by a task once the lock is free.
    #[test]
    fn a_dropped_wait_never_waits_for_the_internal_lock_on_a_runtime_thread() {
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let withdrawn = runtime.block_on(async {
                let barrier = Barrier::new(2).unwrap();
                let mut wait = Box::pin(barrier.wait());
                assert!(futures::poll!(wait.as_mut()).is_pending());
                assert_eq!(barrier.n_waiting(), 1);
                let held = barrier
                    .inner
                    .guard
                    .try_lock()
                    .unwrap()
                    .expect("the lock is free");
                std::mem::forget(held);
                drop(wait);
                // Still counted: the task withdraws it once the lock is given back.
                assert_eq!(barrier.n_waiting(), 1);
                barrier.inner.guard.unlock();
                let deadline = Instant::now() + Duration::from_secs(30);
                while barrier.n_waiting() != 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                barrier.n_waiting() == 0 && barrier.is_broken()
            });
            let _ = done.send(withdrawn);
        });
        let withdrawn = outcome.recv_timeout(Duration::from_secs(60));
        assert_eq!(
            withdrawn,
            Ok(true),
            "the drop returned, and the dropped wait broke the barrier once the lock was free"
        );
    }
}
