//! The rules of a worker's life: started or not, ready, dead (and why), late, told to
//! exit; and the shortfall of workers the pool keeps trying to make up.

use std::collections::VecDeque;
use std::process::ExitStatus;

use tokio::time::Instant;

use super::{EXIT_GRACE, Error, KillReason, Link, Queued, Running, State, WorkerSlot};
use crate::pool::protocol::Hello;

impl<L: Link> State<L> {
    /// The last start failure, while no worker is alive and starting one keeps failing:
    /// queued tasks then fail once they have waited the start timeout.
    /// With a pool that takes workers joining by themselves and has none alive or on
    /// its way, queued tasks likewise wait the start timeout for one to join.
    pub(crate) fn starving(&self) -> Option<String> {
        let alive = self.workers.iter().any(|w| w.killed.is_none());
        if alive {
            return None;
        }
        let limit = self.rules.start_timeout;
        match &self.start_failure {
            Some((_, last)) => Some(format!(
                "no pool worker could be started for {limit:?} (last attempt failed {last})"
            )),
            None if self.rules.joinable && self.starting == 0 => {
                Some(format!("no pool worker was alive or joined for {limit:?}"))
            }
            None => None,
        }
    }

    /// A worker asking to join was refused.
    pub(crate) fn refused_join(&mut self) {
        self.stats.refused += 1;
    }

    /// Whether every worker has said it is ready.
    pub(crate) fn all_ready(&self) -> bool {
        self.workers.iter().all(|w| w.ready)
    }

    /// Counts a worker about to be started.
    pub(crate) fn will_start(&mut self) {
        self.starting += 1;
    }

    /// A worker process started: it gets its slot, and its start-up deadline runs.
    pub(crate) fn started(&mut self, pid: u32, link: L, now: Instant) -> u64 {
        self.starting -= 1;
        self.start_failure = None;
        self.next_worker += 1;
        let mut slot = WorkerSlot {
            key: self.next_worker,
            pid,
            link,
            hung_up: false,
            tickets: 0,
            window: VecDeque::new(),
            head_deadline: None,
            head_started: now,
            job_time: None,
            dispatched: 0,
            ready: false,
            killed: None,
            broken: None,
            lost: None,
        };
        if self.terminated {
            // Terminated while it started: it never gets a job.
            // Killed first: a worker behind a byte stream must not take the end of
            // its stream for a polite request to finish its task.
            slot.kill(KillReason::Terminate);
            slot.hang_up();
        }
        self.workers.push(slot);
        self.next_worker
    }

    /// Starting a worker failed with `error`. A replacement the pool still needs stays
    /// counted as missing and is to be tried again (true); anything else is given up.
    pub(crate) fn start_failed(
        &mut self,
        replacement: bool,
        message: String,
        now: Instant,
    ) -> bool {
        self.stats.start_failures += 1;
        let retry = replacement && self.wants_worker();
        if retry {
            match &mut self.start_failure {
                Some((_, last)) => *last = message,
                None => self.start_failure = Some((now, message)),
            }
        } else {
            self.starting -= 1;
        }
        retry
    }

    /// Before trying a failed start again: false (and the worker no longer counted) if
    /// the pool no longer needs it.
    pub(crate) fn retry_wanted(&mut self) -> bool {
        if self.wants_worker() {
            return true;
        }
        self.starting -= 1;
        self.start_failure = None;
        false
    }

    /// A worker said it is ready, or that its initializer failed.
    pub(crate) fn on_hello(&mut self, key: u64, hello: Hello) {
        match hello {
            Hello::Ready => {
                if let Some(slot) = self.workers.iter_mut().find(|w| w.key == key) {
                    slot.ready = true;
                }
                self.ever_ready = true;
            }
            Hello::InitFailed(err) => {
                tracing::warn!(worker = key, error = %err, "pool worker failed to initialise");
                self.fail_init(err);
            }
        }
    }

    /// Whether the pool has told this worker to exit (end of its job stream).
    pub(crate) fn hung_up_on(&self, key: u64) -> bool {
        self.workers
            .iter()
            .find(|w| w.key == key)
            .is_none_or(|w| w.hung_up)
    }

    /// The connection to a joined worker ended without the pool's doing.
    pub(crate) fn lost(&mut self, key: u64, why: String) {
        if let Some(slot) = self.workers.iter_mut().find(|w| w.key == key) {
            tracing::warn!(worker = slot.pid, why, "lost a pool worker");
            if slot.killed.is_none() {
                slot.lost = Some(why);
            }
        }
    }

    /// Kills a worker whose connection broke and which did not exit by itself.
    pub(crate) fn kill_broken(&mut self, key: u64, why: String) {
        if let Some(slot) = self.workers.iter_mut().find(|w| w.key == key) {
            tracing::warn!(worker = slot.pid, why, "pool worker broke its connection");
            if slot.killed.is_none() {
                slot.broken = Some(why);
                slot.kill(KillReason::BrokenStream);
            }
        }
    }

    /// A worker has exited with `status`: the job it ran fails with the cause, the
    /// ones it had not started go back to the front of the queue. Returns whether a
    /// replacement is to be started (counted as missing until it is).
    pub(crate) fn on_exit(&mut self, key: u64, status: ExitStatus) -> bool {
        let Some(index) = self.workers.iter().position(|w| w.key == key) else {
            return false;
        };
        let mut slot = self.workers.swap_remove(index);
        // Dead, recycled or closed: nothing it started outlives it.
        slot.link.exited();
        let retired = slot.retiring(self.rules.max_tasks_per_worker)
            && slot.window.is_empty()
            && status.success();
        if let Some(failure) = self.failed_start(&slot, status) {
            tracing::error!("{failure}");
            self.fail_init(failure);
        }
        if let Some(head) = slot.window.pop_front() {
            let error = slot.death_of_head(head.job.id, status, &self.rules);
            match &error {
                Error::Timeout { after } => {
                    self.stats.timed_out += 1;
                    tracing::warn!(parent: &head.waiter.span, job = head.job.id, worker = slot.pid, ?after, "task timed out; worker killed");
                }
                Error::PoolClosed => {}
                _ => {
                    self.stats.failed += 1;
                    tracing::warn!(parent: &head.waiter.span, job = head.job.id, worker = slot.pid, %status, error = %error, "worker died running a task");
                }
            }
            let _ = head.waiter.reply.send(Err(error));
        }
        // Jobs it had not started go back to the front, in their order.
        let now = Instant::now();
        while let Some(Running { job, waiter, .. }) = slot.window.pop_back() {
            self.queue.push_front(Queued {
                job,
                waiter,
                since: now,
                _permit: None,
            });
        }
        if self.terminated {
            self.fail_queued(&Error::PoolClosed, |_| true);
        }
        // A worker that joined by itself is not ours to start again.
        let replace = !slot.link.joined() && self.wants_worker();
        if replace {
            self.starting += 1;
            if retired {
                self.stats.recycled += 1;
            } else {
                self.stats.respawned += 1;
            }
        }
        tracing::debug!(worker = slot.pid, %status, retired, replace, "pool worker exited");
        replace
    }

    /// Why a worker that ended before it was ever ready fails the whole pool: no
    /// worker of the pool was ever ready, so every replacement would likely do the same.
    fn failed_start(&self, slot: &WorkerSlot<L>, status: ExitStatus) -> Option<String> {
        if slot.ready || self.closing || self.ever_ready || slot.link.joined() {
            return None;
        }
        match slot.killed {
            None => Some(format!(
                "worker {} exited during start-up ({status})",
                slot.pid
            )),
            Some(KillReason::Startup) => Some(format!(
                "worker {} was not ready within {:?}",
                slot.pid, self.rules.start_timeout
            )),
            Some(_) => None,
        }
    }

    /// One step of closing: once nothing is queued or running, every worker is told to
    /// exit; one still there `EXIT_GRACE` later is killed. `idle_since` keeps when the
    /// workers were told. Returns whether the pool is done (no worker left or coming).
    pub(crate) fn close_step(&mut self, idle_since: &mut Option<Instant>, now: Instant) -> bool {
        self.closing = true;
        let idle = self.queue.is_empty() && self.workers.iter().all(|w| w.window.is_empty());
        if idle {
            for slot in self.workers.iter_mut() {
                slot.hang_up();
            }
            let since = *idle_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= EXIT_GRACE {
                for slot in self.workers.iter_mut() {
                    slot.kill(KillReason::Terminate);
                }
            }
        }
        self.all_gone()
    }

    /// Kills every worker; queued jobs fail with `PoolClosed` now, running ones when
    /// their worker's exit is seen.
    pub(crate) fn terminate(&mut self) {
        self.closing = true;
        self.terminated = true;
        self.fail_queued(&Error::PoolClosed, |_| true);
        for slot in self.workers.iter_mut() {
            // Killed first: a worker behind a byte stream must not take the end of
            // its stream for a polite request to finish its task.
            slot.kill(KillReason::Terminate);
            slot.hang_up();
        }
    }

    /// No worker left, and none being started.
    pub(crate) fn all_gone(&self) -> bool {
        self.workers.is_empty() && self.starting == 0
    }

    /// Kills workers whose running job is past its deadline or that are not ready in
    /// time, and fails queued jobs when no worker could be started for the start
    /// timeout; returns the next deadline.
    pub(crate) fn enforce_deadlines(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.rules.start_timeout;
        let mut next: Option<Instant> = None;
        if let Some(why) = self.starving() {
            let error = Error::Bootstrap(why);
            self.fail_queued(&error, |q| q.since + limit <= now);
            next = self.queue.iter().map(|q| q.since + limit).min();
        }
        for slot in self.workers.iter_mut() {
            if slot.killed.is_some() {
                continue;
            }
            let deadline = if slot.ready {
                let (Some(deadline), Some(head)) = (slot.head_deadline, slot.window.front()) else {
                    continue;
                };
                if deadline <= now {
                    let after = head.waiter.timeout.unwrap_or_default();
                    slot.kill(KillReason::Timeout(head.job.id, after));
                    continue;
                }
                deadline
            } else {
                // `head_started` holds the spawn time until the worker is ready.
                let deadline = slot.head_started + limit;
                if deadline <= now {
                    tracing::warn!(worker = slot.pid, "worker not ready in time; replacing it");
                    slot.kill(KillReason::Startup);
                    continue;
                }
                deadline
            };
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        next
    }
}
