//! [`Client`]: connects to a [`Listener`](crate::Listener) and authenticates.

use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UnixStream};

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
        let fd = tokio::time::timeout(self.timeout, connect_async(&self.address, key))
            .await
            .unwrap_or(Err(Error::Timeout {
                after: self.timeout,
            }))?;
        Connection::from_fd(fd)
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
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt};
        let timeout = Error::Timeout {
            after: self.timeout,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout);
        }
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(io_error)?;
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
    fn tcp_blocking(&self, addrs: &[SocketAddr], key: &AuthKey, deadline: Instant) -> Result<OwnedFd> {
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
            std::io::Error::new(std::io::ErrorKind::NotFound, "the host name resolved to no address")
        })))
    }
}

fn io_error(e: nix::errno::Errno) -> Error {
    Error::Io(e.into())
}

/// The first and the longest pause between tries to connect to a Unix socket whose
/// queue is full.
const QUEUE_FULL_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));

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

async fn connect_async(address: &Address, key: &AuthKey) -> Result<OwnedFd> {
    match address {
        Address::Tcp(addr) => tcp_async(TcpStream::connect(addr).await?, key).await,
        Address::Host(host) => tcp_async(TcpStream::connect(host.as_str()).await?, key).await,
        Address::Unix(path) => {
            let mut stream = unix_async(path).await?;
            auth::client_handshake(&mut stream, key).await?;
            Ok(OwnedFd::from(stream.into_std()?))
        }
    }
}

async fn tcp_async(mut stream: TcpStream, key: &AuthKey) -> Result<OwnedFd> {
    stream.set_nodelay(true)?;
    auth::client_handshake(&mut stream, key).await?;
    Ok(OwnedFd::from(stream.into_std()?))
}
