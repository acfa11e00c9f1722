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
