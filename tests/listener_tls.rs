//! Listener and Client inside TLS: certificates made here, real sockets, children that
//! connect back, peers without TLS, wrong certificates and wrong keys, and the relay
//! that carries each connection ending with it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use multiprocess::{Address, AuthKey, Client, Connection, Error, Listener, spawn_process};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Generous: only a hang should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);

/// A certificate authority and a server certificate it signed for `localhost`.
struct Pki {
    ca: CertificateDer<'static>,
    server: Arc<ServerConfig>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "multiprocess test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            server: Arc::new(server),
        }
    }
}

/// A client configuration trusting only the authority `ca` (DER).
fn trusting(ca: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.to_vec())).unwrap();
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_listener(pki: &Pki, key: &AuthKey) -> Listener {
    Listener::builder()
        .authkey(key)
        .tls(pki.server.clone())
        .handshake_timeout(LIMIT)
        .bind()
        .await
        .unwrap()
}

fn tls_client(listener: &Listener, ca: &[u8], key: &AuthKey) -> Client {
    Client::new(listener.address().clone(), key)
        .tls(trusting(ca), "localhost")
        .timeout(LIMIT)
}

/// What a child needs to connect back: address, key (hex), the authority it trusts
/// (DER) and the server name it expects, or no TLS at all.
type Route = (Address, String, Option<(Vec<u8>, String)>);

/// Connects back (blocking, without a runtime of its own) and echoes numbers doubled
/// until the listener hangs up; returns how many it echoed, or the error connecting gave.
fn doubler((address, key, tls): Route) -> Result<u64, String> {
    let key = AuthKey::from_hex(&key).map_err(|e| e.to_string())?;
    let mut client = Client::new(address, key).timeout(LIMIT);
    if let Some((ca, name)) = tls {
        client = client.tls(trusting(&ca), name);
    }
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
        Error::Tls(msg) => format!("Tls: {msg}"),
        other => format!("{other:?}"),
    }
}

fn route(listener: &Listener, key: &AuthKey, pki: &Pki) -> Route {
    let tls = Some((pki.ca.to_vec(), "localhost".to_string()));
    (listener.address().clone(), key.to_hex(), tls)
}

/// Runs a doubling child against `listener` and checks a round trip of many messages.
async fn round_trip_with_child(listener: &Listener, key: &AuthKey, pki: &Pki) {
    let mut child = spawn_process(doubler, route(listener, key, pki)).unwrap();
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

/// A connected pair inside TLS, both ends relayed on this runtime.
async fn tls_pair<S, R>(
    listener: &Listener,
    client: &Client,
) -> (Connection<S, R>, Connection<R, S>) {
    let (accepted, connected) = tokio::join!(listener.accept::<S, R>(), client.connect::<R, S>());
    (accepted.unwrap(), connected.unwrap())
}

#[tokio::test]
async fn a_child_connects_back_inside_tls_and_round_trips() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    round_trip_with_child(&listener, &key, &pki).await;
    assert_eq!(listener.rejected(), 0);
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn large_messages_cross_both_ways_at_once() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let client = tls_client(&listener, &pki.ca, &key);
    let (mut server, mut client) = tls_pair::<Vec<u8>, Vec<u8>>(&listener, &client).await;
    // Each side sends before it reads: several MiB in flight both ways at once, more
    // than the socket buffers hold, so the relay must not wait on one direction.
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let (a, b) = tokio::join!(
        async {
            server.send(big.clone()).await.unwrap();
            server.recv().await.unwrap()
        },
        async {
            client
                .send(big.iter().rev().copied().collect())
                .await
                .unwrap();
            client.recv().await.unwrap()
        }
    );
    assert_eq!(b, big);
    assert!(a.iter().eq(big.iter().rev()));
    drop((server, client, listener));
    leaks.finish().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_listener_serves_on() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let stranger = Pki::new();
    let listener = tls_listener(&pki, &key).await;
    let refused = tls_client(&listener, &stranger.ca, &key)
        .connect::<(), ()>()
        .await;
    match refused {
        Err(Error::Tls(msg)) => assert!(msg.contains("certificate"), "{msg}"),
        other => panic!("expected Err(Tls): {other:?}"),
    }
    common::eventually("the listener counts the refused peer", || {
        listener.rejected() == 1
    })
    .await;
    round_trip_with_child(&listener, &key, &pki).await;
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let elsewhere = Client::new(listener.address().clone(), &key)
        .tls(trusting(&pki.ca), "elsewhere.example")
        .timeout(LIMIT);
    match elsewhere.connect::<(), ()>().await {
        Err(Error::Tls(msg)) => assert!(msg.contains("not valid for name"), "{msg}"),
        other => panic!("expected Err(Tls): {other:?}"),
    }
    let nameless =
        Client::new(listener.address().clone(), &key).tls(trusting(&pki.ca), "not a name!");
    let invalid = nameless.connect::<(), ()>().await;
    assert!(
        matches!(invalid, Err(Error::InvalidArgument(_))),
        "{invalid:?}"
    );
    common::eventually("the listener counts the refused peer", || {
        listener.rejected() >= 1
    })
    .await;
    drop(listener);
    leaks.finish().await;
}

/// Both time limits are a minute: the errors below come from the mismatch itself, not
/// from one side giving up on the other.
#[tokio::test]
async fn a_client_without_tls_is_told_the_listener_requires_it() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let plain = (listener.address().clone(), key.to_hex(), None);
    let mut child = spawn_process(doubler, plain).unwrap();
    let refused = child.join_timeout(LIMIT).await.unwrap().unwrap_err();
    assert!(
        refused.starts_with("Tls: ") && refused.contains("requires TLS"),
        "{refused}"
    );
    let plain = Client::new(listener.address().clone(), &key).timeout(LIMIT);
    match plain.connect::<(), ()>().await {
        Err(Error::Tls(msg)) => assert!(msg.contains("requires TLS"), "{msg}"),
        other => panic!("expected Err(Tls): {other:?}"),
    }
    common::eventually("the listener counts both peers", || {
        listener.rejected() == 2
    })
    .await;
    round_trip_with_child(&listener, &key, &pki).await;
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn a_tls_client_is_told_the_listener_does_not_use_tls() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = Listener::builder()
        .authkey(&key)
        .handshake_timeout(LIMIT)
        .bind()
        .await
        .unwrap();
    let mut child = spawn_process(doubler, route(&listener, &key, &pki)).unwrap();
    let refused = child.join_timeout(LIMIT).await.unwrap().unwrap_err();
    assert!(
        refused.starts_with("Tls: ") && refused.contains("does not use TLS"),
        "{refused}"
    );
    match tls_client(&listener, &pki.ca, &key)
        .connect::<(), ()>()
        .await
    {
        Err(Error::Tls(msg)) => assert!(msg.contains("does not use TLS"), "{msg}"),
        other => panic!("expected Err(Tls): {other:?}"),
    }
    common::eventually("the listener counts both peers", || {
        listener.rejected() == 2
    })
    .await;
    drop(listener);
    leaks.finish().await;
}

#[tokio::test]
async fn a_wrong_key_inside_tls_is_an_authentication_error_on_both_sides() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let wrong = AuthKey::random().unwrap();
    let listener = tls_listener(&pki, &key).await;
    let mut intruder = spawn_process(doubler, route(&listener, &wrong, &pki)).unwrap();
    let refused = intruder.join_timeout(LIMIT).await.unwrap().unwrap_err();
    assert!(refused.starts_with("Authentication: "), "{refused}");
    assert!(refused.contains("authkeys differ"), "{refused}");
    assert_eq!(listener.rejected(), 1);
    // Nothing of the refused peer is handed out: the next connection is the good one.
    round_trip_with_child(&listener, &key, &pki).await;
    drop(listener);
    leaks.finish().await;
}

/// Handles cannot cross TLS: sending one is a clear error that leaves the connection
/// usable, as over plain TCP.
#[tokio::test]
async fn descriptors_over_tls_are_a_clear_error() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let client = tls_client(&listener, &pki.ca, &key);
    let (mut server, mut client) =
        tls_pair::<(), Option<Connection<u8, u8>>>(&listener, &client).await;
    let (pipe, _other) = multiprocess::pipe::<u8, u8>().unwrap();
    let refused = client.send(Some(pipe)).await.unwrap_err();
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
    drop((server, listener, _other));
    leaks.finish().await;
}

/// Either end closing ends both relays: the other end sees the connection closed, and
/// every descriptor of both relays is released.
#[tokio::test]
async fn closing_either_end_ends_the_relays_and_leaks_nothing() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let client = tls_client(&listener, &pki.ca, &key);

    let (mut server, mut near) = tls_pair::<u32, u32>(&listener, &client).await;
    near.send(7).await.unwrap();
    drop(near);
    // What was sent before the close still arrives, then the end.
    assert_eq!(server.recv().await.unwrap(), 7);
    assert!(matches!(server.recv().await, Err(Error::Disconnected)));
    drop(server);

    let (server, mut near) = tls_pair::<u32, u32>(&listener, &client).await;
    // A receive in progress when the far end closes ends with it; one cancelled
    // before leaves nothing behind.
    let cancelled = tokio::time::timeout(Duration::from_millis(1), near.recv()).await;
    assert!(cancelled.is_err());
    drop(server);
    assert!(matches!(near.recv().await, Err(Error::Disconnected)));
    drop((near, listener));
    leaks.finish().await;
}

/// A blocking client's relay runs on a thread of its own, with its own runtime: both
/// end when the connection is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_clients_relay_thread_ends_with_its_connection() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let client = tls_client(&listener, &pki.ca, &key);
    let blocking = tokio::task::spawn_blocking(move || {
        let mut conn = client.connect_blocking::<u32, u32>().unwrap();
        conn.send_blocking(1).unwrap();
        conn.recv_blocking().unwrap()
    });
    let mut server = listener.accept::<u32, u32>().await.unwrap();
    let n = server.recv().await.unwrap();
    server.send(n + 1).await.unwrap();
    assert_eq!(blocking.await.unwrap(), 2);
    assert!(matches!(server.recv().await, Err(Error::Disconnected)));
    drop((server, listener));
    leaks.finish().await;
}

/// A child killed mid-connection: the parent's end sees it gone, and its relay ends.
#[tokio::test]
async fn a_peer_killed_mid_connection_ends_the_relay() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let mut child = spawn_process(doubler, route(&listener, &key, &pki)).unwrap();
    let mut conn = listener.accept::<u64, u64>().await.unwrap();
    conn.send(1).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), 2);
    child.kill().unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Disconnected)));
    let killed = child.join_timeout(LIMIT).await;
    assert!(matches!(killed, Err(Error::Signaled { .. })), "{killed:?}");
    drop((conn, listener));
    leaks.finish().await;
}

/// A connect abandoned during the handshake leaves nothing behind.
#[tokio::test]
async fn a_cancelled_connect_leaks_nothing() {
    let leaks = common::LeakCheck::start().await;
    let pki = Pki::new();
    // A server that accepts and then says nothing: the client waits for its greeting.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = Address::Tcp(silent.local_addr().unwrap());
    let client = Client::new(address, "k")
        .tls(trusting(&pki.ca), "localhost")
        .timeout(LIMIT);
    let mut connect = Box::pin(client.connect::<(), ()>());
    let accepted = tokio::select! {
        accepted = silent.accept() => accepted.unwrap(),
        connected = &mut connect => panic!("a silent server cannot be connected to: {connected:?}"),
    };
    drop(connect);
    let mut peer = accepted.0;
    let mut rest = Vec::new();
    // The abandoned client's socket is closed: the server reads its end.
    tokio::time::timeout(
        LIMIT,
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut rest),
    )
    .await
    .expect("the abandoned client's socket closes")
    .unwrap();
    drop((peer, silent));
    leaks.finish().await;
}

/// Reads from a raw peer until the listener closes the connection; how many bytes came.
fn read_until_closed(peer: &mut TcpStream) -> std::io::Result<usize> {
    peer.set_read_timeout(Some(LIMIT))?;
    let mut total = 0;
    let mut buf = [0; 4096];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// Silent and garbage-sending peers hold neither the listener nor a good client; the
/// silent one is cut off at the handshake deadline, the garbage one at once.
#[tokio::test]
async fn hostile_peers_before_tls_do_not_hold_up_a_good_client() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = Listener::builder()
        .authkey(&key)
        .tls(pki.server.clone())
        .handshake_timeout(Duration::from_secs(3))
        .bind()
        .await
        .unwrap();
    let addr = tcp_address(&listener);
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(&[0x42; 4096]).unwrap();
    let client = Client::new(listener.address().clone(), &key)
        .tls(trusting(&pki.ca), "localhost")
        .timeout(LIMIT);
    let (mut server, mut client) = tls_pair::<u8, u8>(&listener, &client).await;
    client.send(1).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), 1);
    let garbage = tokio::task::spawn_blocking(move || read_until_closed(&mut garbage));
    // The greeting, then at most a TLS alert.
    assert!(garbage.await.unwrap().unwrap() < 100);
    let silent = tokio::task::spawn_blocking(move || {
        silent
            .into_iter()
            .map(|mut s| read_until_closed(&mut s).unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        silent.await.unwrap(),
        vec![40; 4],
        "the greeting, then the close"
    );
    assert_eq!(listener.rejected(), 5);
    drop((server, client, listener));
    leaks.finish().await;
}

/// A peer that floods well-formed TLS records (one huge client hello and more) before
/// authenticating is cut off: the listener stops reading and serves others.
#[tokio::test]
async fn a_flood_before_authentication_is_cut_off() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let addr = tcp_address(&listener);
    let flood = tokio::task::spawn_blocking(move || {
        let mut peer = TcpStream::connect(addr).unwrap();
        peer.set_write_timeout(Some(LIMIT)).unwrap();
        // Handshake records of 16 KiB; the first opens a client hello of 65,520 bytes.
        let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        record.extend_from_slice(&[0x01, 0x00, 0xff, 0xf0]);
        record.resize(5 + (16 << 10), 0x42);
        let mut sent = 0usize;
        for _ in 0..16 << 10 {
            match peer.write_all(&record) {
                Ok(()) => sent += record.len(),
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
    round_trip_with_child(&listener, &key, &pki).await;
    drop(listener);
    leaks.finish().await;
}

/// A server that never greets: connecting inside TLS ends at the client's time limit,
/// async or blocking (whose thread ends with it), and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_a_timeout_async_and_blocking() {
    let leaks = common::LeakCheck::start().await;
    let pki = Pki::new();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = Address::Tcp(silent.local_addr().unwrap());
    let limit = Duration::from_millis(300);
    let client = Client::new(address, "k")
        .tls(trusting(&pki.ca), "localhost")
        .timeout(limit);
    let waited = client.connect::<(), ()>().await;
    assert!(
        matches!(waited, Err(Error::Timeout { after }) if after == limit),
        "{waited:?}"
    );
    let blocking = tokio::task::spawn_blocking(move || client.connect_blocking::<(), ()>());
    let waited = blocking.await.unwrap();
    assert!(
        matches!(waited, Err(Error::Timeout { after }) if after == limit),
        "{waited:?}"
    );
    drop(silent);
    leaks.finish().await;
}

/// TLS works over a Unix socket too.
#[tokio::test]
async fn a_child_connects_back_inside_tls_over_a_unix_socket() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let dir = std::env::temp_dir().join(format!("mp-listener-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = Listener::builder()
        .address(Address::Unix(dir.join("tls.sock")))
        .authkey(&key)
        .tls(pki.server.clone())
        .handshake_timeout(LIMIT)
        .bind()
        .await
        .unwrap();
    round_trip_with_child(&listener, &key, &pki).await;
    drop(listener);
    std::fs::remove_dir_all(&dir).unwrap();
    leaks.finish().await;
}

/// A connection dropped while its relay is stuck writing to a peer that reads nothing
/// (here a child stopped by SIGSTOP) still ends the relay, and closes the socket to
/// the peer: it does not wait for a peer that may never read again.
#[tokio::test]
async fn a_connection_dropped_while_the_peer_reads_nothing_ends_its_relay() {
    let leaks = common::LeakCheck::start().await;
    let (pki, key) = (Pki::new(), AuthKey::random().unwrap());
    let listener = tls_listener(&pki, &key).await;
    let mut child = spawn_process(doubler, route(&listener, &key, &pki)).unwrap();
    let mut conn = listener.accept::<Vec<u8>, u64>().await.unwrap();
    child.signal(multiprocess::Signal::SIGSTOP).unwrap();
    // The stopped child reads nothing: sooner or later every buffer on the way is full
    // and a send waits for good (taken as 2 s without progress), the relay stuck in a
    // write to the peer.
    let chunk = vec![0x5a_u8; 64 << 10];
    let mut stuck = false;
    for _ in 0..4096 {
        let sent = tokio::time::timeout(Duration::from_secs(2), conn.send(chunk.clone())).await;
        match sent {
            Ok(sent) => sent.unwrap(),
            Err(_) => {
                stuck = true;
                break;
            }
        }
    }
    assert!(stuck, "256 MiB went to a stopped process");
    // The connection, the relay's end of the pair and the TCP socket.
    let open = common::fd_count();
    drop(conn);
    common::eventually("the relay ends and closes its sockets", || {
        common::fd_count() + 3 <= open
    })
    .await;
    child.kill().unwrap();
    let killed = child.join_timeout(LIMIT).await;
    assert!(matches!(killed, Err(Error::Signaled { .. })), "{killed:?}");
    drop(listener);
    leaks.finish().await;
}
