//! The worker side of a link that is a byte stream only (a network connection): no
//! memory is shared with the pool and no descriptor crosses.
//!
//! A reader thread takes the pool's messages as they come, so a take-back request is
//! answered while a job runs: the job is either still in the worker's inbox (it is
//! removed, and the answer is "taken back") or it has been taken out to run ("already
//! started"). Both happen under the inbox's lock, so a job never runs twice and is never
//! lost. A writer thread sends what the worker says, in order.
//!
//! A stream that ends without the pool's `Exit` means the pool is gone or unreachable:
//! the worker then ends at once, with whatever its tasks started, rather than run on
//! for nobody.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::protocol::Failure;
use super::protocol::{FromWorker, JobIn, Reply, ToWorkerIn};
use crate::ipc::{Connection, Sender};

/// Why the inbox will get no more jobs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The pool said to finish what is held, then exit.
    Exit,
}

#[derive(Default)]
struct Held {
    jobs: VecDeque<JobIn>,
    end: Option<End>,
}

#[derive(Default)]
struct Inbox {
    held: Mutex<Held>,
    /// For a worker that waits on a thread.
    arrived: Condvar,
    /// For a worker that waits in a task.
    notify: tokio::sync::Notify,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.arrived.notify_all();
        self.notify.notify_one();
    }

    /// Takes the next job out to run; `Err` while none is there and more may come.
    fn take(&self, held: &mut Held) -> Result<Option<JobIn>, ()> {
        match held.jobs.pop_front() {
            Some(job) => Ok(Some(job)),
            None if held.end.is_some() => Ok(None),
            None => Err(()),
        }
    }
}

/// A worker's end of a stream link.
pub(crate) struct StreamWorker {
    inbox: Arc<Inbox>,
    out: mpsc::Sender<FromWorker>,
    writer: JoinHandle<()>,
}

impl StreamWorker {
    /// Starts the reader and writer threads on `conn`.
    pub(crate) fn start(conn: Connection<FromWorker, ToWorkerIn>) -> std::io::Result<StreamWorker> {
        let (tx, mut rx) = conn.split();
        let (out, outgoing) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("pool-writer".into())
            .spawn(move || write_all(tx, outgoing))?;
        let inbox = Arc::new(Inbox::default());
        let (reader_inbox, answers) = (inbox.clone(), out.clone());
        std::thread::Builder::new()
            .name("pool-reader".into())
            .spawn(move || {
                loop {
                    match rx.recv_blocking() {
                        Ok(ToWorkerIn::Job(job)) => {
                            reader_inbox.lock().jobs.push_back(job);
                            reader_inbox.changed();
                        }
                        Ok(ToWorkerIn::TakeBack(id)) => {
                            let mut held = reader_inbox.lock();
                            let index = held.jobs.iter().position(|job| job.0 == id);
                            let taken = index.and_then(|i| held.jobs.remove(i)).is_some();
                            drop(held);
                            let answer = if taken {
                                FromWorker::TakenBack(id)
                            } else {
                                FromWorker::AlreadyStarted(id)
                            };
                            let _ = answers.send(answer);
                        }
                        Ok(ToWorkerIn::Exit) => {
                            reader_inbox.lock().end = Some(End::Exit);
                            reader_inbox.changed();
                            return;
                        }
                        Err(_) => connection_lost(),
                    }
                }
            })?;
        Ok(StreamWorker { inbox, out, writer })
    }

    /// The next job to run, once it is there; `None` once the pool said to exit and
    /// every job held has been taken.
    pub(crate) fn next_blocking(&self) -> Option<JobIn> {
        let mut held = self.inbox.lock();
        loop {
            if let Ok(next) = self.inbox.take(&mut held) {
                return next;
            }
            held = self
                .inbox
                .arrived
                .wait(held)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// [`next_blocking`](Self::next_blocking), awaited.
    pub(crate) async fn next(&self) -> Option<JobIn> {
        loop {
            let notified = self.inbox.notify.notified();
            if let Ok(next) = self.inbox.take(&mut self.inbox.lock()) {
                return next;
            }
            notified.await;
        }
    }

    /// Sends a job's answer. Descriptors cannot cross a byte stream: a result holding
    /// some fails instead.
    pub(crate) fn answer(&self, mut reply: Reply) {
        if !reply.fds.is_empty() {
            reply.fds.clear();
            reply.result = Err(Failure::Encode(
                "the result holds descriptors, which cannot cross a network connection".into(),
            ));
        }
        let _ = self.out.send(FromWorker::Reply(reply));
    }

    /// Waits until everything said has been written.
    pub(crate) fn finish(self) {
        drop(self.out);
        let _ = self.writer.join();
    }
}

fn write_all(mut tx: Sender<FromWorker>, outgoing: mpsc::Receiver<FromWorker>) {
    while let Ok(message) = outgoing.recv() {
        if tx.send_blocking(message).is_err() {
            connection_lost();
        }
    }
}

/// The pool is gone or unreachable: ends this worker and every process of its group
/// (what its tasks started) now.
fn connection_lost() -> ! {
    let own = nix::unistd::getpid();
    if nix::unistd::getpgrp() == own {
        let _ = nix::sys::signal::killpg(own, nix::sys::signal::Signal::SIGKILL);
    }
    std::process::exit(super::join::EXIT_LOST);
}
