//! Queues across real processes: many producers and consumers, mixed sizes, bounds,
//! closing, joining.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use multiprocess::{Error, JoinableQueue, Queue, spawn_process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Message {
    id: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

const TOTAL: u32 = 100_000;

/// Sizes from 8 bytes to 4 MiB: mostly small, some 64 KiB, a few 4 MiB.
fn size_of_message(id: u32) -> usize {
    match id {
        id if id % 2000 == 0 => 4 << 20,
        id if id % 100 == 0 => 64 << 10,
        id => 8 + (id as usize * 37) % 500,
    }
}

fn body_for(id: u32) -> Vec<u8> {
    let pattern = id.to_le_bytes();
    (0..size_of_message(id))
        .map(|i| pattern[i % 4] ^ (i / 4) as u8)
        .collect()
}

fn intact(message: &Message) -> bool {
    let pattern = message.id.to_le_bytes();
    message.body.len() == size_of_message(message.id)
        && message
            .body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern[i % 4] ^ (i / 4) as u8)
}

fn produce((queue, first, step): (Queue<Message>, u32, u32)) {
    let mut id = first;
    while id < TOTAL {
        queue
            .put_blocking(Message {
                id,
                body: body_for(id),
            })
            .unwrap();
        id += step;
    }
}

/// Takes messages until the queue is closed; returns the ids, checking every byte.
fn consume(queue: Queue<Message>) -> Vec<u32> {
    let mut ids = Vec::new();
    loop {
        match queue.get_blocking() {
            Ok(message) => {
                assert!(intact(&message), "message {} torn", message.id);
                ids.push(message.id);
            }
            Err(Error::Closed) => return ids,
            Err(err) => panic!("consumer failed: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_consumers_move_every_message_whole() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Message>::new(256).unwrap();
    let producers: Vec<_> = (0..3)
        .map(|i| spawn_process(produce, (queue.clone(), i, 3)).unwrap())
        .collect();
    let consumers: Vec<_> = (0..3)
        .map(|_| spawn_process(consume, queue.clone()).unwrap())
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    queue.close();
    let mut seen = HashSet::new();
    let mut count = 0;
    for consumer in consumers {
        for id in consumer.await.unwrap() {
            count += 1;
            assert!(seen.insert(id), "message {id} delivered twice");
        }
    }
    assert_eq!(count, TOTAL as usize);
    assert_eq!(seen.len(), TOTAL as usize, "none lost");
    drop(queue);
    leaks.finish().await;
}

#[tokio::test]
async fn a_full_queue_blocks_put_until_a_get_makes_room() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u32>::new(2).unwrap();
    queue.put(1).await.unwrap();
    queue.put(2).await.unwrap();
    assert!(matches!(queue.try_put(3), Err(Error::Full)));
    let blocked = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.put(3).await })
    };
    tokio::task::yield_now().await;
    assert!(!blocked.is_finished());
    // A consumer in another process makes room.
    fn take_one(q: Queue<u32>) -> u32 {
        q.get_blocking().unwrap()
    }
    assert_eq!(
        spawn_process(take_one, queue.clone())
            .unwrap()
            .await
            .unwrap(),
        1
    );
    blocked.await.unwrap().unwrap();
    assert_eq!(queue.get().await.unwrap(), 2);
    assert_eq!(queue.get().await.unwrap(), 3);
    drop(queue);
    leaks.finish().await;
}

fn wait_for_items(queue: Queue<u32>) -> Vec<u32> {
    let mut items = Vec::new();
    while let Ok(item) = queue.get_blocking() {
        items.push(item);
    }
    items
}

#[tokio::test]
async fn close_ends_waiting_consumers() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u32>::new(8).unwrap();
    let consumers: Vec<_> = (0..3)
        .map(|_| spawn_process(wait_for_items, queue.clone()).unwrap())
        .collect();
    for i in 0..5 {
        queue.put(i).await.unwrap();
    }
    queue.close();
    assert!(matches!(queue.put(9).await, Err(Error::Closed)));
    let mut all: Vec<u32> = Vec::new();
    for consumer in consumers {
        all.extend(consumer.await.unwrap());
    }
    all.sort();
    assert_eq!(all, [0, 1, 2, 3, 4]);
    drop(queue);
    leaks.finish().await;
}

fn work_and_mark_done(queue: JoinableQueue<u64>) -> u64 {
    let mut sum = 0;
    while let Ok(n) = queue.get_blocking() {
        sum += n;
        std::thread::sleep(Duration::from_micros(100));
        queue.task_done().unwrap();
    }
    sum
}

#[tokio::test]
async fn join_returns_after_every_task_done() {
    let leaks = common::LeakCheck::start().await;
    let queue = JoinableQueue::<u64>::new(16).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| spawn_process(work_and_mark_done, queue.clone()).unwrap())
        .collect();
    for n in 1..=200 {
        queue.put(n).await.unwrap();
    }
    queue.join().await.unwrap();
    assert_eq!(queue.unfinished(), 0);
    assert!(queue.is_empty());
    queue.close();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    assert_eq!(total, 200 * 201 / 2);
    assert!(matches!(queue.task_done(), Err(Error::BoundExceeded(_))));
    drop(queue);
    leaks.finish().await;
}

#[tokio::test]
async fn timeouts_on_an_empty_or_full_queue() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u8>::new(1).unwrap();
    assert!(matches!(
        queue.get_timeout(Duration::from_millis(20)).await,
        Err(Error::Timeout { .. })
    ));
    queue.put(1).await.unwrap();
    assert!(matches!(
        queue.put_timeout(2, Duration::from_millis(20)).await,
        Err(Error::Timeout { .. })
    ));
    assert_eq!(queue.get_timeout(Duration::from_secs(5)).await.unwrap(), 1);
    drop(queue);
    leaks.finish().await;
}

/// Small messages, large ones and ones carrying a descriptor, mixed: the consumer sees
/// them in the order they were put.
#[derive(Serialize, Deserialize)]
enum Mixed {
    Small(u32),
    Large(u32, #[serde(with = "serde_bytes")] Vec<u8>),
    WithPipe(u32, multiprocess::Receiver<u32>),
}

fn produce_mixed(queue: Queue<Mixed>) {
    for id in 0..3000u32 {
        let message = match id % 10 {
            3 => Mixed::Large(id, vec![id as u8; 300 << 10]),
            7 => {
                let (mut tx, rx) = multiprocess::channel::<u32>().unwrap();
                tx.send_blocking(id).unwrap();
                Mixed::WithPipe(id, rx)
            }
            _ => Mixed::Small(id),
        };
        queue.put_blocking(message).unwrap();
    }
    queue.close();
}

#[tokio::test]
async fn mixed_messages_keep_their_order() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Mixed>::new(64).unwrap();
    let producer = spawn_process(produce_mixed, queue.clone()).unwrap();
    let mut next = 0u32;
    loop {
        let id = match queue.get().await {
            Ok(Mixed::Small(id)) => id,
            Ok(Mixed::Large(id, body)) => {
                assert!(body.len() == 300 << 10 && body.iter().all(|b| *b == id as u8));
                id
            }
            Ok(Mixed::WithPipe(id, mut rx)) => {
                assert_eq!(rx.recv().await.unwrap(), id, "the pipe carries its own id");
                id
            }
            Err(Error::Closed) => break,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(id, next, "out of order");
        next += 1;
    }
    assert_eq!(next, 3000);
    producer.await.unwrap();
    assert_eq!(queue.len(), 0);
    drop(queue);
    leaks.finish().await;
}

/// Cancelled puts and gets give their places back: nothing is lost or counted twice.
#[tokio::test]
async fn cancelled_puts_and_gets_lose_nothing() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u32>::new(2).unwrap();
    queue.put(1).await.unwrap();
    queue.put(2).await.unwrap();
    // Full: a put that waits is cancelled by its timeout and takes no place.
    for _ in 0..3 {
        assert!(matches!(
            queue.put_timeout(9, Duration::from_millis(5)).await,
            Err(Error::Timeout { .. })
        ));
    }
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.get().await.unwrap(), 1);
    assert_eq!(queue.get().await.unwrap(), 2);
    // Empty: a get that waits is cancelled and takes nothing.
    for _ in 0..3 {
        assert!(matches!(
            queue.get_timeout(Duration::from_millis(5)).await,
            Err(Error::Timeout { .. })
        ));
    }
    queue.put(3).await.unwrap();
    assert_eq!(queue.try_get().unwrap(), 3);
    assert_eq!(queue.len(), 0);
    drop(queue);
    leaks.finish().await;
}

fn put_huge(queue: Queue<Vec<u8>>) {
    // Far more than the socket holds: with nobody reading, this blocks mid-frame.
    queue.put_blocking(vec![7u8; 8 << 20]).unwrap();
}

fn state_of(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, r)| r.chars().next().unwrap_or('?'))
        })
        .unwrap_or('?')
}

/// A producer killed while writing a large message: the consumer reading it gets
/// `OwnerDied` instead of waiting forever, and so does everyone after it.
#[tokio::test]
async fn a_producer_killed_mid_message_breaks_the_queue_without_hanging() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(4).unwrap();
    let mut producer = spawn_process(put_huge, queue.clone()).unwrap();
    let pid = producer.pid();
    // Its place is taken and it sleeps: blocked writing into the full socket.
    common::eventually("producer blocked mid-message", || {
        queue.len() == 1 && state_of(pid) == 'S'
    })
    .await;
    producer.kill().unwrap();
    assert!(producer.join().await.is_err());
    match queue.get().await {
        Err(Error::OwnerDied { pid: died }) => assert_eq!(died, pid),
        other => panic!("expected OwnerDied, got {:?}", other.map(|v| v.len())),
    }
    assert!(matches!(queue.get().await, Err(Error::OwnerDied { .. })));
    assert!(matches!(
        queue.put(vec![1]).await,
        Err(Error::OwnerDied { .. })
    ));
    drop(queue);
    leaks.finish().await;
}

/// Runs `f` on a thread of its own and says whether it returned within `limit`.
fn returns_within<R: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result.recv_timeout(limit).ok()
}

/// A producer blocked in the middle of a large message holds the write lock: `try_put`
/// does not wait for it, and `try_get` does not wait for the rest of its frame.
#[tokio::test]
async fn try_put_and_try_get_do_not_wait_for_a_producer_mid_message() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(4).unwrap();
    let mut producer = spawn_process(put_huge, queue.clone()).unwrap();
    let pid = producer.pid();
    common::eventually("producer blocked mid-message", || {
        queue.len() == 1 && state_of(pid) == 'S'
    })
    .await;
    let q = queue.clone();
    let put = returns_within(Duration::from_secs(5), move || q.try_put(vec![1]));
    assert!(
        matches!(put, Some(Err(Error::Full))),
        "try_put waited for the write lock"
    );
    let q = queue.clone();
    let got = returns_within(Duration::from_secs(5), move || q.try_get().map(|v| v.len()));
    assert!(
        matches!(got, Some(Err(Error::Empty))),
        "try_get took a message whose bytes have not all arrived: {got:?}"
    );
    assert_eq!(queue.len(), 1, "the failed try_put gave its place back");
    // The waiting forms still move the message, whole.
    let message = queue.get().await.unwrap();
    assert!(message.len() == 8 << 20 && message.iter().all(|b| *b == 7));
    producer.join().await.unwrap();
    queue.try_put(vec![2]).unwrap();
    assert_eq!(queue.try_get().unwrap(), [2]);
    drop(queue);
    leaks.finish().await;
}

/// Messages too large for the ring travel through the socket: with the socket full and
/// nobody reading, `try_put` says `Full` at once instead of waiting for a reader.
#[tokio::test]
async fn try_put_does_not_wait_for_room_in_the_socket() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(64).unwrap();
    let big = vec![3u8; 64 << 10];
    let mut put = 0;
    let outcome = loop {
        let q = queue.clone();
        let message = big.clone();
        match returns_within(Duration::from_secs(5), move || q.try_put(message)) {
            Some(Ok(())) => put += 1,
            other => break other,
        }
        assert!(put < 64, "the socket never filled");
    };
    assert!(
        matches!(outcome, Some(Err(Error::Full))),
        "try_put waited for room in the socket after {put} messages"
    );
    assert!(put >= 1);
    assert_eq!(queue.len(), put);
    // Once a consumer drains the socket, there is room again.
    for _ in 0..put {
        assert_eq!(queue.get().await.unwrap(), big);
    }
    queue.try_put(big.clone()).unwrap();
    assert_eq!(queue.try_get().unwrap(), big);
    drop(queue);
    leaks.finish().await;
}

#[tokio::test]
async fn try_get_on_an_empty_open_or_closed_queue() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u8>::new(2).unwrap();
    assert!(matches!(queue.try_get(), Err(Error::Empty)));
    queue.try_put(1).unwrap();
    queue.try_put(2).unwrap();
    assert!(matches!(queue.try_put(3), Err(Error::Full)));
    queue.close();
    assert!(matches!(queue.try_put(3), Err(Error::Closed)));
    assert_eq!(queue.try_get().unwrap(), 1);
    assert_eq!(queue.try_get().unwrap(), 2);
    assert!(matches!(queue.try_get(), Err(Error::Closed)));
    drop(queue);
    leaks.finish().await;
}

#[tokio::test]
async fn is_full_follows_the_count() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u8>::new(2).unwrap();
    assert!(!queue.is_full());
    queue.put(1).await.unwrap();
    assert!(!queue.is_full());
    queue.put(2).await.unwrap();
    assert!(queue.is_full());
    fn take_one(q: Queue<u8>) -> u8 {
        q.get_blocking().unwrap()
    }
    assert_eq!(
        spawn_process(take_one, queue.clone())
            .unwrap()
            .await
            .unwrap(),
        1
    );
    assert!(!queue.is_full());
    drop(queue);
    leaks.finish().await;
}

/// Waits until `pid` sleeps (in a wait of the queue's).
async fn sleeping(pid: u32) {
    common::eventually("child waiting", || state_of(pid) == 'S').await;
}

fn get_one_blocking(queue: Queue<u32>) -> String {
    format!("{:?}", queue.get_blocking())
}

fn put_one_blocking(queue: Queue<u32>) -> String {
    format!("{:?}", queue.put_blocking(7))
}

/// `shutdown` (Python 3.13, not immediate): a producer waiting for room and a consumer
/// waiting for a message are released with `Closed`; consumers still take what is
/// queued, then get `Closed`.
#[tokio::test]
async fn shutdown_refuses_puts_and_lets_consumers_drain() {
    let leaks = common::LeakCheck::start().await;
    let empty = Queue::<u32>::new(2).unwrap();
    let full = Queue::<u32>::new(2).unwrap();
    full.put(1).await.unwrap();
    full.put(2).await.unwrap();
    let mut getter = spawn_process(get_one_blocking, empty.clone()).unwrap();
    let mut putter = spawn_process(put_one_blocking, full.clone()).unwrap();
    sleeping(getter.pid()).await;
    sleeping(putter.pid()).await;
    empty.shutdown();
    assert_eq!(getter.join().await.unwrap(), "Err(Closed)");
    full.shutdown();
    assert_eq!(putter.join().await.unwrap(), "Err(Closed)");
    assert!(matches!(full.put(3).await, Err(Error::Closed)));
    let drained = spawn_process(wait_for_items, full.clone()).unwrap();
    assert_eq!(drained.await.unwrap(), [1, 2]);
    assert!(matches!(full.get().await, Err(Error::Closed)));
    drop((empty, full, getter, putter));
    leaks.finish().await;
}

/// `shutdown_immediate` releases a process waiting in `get` and one waiting in `put`
/// with `Closed`, drops what was queued, and later calls fail at once.
#[tokio::test]
async fn shutdown_immediate_releases_waiters_and_drops_messages() {
    let leaks = common::LeakCheck::start().await;
    let empty = Queue::<u32>::new(2).unwrap();
    let full = Queue::<u32>::new(2).unwrap();
    full.put(1).await.unwrap();
    full.put(2).await.unwrap();
    let mut getter = spawn_process(get_one_blocking, empty.clone()).unwrap();
    let mut putter = spawn_process(put_one_blocking, full.clone()).unwrap();
    sleeping(getter.pid()).await;
    sleeping(putter.pid()).await;
    empty.shutdown_immediate();
    assert_eq!(getter.join().await.unwrap(), "Err(Closed)");
    full.shutdown_immediate();
    assert_eq!(putter.join().await.unwrap(), "Err(Closed)");
    assert_eq!(full.len(), 0, "queued messages are dropped");
    assert!(!full.is_full());
    assert!(matches!(full.get().await, Err(Error::Closed)));
    assert!(matches!(full.try_get(), Err(Error::Closed)));
    assert!(matches!(full.put(3).await, Err(Error::Closed)));
    assert!(matches!(full.try_put(3), Err(Error::Closed)));
    assert!(matches!(
        full.get_timeout(Duration::from_secs(5)).await,
        Err(Error::Closed)
    ));
    drop((empty, full, getter, putter));
    leaks.finish().await;
}

/// Messages carrying descriptors are dropped too, and their descriptors closed.
#[tokio::test]
async fn shutdown_immediate_closes_descriptors_in_queued_messages() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<multiprocess::Receiver<u8>>::new(4).unwrap();
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = multiprocess::channel::<u8>().unwrap();
        queue.put(rx).await.unwrap();
        senders.push(tx);
    }
    queue.shutdown_immediate();
    // The receivers in the queue are gone: each sender finds its peer closed.
    for mut tx in senders {
        assert!(matches!(tx.send(1).await, Err(Error::Disconnected)));
    }
    drop(queue);
    leaks.finish().await;
}

fn join_in_child(queue: JoinableQueue<u32>) -> u32 {
    queue.join_blocking().unwrap();
    queue.unfinished()
}

/// A `join` waiting in another process returns once the queue is shut down
/// immediately, the count is zero, and a worker marking a message it took before is
/// not refused.
#[tokio::test]
async fn shutdown_immediate_ends_join_in_another_process() {
    let leaks = common::LeakCheck::start().await;
    let queue = JoinableQueue::<u32>::new(8).unwrap();
    for i in 0..5 {
        queue.put(i).await.unwrap();
    }
    let in_hand = queue.get().await.unwrap();
    assert_eq!(in_hand, 0);
    let mut joiner = spawn_process(join_in_child, queue.clone()).unwrap();
    sleeping(joiner.pid()).await;
    assert!(joiner.is_alive());
    queue.shutdown_immediate();
    assert_eq!(joiner.join().await.unwrap(), 0);
    assert_eq!(queue.unfinished(), 0);
    queue.task_done().unwrap();
    queue.join().await.unwrap();
    assert!(matches!(queue.get().await, Err(Error::Closed)));
    drop((queue, joiner));
    leaks.finish().await;
}

/// In a child without a runtime: `get_blocking_timeout` gives up on an empty queue
/// (reported on `ready`), then takes a message that comes while it waits.
fn get_with_timeouts((queue, ready): (Queue<u32>, Queue<bool>)) -> u32 {
    let started = std::time::Instant::now();
    let timed_out = matches!(
        queue.get_blocking_timeout(Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ) && started.elapsed() >= Duration::from_millis(50);
    ready.put_blocking(timed_out).unwrap();
    queue.get_blocking_timeout(Duration::from_secs(20)).unwrap()
}

/// In a child: `put_blocking_timeout` on a full queue gives up and puts nothing.
fn put_with_timeout(queue: Queue<u32>) -> String {
    format!(
        "{:?}",
        queue.put_blocking_timeout(3, Duration::from_millis(50))
    )
}

#[tokio::test]
async fn blocking_timeouts_in_a_child() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<u32>::new(2).unwrap();
    let ready = Queue::<bool>::new(1).unwrap();
    let mut getter = spawn_process(get_with_timeouts, (queue.clone(), ready.clone())).unwrap();
    assert!(ready.get().await.unwrap(), "the first wait timed out");
    queue.put(7).await.unwrap();
    assert_eq!(getter.join().await.unwrap(), 7);
    queue.put(1).await.unwrap();
    queue.put(2).await.unwrap();
    let putter = spawn_process(put_with_timeout, queue.clone()).unwrap();
    assert_eq!(putter.await.unwrap(), "Err(Timeout { after: 50ms })");
    assert_eq!(queue.len(), 2, "the timed-out put took no place");
    assert_eq!(queue.get().await.unwrap(), 1);
    assert_eq!(queue.get().await.unwrap(), 2);
    assert!(matches!(queue.try_get(), Err(Error::Empty)));
    // With room, the same call puts at once.
    queue
        .put_blocking_timeout(4, Duration::from_millis(50))
        .unwrap();
    assert_eq!(
        queue
            .get_blocking_timeout(Duration::from_millis(50))
            .unwrap(),
        4
    );
    drop((queue, ready, getter));
    leaks.finish().await;
}

/// The blocking `get` also learns of a producer killed mid-message instead of waiting
/// forever for the rest of its frame.
#[tokio::test]
async fn a_producer_killed_mid_message_ends_a_blocking_get() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(4).unwrap();
    let mut producer = spawn_process(put_huge, queue.clone()).unwrap();
    let pid = producer.pid();
    common::eventually("producer blocked mid-message", || {
        queue.len() == 1 && state_of(pid) == 'S'
    })
    .await;
    let q = queue.clone();
    let getter = tokio::task::spawn_blocking(move || q.get_blocking().map(|v| v.len()));
    // Whether the consumer has begun reading or not, it must end with `OwnerDied`.
    producer.kill().unwrap();
    assert!(producer.join().await.is_err());
    let got = tokio::time::timeout(Duration::from_secs(20), getter)
        .await
        .expect("get_blocking returned")
        .unwrap();
    assert!(
        matches!(got, Err(Error::OwnerDied { pid: died }) if died == pid),
        "{got:?}"
    );
    drop(queue);
    leaks.finish().await;
}

/// A large `get` cancelled mid-frame on a current-thread runtime leaves the rest of
/// the frame to a task of that runtime; a `get_blocking` on the runtime's own thread
/// cannot wait for that task (it cannot run while the thread blocks): it finishes the
/// frame itself and returns the message.
#[tokio::test]
async fn a_blocking_get_on_the_runtime_thread_finishes_a_cancelled_large_get() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(4).unwrap();
    let mut producer = spawn_process(put_huge, queue.clone()).unwrap();
    let pid = producer.pid();
    common::eventually("producer blocked mid-message", || {
        queue.len() == 1 && state_of(pid) == 'S'
    })
    .await;
    // Stopped, the producer owes the rest of its frame and stays alive: a get reads
    // what has arrived, then waits.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    common::eventually("producer stopped", || state_of(pid) == 'T').await;
    let q = queue.clone();
    let got = returns_within(Duration::from_secs(60), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            {
                let mut get = std::pin::pin!(q.get());
                assert!(futures::poll!(get.as_mut()).is_pending());
            }
            kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
            q.get_blocking().map(|message| message.len())
        })
    });
    let got = got.expect("get_blocking on the runtime's thread returned");
    assert_eq!(got.unwrap(), 8 << 20);
    producer.join().await.unwrap();
    // The queue is whole: the next message comes through.
    queue.put(vec![1, 2, 3]).await.unwrap();
    assert_eq!(queue.get().await.unwrap(), [1, 2, 3]);
    drop(queue);
    leaks.finish().await;
}

/// The task reading the rest of a cancelled large `get` ends once a later `get` has
/// taken the read over: it keeps no handle (and no descriptor) of the queue.
#[tokio::test]
async fn a_get_that_takes_over_a_cancelled_read_ends_its_task() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(4).unwrap();
    let mut producer = spawn_process(put_huge, queue.clone()).unwrap();
    let pid = producer.pid();
    common::eventually("producer blocked mid-message", || {
        queue.len() == 1 && state_of(pid) == 'S'
    })
    .await;
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    common::eventually("producer stopped", || state_of(pid) == 'T').await;
    {
        let mut get = std::pin::pin!(queue.get());
        assert!(futures::poll!(get.as_mut()).is_pending());
    }
    // The task reading the rest runs, finds nothing more to read, and waits.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let q = queue.clone();
    let getter = tokio::spawn(async move { q.get().await.map(|message| message.len()) });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), getter)
        .await
        .expect("the get returned")
        .unwrap();
    assert_eq!(got.unwrap(), 8 << 20);
    producer.join().await.unwrap();
    drop(queue);
    leaks.finish().await;
}

fn get_one(queue: Queue<Vec<u8>>) -> Vec<u8> {
    queue.get_blocking().unwrap()
}

/// A large `put` cancelled mid-frame on a current-thread runtime leaves the rest of
/// its frame to a task of that runtime, and the frame holds the write lock; a
/// `put_blocking` on the runtime's own thread cannot wait for that task: it finishes
/// the frame itself (marked withdrawn, so no consumer takes it) and puts its message.
#[tokio::test]
async fn a_blocking_put_on_the_runtime_thread_finishes_a_cancelled_large_put() {
    let leaks = common::LeakCheck::start().await;
    let queue = Queue::<Vec<u8>>::new(4).unwrap();
    let q = queue.clone();
    let put = returns_within(Duration::from_secs(60), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            {
                // Far more than the socket holds, with nobody reading: it stops mid-frame.
                let mut put = std::pin::pin!(q.put(vec![7u8; 8 << 20]));
                assert!(futures::poll!(put.as_mut()).is_pending());
            }
            // Room comes from a consumer in another process.
            let consumer = spawn_process(get_one, q.clone()).unwrap();
            let put = q.put_blocking(vec![1, 2, 3]);
            (put, consumer)
        })
    });
    let (put, consumer) = put.expect("put_blocking on the runtime's thread returned");
    put.unwrap();
    // The cancelled message was withdrawn: the consumer got the one after it.
    assert_eq!(consumer.await.unwrap(), [1, 2, 3]);
    assert!(queue.is_empty());
    drop(queue);
    leaks.finish().await;
}
