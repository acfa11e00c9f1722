//! CPython's `multiprocessing.connection` Listener/Client cases
//! (`_TestListener`, `_TestListenerClient` and the challenge tests of
//! Lib/test/_test_multiprocessing.py), adapted to typed connections: every address
//! family, several clients, binding twice, and what closing a listener does.

mod common;

use std::time::Duration;

use common::Scratch;
use multiprocess::{Address, AuthKey, Client, Connection, Error, Listener, spawn_process};

/// Generous: only a hang should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);

impl Scratch {
    fn socket(&self) -> Address {
        Address::Unix(self.0.join("socket"))
    }
}

/// Python's `families`, as addresses to bind (each scratch directory kept alive by the
/// caller).
fn families(dir: &Scratch) -> Vec<Address> {
    let mut all = vec![
        Address::loopback(),
        "localhost:0".parse().unwrap(),
        dir.socket(),
    ];
    // IPv6 loopback where the host has it.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        all.push("[::1]:0".parse().unwrap());
    }
    all
}

async fn bind(address: Address, key: &AuthKey) -> Listener {
    Listener::builder()
        .address(address)
        .authkey(key)
        .bind()
        .await
        .unwrap()
}

/// `_TestListenerClient._test`: connects and sends "hello".
fn say_hello((address, key): (Address, String)) -> Result<(), String> {
    let key = AuthKey::from_hex(&key).map_err(|e| e.to_string())?;
    let mut conn: Connection<String, ()> = Client::new(address, key)
        .timeout(LIMIT)
        .connect_blocking()
        .map_err(|e| e.to_string())?;
    conn.send_blocking("hello".into())
        .map_err(|e| e.to_string())
}

/// `test_listener_client`: a child process connects to a listener of every family.
#[tokio::test]
async fn a_child_connects_to_a_listener_of_every_family() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lpy", "families");
    let key = AuthKey::random().unwrap();
    for family in families(&dir) {
        let listener = bind(family.clone(), &key).await;
        let arg = (listener.address().clone(), key.to_hex());
        let mut child = spawn_process(say_hello, arg).unwrap();
        let mut conn = tokio::time::timeout(LIMIT, listener.accept::<(), String>())
            .await
            .unwrap_or_else(|_| panic!("no connection over {family}"))
            .unwrap();
        assert_eq!(conn.recv().await.unwrap(), "hello", "over {family}");
        assert_eq!(child.join_timeout(LIMIT).await.unwrap(), Ok(()));
        let peer = listener
            .last_accepted()
            .expect("an accepted peer has an address");
        match (listener.address(), &peer) {
            (Address::Unix(_), Address::Unix(_)) => {}
            (Address::Tcp(_), Address::Tcp(addr)) => assert!(addr.ip().is_loopback()),
            (bound, peer) => panic!("peer {peer} of a listener at {bound}"),
        }
    }
    leaks.finish().await;
}

/// `test_issue14725` and `test_issue16955`: the accepted end sends at once and the
/// client sees it, whichever side got there first.
#[tokio::test]
async fn the_accepted_end_can_send_first_over_every_family() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lpy", "sendfirst");
    let key = AuthKey::from("issue16955");
    for family in families(&dir) {
        let listener = bind(family.clone(), &key).await;
        let client = Client::new(listener.address().clone(), &key).timeout(LIMIT);
        // The client connects before anyone calls accept.
        let mut c = client.connect::<(), Vec<u8>>().await.unwrap();
        let mut a = listener.accept::<Vec<u8>, ()>().await.unwrap();
        a.send(b"hello".to_vec()).await.unwrap();
        let got = c.recv_timeout(LIMIT).await.unwrap();
        assert_eq!(got, b"hello", "over {family}");
        drop((a, c));
        listener.close();
    }
    leaks.finish().await;
}

/// `test_multiple_bind`: a second listener on a bound address is an error, for TCP and
/// for a Unix socket, and the first listener is unharmed.
#[tokio::test]
async fn binding_a_bound_address_again_fails_and_the_first_listener_serves_on() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lpy", "multibind");
    let key = AuthKey::from("k");
    for family in [Address::loopback(), dir.socket()] {
        let first = bind(family, &key).await;
        let again = Listener::bind(first.address().clone(), &key).await;
        match again {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
            other => panic!("second bind of {}: {other:?}", first.address()),
        }
        let client = Client::new(first.address().clone(), &key).timeout(LIMIT);
        let (accepted, connected) =
            tokio::join!(first.accept::<u8, u8>(), client.connect::<u8, u8>());
        let (mut a, mut c) = (accepted.unwrap(), connected.unwrap());
        c.send(7).await.unwrap();
        assert_eq!(a.recv().await.unwrap(), 7);
    }
    leaks.finish().await;
}

/// `test_context`: a listener and its connections used and closed in scope. After the
/// listener is closed nobody can connect; its connections stay usable. (Python's
/// `accept` after `close` raises; here `close` takes the listener, so such a call does
/// not compile.)
#[tokio::test]
async fn a_closed_listener_refuses_connections_but_its_connections_live_on() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lpy", "context");
    let key = AuthKey::from("k");
    for family in [Address::loopback(), dir.socket()] {
        let listener = bind(family, &key).await;
        let address = listener.address().clone();
        let client = Client::new(address.clone(), &key).timeout(LIMIT);
        let (accepted, connected) =
            tokio::join!(listener.accept::<u32, u32>(), client.connect::<u32, u32>());
        let (mut d, mut c) = (accepted.unwrap(), connected.unwrap());
        listener.close();
        c.send(1729).await.unwrap();
        assert_eq!(d.recv().await.unwrap(), 1729);
        d.send(1730).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), 1730);
        match client.connect::<u32, u32>().await {
            Err(Error::Io(_)) => {}
            other => panic!("connecting to the closed listener at {address}: {other:?}"),
        }
    }
    leaks.finish().await;
}

/// Several clients at once, each served on its own connection, in whatever order they
/// authenticate.
#[tokio::test]
async fn many_children_connect_at_once_and_each_is_served() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = bind(Address::loopback(), &key).await;
    let mut children = Vec::new();
    for _ in 0..8 {
        let arg = (listener.address().clone(), key.to_hex());
        children.push(spawn_process(say_hello, arg).unwrap());
    }
    for _ in 0..8 {
        let mut conn = tokio::time::timeout(LIMIT, listener.accept::<(), String>())
            .await
            .expect("every child connects")
            .unwrap();
        assert_eq!(conn.recv().await.unwrap(), "hello");
    }
    for mut child in children {
        assert_eq!(child.join_timeout(LIMIT).await.unwrap(), Ok(()));
    }
    assert_eq!(listener.rejected(), 0);
    drop(listener);
    leaks.finish().await;
}

/// `test_answer_challenge_auth_failure` / `test_deliver_challenge_auth_failure`: each
/// side refuses a peer holding another key, and the client's error says so.
#[tokio::test]
async fn a_wrong_key_fails_the_challenge_on_both_sides_of_every_family() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lpy", "challenge");
    for family in families(&dir) {
        let listener = bind(family.clone(), &AuthKey::from("right")).await;
        let wrong = Client::new(listener.address().clone(), "wrong").timeout(LIMIT);
        match wrong.connect::<(), ()>().await {
            Err(Error::Authentication(_)) => {}
            other => panic!("a wrong key over {family}: {other:?}"),
        }
        assert_eq!(listener.rejected(), 1);
        let blocking = wrong.clone();
        let refused = tokio::task::spawn_blocking(move || blocking.connect_blocking::<(), ()>())
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(Error::Authentication(_))),
            "{refused:?}"
        );
    }
    leaks.finish().await;
}
