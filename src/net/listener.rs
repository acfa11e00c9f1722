//! [`Listener`]: accepts connections by address, each authenticated before it is handed
//! out.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::Authenticated;
use super::address::Address;
use super::auth::{self, AuthKey};
use crate::error::{Error, Result};
use crate::ipc::Connection;

/// How long a peer has to finish the handshake unless told otherwise.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes run at once unless told otherwise; more peers wait in the kernel's queue.
const DEFAULT_MAX_PENDING: usize = 64;
/// After `accept` itself fails (out of descriptors, say), the pause before trying
/// again, so that the loop does not spin while nothing can change.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on a TCP address or a Unix socket, like Python's
/// `multiprocessing.connection.Listener`; every peer must prove it holds the same
/// [`AuthKey`] (and the listener proves it to the peer) before its connection is handed
/// out by [`accept`](Listener::accept).
///
/// Handshakes run concurrently in the background, each bounded in time (5 s by
/// default) and reading at most a few dozen bytes (64 KiB with TLS, the `tls`
/// feature), so a silent, slow or hostile peer holds neither the listener nor anyone
/// else's connection. Unlike Python's `accept`,
/// which raises `AuthenticationError` for a peer that fails, `accept` here only ever
/// returns authenticated connections: one bad peer cannot break a server's accept loop.
/// Peers turned away are counted by [`rejected`](Listener::rejected) and logged at
/// `debug` level.
///
/// Binds to loopback unless given another address; see the crate's Security notes
/// before binding anywhere else.
///
/// A Unix socket's file is removed when the listener is dropped, unless another file
/// has taken its place by then. A socket file left at the path by a listener that died
/// without removing it (nothing accepts on it) is replaced; a socket something still
/// listens on, or a file that is not a socket, is left alone and binding fails with
/// `Err(Io)` of kind `AddrInUse`.
///
/// ```
/// use multiprocess::{AuthKey, Client, Listener};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let key = AuthKey::random()?;
/// let listener = Listener::builder().authkey(&key).bind().await?;
/// let client = Client::new(listener.address().clone(), &key);
/// let (accepted, connected) = tokio::join!(
///     listener.accept::<String, String>(),
///     client.connect::<String, String>(),
/// );
/// let (mut server, mut client) = (accepted?, connected?);
/// client.send("ping".into()).await?;
/// assert_eq!(server.recv().await?, "ping");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    address: Address,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    last_accepted: Mutex<Option<Address>>,
    rejected: Arc<AtomicU64>,
    serving: JoinHandle<()>,
    socket_file: Option<SocketFile>,
}

#[derive(Debug)]
struct Accepted {
    conn: Authenticated,
    peer: Address,
}

/// Settings for a [`Listener`]; from [`Listener::builder`].
///
/// ```
/// use std::time::Duration;
/// use multiprocess::Listener;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let listener = Listener::builder()
///     .address("127.0.0.1:0".parse::<multiprocess::Address>()?)
///     .authkey("secret")
///     .handshake_timeout(Duration::from_secs(2))
///     .max_pending_handshakes(16)
///     .bind()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ListenerBuilder {
    address: Address,
    authkey: Option<AuthKey>,
    handshake_timeout: Duration,
    max_pending: usize,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ListenerBuilder {
    /// Where to listen; loopback with a port chosen by the system unless set.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("mp-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let listener = multiprocess::Listener::builder()
    ///     .address(dir.join("socket"))
    ///     .authkey("k")
    ///     .bind()
    ///     .await?;
    /// drop(listener);
    /// std::fs::remove_dir(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = address.into();
        self
    }

    /// The key peers must prove they hold. Required: binding without one (or with an
    /// empty one) is `Err(InvalidArgument)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let unkeyed = multiprocess::Listener::builder().bind().await;
    /// assert!(matches!(unkeyed, Err(multiprocess::Error::InvalidArgument(_))));
    /// # }
    /// ```
    pub fn authkey(mut self, key: impl Into<AuthKey>) -> Self {
        self.authkey = Some(key.into());
        self
    }

    /// How long a peer has, from being accepted, to complete the handshake (5 s unless
    /// set). A peer that takes longer is disconnected.
    ///
    /// ```
    /// let b = multiprocess::Listener::builder().handshake_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many handshakes run at once (64 unless set); peers beyond that wait in the
    /// kernel's accept queue until one finishes. Authenticated connections not yet taken
    /// by [`accept`](Listener::accept) count too.
    ///
    /// ```
    /// let b = multiprocess::Listener::builder().max_pending_handshakes(8);
    /// ```
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// Encrypts every connection with TLS, with this server configuration (its
    /// certificate is what clients check); the authkey handshake then runs inside TLS,
    /// so a peer must both trust the certificate and hold the key. Clients need
    /// [`Client::tls`](crate::Client::tls): a client without TLS is refused at once with
    /// `Err(Tls)`, and so is a TLS client at a listener without TLS. Needs the `tls`
    /// feature.
    ///
    /// The bytes of a TLS connection are relayed by a task on the runtime the listener
    /// was bound on (see the crate's Security notes), so descriptors cannot be sent
    /// over it (`Err(Encode)`, as over plain TCP). The listener reads at most 64 KiB from
    /// a peer before the peer has authenticated, within the handshake time limit.
    ///
    /// ```
    /// use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A self-signed certificate for the example; use one your clients trust.
    /// let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    /// let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    /// let config = rustls::ServerConfig::builder()
    ///     .with_no_client_auth()
    ///     .with_single_cert(vec![certified.cert.der().clone()], PrivateKeyDer::Pkcs8(key))?;
    /// let listener = multiprocess::Listener::builder().authkey("k").tls(config).bind().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: impl Into<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = Some(config.into());
        self
    }

    /// Binds and starts accepting in the background (on the current tokio runtime).
    /// `Err(InvalidArgument)` without a key or with zero pending handshakes; `Err(Io)`
    /// when the address cannot be bound (in use, a Unix path that exists).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("k").bind().await?;
    /// assert!(listener.address().to_string().starts_with("127.0.0.1:"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bind(self) -> Result<Listener> {
        let key = self
            .authkey
            .ok_or_else(|| Error::InvalidArgument("a listener needs an authkey".into()))?;
        key.checked()?;
        if self.max_pending == 0 {
            return Err(Error::InvalidArgument(
                "a listener needs room for at least one pending handshake".into(),
            ));
        }
        let (socket, address, socket_file) = Incoming::bind(&self.address).await?;
        let (tx, rx) = mpsc::channel(self.max_pending);
        let rejected = Arc::new(AtomicU64::new(0));
        let config = Arc::new(Config {
            key,
            timeout: self.handshake_timeout,
            max_pending: self.max_pending,
            #[cfg(feature = "tls")]
            tls: self.tls.map(tokio_rustls::TlsAcceptor::from),
        });
        let serving = tokio::spawn(serve(socket, config, tx, rejected.clone()));
        Ok(Listener {
            address,
            incoming: tokio::sync::Mutex::new(rx),
            last_accepted: Mutex::new(None),
            rejected,
            serving,
            socket_file,
        })
    }
}

impl Listener {
    /// Settings for a listener: address, key, handshake limits.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("k").bind().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> ListenerBuilder {
        ListenerBuilder {
            address: Address::loopback(),
            authkey: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Binds a listener at `address` for peers holding `authkey`, with the default
    /// limits.
    ///
    /// ```
    /// use multiprocess::{Address, Listener};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = Listener::bind(Address::loopback(), "secret").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bind(
        address: impl Into<Address>,
        authkey: impl Into<AuthKey>,
    ) -> Result<Listener> {
        Listener::builder()
            .address(address)
            .authkey(authkey)
            .bind()
            .await
    }

    /// The next authenticated connection, as a [`Connection`] sending `S` and receiving
    /// `R` (the peer's connection has them the other way round). Peers that fail the
    /// handshake never come out here. Cancel safe: a connection is not lost when the
    /// future is dropped.
    ///
    /// ```
    /// # use multiprocess::{Client, Listener};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = Listener::builder().authkey("k").bind().await?;
    /// let address = listener.address().clone();
    /// let peer = tokio::spawn(async move {
    ///     let mut conn = Client::new(address, "k").connect::<u32, u32>().await?;
    ///     conn.send(41).await?;
    ///     conn.recv().await
    /// });
    /// let mut conn = listener.accept::<u32, u32>().await?;
    /// let n = conn.recv().await?;
    /// conn.send(n + 1).await?;
    /// assert_eq!(peer.await.unwrap()?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn accept<S, R>(&self) -> Result<Connection<S, R>> {
        let accepted = self.incoming.lock().await.recv().await.ok_or_else(|| {
            Error::Io(std::io::Error::other(
                "the listener's accept loop has stopped",
            ))
        })?;
        *self.last_accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(accepted.peer);
        accepted.conn.into_connection()
    }

    /// Where this listener listens; for TCP with the port the system chose.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("k").bind().await?;
    /// let multiprocess::Address::Tcp(addr) = listener.address() else { unreachable!() };
    /// assert_ne!(addr.port(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The peer address of the connection last returned by
    /// [`accept`](Listener::accept), like Python's `Listener.last_accepted`. A Unix
    /// socket peer that bound no path shows as an empty path.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("k").bind().await?;
    /// assert_eq!(listener.last_accepted(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn last_accepted(&self) -> Option<Address> {
        self.last_accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many peers were turned away so far: wrong key, not this crate's handshake,
    /// too slow, or gone during the handshake.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("k").bind().await?;
    /// assert_eq!(listener.rejected(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::SeqCst)
    }

    /// Stops listening, like Python's `Listener.close`: handshakes in progress and
    /// connections not yet accepted are closed, and a Unix socket's file is removed.
    /// Connections already accepted stay open. Dropping the listener does the same.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("k").bind().await?;
    /// listener.close();
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.serving.abort();
        if let Some(file) = &self.socket_file {
            file.remove();
        }
    }
}

pub(super) struct Config {
    pub(super) key: AuthKey,
    pub(super) timeout: Duration,
    max_pending: usize,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The bound socket, TCP or Unix.
enum Incoming {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted stream, TCP or Unix.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Incoming {
    /// Binds; also returns the bound address and the socket file to remove later.
    async fn bind(address: &Address) -> Result<(Incoming, Address, Option<SocketFile>)> {
        match address {
            Address::Tcp(addr) => Incoming::bind_tcp(TcpListener::bind(addr).await?),
            Address::Host(host) => Incoming::bind_tcp(TcpListener::bind(host.as_str()).await?),
            Address::Unix(path) => {
                let socket = bind_unix(path).await?;
                let file = SocketFile::new(path)?;
                Ok((
                    Incoming::Unix(socket),
                    Address::Unix(path.clone()),
                    Some(file),
                ))
            }
        }
    }

    fn bind_tcp(socket: TcpListener) -> Result<(Incoming, Address, Option<SocketFile>)> {
        let bound = Address::Tcp(socket.local_addr()?);
        Ok((Incoming::Tcp(socket), bound, None))
    }

    async fn accept(&self) -> std::io::Result<(Stream, Address)> {
        match self {
            Incoming::Tcp(socket) => {
                let (stream, peer) = socket.accept().await?;
                Ok((Stream::Tcp(stream), Address::Tcp(peer)))
            }
            Incoming::Unix(socket) => {
                let (stream, peer) = socket.accept().await?;
                let path = peer.as_pathname().map(PathBuf::from).unwrap_or_default();
                Ok((Stream::Unix(stream), Address::Unix(path)))
            }
        }
    }
}

/// Binds a Unix socket at `path`, first removing a stale socket file found there.
async fn bind_unix(path: &Path) -> Result<UnixListener> {
    if path.as_os_str().is_empty() {
        // The kernel would bind an unnamed abstract address no client could reach.
        let empty = io::Error::new(io::ErrorKind::InvalidInput, "a Unix socket path is empty");
        return Err(Error::Io(empty));
    }
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && is_stale_socket(path).await => {
            std::fs::remove_file(path)?;
            Ok(UnixListener::bind(path)?)
        }
        bound => Ok(bound?),
    }
}

/// Whether `path` is a socket nobody listens on: left by a listener that died before
/// it could remove it. A live one answers the probe (and sees a peer come and go).
async fn is_stale_socket(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    is_socket
        && matches!(
            UnixStream::connect(path).await,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        )
}

/// The socket file a listener made, known by device and inode as well as path, so that
/// a file someone else has put at the path since is not removed with the listener.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A connected stream a handshake runs on, and that becomes a connection's descriptor.
pub(crate) trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Frames are written whole: small ones must not wait for Nagle on TCP.
    fn no_delay(&self) -> io::Result<()>;
    fn into_fd(self) -> io::Result<OwnedFd>;
}

impl PeerStream for TcpStream {
    fn no_delay(&self) -> io::Result<()> {
        self.set_nodelay(true)
    }

    fn into_fd(self) -> io::Result<OwnedFd> {
        self.no_delay()?;
        Ok(OwnedFd::from(self.into_std()?))
    }
}

impl PeerStream for UnixStream {
    fn no_delay(&self) -> io::Result<()> {
        Ok(())
    }

    fn into_fd(self) -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.into_std()?))
    }
}

/// Accepts peers and runs their handshakes concurrently until the listener is dropped
/// (which aborts this task, and with it every handshake in `pending`).
async fn serve(
    socket: Incoming,
    config: Arc<Config>,
    accepted: mpsc::Sender<Accepted>,
    rejected: Arc<AtomicU64>,
) {
    let mut pending = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = pending.join_next(), if !pending.is_empty() => {}
            next = socket.accept(), if pending.len() < config.max_pending => match next {
                Ok((stream, peer)) => {
                    let task = admit(stream, peer, config.clone(), accepted.clone(), rejected.clone());
                    pending.spawn(task);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Authenticates one peer within the time limit and hands its connection to `accept`.
async fn admit(
    stream: Stream,
    peer: Address,
    config: Arc<Config>,
    accepted: mpsc::Sender<Accepted>,
    rejected: Arc<AtomicU64>,
) {
    let deadline = Instant::now() + config.timeout;
    let admitted = match stream {
        Stream::Tcp(stream) => admit_stream(stream, &config, deadline, &rejected).await,
        Stream::Unix(stream) => admit_stream(stream, &config, deadline, &rejected).await,
    };
    match admitted {
        // Fails only once the listener is gone; the connection closes with it.
        Ok(conn) => drop(accepted.send(Accepted { conn, peer }).await),
        Err(error) => turned_away(&peer, &error),
    }
}

/// The handshake (inside TLS when the listener has a TLS configuration); the
/// authenticated connection's descriptor. A peer turned away is counted.
async fn admit_stream<S: PeerStream>(
    mut stream: S,
    config: &Config,
    deadline: Instant,
    rejected: &AtomicU64,
) -> Result<Authenticated> {
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &config.tls {
        return super::tls::admit(stream, acceptor, config, deadline, rejected).await;
    }
    handshake(&mut stream, config, deadline, rejected).await?;
    match stream.into_fd() {
        Ok(fd) => Ok(Authenticated::Direct(fd)),
        Err(e) => {
            rejected.fetch_add(1, Ordering::SeqCst);
            Err(Error::Io(e))
        }
    }
}

/// The listener's side of the authkey handshake, done by `deadline`; a peer that fails
/// it is counted and, if it speaks the protocol, told.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    config: &Config,
    deadline: Instant,
    rejected: &AtomicU64,
) -> Result<()> {
    match tokio::time::timeout_at(deadline, auth::listener_handshake(stream, &config.key)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(rejection)) => {
            // Counted before the peer hears of it, so whoever sees the refusal (or the
            // close) sees the count.
            rejected.fetch_add(1, Ordering::SeqCst);
            let _ = tokio::time::timeout(config.timeout, rejection.tell(stream)).await;
            Err(rejection.error)
        }
        Err(_) => {
            rejected.fetch_add(1, Ordering::SeqCst);
            Err(handshake_timed_out(config.timeout))
        }
    }
}

pub(super) fn handshake_timed_out(timeout: Duration) -> Error {
    Error::Authentication(format!("the handshake did not finish within {timeout:?}"))
}

fn turned_away(peer: &Address, error: &Error) {
    tracing::debug!(peer = %peer, error = %error, "listener: peer turned away");
}
