//! A thread that lives as long as the process, for spawns that ask the kernel to kill
//! the child when its parent dies.
//!
//! Linux ties `PR_SET_PDEATHSIG` to the parent *thread*: a child spawned from a thread
//! that later exits (a test's thread, a runtime's blocking thread gone idle) would be
//! killed although its parent process lives on. Spawning such children from this one
//! thread, which never exits, makes "dies with its parent" mean the process.

use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

type Job = Box<dyn FnOnce() + Send>;

static THREAD: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Runs `f` on the parent-death thread and returns its result.
pub(crate) fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done_tx, done_rx) = channel();
    let job: Job = Box::new(move || {
        let _ = done_tx.send(f());
    });
    let sender = {
        let mut thread = THREAD.lock().unwrap_or_else(|p| p.into_inner());
        thread.get_or_insert_with(start).clone()
    };
    sender
        .send(job)
        .expect("the parent-death thread never exits");
    done_rx
        .recv()
        .expect("the parent-death thread runs every job")
}

fn start() -> Sender<Job> {
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("mp-parent-death".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .expect("cannot start the parent-death thread");
    tx
}
