//! The queue's shared memory: its words, then its ring of messages.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::sync::{LOCK_BYTES, NOTIFIER_BYTES};

/// A value on a cache line of its own.
#[repr(C, align(64))]
pub(super) struct Line<T>(pub(super) T);

/// The words every handle of a queue shares, at the start of its shared memory; the
/// ring follows at [`RING`]. Words written by different sides live on different cache
/// lines, so a producer and a consumer running flat out on two CPUs do not take each
/// other's lines for words they do not share.
#[repr(C)]
pub(super) struct Shared {
    pub(super) settings: Line<Settings>,
    /// Messages queued or being put: places taken.
    pub(super) items: Line<AtomicU32>,
    /// Messages put and not yet marked done (`JoinableQueue`).
    pub(super) unfinished: Line<AtomicU32>,
    /// Where consumers take the next entry, in bytes since the start.
    pub(super) head: Line<AtomicU64>,
    pub(super) tail: Line<Tail>,
    /// Consumers asleep for a message.
    pub(super) data: Line<Bell>,
    /// Producers asleep for room.
    pub(super) space: Line<Bell>,
    /// The words of the lock producers take to place an entry.
    pub(super) write_lock: Line<LockWords>,
    /// The words of the lock consumers take to take an entry.
    pub(super) read_lock: Line<LockWords>,
    /// The words of the notifier consumers sleep on.
    pub(super) data_wake: Line<NotifierWords>,
    /// The words of the notifier producers sleep on.
    pub(super) space_wake: Line<NotifierWords>,
    /// The words of the notifier `join` sleeps on.
    pub(super) done_wake: Line<NotifierWords>,
}

/// Room for a notifier's words.
pub(super) type NotifierWords = [AtomicU32; NOTIFIER_BYTES / 4];

/// Room for a lock's words.
#[repr(C, align(8))]
pub(super) struct LockWords([AtomicU64; LOCK_BYTES / 8]);
const _: () = assert!(LOCK_BYTES % 8 == 0 && NOTIFIER_BYTES % 4 == 0);

/// Where the write lock's words are.
pub(super) const WRITE_LOCK: usize = std::mem::offset_of!(Shared, write_lock);
/// Where the read lock's words are.
pub(super) const READ_LOCK: usize = std::mem::offset_of!(Shared, read_lock);
/// Where the notifier consumers sleep on is.
pub(super) const DATA_WAKE: usize = std::mem::offset_of!(Shared, data_wake);
/// Where the notifier producers sleep on is.
pub(super) const SPACE_WAKE: usize = std::mem::offset_of!(Shared, space_wake);
/// Where the notifier `join` sleeps on is.
pub(super) const DONE_WAKE: usize = std::mem::offset_of!(Shared, done_wake);

/// Words set once, or rarely.
#[repr(C)]
pub(super) struct Settings {
    pub(super) capacity: AtomicU32,
    /// `OPEN`, `SHUT` or `SHUT_NOW`.
    pub(super) closed: AtomicU32,
    pub(super) ring_len: AtomicU32,
    /// The pid of a producer that died in the middle of a socket frame: the stream is
    /// lost.
    pub(super) broken: AtomicU32,
}

/// The producers' words.
#[repr(C)]
pub(super) struct Tail {
    /// Where producers place the next entry, in bytes since the start.
    pub(super) tail: AtomicU64,
    /// The token of the producer writing a socket frame, zero between frames.
    pub(super) writer: AtomicU64,
}

/// How many sleep on one side, and whether they were rung since they last looked.
#[repr(C)]
pub(super) struct Bell {
    pub(super) waiters: AtomicU32,
    pub(super) rung: AtomicU32,
}

/// Where the ring starts.
pub(super) const RING: usize = std::mem::size_of::<Shared>();

/// `closed`: open.
pub(super) const OPEN: u32 = 0;
/// `closed`: `close` or `shutdown`; consumers drain what is queued.
pub(super) const SHUT: u32 = 1;
/// `closed`: `shutdown_immediate`; nothing more is taken.
pub(super) const SHUT_NOW: u32 = 2;
