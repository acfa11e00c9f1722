//! Which of the jobs a worker holds it has started, shared between the worker and its
//! pool: the pool can take back a job the worker holds but has not started (to give it
//! to an idle worker) without a round trip, and a job can never run twice.
//!
//! Each job handed to a worker gets a cell of the board and a ticket. The pool writes
//! `2 * ticket` (offered) into the cell; the worker, before running the job, swaps it
//! for `2 * ticket + 1` (started); the pool takes the job back by swapping it for
//! `TAKEN_BACK`. Only one of the two swaps can succeed. A worker that later reads a job
//! taken back finds its cell changed (taken back, or offered again with a newer
//! ticket) and skips it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Result;
use crate::shm::SharedMemory;

const TAKEN_BACK: u64 = u64::MAX;

/// A job's cell on its worker's board, and its ticket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) cell: u32,
    pub(crate) ticket: u64,
}

/// How a worker and its pool agree on which jobs it has started: through a board in
/// shared memory (a local worker), or by messages (a worker behind a byte stream, which
/// answers each take-back request itself).
#[derive(Serialize, Deserialize)]
pub(crate) enum Claims {
    Board(ClaimBoard),
    Messages,
}

/// The cells of one worker, in memory shared with it.
pub(crate) struct ClaimBoard {
    memory: SharedMemory,
    cells: usize,
}

impl ClaimBoard {
    pub(crate) fn new(cells: usize) -> Result<ClaimBoard> {
        Ok(ClaimBoard {
            memory: SharedMemory::named("multiprocess-claims", cells * 8)?,
            cells,
        })
    }

    /// Another handle on the same board (for the worker).
    pub(crate) fn clone_handle(&self) -> ClaimBoard {
        ClaimBoard {
            memory: self.memory.clone(),
            cells: self.cells,
        }
    }

    pub(crate) fn cells(&self) -> usize {
        self.cells
    }

    fn cell(&self, claim: Claim) -> Option<&AtomicU64> {
        let index = claim.cell as usize;
        (index < self.cells).then(|| self.memory.atomic::<AtomicU64>(index * 8))
    }

    /// The pool hands the job over.
    pub(crate) fn offer(&self, claim: Claim) {
        if let Some(cell) = self.cell(claim) {
            cell.store(claim.ticket * 2, Ordering::Release);
        }
    }

    /// The worker is about to run the job: false if the pool took it back.
    pub(crate) fn start(&self, claim: Claim) -> bool {
        self.cell(claim).is_none_or(|cell| {
            let offered = claim.ticket * 2;
            cell.compare_exchange(offered, offered + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// The pool takes the job back: false if the worker started it.
    pub(crate) fn take_back(&self, claim: Claim) -> bool {
        self.cell(claim).is_some_and(|cell| {
            let offered = claim.ticket * 2;
            cell.compare_exchange(offered, TAKEN_BACK, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }
}

impl Serialize for ClaimBoard {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.memory, self.cells as u64).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ClaimBoard {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (memory, cells) = <(SharedMemory, u64)>::deserialize(deserializer)?;
        let cells = cells as usize;
        if cells.checked_mul(8).is_none_or(|len| len > memory.len()) {
            return Err(serde::de::Error::custom(
                "claim board larger than its memory",
            ));
        }
        Ok(ClaimBoard { memory, cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_either_started_or_taken_back_never_both() {
        let board = ClaimBoard::new(4).unwrap();
        let first = Claim { cell: 1, ticket: 1 };
        board.offer(first);
        assert!(board.start(first));
        assert!(!board.take_back(first));

        let second = Claim { cell: 2, ticket: 2 };
        board.offer(second);
        assert!(board.take_back(second));
        assert!(!board.start(second));

        // The cell offered again: the old job is still skipped, the new one runs.
        let third = Claim { cell: 2, ticket: 3 };
        board.offer(third);
        assert!(!board.start(second));
        assert!(board.start(third));
    }

    #[test]
    fn a_cell_out_of_range_never_panics() {
        let board = ClaimBoard::new(2).unwrap();
        let outside = Claim { cell: 9, ticket: 1 };
        board.offer(outside);
        assert!(!board.take_back(outside));
        assert!(board.start(outside));
    }
}
