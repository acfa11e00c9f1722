//! Raw bytes frames: `send_bytes` / `recv_bytes` across processes, interplay with typed
//! frames, cancellation part way through a large frame, and hostile peers.

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use multiprocess::{Connection, Error, spawn_process};
use serde_bytes::ByteBuf;

/// Sizes around the point where payloads stop going through the connection's buffers,
/// and beyond what the socket buffers hold.
const SIZES: [usize; 9] = [
    0,
    1,
    100,
    (64 << 10) - 1,
    64 << 10,
    (64 << 10) + 1,
    1 << 20,
    (5 << 20) + 3,
    12 << 20,
];

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Echoes raw frames back, reversed, until hung up; one reused buffer.
fn reverse_echo(mut conn: Connection<(), ()>) -> usize {
    let mut buf = Vec::new();
    let mut frames = 0;
    while conn.recv_bytes_into_blocking(&mut buf).is_ok() {
        buf.reverse();
        conn.send_bytes_blocking(&buf).unwrap();
        frames += 1;
    }
    frames
}

#[tokio::test]
async fn raw_frames_of_every_size_both_ways() {
    let leaks = common::LeakCheck::start().await;
    let (mut conn, child_end) = multiprocess::pipe::<(), ()>().unwrap();
    let mut child = spawn_process(reverse_echo, child_end).unwrap();
    let mut buf = Vec::new();
    for round in 0..3u8 {
        for &len in &SIZES {
            let sent = pattern(len, round);
            conn.send_bytes(&sent).await.unwrap();
            let got = if round % 2 == 0 {
                conn.recv_bytes().await.unwrap()
            } else {
                conn.recv_bytes_into(&mut buf).await.unwrap();
                buf.clone()
            };
            let mut expected = sent;
            expected.reverse();
            assert!(got == expected, "round {round}, {len} bytes differ");
        }
    }
    drop(conn);
    assert_eq!(child.join().await.unwrap(), 3 * SIZES.len());
    leaks.finish().await;
}

/// Connections of several types on one socket pair (each view of a socket keeps its
/// own buffers; every send here is awaited before the next, so frames keep their
/// order).
fn views<A, B>() -> (UnixStream, UnixStream, Connection<A, B>, Connection<B, A>) {
    let (x, y) = UnixStream::pair().unwrap();
    let a = Connection::from_fd(OwnedFd::from(x.try_clone().unwrap())).unwrap();
    let b = Connection::from_fd(OwnedFd::from(y.try_clone().unwrap())).unwrap();
    (x, y, a, b)
}

#[tokio::test]
async fn raw_and_typed_frames_interoperate() {
    let leaks = common::LeakCheck::start().await;
    let (x, y, mut a, mut b) = views::<ByteBuf, ByteBuf>();
    for len in [10, 1 << 20] {
        let data = pattern(len, 7);
        // Raw out, typed in (at once: the frame may not fit in the socket buffers).
        let (sent, got) = tokio::join!(a.send_bytes(&data), b.recv());
        sent.unwrap();
        assert!(got.unwrap().into_vec() == data);
        // Typed out, raw in.
        let (sent, got) = tokio::join!(b.send(ByteBuf::from(data.clone())), a.recv_bytes());
        sent.unwrap();
        assert!(got.unwrap() == data);
    }
    // Frames that are not raw bytes are refused, small or large, each costing only
    // itself.
    let mut pairs =
        Connection::<(u32, u32), ()>::from_fd(OwnedFd::from(x.try_clone().unwrap())).unwrap();
    let mut numbers =
        Connection::<Vec<u64>, ()>::from_fd(OwnedFd::from(x.try_clone().unwrap())).unwrap();
    let send_all = async {
        pairs.send((5, 7)).await.unwrap();
        numbers.send(vec![1000; 100_000]).await.unwrap();
        a.send_bytes(b"after").await.unwrap();
    };
    let receive_all = async {
        for _ in 0..2 {
            let refused = b.recv_bytes().await;
            assert!(matches!(refused, Err(Error::Decode(_))), "{refused:?}");
        }
        assert_eq!(b.recv_bytes().await.unwrap(), b"after");
    };
    tokio::join!(send_all, receive_all);
    drop((x, y, a, b, pairs, numbers));
    leaks.finish().await;
}

#[tokio::test]
async fn a_send_cancelled_part_way_still_delivers_the_whole_frame() {
    let leaks = common::LeakCheck::start().await;
    let (x, y, mut a, mut b) = views::<(), ()>();
    let big = pattern(8 << 20, 3);
    // Nobody reads yet: the socket fills and the send is cancelled part way.
    let cut = tokio::time::timeout(Duration::from_millis(50), a.send_bytes(&big)).await;
    assert!(cut.is_err(), "8 MiB fit in the socket buffers");
    let reader = tokio::spawn(async move {
        let first = b.recv_bytes().await.unwrap();
        let second = b.recv_bytes().await.unwrap();
        (first, second, b)
    });
    a.send_bytes(b"next").await.unwrap();
    let (first, second, b) = reader.await.unwrap();
    assert!(first == big, "the cancelled frame arrived torn");
    assert_eq!(second, b"next");
    drop((x, y, a, b));
    leaks.finish().await;
}

/// A bytes frame for `data` as the wire has it, made by hand, cut in two halves.
fn halves_of_frame(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut varint = Vec::new();
    let mut n = data.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            varint.push(byte);
            break;
        }
        varint.push(byte | 0x80);
    }
    let payload = (varint.len() + data.len()) as u32;
    let mut frame = Vec::new();
    frame.extend_from_slice(&payload.to_le_bytes());
    frame.extend_from_slice(&[0, 0xA7, 0, 0]);
    frame.extend_from_slice(&varint);
    frame.extend_from_slice(data);
    let rest = frame.split_off(frame.len() / 2);
    (frame, rest)
}

/// Writes `bytes` from a thread of its own (the reader may not be reading yet).
fn write_in_background(
    mut socket: UnixStream,
    bytes: Vec<u8>,
) -> std::thread::JoinHandle<UnixStream> {
    std::thread::spawn(move || {
        socket.write_all(&bytes).unwrap();
        socket
    })
}

#[tokio::test]
async fn a_receive_cancelled_part_way_loses_nothing() {
    let leaks = common::LeakCheck::start().await;
    let (x, y) = UnixStream::pair().unwrap();
    let mut b = Connection::<(), ()>::from_fd(OwnedFd::from(y)).unwrap();
    let data = pattern(3 << 20, 9);
    let (half, rest) = halves_of_frame(&data);
    let writer = write_in_background(x, half);
    // The receive starts reading the first half into its buffer, then is cancelled.
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(Duration::from_millis(200), b.recv_bytes_into(&mut buf)).await;
    assert!(cut.is_err(), "a half frame was taken as whole");
    let x = writer.join().unwrap();
    let writer = write_in_background(x, rest);
    assert!(
        b.recv_bytes().await.unwrap() == data,
        "the frame came back torn"
    );
    drop((writer.join().unwrap(), b));
    leaks.finish().await;
}

#[tokio::test]
async fn hostile_raw_frames_give_errors() {
    let leaks = common::LeakCheck::start().await;
    // The peer announces a large frame and hangs up after part of it.
    let (x, y) = UnixStream::pair().unwrap();
    let mut b = Connection::<(), ()>::from_fd(OwnedFd::from(y)).unwrap();
    let (half, _rest) = halves_of_frame(&pattern(2 << 20, 1));
    // The writer hangs up once its half is written.
    let writer = std::thread::spawn(move || drop(write_in_background(x, half).join()));
    let cut = b.recv_bytes().await;
    writer.join().unwrap();
    assert!(matches!(cut, Err(Error::Protocol(_))), "{cut:?}");
    drop(b);
    // Beyond the limit, on either side.
    let (x, y) = UnixStream::pair().unwrap();
    let mut a = Connection::<(), ()>::from_fd(OwnedFd::from(x)).unwrap();
    let mut b = Connection::<(), ()>::from_fd(OwnedFd::from(y)).unwrap();
    a.set_max_frame_len(1 << 20);
    let refused = a.send_bytes(&vec![0; 2 << 20]).await;
    assert!(
        matches!(refused, Err(Error::FrameTooLarge { .. })),
        "{refused:?}"
    );
    b.set_max_frame_len(1000);
    a.set_max_frame_len(usize::MAX);
    a.send_bytes(&[0; 5000]).await.unwrap();
    let refused = b.recv_bytes().await;
    assert!(
        matches!(refused, Err(Error::FrameTooLarge { .. })),
        "{refused:?}"
    );
    drop((a, b));
    leaks.finish().await;
}
