//! Listener and Client: authenticated connections by address, between real processes,
//! over real TCP and Unix sockets, against honest and hostile peers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Scratch;
use multiprocess::{Address, AuthKey, Client, Connection, Error, Listener, spawn_process};

/// Generous: only a hang should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);

/// Connects back to the listener with the given key and echoes numbers doubled until
/// the listener hangs up; returns how many it echoed, or the error connecting gave.
fn doubler((address, key): (Address, String)) -> Result<u64, String> {
    let key = AuthKey::from_hex(&key).map_err(|e| e.to_string())?;
    let client = Client::new(address, key).timeout(LIMIT);
    let mut conn: Connection<u64, u64> = client.connect_blocking().map_err(describe)?;
    let mut seen = 0;
    while let Ok(n) = conn.recv_blocking() {
        conn.send_blocking(n * 2).map_err(describe)?;
        seen += 1;
    }
    Ok(seen)
}

/// An error as text with its variant first, so the parent can check which it was.
fn describe(e: Error) -> String {
    match e {
        Error::Authentication(msg) => format!("Authentication: {msg}"),
        other => format!("{other:?}"),
    }
}

async fn listener(address: Address, key: &AuthKey) -> Listener {
    Listener::builder()
        .address(address)
        .authkey(key)
        .bind()
        .await
        .unwrap()
}

/// Runs a doubling child against `listener` and checks a round trip of many messages.
async fn round_trip_with_child(listener: &Listener, key: &AuthKey) {
    let arg = (listener.address().clone(), key.to_hex());
    let mut child = spawn_process(doubler, arg).unwrap();
    let mut conn = tokio::time::timeout(LIMIT, listener.accept::<u64, u64>())
        .await
        .expect("the child connects")
        .unwrap();
    for n in 0..1000 {
        conn.send(n).await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), 2 * n);
    }
    drop(conn);
    assert_eq!(child.join_timeout(LIMIT).await.unwrap(), Ok(1000));
}

fn tcp_address(listener: &Listener) -> SocketAddr {
    match listener.address() {
        Address::Tcp(addr) => *addr,
        other => panic!("not TCP: {other}"),
    }
}

#[tokio::test]
async fn a_child_connects_back_over_tcp_and_round_trips() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = listener(Address::loopback(), &key).await;
    assert!(tcp_address(&listener).ip().is_loopback());
    round_trip_with_child(&listener, &key).await;
    assert!(
        matches!(listener.last_accepted(), Some(Address::Tcp(peer)) if peer.ip().is_loopback())
    );
    assert_eq!(listener.rejected(), 0);
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn a_child_connects_back_over_a_unix_socket_and_the_file_goes_with_the_listener() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("listener", "unix");
    let path = dir.0.join("listener.sock");
    let key = AuthKey::random().unwrap();
    let listener = listener(Address::Unix(path.clone()), &key).await;
    round_trip_with_child(&listener, &key).await;
    assert!(path.exists());
    listener.close();
    assert!(!path.exists(), "the socket file is removed on close");
    leaks.finish().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_on_both_sides_and_the_listener_serves_on() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let wrong = AuthKey::random().unwrap();
    let listener = listener(Address::loopback(), &key).await;
    let mut intruder =
        spawn_process(doubler, (listener.address().clone(), wrong.to_hex())).unwrap();
    let refused = intruder.join_timeout(LIMIT).await.unwrap().unwrap_err();
    assert!(refused.starts_with("Authentication: "), "{refused}");
    assert!(refused.contains("authkeys differ"), "{refused}");
    assert_eq!(listener.rejected(), 1);
    // Nothing of the refused peer is handed out: the next connection is the good one.
    round_trip_with_child(&listener, &key).await;
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn a_client_refuses_a_listener_without_the_key() {
    let leaks = common::LeakCheck::start().await;
    // The listener holds another key: the client must not take its word.
    let listener = listener(Address::loopback(), &AuthKey::from("theirs")).await;
    let client = Client::new(listener.address().clone(), "ours").timeout(LIMIT);
    let refused = client.connect::<(), ()>().await.unwrap_err();
    assert!(matches!(refused, Error::Authentication(_)), "{refused:?}");
    assert_eq!(listener.rejected(), 1);
    drop(listener);
    leaks.finish().await;
}

/// A fake listener that greets like a real one, then claims to accept any client with
/// a made-up proof: the client must detect that it does not hold the key.
#[tokio::test]
async fn a_client_refuses_a_listener_that_fakes_its_proof() {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Tcp(fake.local_addr().unwrap());
    let impostor = std::thread::spawn(move || {
        let (mut peer, _) = fake.accept().unwrap();
        let mut greeting = b"mpauth1\n".to_vec();
        greeting.extend_from_slice(&[7; 32]);
        peer.write_all(&greeting).unwrap();
        let mut response = [0; 72];
        peer.read_exact(&mut response).unwrap();
        let mut verdict = vec![1];
        verdict.extend_from_slice(&[9; 32]);
        peer.write_all(&verdict).unwrap();
        let mut answer = [0; 1];
        peer.read_exact(&mut answer).unwrap();
        answer[0]
    });
    let client = Client::new(address, "key").timeout(LIMIT);
    let refused = client.connect::<(), ()>().await.unwrap_err();
    assert!(
        matches!(refused, Error::Authentication(ref m) if m.contains("proof")),
        "{refused:?}"
    );
    assert_eq!(
        impostor.join().unwrap(),
        0,
        "the client told the impostor it refused"
    );
}

#[tokio::test]
async fn a_client_refuses_a_server_that_is_not_a_listener() {
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Tcp(other.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut peer, _) = other.accept().unwrap();
        peer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n.............")
            .unwrap();
        peer
    });
    let client = Client::new(address, "key").timeout(LIMIT);
    let refused = client.connect_blocking::<(), ()>().unwrap_err();
    assert!(
        matches!(refused, Error::Authentication(ref m) if m.contains("not a multiprocess listener")),
        "{refused:?}"
    );
    drop(server.join().unwrap());
}

/// Reads until the listener closes the connection; how many bytes came first.
fn read_until_closed(peer: &mut TcpStream) -> std::io::Result<usize> {
    peer.set_read_timeout(Some(LIMIT))?;
    let mut total = 0;
    let mut buf = [0; 256];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// A peer that skips the handshake and sends a well-formed frame at once, as an old
/// or unkeyed client would: it is closed, nothing it sent comes out of `accept`.
#[tokio::test]
async fn a_peer_without_a_key_is_turned_away_and_its_frame_never_decoded() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = listener(Address::loopback(), &key).await;
    let addr = tcp_address(&listener);
    let unkeyed = tokio::task::spawn_blocking(move || {
        let mut peer = TcpStream::connect(addr).unwrap();
        let mut challenge = [0; 40];
        peer.read_exact(&mut challenge).unwrap();
        // A frame header for an 8-byte payload (no descriptors), padded past the
        // handshake's 72 bytes so the listener has its full answer to judge.
        let mut frame = vec![8, 0, 0, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&[0x2a; 8]);
        frame.resize(80, 0);
        peer.write_all(&frame).unwrap();
        read_until_closed(&mut peer).unwrap()
    });
    let more = unkeyed.await.unwrap();
    assert_eq!(
        more, 0,
        "only the challenge is sent to an unauthenticated peer"
    );
    assert_eq!(listener.rejected(), 1);
    // An empty key is refused before anything is sent.
    let empty = Client::new(listener.address().clone(), "")
        .connect::<(), ()>()
        .await;
    assert!(matches!(empty, Err(Error::InvalidArgument(_))), "{empty:?}");
    round_trip_with_child(&listener, &key).await;
    assert_eq!(listener.rejected(), 1);
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn garbage_is_turned_away() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = listener(Address::loopback(), &key).await;
    let addr = tcp_address(&listener);
    let garbage = tokio::task::spawn_blocking(move || {
        let mut peer = TcpStream::connect(addr).unwrap();
        let mut challenge = [0; 40];
        peer.read_exact(&mut challenge).unwrap();
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        peer.write_all(&bytes).unwrap();
        read_until_closed(&mut peer).unwrap()
    });
    assert_eq!(garbage.await.unwrap(), 0);
    assert_eq!(listener.rejected(), 1);
    round_trip_with_child(&listener, &key).await;
    drop(listener);
    leaks.finish().await;
}

/// A peer flooding before authentication is cut off after the listener read its few
/// dozen bytes: its writes fail, far short of what a listener buffering the flood
/// would have taken.
#[tokio::test]
async fn oversized_input_before_authentication_is_not_read() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = listener(Address::loopback(), &key).await;
    let addr = tcp_address(&listener);
    let flood = tokio::task::spawn_blocking(move || {
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.set_write_timeout(Some(LIMIT)).unwrap();
        let chunk = vec![0xff_u8; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..256 {
            match peer.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) => return (sent, e.kind()),
            }
        }
        (sent, ErrorKind::Other)
    });
    let (sent, error) = flood.await.unwrap();
    assert!(
        matches!(error, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the flood was cut off by the listener, not {error:?} after {sent} bytes"
    );
    assert!(sent < 64 << 20, "the listener swallowed {sent} bytes");
    assert_eq!(listener.rejected(), 1);
    round_trip_with_child(&listener, &key).await;
    drop(listener);
    leaks.finish().await;
}

/// Whether the listener still holds this peer's connection open.
fn still_open(peer: &TcpStream) -> bool {
    peer.set_nonblocking(true).unwrap();
    let mut byte = [0; 1];
    let open = matches!((&*peer).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    peer.set_nonblocking(false).unwrap();
    open
}

/// Silent and half-done peers sit in their own handshakes: a good client arriving after
/// them is served while they are still pending.
#[tokio::test]
async fn slow_peers_before_authentication_do_not_hold_up_a_good_client() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = Listener::builder()
        .authkey(&key)
        .handshake_timeout(Duration::from_secs(600))
        .bind()
        .await
        .unwrap();
    let addr = tcp_address(&listener);
    // Blocking peers, off the runtime thread the listener's handshakes run on.
    let (silent, half) = tokio::task::spawn_blocking(move || {
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut half = TcpStream::connect(addr).unwrap();
        let mut challenge = [0; 40];
        silent.read_exact(&mut challenge).unwrap();
        half.read_exact(&mut challenge).unwrap();
        half.write_all(b"mpauth1\n0123").unwrap();
        (silent, half)
    })
    .await
    .unwrap();
    round_trip_with_child(&listener, &key).await;
    assert!(
        still_open(&silent) && still_open(&half),
        "the slow peers were still pending"
    );
    assert_eq!(listener.rejected(), 0);
    drop((silent, half, listener));
    leaks.finish().await;
}

/// A peer trickling its answer is cut off when the handshake's time is up, however
/// steadily it sends: the limit is on the whole handshake, not on each read.
#[tokio::test]
async fn a_trickling_peer_is_cut_off_at_the_handshake_deadline() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = Listener::builder()
        .authkey(&key)
        .handshake_timeout(Duration::from_millis(500))
        .bind()
        .await
        .unwrap();
    let addr = tcp_address(&listener);
    let trickle = tokio::task::spawn_blocking(move || {
        let mut peer = TcpStream::connect(addr).unwrap();
        let mut challenge = [0; 40];
        peer.read_exact(&mut challenge).unwrap();
        // One byte every 100 ms would take 7 s for the 72-byte answer.
        let mut sent = 0;
        for byte in b"mpauth1\n".iter().chain([0u8; 64].iter()) {
            if !still_open(&peer) || peer.write_all(&[*byte]).is_err() {
                return sent;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        sent
    });
    let sent = trickle.await.unwrap();
    assert!(
        sent < 72,
        "the trickling peer finished its answer ({sent} bytes)"
    );
    assert_eq!(listener.rejected(), 1);
    round_trip_with_child(&listener, &key).await;
    drop(listener);
    leaks.finish().await;
}

fn pipe_end() -> Connection<u8, u8> {
    multiprocess::pipe::<u8, u8>().unwrap().0
}

/// Handles travel over a Unix socket with their descriptors; over TCP they cannot, and
/// sending one is a clear error that leaves the connection usable.
#[tokio::test]
async fn descriptors_cross_a_unix_connection_but_not_tcp() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let tcp = listener(Address::loopback(), &key).await;
    let client = Client::new(tcp.address().clone(), &key);
    let (accepted, connected) = tokio::join!(
        tcp.accept::<(), Option<Connection<u8, u8>>>(),
        client.connect::<Option<Connection<u8, u8>>, ()>()
    );
    let (mut server, mut client) = (accepted.unwrap(), connected.unwrap());
    let refused = client.send(Some(pipe_end())).await.unwrap_err();
    assert!(
        matches!(refused, Error::Encode(ref m) if m.contains("network")),
        "{refused:?}"
    );
    client.send(None).await.unwrap();
    drop(client);
    assert!(server.recv().await.unwrap().is_none());
    let after = server.recv().await;
    assert!(
        matches!(after, Err(Error::Disconnected)),
        "nothing of the refused message went out: {after:?}"
    );
    drop((server, tcp));

    let dir = Scratch::new("listener", "fds");
    let unix = listener(Address::Unix(dir.0.join("s")), &key).await;
    let client = Client::new(unix.address().clone(), &key);
    let (accepted, connected) = tokio::join!(
        unix.accept::<(), Connection<u8, u8>>(),
        client.connect::<Connection<u8, u8>, ()>()
    );
    let (mut server, mut client) = (accepted.unwrap(), connected.unwrap());
    let (mut near, far) = multiprocess::pipe::<u8, u8>().unwrap();
    client.send(far).await.unwrap();
    let mut far = server.recv().await.unwrap();
    near.send(5).await.unwrap();
    assert_eq!(far.recv().await.unwrap(), 5);
    drop((near, far, server, client, unix));
    leaks.finish().await;
}

#[tokio::test]
async fn binding_needs_a_key_and_a_free_address() {
    let unkeyed = Listener::builder().bind().await;
    assert!(matches!(unkeyed, Err(Error::InvalidArgument(_))));
    let empty = Listener::bind(Address::loopback(), "").await;
    assert!(matches!(empty, Err(Error::InvalidArgument(_))));
    let first = Listener::bind(Address::loopback(), "k").await.unwrap();
    let taken = Listener::bind(first.address().clone(), "k").await;
    assert!(
        matches!(taken, Err(Error::Io(ref e)) if e.kind() == ErrorKind::AddrInUse),
        "{taken:?}"
    );
    let nobody = Client::new(Address::loopback(), "k")
        .connect::<(), ()>()
        .await;
    assert!(matches!(nobody, Err(Error::Io(_))), "{nobody:?}");
}
