//! The pool's rules, driven with fake workers: no process, socket or timer is involved.

use std::cell::Cell;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::pool::protocol::{Hello, JobKind, Reply};

/// A worker as the rules see it: what it was sent, its claim board as plain numbers
/// (the same encoding as the shared one), and what was done to it.
struct Fake {
    sent: Vec<u64>,
    cells: Vec<u64>,
    hung_up: bool,
    kills: u32,
    /// Shared with the test, which still sees it once the pool has dropped the worker.
    exited: Rc<Cell<bool>>,
    /// Behind a byte stream (a worker that joined): take-backs are requests.
    stream: bool,
    /// The jobs it was asked to give back.
    asked: Vec<u64>,
}

const TAKEN: u64 = u64::MAX;

impl Fake {
    fn new() -> Fake {
        Fake {
            sent: Vec::new(),
            cells: vec![0; 2 * MAX_WINDOW],
            hung_up: false,
            kills: 0,
            exited: Rc::default(),
            stream: false,
            asked: Vec::new(),
        }
    }

    /// The worker starts a job it holds, as the real one does before running it.
    fn start(&mut self, claim: Claim) -> bool {
        let cell = &mut self.cells[claim.cell as usize];
        if *cell == claim.ticket * 2 {
            *cell += 1;
            true
        } else {
            false
        }
    }
}

impl Link for Fake {
    fn send(&mut self, job: Arc<JobData>, _claim: Claim) {
        self.sent.push(job.id);
    }

    fn offer(&mut self, claim: Claim) {
        self.cells[claim.cell as usize] = claim.ticket * 2;
    }

    fn take_back(&mut self, claim: Claim, id: u64) -> TakeBack {
        if self.stream {
            self.asked.push(id);
            return TakeBack::Asked;
        }
        let cell = &mut self.cells[claim.cell as usize];
        let offered = *cell == claim.ticket * 2;
        if offered {
            *cell = TAKEN;
            TakeBack::Done
        } else {
            TakeBack::Started
        }
    }

    fn carries_fds(&self) -> bool {
        !self.stream
    }

    fn joined(&self) -> bool {
        self.stream
    }

    fn cells(&self) -> usize {
        self.cells.len()
    }

    fn hang_up(&mut self) {
        self.hung_up = true;
    }

    fn kill(&mut self) {
        self.kills += 1;
    }

    fn exited(&mut self) {
        self.exited.set(true);
    }
}

type Answer = oneshot::Receiver<Result<Encoded>>;

fn rules() -> Rules {
    Rules {
        window: None,
        max_tasks_per_worker: None,
        cancel_running: CancelRunning::Finish,
        memory_limit: None,
        start_timeout: Duration::from_secs(60),
        joinable: false,
    }
}

/// A pool of `n` fake workers, all ready; returns their keys.
fn pool(rules: Rules, n: usize, now: Instant) -> (State<Fake>, Vec<u64>) {
    let mut state = State::new(rules);
    let keys = (0..n)
        .map(|i| start_one(&mut state, 100 + i as u32, now))
        .collect();
    (state, keys)
}

fn start_one(state: &mut State<Fake>, pid: u32, now: Instant) -> u64 {
    state.will_start();
    replace_one(state, pid, now)
}

/// Starts a worker the pool has counted as missing already (a replacement).
fn replace_one(state: &mut State<Fake>, pid: u32, now: Instant) -> u64 {
    let key = state.started(pid, Fake::new(), now);
    state.on_hello(key, Hello::Ready);
    key
}

fn job(id: u64) -> Arc<JobData> {
    Arc::new(JobData {
        id,
        kind: JobKind::Handle,
        payload: Vec::new(),
        fds: Vec::new(),
    })
}

fn submit(state: &mut State<Fake>, id: u64, timeout: Option<Duration>, now: Instant) -> Answer {
    let answer = state.enqueue(job(id), timeout, None, now).unwrap();
    state.dispatch(now);
    answer
}

fn reply(id: u64) -> Reply {
    Reply {
        id,
        result: Ok(serde_bytes::ByteBuf::from(vec![id as u8])),
        fds: Vec::new(),
    }
}

fn slot(state: &State<Fake>, key: u64) -> &WorkerSlot<Fake> {
    state.workers.iter().find(|w| w.key == key).unwrap()
}

fn slot_mut(state: &mut State<Fake>, key: u64) -> &mut WorkerSlot<Fake> {
    state.workers.iter_mut().find(|w| w.key == key).unwrap()
}

fn window(state: &State<Fake>, key: u64) -> Vec<u64> {
    slot(state, key).window.iter().map(|r| r.job.id).collect()
}

/// The answer, if one came.
fn answered(answer: &mut Answer) -> Option<Result<Encoded>> {
    answer.try_recv().ok()
}

fn killed_by(signal: i32) -> ExitStatus {
    ExitStatus::from_raw(signal)
}

fn exited_with(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

#[test]
fn dispatch_gives_each_job_to_the_least_loaded_worker() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 3, now);
    let _answers: Vec<_> = (1..=7)
        .map(|id| submit(&mut state, id, None, now))
        .collect();
    let windows: Vec<_> = keys.iter().map(|&k| window(&state, k)).collect();
    assert_eq!(windows, [vec![1, 4], vec![2, 5], vec![3, 6]]);
    for &key in &keys {
        assert_eq!(slot(&state, key).link.sent, window(&state, key));
    }
    // Every window is full (two jobs while job times are unknown): the last one waits.
    let stats = state.stats();
    assert_eq!((stats.busy, stats.queued), (3, 1), "{stats:?}");
}

#[test]
fn a_worker_not_ready_gets_no_job() {
    let now = Instant::now();
    let mut state = State::new(rules());
    state.will_start();
    let key = state.started(7, Fake::new(), now);
    let _answer = submit(&mut state, 1, None, now);
    assert!(slot(&state, key).link.sent.is_empty());
    state.on_hello(key, Hello::Ready);
    state.dispatch(now);
    assert_eq!(slot(&state, key).link.sent, [1]);
}

#[test]
fn an_answer_completes_its_own_task() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let mut first = submit(&mut state, 1, None, now);
    let mut second = submit(&mut state, 2, None, now);
    state.on_reply(keys[0], reply(2), now);
    let (bytes, _) = answered(&mut second).unwrap().unwrap();
    assert_eq!(bytes, [2]);
    assert!(answered(&mut first).is_none());
    assert_eq!(window(&state, keys[0]), [1]);
    // An answer for a job the worker does not hold changes nothing.
    state.on_reply(keys[0], reply(9), now);
    assert_eq!(state.stats().completed, 1);
}

#[test]
fn an_exit_fails_exactly_the_running_task_and_requeues_the_others_in_order() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let mut running = submit(&mut state, 1, None, now);
    let mut held = submit(&mut state, 2, None, now);
    let mut queued = submit(&mut state, 3, None, now);

    let replace = state.on_exit(keys[0], killed_by(libc::SIGSEGV));
    assert!(replace);
    match answered(&mut running) {
        Some(Err(Error::WorkerDied {
            pid: 100,
            signal: Some(libc::SIGSEGV),
            code: None,
            reason: None,
        })) => {}
        other => panic!("{other:?}"),
    }
    assert!(answered(&mut held).is_none() && answered(&mut queued).is_none());
    let stats = state.stats();
    assert_eq!(
        (
            stats.workers,
            stats.queued,
            stats.failed,
            stats.respawned,
            stats.missing
        ),
        (0, 2, 1, 1, 1),
        "{stats:?}"
    );

    // The replacement gets the requeued jobs, in their order.
    let key = replace_one(&mut state, 200, now);
    state.dispatch(now);
    assert_eq!(slot(&state, key).link.sent, [2, 3]);
    assert_eq!(state.stats().missing, 0);
}

#[test]
fn an_exit_ends_what_the_worker_left_behind() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let exited = slot(&state, keys[0]).link.exited.clone();
    let other = start_one(&mut state, 101, now);
    state.on_exit(keys[0], exited_with(0));
    assert!(exited.get());
    assert!(!slot(&state, other).link.exited.get());
    assert_eq!(state.stats().workers, 1);
}

#[test]
fn a_timeout_kills_the_worker_and_fails_only_its_task() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let limit = Duration::from_secs(5);
    let mut slow = submit(&mut state, 1, Some(limit), now);
    let mut next = submit(&mut state, 2, None, now);

    assert_eq!(
        state.enforce_deadlines(now + Duration::from_secs(1)),
        Some(now + limit)
    );
    assert_eq!(slot(&state, keys[0]).link.kills, 0);

    state.enforce_deadlines(now + limit);
    let worker = slot(&state, keys[0]);
    assert_eq!(worker.link.kills, 1);
    assert_eq!(worker.killed, Some(KillReason::Timeout(1, limit)));

    assert!(state.on_exit(keys[0], killed_by(libc::SIGKILL)));
    assert!(matches!(answered(&mut slow), Some(Err(Error::Timeout { after })) if after == limit));
    assert!(answered(&mut next).is_none());
    let stats = state.stats();
    assert_eq!(
        (stats.timed_out, stats.failed, stats.queued),
        (1, 0, 1),
        "{stats:?}"
    );
}

#[test]
fn the_deadline_follows_the_task_at_the_head() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let _quick = submit(&mut state, 1, Some(Duration::from_secs(1)), now);
    let _slow = submit(&mut state, 2, Some(Duration::from_secs(100)), now);
    let later = now + Duration::from_millis(500);
    state.on_reply(keys[0], reply(1), later);
    // Job 2 became head at `later`: its time runs from then, not from its dispatch.
    assert_eq!(
        state.enforce_deadlines(later + Duration::from_secs(99)),
        Some(later + Duration::from_secs(100))
    );
    assert_eq!(slot(&state, keys[0]).link.kills, 0);
}

#[test]
fn an_idle_worker_takes_back_a_task_a_busy_worker_has_not_started() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let busy = start_one(&mut state, 100, now);
    state.will_start();
    let idle = state.started(101, Fake::new(), now);
    let _first = submit(&mut state, 1, None, now);
    let _second = submit(&mut state, 2, None, now);
    assert_eq!(window(&state, busy), [1, 2]);
    let head = slot(&state, busy).window[0].claim;
    assert!(slot_mut(&mut state, busy).link.start(head));

    // The other worker becomes ready, idle: it takes job 2, which has not started.
    state.on_hello(idle, Hello::Ready);
    state.dispatch(now);
    assert_eq!(window(&state, busy), [1]);
    assert_eq!(window(&state, idle), [2]);
    assert_eq!(slot(&state, idle).link.sent, [2]);
    // The busy worker finds job 2 taken back and skips it: it never runs twice.
    let taken = Claim { cell: 1, ticket: 2 };
    assert!(!slot_mut(&mut state, busy).link.start(taken));
}

#[test]
fn a_task_already_started_is_not_taken_back() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let busy = start_one(&mut state, 100, now);
    state.will_start();
    let idle = state.started(101, Fake::new(), now);
    let _first = submit(&mut state, 1, None, now);
    let _second = submit(&mut state, 2, None, now);
    // The worker finished job 1 and started job 2; its answer to job 1 is not read yet.
    let claim = slot(&state, busy).window[1].claim;
    assert!(slot_mut(&mut state, busy).link.start(claim));
    state.on_hello(idle, Hello::Ready);
    state.dispatch(now);
    assert_eq!(window(&state, busy), [1, 2]);
    assert!(window(&state, idle).is_empty());
}

#[test]
fn a_replacement_that_cannot_start_is_missing_and_retried_while_the_pool_lives() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    assert!(state.on_exit(keys[0], exited_with(3)));
    let why = "creating its connection: Too many open files (os error 24)";
    assert!(state.start_failed(true, why.into(), now));
    assert!(state.start_failed(true, why.into(), now));
    let stats = state.stats();
    assert_eq!(
        (stats.workers, stats.missing, stats.start_failures),
        (0, 1, 2)
    );
    assert!(
        state
            .starving()
            .is_some_and(|starving| starving.contains(why))
    );
    assert!(state.retry_wanted());

    // Once the pool is terminated, the replacement is given up.
    state.terminate();
    assert!(!state.retry_wanted());
    assert_eq!(state.stats().missing, 0);
    assert!(state.all_gone());
}

#[test]
fn a_first_worker_that_cannot_start_is_not_retried() {
    let now = Instant::now();
    let mut state: State<Fake> = State::new(rules());
    state.will_start();
    assert!(!state.start_failed(false, "spawning its process: EAGAIN".into(), now));
    assert_eq!(state.stats().missing, 0);
}

#[test]
fn queued_tasks_wait_for_a_replacement_then_fail_naming_the_last_start_failure() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    state.on_exit(keys[0], exited_with(3));
    state.start_failed(true, "opening its pidfd: first".into(), now);
    let why = "passing its descriptors to the new process: Too many open files";
    state.start_failed(true, why.into(), now);
    let mut waiting = submit(&mut state, 1, None, now);

    let limit = rules().start_timeout;
    let just_before = now + limit - Duration::from_millis(1);
    assert_eq!(state.enforce_deadlines(just_before), Some(now + limit));
    assert!(answered(&mut waiting).is_none());

    state.enforce_deadlines(now + limit);
    match answered(&mut waiting) {
        Some(Err(Error::Bootstrap(message))) => {
            assert!(
                message.contains("no pool worker could be started"),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(state.stats().queued, 0);
}

#[test]
fn a_started_worker_ends_the_shortfall() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    state.on_exit(keys[0], exited_with(3));
    state.start_failed(true, "creating its connection: EMFILE".into(), now);
    let mut waiting = submit(&mut state, 1, None, now);
    let key = replace_one(&mut state, 300, now);
    assert_eq!(state.starving(), None);
    assert_eq!(state.stats().missing, 0);
    state.dispatch(now);
    assert_eq!(slot(&state, key).link.sent, [1]);
    // Its deadline no longer applies: the task is with a worker.
    state.enforce_deadlines(now + rules().start_timeout * 2);
    assert!(answered(&mut waiting).is_none());
}

#[test]
fn a_worker_that_dies_before_any_was_ready_fails_the_pool() {
    let now = Instant::now();
    let mut state = State::new(rules());
    state.will_start();
    let key = state.started(7, Fake::new(), now);
    let mut waiting = submit(&mut state, 1, None, now);
    assert!(!state.on_exit(key, exited_with(101)));
    assert!(
        matches!(answered(&mut waiting), Some(Err(Error::Bootstrap(m))) if m.contains("start-up"))
    );
    assert!(matches!(
        state.enqueue(job(2), None, None, now),
        Err(Error::Bootstrap(_))
    ));
}

#[test]
fn a_worker_not_ready_in_time_is_killed() {
    let now = Instant::now();
    let mut state = State::new(rules());
    state.will_start();
    let key = state.started(7, Fake::new(), now);
    let limit = rules().start_timeout;
    assert_eq!(state.enforce_deadlines(now), Some(now + limit));
    state.enforce_deadlines(now + limit);
    assert_eq!(slot(&state, key).killed, Some(KillReason::Startup));
    state.on_exit(key, killed_by(libc::SIGKILL));
    assert!(
        state
            .init_error
            .as_deref()
            .is_some_and(|e| e.contains("not ready"))
    );
}

#[test]
fn close_lets_work_finish_then_hangs_up_then_kills_stragglers() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let _running = submit(&mut state, 1, None, now);
    let mut idle_since = None;
    assert!(!state.close_step(&mut idle_since, now));
    assert!(!slot(&state, keys[0]).link.hung_up);
    assert!(matches!(
        state.enqueue(job(2), None, None, now),
        Err(Error::PoolClosed)
    ));

    state.on_reply(keys[0], reply(1), now);
    assert!(!state.close_step(&mut idle_since, now));
    assert!(slot(&state, keys[0]).link.hung_up);
    assert_eq!(slot(&state, keys[0]).link.kills, 0);

    // A worker that does not exit within the grace is killed.
    assert!(!state.close_step(&mut idle_since, now + EXIT_GRACE));
    assert_eq!(slot(&state, keys[0]).link.kills, 1);
    assert!(!state.on_exit(keys[0], killed_by(libc::SIGKILL)));
    assert!(state.close_step(&mut idle_since, now + EXIT_GRACE));
}

#[test]
fn close_replaces_a_worker_that_dies_while_tasks_remain() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let _running = submit(&mut state, 1, None, now);
    let _held = submit(&mut state, 2, None, now);
    let mut idle_since = None;
    state.close_step(&mut idle_since, now);
    assert!(state.on_exit(keys[0], killed_by(libc::SIGKILL)));
    assert_eq!(state.stats().missing, 1);
}

#[test]
fn terminate_fails_queued_tasks_now_and_running_ones_at_their_exit() {
    let now = Instant::now();
    let (mut state, keys) = pool(rules(), 1, now);
    let mut running = submit(&mut state, 1, None, now);
    let mut held = submit(&mut state, 2, None, now);
    let mut queued = submit(&mut state, 3, None, now);
    state.terminate();
    assert!(matches!(
        answered(&mut queued),
        Some(Err(Error::PoolClosed))
    ));
    assert!(answered(&mut running).is_none());
    let worker = slot(&state, keys[0]);
    assert!(worker.link.hung_up && worker.link.kills == 1);

    assert!(!state.on_exit(keys[0], killed_by(libc::SIGKILL)));
    assert!(matches!(
        answered(&mut running),
        Some(Err(Error::PoolClosed))
    ));
    assert!(matches!(answered(&mut held), Some(Err(Error::PoolClosed))));
    assert!(state.all_gone());
}

#[test]
fn a_worker_started_after_terminate_is_killed_at_once() {
    let now = Instant::now();
    let (mut state, _) = pool(rules(), 1, now);
    state.terminate();
    state.will_start();
    let key = state.started(9, Fake::new(), now);
    let worker = slot(&state, key);
    assert!(worker.link.hung_up && worker.link.kills == 1);
}

#[test]
fn a_dropped_queued_task_is_removed_and_a_running_one_kills_its_worker_if_asked() {
    let now = Instant::now();
    let kill = Rules {
        cancel_running: CancelRunning::KillWorker,
        ..rules()
    };
    let (mut state, keys) = pool(kill, 1, now);
    let running = submit(&mut state, 1, None, now);
    let _held = submit(&mut state, 2, None, now);
    let queued = submit(&mut state, 3, None, now);
    drop(queued);
    state.cancel(3);
    assert_eq!(state.stats().queued, 0);
    drop(running);
    state.cancel(1);
    assert_eq!(slot(&state, keys[0]).killed, Some(KillReason::Cancelled(1)));
}

#[test]
fn a_worker_retires_after_its_last_task() {
    let now = Instant::now();
    let once = Rules {
        max_tasks_per_worker: Some(1),
        ..rules()
    };
    let (mut state, keys) = pool(once, 1, now);
    let _first = submit(&mut state, 1, None, now);
    let _second = submit(&mut state, 2, None, now);
    assert_eq!(window(&state, keys[0]), [1]);
    state.on_reply(keys[0], reply(1), now);
    assert!(slot(&state, keys[0]).link.hung_up);
    assert!(state.on_exit(keys[0], exited_with(0)));
    let stats = state.stats();
    assert_eq!(
        (stats.recycled, stats.respawned, stats.queued),
        (1, 0, 1),
        "{stats:?}"
    );
}

#[test]
fn a_detached_task_is_dispatched_although_nobody_awaits_it() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let answer = state.enqueue(job(1), None, None, now).unwrap();
    let dropped = state.enqueue(job(2), None, None, now).unwrap();
    state.detach(1);
    drop(answer);
    drop(dropped);
    let key = start_one(&mut state, 5, now);
    state.dispatch(now);
    assert_eq!(slot(&state, key).link.sent, [1]);
}

/// A worker behind a byte stream, ready.
fn start_stream(state: &mut State<Fake>, pid: u32, now: Instant) -> u64 {
    state.will_start();
    let mut fake = Fake::new();
    fake.stream = true;
    let key = state.started(pid, fake, now);
    state.on_hello(key, Hello::Ready);
    key
}

#[test]
fn a_stream_worker_is_asked_for_a_task_and_gives_it_back_once() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let busy = start_stream(&mut state, 100, now);
    let _first = submit(&mut state, 1, None, now);
    let _second = submit(&mut state, 2, None, now);
    assert_eq!(window(&state, busy), [1, 2]);

    // An idle worker appears: the busy one is asked for job 2, which stays with it
    // until it answers, and is asked only once.
    let idle = start_one(&mut state, 101, now);
    state.dispatch(now);
    state.dispatch(now);
    assert_eq!(slot(&state, busy).link.asked, [2]);
    assert_eq!(window(&state, busy), [1, 2]);
    assert!(window(&state, idle).is_empty());

    // "Taken back": the job goes to the idle worker.
    state.on_taken_back(busy, 2, now);
    state.dispatch(now);
    assert_eq!(window(&state, busy), [1]);
    assert_eq!(window(&state, idle), [2]);
    // A repeated or stray answer changes nothing.
    state.on_taken_back(busy, 2, now);
    state.on_taken_back(busy, 1, now);
    assert_eq!(window(&state, busy), [1]);
    assert_eq!(state.stats().queued, 0);
}

#[test]
fn a_stream_worker_that_already_started_the_task_keeps_it() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let busy = start_stream(&mut state, 100, now);
    let mut first = submit(&mut state, 1, None, now);
    let mut second = submit(&mut state, 2, None, now);
    let idle = start_one(&mut state, 101, now);
    state.dispatch(now);
    assert_eq!(slot(&state, busy).link.asked, [2]);
    // "Already started" needs no event: the job stays, never asked for again.
    state.on_reply(busy, reply(1), now);
    state.dispatch(now);
    assert_eq!(slot(&state, busy).link.asked, [2]);
    assert_eq!(window(&state, busy), [2]);
    assert!(window(&state, idle).is_empty());
    state.on_reply(busy, reply(2), now);
    assert!(answered(&mut first).is_some_and(|r| r.is_ok()));
    assert!(answered(&mut second).is_some_and(|r| r.is_ok()));
}

#[test]
fn a_stream_worker_lost_while_asked_requeues_the_task_and_is_not_replaced() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let busy = start_stream(&mut state, 100, now);
    let mut running = submit(&mut state, 1, None, now);
    let mut held = submit(&mut state, 2, None, now);
    let idle = start_one(&mut state, 101, now);
    state.dispatch(now);
    assert_eq!(slot(&state, busy).link.asked, [2]);

    state.lost(busy, "the connection to it was lost: reset".into());
    let replace = state.on_exit(busy, killed_by(libc::SIGKILL));
    assert!(!replace, "a joined worker is not replaced");
    match answered(&mut running) {
        Some(Err(Error::WorkerDied {
            pid: 100,
            reason: Some(reason),
            ..
        })) => assert!(reason.contains("connection"), "{reason}"),
        other => panic!("{other:?}"),
    }
    state.dispatch(now);
    assert_eq!(window(&state, idle), [2]);
    assert!(answered(&mut held).is_none());
    // Its answer to the take-back, arriving late, is ignored.
    state.on_taken_back(busy, 2, now);
    assert_eq!(window(&state, idle), [2]);
}

#[test]
fn descriptors_bound_for_a_stream_worker_fail_the_task_only() {
    let now = Instant::now();
    let mut state = State::new(rules());
    let worker = start_stream(&mut state, 100, now);
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let with_fd = Arc::new(JobData {
        id: 1,
        kind: JobKind::Handle,
        payload: Vec::new(),
        fds: vec![ours.into()],
    });
    let mut refused = state.enqueue(with_fd, None, None, now).unwrap();
    let _plain = submit(&mut state, 2, None, now);
    state.dispatch(now);
    assert!(matches!(
        answered(&mut refused),
        Some(Err(Error::Encode(_)))
    ));
    assert_eq!(window(&state, worker), [2]);
}
