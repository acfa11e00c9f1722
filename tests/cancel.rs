//! Cancel safety under load: async queue and connection calls cancelled at random
//! points while another process streams numbered messages. Every message must arrive
//! exactly once, whole and in order per producer, and the channel must still work.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use multiprocess::{Connection, Error, Queue, spawn_process};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Item {
    producer: u32,
    seq: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

const ITEMS: u32 = 600;

/// Mostly small messages that fit the ring; every seventh is larger than the socket
/// holds, so it travels through the socket in pieces and its writer waits part way.
fn body_len(seq: u32) -> usize {
    match seq % 7 {
        3 => 1 << 20,
        _ => 16 + (seq as usize * 13) % 200,
    }
}

fn item(producer: u32, seq: u32) -> Item {
    let body = (0..body_len(seq))
        .map(|i| (seq as usize * 31 + i) as u8)
        .collect();
    Item {
        producer,
        seq,
        body,
    }
}

fn intact(item: &Item) -> bool {
    *item == self::item(item.producer, item.seq)
}

/// A small random number generator, seeded from the clock; the seed is printed so a
/// failing run can be replayed by setting `CANCEL_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CANCEL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("CANCEL_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `fut` until it completes or is cancelled at a random point: either after a
/// random number of polls (each poll a point where it may stop), or by a timer of a
/// random length under two milliseconds. `None` if it was cancelled.
async fn cancel_at_random<T>(rng: &mut Rng, fut: impl Future<Output = T>) -> Option<T> {
    if rng.below(2) == 0 {
        let polls = rng.below(8);
        let mut fut = pin!(fut);
        let mut seen = 0;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            seen += 1;
            if seen > polls {
                return Poll::Ready(None);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    } else {
        let limit = Duration::from_micros(rng.below(2000));
        tokio::time::timeout(limit, fut).await.ok()
    }
}

fn stream_items((queue, producer): (Queue<Item>, u32)) {
    for seq in 0..ITEMS {
        queue.put_blocking(item(producer, seq)).unwrap();
    }
}

/// Gets cancelled at random points while a producer process streams items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_get_cancelled_at_random_points_loses_nothing() {
    let leaks = common::LeakCheck::start().await;
    let mut rng = Rng::new();
    let queue = Queue::<Item>::new(16).unwrap();
    let producer = spawn_process(stream_items, (queue.clone(), 1)).unwrap();
    let mut next = 0;
    let mut cancelled = 0;
    while next < ITEMS {
        match cancel_at_random(&mut rng, queue.get()).await {
            Some(Ok(got)) => {
                assert!(intact(&got), "item {} torn", got.seq);
                assert_eq!(got.seq, next, "lost or out of order");
                next += 1;
            }
            Some(Err(err)) => panic!("get failed: {err}"),
            None => cancelled += 1,
        }
    }
    producer.await.unwrap();
    assert!(cancelled > 0, "no get was cancelled");
    assert!(
        matches!(queue.try_get(), Err(Error::Empty)),
        "nothing extra"
    );
    assert_eq!(queue.len(), 0);
    // Still works.
    queue.put(item(9, 3)).await.unwrap();
    assert!(intact(&queue.get().await.unwrap()));
    drop(queue);
    leaks.finish().await;
}

/// Collects everything until the queue closes, checking each item.
fn collect_items(queue: Queue<Item>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    loop {
        match queue.get_blocking() {
            Ok(item) => {
                assert!(intact(&item), "item {}/{} torn", item.producer, item.seq);
                got.push((item.producer, item.seq));
            }
            Err(Error::Closed) => return got,
            Err(err) => panic!("consumer failed: {err}"),
        }
    }
}

/// Puts cancelled at random points, each retried until it succeeds, beside a producer
/// process streaming its own items: a cancelled put has put nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_put_cancelled_at_random_points_puts_nothing() {
    let leaks = common::LeakCheck::start().await;
    let mut rng = Rng::new();
    let queue = Queue::<Item>::new(16).unwrap();
    let consumer = spawn_process(collect_items, queue.clone()).unwrap();
    let other = spawn_process(stream_items, (queue.clone(), 2)).unwrap();
    let mut cancelled = 0;
    for seq in 0..ITEMS {
        loop {
            match cancel_at_random(&mut rng, queue.put(item(1, seq))).await {
                Some(Ok(())) => break,
                Some(Err(err)) => panic!("put failed: {err}"),
                None => cancelled += 1,
            }
        }
    }
    other.await.unwrap();
    queue.close();
    let got = consumer.await.unwrap();
    assert!(cancelled > 0, "no put was cancelled");
    for producer in [1, 2] {
        let seqs: Vec<u32> = got
            .iter()
            .filter(|(p, _)| *p == producer)
            .map(|(_, s)| *s)
            .collect();
        let first_wrong = seqs.iter().zip(0..).find(|(got, want)| **got != *want);
        assert!(
            first_wrong.is_none() && seqs.len() == ITEMS as usize,
            "producer {producer}: each item exactly once, in order; got {} items, \
             first wrong (got, expected): {first_wrong:?}",
            seqs.len()
        );
    }
    assert_eq!(queue.len(), 0);
    drop(queue);
    leaks.finish().await;
}

fn send_items(mut conn: Connection<Item, ()>) {
    for seq in 0..ITEMS {
        conn.send_blocking(item(1, seq)).unwrap();
    }
}

/// Receives cancelled at random points while a child sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_recv_cancelled_at_random_points_loses_nothing() {
    let leaks = common::LeakCheck::start().await;
    let mut rng = Rng::new();
    let (mut here, there) = multiprocess::pipe::<(), Item>().unwrap();
    let sender = spawn_process(send_items, there).unwrap();
    let mut next = 0;
    let mut cancelled = 0;
    while next < ITEMS {
        match cancel_at_random(&mut rng, here.recv()).await {
            Some(Ok(got)) => {
                assert!(intact(&got), "item {} torn", got.seq);
                assert_eq!(got.seq, next, "lost or out of order");
                next += 1;
            }
            Some(Err(err)) => panic!("recv failed: {err}"),
            None => cancelled += 1,
        }
    }
    sender.await.unwrap();
    assert!(cancelled > 0, "no recv was cancelled");
    assert!(matches!(here.recv().await, Err(Error::Disconnected)));
    drop(here);
    leaks.finish().await;
}

fn receive_items(mut conn: Connection<u32, Item>) -> u32 {
    let mut next = 0;
    while let Ok(got) = conn.recv_blocking() {
        assert!(intact(&got), "item {} torn", got.seq);
        assert_eq!(got.seq, next, "lost, repeated or out of order");
        next += 1;
    }
    next
}

/// Sends cancelled at random points: a send that was started goes out whole, once,
/// with the next send (as documented), so each item is sent once and all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_send_cancelled_at_random_points_sends_each_message_once() {
    let leaks = common::LeakCheck::start().await;
    let mut rng = Rng::new();
    let (mut here, there) = multiprocess::pipe::<Item, u32>().unwrap();
    let receiver = spawn_process(receive_items, there).unwrap();
    let mut cancelled = 0;
    for seq in 0..ITEMS {
        let send = here.send(item(1, seq));
        // Polled at least once, so the message is buffered whatever happens next.
        let mut send = pin!(send);
        if let Poll::Ready(sent) = futures::poll!(send.as_mut()) {
            sent.unwrap();
            continue;
        }
        match cancel_at_random(&mut rng, send).await {
            Some(sent) => sent.unwrap(),
            None => cancelled += 1,
        }
    }
    // What a cancelled last send left buffered goes out with a flush.
    futures::SinkExt::flush(&mut here).await.unwrap();
    drop(here);
    assert_eq!(receiver.await.unwrap(), ITEMS);
    assert!(cancelled > 0, "no send was cancelled");
    leaks.finish().await;
}

/// A message far larger than the queue's socket holds, so that its frame stops part
/// way whenever the other side stops reading.
fn large_body() -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(
        (0..8usize << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
}

fn put_large(queue: Queue<serde_bytes::ByteBuf>) {
    queue.put_blocking(large_body()).unwrap();
}

/// Takes messages until the queue closes; returns their lengths.
fn message_lengths(queue: Queue<serde_bytes::ByteBuf>) -> Vec<usize> {
    let mut lengths = Vec::new();
    loop {
        match queue.get_blocking() {
            Ok(message) => lengths.push(message.len()),
            Err(Error::Closed) => return lengths,
            Err(err) => panic!("get failed: {err}"),
        }
    }
}

/// This process's socket descriptors.
fn sockets() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// The sockets a new queue adds to this process.
fn sockets_of_new_queue() -> (Queue<serde_bytes::ByteBuf>, Vec<i32>) {
    let before = sockets();
    let queue = Queue::new(4).unwrap();
    let added = sockets()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    (queue, added)
}

/// Whether bytes wait to be read on one of `fds`: a frame is under way.
fn frame_under_way(fds: &[i32]) -> bool {
    fds.iter().any(|&fd| {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int at the pointer, which points at a live local;
        // `fd` is a socket of the queue, open for the whole test.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) };
        rc == 0 && unread > 0
    })
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Resumes `pid` if the test has not reported back within a minute (a drop that
/// blocks its thread until the stopped process goes on); says whether it had to.
fn watchdog(pid: u32) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (done, report) = std::sync::mpsc::channel();
    let watch = std::thread::spawn(move || {
        let hung = report.recv_timeout(Duration::from_secs(60)).is_err();
        if hung {
            signal(pid, nix::sys::signal::Signal::SIGCONT);
        }
        hung
    });
    (done, watch)
}

/// A `get` cancelled in the middle of a large message whose producer has stopped
/// returns at once: the rest is read by a task, not by the dropping thread, and the
/// message comes whole with the next `get` once the producer goes on.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_get_of_a_large_message_never_blocks_the_runtime_thread() {
    let leaks = common::LeakCheck::start().await;
    let (queue, fds) = sockets_of_new_queue();
    let producer = spawn_process(put_large, queue.clone()).unwrap();
    let pid = producer.pid();
    common::eventually("the large frame under way", || frame_under_way(&fds)).await;
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let (done, watch) = watchdog(pid);
    let cancelled = tokio::time::timeout(Duration::from_millis(300), queue.get()).await;
    let _ = done.send(());
    assert!(
        !watch.join().unwrap(),
        "the cancelled get blocked its thread until the producer went on"
    );
    assert!(cancelled.is_err(), "got a message from a stopped producer");
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    let got = queue.get_timeout(Duration::from_secs(60)).await.unwrap();
    assert!(got == large_body(), "the large message came back torn");
    producer.await.unwrap();
    assert!(matches!(queue.try_get(), Err(Error::Empty)));
    drop(queue);
    leaks.finish().await;
}

/// A `put` of a large message cancelled while its consumer has stopped returns at
/// once: the rest of the frame is written by a task, marked withdrawn, so the consumer
/// never sees the message and the queue goes on working.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_put_of_a_large_message_never_blocks_the_runtime_thread() {
    let leaks = common::LeakCheck::start().await;
    let (queue, fds) = sockets_of_new_queue();
    let consumer = spawn_process(message_lengths, queue.clone()).unwrap();
    let pid = consumer.pid();
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let mut put = Box::pin(queue.put(large_body()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !frame_under_way(&fds) {
        assert!(
            std::time::Instant::now() < deadline,
            "the frame never began"
        );
        tokio::select! {
            put = &mut put => panic!("a put finished with its consumer stopped: {put:?}"),
            () = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
    // Let the put fill the socket and wait for room.
    assert!(futures::poll!(put.as_mut()).is_pending());
    let (done, watch) = watchdog(pid);
    drop(put);
    let _ = done.send(());
    assert!(
        !watch.join().unwrap(),
        "the cancelled put blocked its thread until the consumer went on"
    );
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    queue
        .put(serde_bytes::ByteBuf::from(b"after".to_vec()))
        .await
        .unwrap();
    queue.close();
    assert_eq!(
        consumer.await.unwrap(),
        vec![5],
        "the withdrawn message arrived"
    );
    drop(queue);
    leaks.finish().await;
}
