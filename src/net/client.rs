//! [`Client`]: connects to a [`Listener`](crate::Listener) and authenticates.

use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UnixStream};

use super::Authenticated;
use super::address::Address;
use super::auth::{self, AuthKey};
use crate::error::{Error, Result};
use crate::ipc::Connection;

/// How long connecting and the handshake may take together unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to a [`Listener`](crate::Listener), like Python's
/// `multiprocessing.connection.Client`: both sides prove they hold the same
/// [`AuthKey`] before the typed [`Connection`] is handed out.
///
/// `Err(Authentication)` when the keys differ or the peer is not a listener of this
/// crate, `Err(Timeout)` when connecting and the handshake together take longer than
/// the time limit (10 s unless set), `Err(Io)` when nothing listens there.
///
/// ```
/// use multiprocess::{Address, AuthKey, Client, Connection, Listener};
///
/// // A plain function run in a child: it connects back without a runtime.
/// fn worker((address, key): (Address, String)) -> u64 {
///     let key = AuthKey::from_hex(&key).unwrap();
///     let mut conn: Connection<u64, u64> = Client::new(address, key).connect_blocking().unwrap();
///     let n = conn.recv_blocking().unwrap();
///     conn.send_blocking(n * 2).unwrap();
///     n
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let key = AuthKey::random()?;
/// let listener = Listener::builder().authkey(&key).bind().await?;
/// let address = listener.address().clone();
/// let mut child = multiprocess::spawn_process(worker, (address, key.to_hex()))?;
/// let mut conn = listener.accept::<u64, u64>().await?;
/// conn.send(21).await?;
/// assert_eq!(conn.recv().await?, 42);
/// assert_eq!(child.join().await?, 21);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    address: Address,
    authkey: AuthKey,
    timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::ClientTls>,
}

impl Client {
    /// A client for the listener at `address`, proving it holds `authkey`.
    ///
    /// ```
    /// let client = multiprocess::Client::new("127.0.0.1:5000".parse::<multiprocess::Address>()?, "key");
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn new(address: impl Into<Address>, authkey: impl Into<AuthKey>) -> Client {
        Client {
            address: address.into(),
            authkey: authkey.into(),
            timeout: DEFAULT_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The time limit for connecting and authenticating together (10 s unless set).
    ///
    /// ```
    /// # let address = multiprocess::Address::loopback();
    /// let client = multiprocess::Client::new(address, "key")
    ///     .timeout(std::time::Duration::from_secs(3));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Connects inside TLS, with this client configuration (the certificates it
    /// trusts), to a listener whose certificate is valid for `server_name` (a DNS name
    /// or an IP address); the authkey handshake then runs inside TLS. For a listener
    /// with [`ListenerBuilder::tls`](crate::ListenerBuilder::tls). A certificate not
    /// trusted or not valid for the name, or a listener without TLS, is `Err(Tls)`; a
    /// name that is neither is `Err(InvalidArgument)` when connecting. Needs the `tls`
    /// feature.
    ///
    /// The connection is the same [`Connection`] type; its bytes are relayed to and
    /// from TLS by a task: on the current runtime for [`connect`](Client::connect) (keep
    /// it running, and use the connection's async methods there), on a thread of its
    /// own for [`connect_blocking`](Client::connect_blocking). Descriptors cannot be
    /// sent over it (`Err(Encode)`, as over plain TCP).
    ///
    /// ```
    /// use multiprocess::{Client, Listener};
    /// use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A self-signed certificate the client trusts, for the example.
    /// let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    /// let cert = certified.cert.der().clone();
    /// let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    /// let server = rustls::ServerConfig::builder()
    ///     .with_no_client_auth()
    ///     .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))?;
    /// let mut roots = rustls::RootCertStore::empty();
    /// roots.add(cert)?;
    /// let client = rustls::ClientConfig::builder()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    ///
    /// let listener = Listener::builder().authkey("k").tls(server).bind().await?;
    /// let client = Client::new(listener.address().clone(), "k").tls(client, "localhost");
    /// let (accepted, connected) = tokio::join!(
    ///     listener.accept::<String, String>(),
    ///     client.connect::<String, String>(),
    /// );
    /// let (mut server, mut client) = (accepted?, connected?);
    /// client.send("over TLS".into()).await?;
    /// assert_eq!(server.recv().await?, "over TLS");
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        config: impl Into<std::sync::Arc<rustls::ClientConfig>>,
        server_name: impl Into<String>,
    ) -> Client {
        self.tls = Some(super::tls::ClientTls {
            config: config.into(),
            server_name: server_name.into(),
        });
        self
    }

    /// Connects and authenticates; the connection sends `S` and receives `R`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let listener = multiprocess::Listener::builder().authkey("right").bind().await?;
    /// let wrong = multiprocess::Client::new(listener.address().clone(), "wrong");
    /// let refused = wrong.connect::<(), ()>().await;
    /// assert!(matches!(refused, Err(multiprocess::Error::Authentication(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect<S, R>(&self) -> Result<Connection<S, R>> {
        let key = self.authkey.checked()?;
        let connected = tokio::time::timeout(self.timeout, self.connect_async(key))
            .await
            .unwrap_or(Err(Error::Timeout {
                after: self.timeout,
            }))?;
        connected.into_connection()
    }

    async fn connect_async(&self, key: &AuthKey) -> Result<Authenticated> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let (fd, relay) = self.connect_tls(tls, key).await?;
            tokio::spawn(relay);
            return Ok(Authenticated::Relayed(fd));
        }
        let fd = match &self.address {
            Address::Tcp(addr) => tcp_async(TcpStream::connect(addr).await?, key).await?,
            Address::Host(host) => tcp_async(TcpStream::connect(host.as_str()).await?, key).await?,
            Address::Unix(path) => {
                let mut stream = unix_async(path).await?;
                auth::client_handshake(&mut stream, key).await?;
                OwnedFd::from(stream.into_std()?)
            }
        };
        Ok(Authenticated::Direct(fd))
    }

    /// Connects and authenticates inside TLS; the relay is left to the caller to run.
    #[cfg(feature = "tls")]
    async fn connect_tls(
        &self,
        tls: &super::tls::ClientTls,
        key: &AuthKey,
    ) -> Result<(OwnedFd, super::tls::Relay)> {
        use super::tls::connect;
        match &self.address {
            Address::Tcp(addr) => connect(TcpStream::connect(addr).await?, tls, key).await,
            Address::Host(host) => {
                connect(TcpStream::connect(host.as_str()).await?, tls, key).await
            }
            Address::Unix(path) => connect(unix_async(path).await?, tls, key).await,
        }
    }

    /// [`connect_blocking`](Client::connect_blocking) inside TLS: connecting, the
    /// handshakes and then the relay run on a thread of their own.
    #[cfg(feature = "tls")]
    fn connect_tls_blocking(&self, tls: &super::tls::ClientTls) -> Result<OwnedFd> {
        let (client, tls) = (self.clone(), tls.clone());
        super::tls::connect_on_relay_thread(async move {
            let key = client.authkey.checked()?;
            tokio::time::timeout(client.timeout, client.connect_tls(&tls, key))
                .await
                .unwrap_or(Err(Error::Timeout {
                    after: client.timeout,
                }))
        })
    }

    /// [`connect`](Client::connect), blocking the calling thread: for code without a
    /// runtime, such as a plain function running in a child.
    ///
    /// ```
    /// let client = multiprocess::Client::new(multiprocess::Address::loopback(), "k");
    /// // Nothing listens on port 0.
    /// assert!(client.connect_blocking::<(), ()>().is_err());
    /// ```
    pub fn connect_blocking<S, R>(&self) -> Result<Connection<S, R>> {
        let key = self.authkey.checked()?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return Ok(Connection::from_relayed_fd(self.connect_tls_blocking(tls)?));
        }
        let deadline = Instant::now() + self.timeout;
        let fd = match &self.address {
            Address::Tcp(addr) => self.tcp_blocking(&[*addr], key, deadline)?,
            Address::Host(host) => {
                let addrs: Vec<SocketAddr> = host.to_socket_addrs()?.collect();
                self.tcp_blocking(&addrs, key, deadline)?
            }
            Address::Unix(path) => {
                let mut stream = self.unix_blocking(path, deadline)?;
                auth::client_handshake_blocking(&mut stream, key, deadline, self.timeout)?;
                OwnedFd::from(stream)
            }
        };
        Connection::from_fd(fd)
    }

    /// Connects to a Unix socket, waiting no longer than the deadline for room in the
    /// listener's queue: a blocking Unix `connect` to a full queue otherwise waits until
    /// the listener accepts, however long that takes.
    fn unix_blocking(&self, path: &Path, deadline: Instant) -> Result<StdUnixStream> {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt,
        };
        let timeout = Error::Timeout {
            after: self.timeout,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout);
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io_error)?;
        // Bounds the wait for room in the queue (and later writes, until the handshake
        // sets its own limits).
        let limit = nix::sys::time::TimeVal::new(
            left.as_secs() as _,
            // At least a microsecond: zero would mean no limit at all.
            left.subsec_micros().max(1) as _,
        );
        setsockopt(&fd, sockopt::SendTimeout, &limit).map_err(io_error)?;
        let addr = UnixAddr::new(path).map_err(io_error)?;
        loop {
            // An interrupted Unix connect leaves the socket unconnected: try again.
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => return Ok(StdUnixStream::from(fd)),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return Err(timeout),
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Tries each address in turn until one connects, then authenticates on it.
    fn tcp_blocking(
        &self,
        addrs: &[SocketAddr],
        key: &AuthKey,
        deadline: Instant,
    ) -> Result<OwnedFd> {
        let mut last = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    after: self.timeout,
                });
            }
            match StdTcpStream::connect_timeout(addr, left) {
                Ok(mut stream) => {
                    stream.set_nodelay(true)?;
                    auth::client_handshake_blocking(&mut stream, key, deadline, self.timeout)?;
                    return Ok(OwnedFd::from(stream));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Io(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the host name resolved to no address",
            )
        })))
    }
}

fn io_error(e: nix::errno::Errno) -> Error {
    Error::Io(e.into())
}

/// The first and the longest pause between tries to connect to a Unix socket whose
/// queue is full.
const QUEUE_FULL_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_millis(100));

/// Connects to a Unix socket, trying again while the listener's queue is full (a
/// non-blocking Unix `connect` fails at once then, where TCP would wait) until the
/// caller's time limit ends the wait.
async fn unix_async(path: &Path) -> Result<UnixStream> {
    let mut pause = QUEUE_FULL_BACKOFF.0;
    loop {
        match UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(QUEUE_FULL_BACKOFF.1);
            }
            connected => return Ok(connected?),
        }
    }
}

async fn tcp_async(mut stream: TcpStream, key: &AuthKey) -> Result<OwnedFd> {
    stream.set_nodelay(true)?;
    auth::client_handshake(&mut stream, key).await?;
    Ok(OwnedFd::from(stream.into_std()?))
}
