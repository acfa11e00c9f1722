//! Listener and Client against hostile use: futures dropped at random points, the
//! listener closed under pending handshakes, a listener out of descriptors, garbage
//! after a good handshake, and Unix socket files left behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Scratch;
use multiprocess::{Address, AuthKey, Client, Error, Listener, spawn_process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous: only a hang should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);

impl Scratch {
    fn path(&self) -> PathBuf {
        self.0.join("socket")
    }
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let seed = std::env::var("LISTENER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.unwrap().as_nanos() as u64 | 1
            });
        println!("LISTENER_SEED={seed}");
        XorShift(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Accepts until a connection carries `token` back and forth: connections queued by
/// clients that gave up come out first and are dead, which the listener cannot know.
async fn serves_a_good_client(listener: &Listener, key: &AuthKey, token: u64) {
    let client = Client::new(listener.address().clone(), key).timeout(LIMIT);
    let good = async {
        let mut conn = client.connect::<u64, u64>().await.unwrap();
        conn.send(token).await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), token + 1);
    };
    let server = async {
        loop {
            let mut conn = listener.accept::<u64, u64>().await.unwrap();
            if let Ok(n) = conn.recv().await {
                assert_eq!(n, token);
                conn.send(n + 1).await.unwrap();
                return;
            }
        }
    };
    tokio::time::timeout(LIMIT, async { tokio::join!(good, server) })
        .await
        .expect("a good client is served");
}

/// Connects and accepts, each dropped after a random short time, hundreds of times over
/// TCP and a Unix socket: the listener serves a good client afterwards and nothing
/// leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_accepts_dropped_at_random_points_leave_the_listener_serving() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "cancel");
    let mut rng = XorShift::seeded();
    let key = AuthKey::random().unwrap();
    for address in [Address::loopback(), Address::Unix(dir.path())] {
        let listener = Listener::builder()
            .address(address)
            .authkey(&key)
            .bind()
            .await
            .unwrap();
        let client = Client::new(listener.address().clone(), &key).timeout(LIMIT);
        for _ in 0..300 {
            let connect_for = Duration::from_micros(rng.below(3000));
            let accept_for = Duration::from_micros(rng.below(3000));
            let connect = tokio::time::timeout(connect_for, client.connect::<u64, u64>());
            let accept = tokio::time::timeout(accept_for, listener.accept::<u64, u64>());
            let (connected, accepted) = tokio::join!(connect, accept);
            // Whatever completed is dropped too: the other side must cope.
            drop((connected, accepted));
        }
        serves_a_good_client(&listener, &key, 41).await;
        drop(listener);
    }
    leaks.finish().await;
}

/// Peers mid-handshake when the listener closes are cut off at once (not at the
/// handshake deadline), and every descriptor on the listener's side is released.
#[tokio::test]
async fn closing_the_listener_cuts_off_pending_handshakes() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "closepending");
    let key = AuthKey::from("k");
    let listener = Listener::builder()
        .address(dir.path())
        .authkey(&key)
        .handshake_timeout(Duration::from_secs(3600))
        .bind()
        .await
        .unwrap();
    let before = common::fd_count();
    let mut peers = Vec::new();
    for _ in 0..10 {
        let mut peer = tokio::net::UnixStream::connect(dir.path()).await.unwrap();
        // The challenge shows the listener has the peer in a handshake.
        let mut challenge = [0; 8];
        tokio::time::timeout(LIMIT, peer.read_exact(&mut challenge))
            .await
            .unwrap()
            .unwrap();
        peers.push(peer);
    }
    // One peer authenticated and queued, never accepted.
    let queued = Client::new(dir.path(), &key).timeout(LIMIT);
    let mut queued = queued.connect::<u8, u8>().await.unwrap();
    common::eventually("the listener holds every peer", || {
        common::fd_count() >= before + 21
    })
    .await;
    listener.close();
    for peer in &mut peers {
        let mut rest = Vec::new();
        // The handshake deadline is an hour away: only the close can end this.
        let closed = tokio::time::timeout(LIMIT, peer.read_to_end(&mut rest)).await;
        closed
            .expect("the listener's close reaches a peer mid-handshake")
            .unwrap();
    }
    match queued.recv_timeout(LIMIT).await {
        Err(Error::Disconnected) => {}
        other => panic!("a queued connection after close: {other:?}"),
    }
    assert!(
        !dir.path().exists(),
        "the socket file outlives the listener"
    );
    drop((peers, queued));
    leaks.finish().await;
}

/// The handshake's messages, listener first, by length: challenge, response, verdict,
/// acknowledgement.
const HANDSHAKE: [(bool, usize); 4] = [(true, 40), (false, 72), (true, 33), (false, 1)];

/// Passes a real client's handshake through to the listener, then gives the test the
/// authenticated stream to the listener, to write whatever it likes on.
async fn authenticated_stream(listener: &Listener, key: &AuthKey) -> TcpStream {
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(relay.local_addr().unwrap(), key).timeout(LIMIT);
    let target = match listener.address() {
        Address::Tcp(addr) => *addr,
        other => panic!("not TCP: {other}"),
    };
    let relay = async {
        let (mut from_client, _) = relay.accept().await.unwrap();
        let mut to_listener = TcpStream::connect(target).await.unwrap();
        for (listener_speaks, len) in HANDSHAKE {
            let mut buf = vec![0; len];
            if listener_speaks {
                to_listener.read_exact(&mut buf).await.unwrap();
                from_client.write_all(&buf).await.unwrap();
            } else {
                from_client.read_exact(&mut buf).await.unwrap();
                to_listener.write_all(&buf).await.unwrap();
            }
        }
        to_listener
    };
    let (connected, stream) = tokio::join!(client.connect::<u8, u8>(), relay);
    drop(connected.unwrap());
    stream
}

/// Whether a receive error is the one a case expects.
type Expected = fn(&Error) -> bool;

fn header(len: u32, n_fds: u8, magic: u8) -> Vec<u8> {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend([n_fds, magic, 0, 0]);
    bytes
}

/// An authenticated peer that then sends an oversized, malformed or truncated frame
/// gets the listener's end a typed error, never a panic or a hang; the listener serves
/// on.
#[tokio::test]
async fn bad_frames_after_a_good_handshake_are_typed_errors() {
    let leaks = common::LeakCheck::start().await;
    let key = AuthKey::random().unwrap();
    let listener = Listener::builder().authkey(&key).bind().await.unwrap();
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        ("a length of 4 GiB", header(u32::MAX, 0, 0xA7), |e| {
            matches!(e, Error::FrameTooLarge { .. })
        }),
        ("a bad magic byte", header(4, 0, 0x00), |e| {
            matches!(e, Error::Protocol(_))
        }),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec(), |e| {
            matches!(e, Error::Protocol(_))
        }),
        ("descriptors over TCP", header(0, 3, 0xA7), |e| {
            !matches!(e, Error::Io(_))
        }),
        (
            "a payload of the wrong type",
            [header(1, 0, 0xA7), vec![0xff]].concat(),
            |e| !matches!(e, Error::Disconnected),
        ),
        (
            "a truncated frame",
            [header(100, 0, 0xA7), vec![1, 2, 3]].concat(),
            |e| matches!(e, Error::Protocol(_)),
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut raw = authenticated_stream(&listener, &key).await;
        let mut conn = listener.accept::<(), String>().await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        // Closing ends the truncated frame; the others are rejected before this.
        raw.shutdown().await.unwrap();
        let got = tokio::time::timeout(LIMIT, conn.recv()).await;
        match got {
            Ok(Err(e)) => assert!(expected(&e), "{what}: {e:?}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    serves_a_good_client(&listener, &key, 7).await;
    drop(listener);
    leaks.finish().await;
}

/// Open descriptors of another process.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Another process's soft limit on open descriptors.
fn soft_fd_limit(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    let soft = line.and_then(|l| l.split_whitespace().nth(3));
    soft.and_then(|s| s.parse().ok()).unwrap_or(usize::MAX)
}

/// CPU time a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Room this process has below its descriptor limit once lowered.
const HEADROOM: u64 = 12;

/// Lowers this process's descriptor limit to what is open now plus `HEADROOM`.
fn lower_fd_limit() {
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + HEADROOM,
        rlim_max: open + HEADROOM,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Run in a child: a listener there, its descriptor limit just above what it has open,
/// answering the first client that sends a number with that number plus one.
fn starved_listener((path, key): (PathBuf, String)) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let listener = Listener::builder()
            .address(path)
            .authkey(AuthKey::from_hex(&key).map_err(|e| e.to_string())?)
            .handshake_timeout(Duration::from_secs(3600))
            .bind()
            .await
            .map_err(|e| e.to_string())?;
        lower_fd_limit();
        loop {
            let mut conn = listener
                .accept::<u64, u64>()
                .await
                .map_err(|e| e.to_string())?;
            if let Ok(n) = conn.recv().await {
                conn.send(n + 1).await.map_err(|e| e.to_string())?;
                return Ok(n);
            }
        }
    })
}

/// A listener that runs out of descriptors under a flood of silent peers neither dies
/// nor spins: it waits, and once the flood goes it serves a good client.
#[tokio::test]
async fn a_listener_out_of_descriptors_waits_without_spinning_and_recovers() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "emfile");
    let key = AuthKey::random().unwrap();
    let mut child = spawn_process(starved_listener, (dir.path(), key.to_hex())).unwrap();
    let pid = child.pid();
    common::eventually("the child listens", || dir.path().exists()).await;
    let mut flood = Vec::new();
    for _ in 0..(4 * HEADROOM) {
        flood.push(tokio::net::UnixStream::connect(dir.path()).await.unwrap());
    }
    common::eventually("the child lowers its limit", || {
        soft_fd_limit(pid) < 1 << 20
    })
    .await;
    let limit = soft_fd_limit(pid);
    // Full: the lowest free descriptor is at the limit, so every accept fails.
    common::eventually("the child runs out of descriptors", || fds_of(pid) >= limit).await;
    let start = cpu_ticks(pid);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - start;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used < per_second,
        "the listener used {used} ticks of {} in {window:?} out of descriptors",
        2 * per_second
    );
    drop(flood);
    let client = Client::new(dir.path(), &key).timeout(LIMIT);
    let mut conn = client.connect::<u64, u64>().await.unwrap();
    conn.send(41).await.unwrap();
    assert_eq!(conn.recv_timeout(LIMIT).await.unwrap(), 42);
    assert_eq!(child.join_timeout(LIMIT).await.unwrap(), Ok(41));
    drop(conn);
    leaks.finish().await;
}

/// A socket file left by a listener that died without cleaning up does not stop a new
/// listener binding there; a live listener's socket and a file that is not a socket are
/// never taken over.
#[tokio::test]
async fn a_stale_unix_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "stale");
    let key = AuthKey::from("k");
    let path = dir.path();
    // A listener that died: its socket file stays, nobody accepts on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = Listener::bind(path.clone(), &key).await.unwrap();
    serves_a_good_client(&listener, &key, 1).await;
    match Listener::bind(path.clone(), &key).await {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("a second listener on a live socket: {other:?}"),
    }
    serves_a_good_client(&listener, &key, 2).await;
    drop(listener);
    assert!(!path.exists());
    std::fs::write(&path, b"precious").unwrap();
    match Listener::bind(path.clone(), &key).await {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("a listener over a plain file: {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    leaks.finish().await;
}

/// A listener removes only its own socket file: if the path was taken over by a new
/// listener meanwhile, the old one leaves it alone.
#[tokio::test]
async fn a_listener_removes_its_own_socket_file_and_no_other() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "own");
    let key = AuthKey::from("k");
    let path = dir.path();
    let old = Listener::bind(path.clone(), &key).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let new = Listener::bind(path.clone(), &key).await.unwrap();
    drop(old);
    assert!(
        path.exists(),
        "the old listener removed the new one's socket"
    );
    serves_a_good_client(&new, &key, 3).await;
    drop(new);
    assert!(!Path::new(&path).exists());
    leaks.finish().await;
}

/// A client whose listener holds a connection in the handshake and never finishes it
/// gives up at its time limit with `Timeout`, over TCP and a Unix socket, blocking or
/// not.
#[tokio::test]
async fn a_client_gives_up_on_a_listener_that_never_answers() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "mute");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unix = std::os::unix::net::UnixListener::bind(dir.path()).unwrap();
    let addresses = [
        Address::Tcp(tcp.local_addr().unwrap()),
        Address::Unix(dir.path()),
    ];
    for address in addresses {
        let client = Client::new(address.clone(), "k").timeout(Duration::from_millis(300));
        let got = tokio::time::timeout(LIMIT, client.connect::<(), ()>()).await;
        assert!(
            matches!(got, Ok(Err(Error::Timeout { .. }))),
            "{address}: {got:?}"
        );
        let got = tokio::task::spawn_blocking(move || client.connect_blocking::<(), ()>());
        let got = tokio::time::timeout(LIMIT, got).await.unwrap().unwrap();
        assert!(
            matches!(got, Err(Error::Timeout { .. })),
            "{address}: {got:?}"
        );
    }
    drop((tcp, unix));
    leaks.finish().await;
}

/// A Unix socket listening with the shortest queue the kernel allows, and its queue
/// filled by connections nobody accepts.
async fn full_unix_queue(path: &Path) -> (std::os::fd::OwnedFd, Vec<tokio::net::UnixStream>) {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(path).unwrap(),
    )
    .unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let mut queued = Vec::new();
    // A non-blocking connect says when the queue is full.
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => queued.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (fd, queued),
            Err(e) => panic!("filling the queue: {e}"),
        }
        assert!(queued.len() < 100, "the queue does not fill");
    }
}

/// A client connecting to a Unix socket whose queue is full waits for room only as long
/// as its time limit, blocking or not, and then says `Timeout`.
#[tokio::test]
async fn a_client_waits_for_room_in_a_full_unix_queue_only_until_its_time_limit() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "fullqueue");
    let (listening, queued) = full_unix_queue(&dir.path()).await;
    let client = Client::new(dir.path(), "k").timeout(Duration::from_millis(300));
    let got = tokio::time::timeout(LIMIT, client.connect::<(), ()>()).await;
    assert!(matches!(got, Ok(Err(Error::Timeout { .. }))), "{got:?}");
    // On a thread of its own, so that a connect that never returns fails the test
    // rather than holding the runtime's shutdown.
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(client.connect_blocking::<(), ()>());
    });
    let got = tokio::task::spawn_blocking(move || waited.recv_timeout(LIMIT))
        .await
        .unwrap();
    let got = got.expect("a blocking connect to a full queue returns");
    assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
    drop((queued, listening));
    leaks.finish().await;
}

/// Unix socket paths the kernel cannot take are errors on both sides, not panics, and
/// leave nothing behind.
#[tokio::test]
async fn unusable_unix_paths_are_errors() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("lhost", "badpath");
    let long = dir.0.join("x".repeat(200));
    let missing = dir.0.join("no/such/dir/socket");
    for path in [PathBuf::new(), long, missing, PathBuf::from("nul\0inside")] {
        let bound = Listener::bind(path.clone(), "k").await;
        assert!(
            matches!(bound, Err(Error::Io(_))),
            "binding {path:?}: {bound:?}"
        );
        let client = Client::new(path.clone(), "k").timeout(LIMIT);
        let connected = client.connect::<(), ()>().await;
        assert!(
            matches!(connected, Err(Error::Io(_))),
            "connecting to {path:?}: {connected:?}"
        );
        let connected =
            tokio::task::spawn_blocking(move || client.connect_blocking::<(), ()>()).await;
        assert!(
            matches!(connected.unwrap(), Err(Error::Io(_))),
            "connecting to {path:?} blocking"
        );
    }
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    leaks.finish().await;
}
