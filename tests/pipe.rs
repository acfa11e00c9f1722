//! Pipes and channels handed to a child inside its argument.

mod common;

use futures::{SinkExt, StreamExt};
use multiprocess::{Connection, Receiver, Sender, spawn_process};

const MESSAGES: u64 = 10_000;

/// Echoes every number back plus one, until the parent hangs up; returns how many.
fn echo_plus_one(mut conn: Connection<u64, u64>) -> u64 {
    let mut seen = 0;
    while let Ok(n) = conn.recv_blocking() {
        conn.send_blocking(n + 1).unwrap();
        seen += 1;
    }
    seen
}

/// The same with a runtime in the child, through Sink and Stream.
async fn echo_async(conn: Connection<String, String>) -> usize {
    let (mut tx, mut rx) = conn.split();
    let mut seen = 0;
    while let Some(Ok(s)) = rx.next().await {
        tx.send(s.chars().rev().collect::<String>()).await.unwrap();
        seen += 1;
    }
    seen
}

/// Moves everything from one channel to the other, doubled.
fn relay((mut input, mut output): (Receiver<Vec<u32>>, Sender<Vec<u32>>)) -> usize {
    let mut count = 0;
    while let Ok(v) = input.recv_blocking() {
        output
            .send_blocking(v.iter().map(|x| x * 2).collect())
            .unwrap();
        count += 1;
    }
    count
}

#[tokio::test]
async fn ten_thousand_messages_both_ways() {
    let leaks = common::LeakCheck::start().await;
    let (conn, child_end) = multiprocess::pipe::<u64, u64>().unwrap();
    let mut child = spawn_process(echo_plus_one, child_end).unwrap();
    let (mut tx, mut rx) = conn.split();
    // Send and receive at once, so both directions are in flight together.
    let sender = tokio::spawn(async move {
        for n in 0..MESSAGES {
            tx.feed(n).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    for n in 0..MESSAGES {
        assert_eq!(rx.recv().await.unwrap(), n + 1);
    }
    drop(sender.await.unwrap());
    drop(rx);
    assert_eq!(child.join().await.unwrap(), MESSAGES);
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn sink_and_stream_with_an_async_child() {
    let leaks = common::LeakCheck::start().await;
    let (mut conn, child_end) = multiprocess::pipe::<String, String>().unwrap();
    let mut child = multiprocess::Process::builder()
        .spawn_async(echo_async, child_end)
        .unwrap();
    let words: Vec<String> = (0..1000).map(|i| format!("word-{i}")).collect();
    let mut input = futures::stream::iter(words.clone().into_iter().map(Ok));
    conn.send_all(&mut input).await.unwrap();
    let replies: Vec<String> = (&mut conn)
        .take(words.len())
        .map(|r| r.unwrap())
        .collect()
        .await;
    for (word, reply) in words.iter().zip(&replies) {
        assert_eq!(reply.chars().rev().collect::<String>(), *word);
    }
    drop(conn);
    assert_eq!(child.join().await.unwrap(), words.len());
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn one_way_channels_in_both_directions() {
    let leaks = common::LeakCheck::start().await;
    let (mut to_child, from_parent) = multiprocess::channel::<Vec<u32>>().unwrap();
    let (to_parent, mut from_child) = multiprocess::channel::<Vec<u32>>().unwrap();
    let mut child = spawn_process(relay, (from_parent, to_parent)).unwrap();
    for i in 0..100u32 {
        to_child.send((0..i).collect()).await.unwrap();
        assert_eq!(
            from_child.recv().await.unwrap(),
            (0..i).map(|x| x * 2).collect::<Vec<_>>()
        );
    }
    drop(to_child);
    assert_eq!(child.join().await.unwrap(), 100);
    assert!(matches!(
        from_child.recv().await,
        Err(multiprocess::Error::Disconnected)
    ));
    drop((child, from_child));
    leaks.finish().await;
}

#[tokio::test]
async fn a_child_that_dies_disconnects_its_pipe() {
    let leaks = common::LeakCheck::start().await;
    let (mut conn, child_end) = multiprocess::pipe::<u64, u64>().unwrap();
    let mut child = spawn_process(echo_plus_one, child_end).unwrap();
    conn.send(1).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), 2);
    child.kill().unwrap();
    assert!(child.join().await.is_err());
    assert!(matches!(
        conn.recv().await,
        Err(multiprocess::Error::Disconnected)
    ));
    // Writing to a dead peer is an error too, not a SIGPIPE.
    let mut failed = false;
    for _ in 0..64 {
        if conn.send(0).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    drop((child, conn));
    leaks.finish().await;
}

#[tokio::test]
async fn a_connection_travels_inside_a_message() {
    let leaks = common::LeakCheck::start().await;
    // The child gets a channel of connections, and answers on each one it receives.
    fn serve(mut incoming: Receiver<Connection<u64, u64>>) -> usize {
        let mut served = 0;
        while let Ok(conn) = incoming.recv_blocking() {
            echo_plus_one(conn);
            served += 1;
        }
        served
    }
    let (mut offer, incoming) = multiprocess::channel::<Connection<u64, u64>>().unwrap();
    let mut child = spawn_process(serve, incoming).unwrap();
    for i in 0..5 {
        let (mut mine, theirs) = multiprocess::pipe::<u64, u64>().unwrap();
        offer.send(theirs).await.unwrap();
        mine.send(i * 10).await.unwrap();
        assert_eq!(mine.recv().await.unwrap(), i * 10 + 1);
    }
    drop(offer);
    assert_eq!(child.join().await.unwrap(), 5);
    drop(child);
    leaks.finish().await;
}

/// Waits for a message at most briefly, says whether that timed out, then waits for
/// one with a long limit.
fn recv_with_timeouts(mut conn: Connection<bool, u32>) -> u32 {
    let timed_out = matches!(
        conn.recv_blocking_timeout(std::time::Duration::from_millis(50)),
        Err(multiprocess::Error::Timeout { .. })
    );
    conn.send_blocking(timed_out).unwrap();
    let (_tx, mut rx) = conn.split();
    rx.recv_blocking_timeout(std::time::Duration::from_secs(20))
        .unwrap()
}

#[tokio::test]
async fn receiver_blocking_timeout_in_a_child() {
    let leaks = common::LeakCheck::start().await;
    let (mut conn, child_end) = multiprocess::pipe::<u32, bool>().unwrap();
    let child = spawn_process(recv_with_timeouts, child_end).unwrap();
    assert!(conn.recv().await.unwrap(), "the first wait timed out");
    conn.send_timeout(5, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(child.await.unwrap(), 5);
    drop(conn);
    leaks.finish().await;
}

/// A send that times out with the socket full keeps the rest of its message: once
/// the peer reads, the next send delivers both, whole and in order.
#[tokio::test]
async fn send_timeouts_keep_the_message_whole() {
    use multiprocess::Error;
    use std::time::Duration;
    let leaks = common::LeakCheck::start().await;
    let (mut tx, mut rx) = multiprocess::channel::<Vec<u8>>().unwrap();
    let big = vec![9u8; 4 << 20];
    assert!(matches!(
        tx.send_blocking_timeout(big.clone(), Duration::from_millis(30)),
        Err(Error::Timeout { .. })
    ));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(30)).await,
        Err(Error::Timeout { .. })
    ));
    let reader = tokio::spawn(async move {
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        (first, second)
    });
    tx.send_timeout(vec![1, 2, 3], Duration::from_secs(20))
        .await
        .unwrap();
    let (first, second) = reader.await.unwrap();
    assert_eq!(first, big);
    assert_eq!(second, [1, 2, 3]);
    // The async form times out too, and its message still arrives after.
    let (mut a, mut b) = multiprocess::pipe::<Vec<u8>, ()>().unwrap();
    assert!(matches!(
        a.send_timeout(big.clone(), Duration::from_millis(30)).await,
        Err(Error::Timeout { .. })
    ));
    let reader = tokio::spawn(async move { b.recv().await.unwrap() });
    futures::SinkExt::flush(&mut a).await.unwrap();
    assert_eq!(reader.await.unwrap(), big);
    drop((tx, a));
    leaks.finish().await;
}
