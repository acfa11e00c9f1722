//! Cross-process synchronisation: [`Lock`], [`Semaphore`], [`Event`], [`Barrier`],
//! [`Condition`].
//!
//! Each primitive keeps its state in a small shared-memory page (atomics only) and
//! wakes waiters through an eventfd, which tokio's reactor watches: no runtime thread
//! ever blocks, and the `_blocking` variants wait with `poll(2)` for code without a
//! runtime. Ownership is recorded as a process token (pid and start time, so a recycled
//! pid is never mistaken for the owner), and a waiter also watches the owner's pidfd:
//! when a holder dies, the next waiter learns of it at once instead of waiting forever.

mod barrier;
mod condition;
mod event;
mod lock;
mod notifier;
mod rlock;
mod semaphore;
mod wait;

pub use barrier::Barrier;
pub use condition::Condition;
pub use event::Event;
pub(crate) use lock::LOCK_BYTES;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphorePermit};

pub(crate) use notifier::{
    Counted, NOTIFIER_BYTES, Notifier, OwnerWatch, is_alive, token, watch_owner,
};
pub(crate) use wait::{
    Attempt, Patience, RoomWatch, Step, Wait, deadline_after, drive, drive_blocking, passed,
    waited_forever, within,
};
