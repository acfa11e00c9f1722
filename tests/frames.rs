//! Hostile bytes on a connection give errors: never a panic, a hang or a huge allocation.

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use multiprocess::{Connection, Error, PassFd, spawn_process};

/// A connection whose peer is a raw socket we can write anything to.
fn raw_peer<S, R>() -> (Connection<S, R>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Connection::from_fd(OwnedFd::from(ours)).unwrap(), theirs)
}

fn header(len: u32, n_fds: u8) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend([n_fds, 0xA7, 0, 0]);
    h
}

#[tokio::test]
async fn garbage_is_a_protocol_error_then_the_stream_ends() {
    let (mut conn, mut peer) = raw_peer::<(), u64>();
    peer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Protocol(_))));
    assert!(matches!(conn.recv().await, Err(Error::Disconnected)));
}

#[tokio::test]
async fn an_oversized_length_is_refused_before_allocating() {
    let (mut conn, mut peer) = raw_peer::<(), Vec<u8>>();
    // Announces 4 GiB - 1 and sends nothing more: a reader that trusted the length
    // would allocate it or wait for it forever.
    peer.write_all(&header(u32::MAX, 0)).unwrap();
    match conn.recv().await {
        Err(Error::FrameTooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as u64);
            assert_eq!(max, multiprocess::DEFAULT_MAX_FRAME_LEN);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn the_limit_is_configurable_on_both_sides() {
    let (mut a, mut b) = multiprocess::pipe::<Vec<u8>, Vec<u8>>().unwrap();
    b.set_max_frame_len(1000);
    a.send(vec![7; 900]).await.unwrap();
    assert_eq!(b.recv().await.unwrap().len(), 900);
    a.send(vec![7; 5000]).await.unwrap();
    assert!(matches!(b.recv().await, Err(Error::FrameTooLarge { .. })));
    // The sender refuses before writing anything, and stays usable.
    a.set_max_frame_len(100);
    assert!(matches!(
        a.send(vec![0; 101]).await,
        Err(Error::FrameTooLarge { .. })
    ));
    a.send(vec![1; 10]).await.unwrap();
}

#[tokio::test]
async fn a_truncated_frame_is_reported_at_end_of_stream() {
    let (mut conn, mut peer) = raw_peer::<(), String>();
    let mut bytes = header(100, 0);
    bytes.extend([b'x'; 40]);
    peer.write_all(&bytes).unwrap();
    drop(peer);
    match conn.recv().await {
        Err(Error::Protocol(msg)) => assert!(msg.contains("middle of a frame"), "{msg}"),
        other => panic!("expected a truncation error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_undecodable_payload_costs_only_that_frame() {
    let (mut conn, mut peer) = raw_peer::<(), u64>();
    // A varint that never ends does not decode as u64.
    let mut bytes = header(12, 0);
    bytes.extend([0xFF; 12]);
    // Then a good frame: 300 as a postcard varint.
    bytes.extend(header(2, 0));
    bytes.extend([0xAC, 0x02]);
    peer.write_all(&bytes).unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Decode(_))));
    assert_eq!(conn.recv().await.unwrap(), 300);
}

#[tokio::test]
async fn missing_descriptors_are_a_protocol_error() {
    let (mut conn, mut peer) = raw_peer::<(), PassFd>();
    let mut bytes = header(1, 1);
    bytes.push(0);
    peer.write_all(&bytes).unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Protocol(_))));
}

#[tokio::test]
async fn a_descriptor_index_out_of_range_is_a_decode_error() {
    let (mut conn, mut peer) = raw_peer::<(), PassFd>();
    let mut bytes = header(1, 0);
    bytes.push(5);
    peer.write_all(&bytes).unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Decode(_))));
}

#[tokio::test]
async fn a_connection_with_buffered_data_refuses_to_travel() {
    let (mut a, b) = multiprocess::pipe::<u8, u8>().unwrap();
    let (mut offer, _incoming) = multiprocess::channel::<Connection<u8, u8>>().unwrap();
    let (mut c, mut d) = multiprocess::pipe::<u8, u8>().unwrap();
    // Two frames arrive; reading one leaves the other buffered in `d`.
    c.send(1).await.unwrap();
    c.send(2).await.unwrap();
    assert_eq!(d.recv().await.unwrap(), 1);
    assert!(matches!(offer.send(d).await, Err(Error::Encode(_))));
    a.send(3).await.unwrap();
    offer.send(b).await.unwrap();
}

/// A real child that writes garbage into the socket it was given, then exits.
fn scribble(PassFd(fd): PassFd) {
    let mut socket = std::fs::File::from(fd);
    socket.write_all(&[0x55; 4096]).unwrap();
}

#[tokio::test]
async fn garbage_from_a_child_process() {
    let leaks = common::LeakCheck::start().await;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut conn = Connection::<(), String>::from_fd(OwnedFd::from(ours)).unwrap();
    let mut child = spawn_process(scribble, PassFd(OwnedFd::from(theirs))).unwrap();
    child.join().await.unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Protocol(_))));
    drop((child, conn));
    leaks.finish().await;
}

#[test]
fn descriptors_we_receive_are_close_on_exec() {
    let (mut tx, mut rx) = multiprocess::channel::<PassFd>().unwrap();
    tx.send_blocking(PassFd(OwnedFd::from(
        std::fs::File::open("/dev/null").unwrap(),
    )))
    .unwrap();
    let PassFd(fd) = rx.recv_blocking().unwrap();
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & libc::FD_CLOEXEC, 0);
}

/// A real child that writes half a frame into the socket it was given, then exits.
fn half_a_frame(PassFd(fd): PassFd) {
    let mut socket = std::fs::File::from(fd);
    let mut bytes = 100u32.to_le_bytes().to_vec();
    bytes.extend([0, 0xA7, 0, 0]);
    bytes.extend([b'x'; 40]);
    socket.write_all(&bytes).unwrap();
}

#[tokio::test]
async fn a_child_that_dies_mid_frame() {
    let leaks = common::LeakCheck::start().await;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut conn = Connection::<(), String>::from_fd(OwnedFd::from(ours)).unwrap();
    let mut child = spawn_process(half_a_frame, PassFd(OwnedFd::from(theirs))).unwrap();
    child.join().await.unwrap();
    match conn.recv().await {
        Err(Error::Protocol(msg)) => assert!(msg.contains("middle of a frame"), "{msg}"),
        other => panic!("expected a truncation error, got {other:?}"),
    }
    assert!(matches!(conn.recv().await, Err(Error::Disconnected)));
    drop((child, conn));
    leaks.finish().await;
}

#[tokio::test]
async fn a_huge_announced_frame_costs_only_what_arrived() {
    // Announces just under the maximum, sends a little, then hangs up: the reader must
    // fail on the truncation without having reserved the announced size.
    let (mut conn, mut peer) = raw_peer::<(), Vec<u8>>();
    let announced = (multiprocess::DEFAULT_MAX_FRAME_LEN - 1) as u32;
    let mut bytes = header(announced, 0);
    bytes.extend([1u8; 1000]);
    peer.write_all(&bytes).unwrap();
    drop(peer);
    let before = resident_kib();
    assert!(matches!(conn.recv().await, Err(Error::Protocol(_))));
    let grown = resident_kib().saturating_sub(before);
    assert!(
        grown < 64 << 10,
        "reading grew memory by {grown} KiB for 1 KB received"
    );
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}
