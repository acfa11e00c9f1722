//! Connections by address inside TLS (the `tls` feature).
//!
//! The crate's [`Connection`](crate::Connection) works on a Unix or TCP socket with
//! `sendmsg`/`recvmsg`, so a TLS connection is handed out as one end of a Unix socket
//! pair, and a relay task copies the other end to and from the TLS stream. Kernel TLS
//! would keep the socket itself, but it needs the `tls` module, which many kernels and
//! containers lack; a relay works everywhere, for the cost of one extra local hop per
//! message each way.
//!
//! The wire: the listener first sends a fixed greeting, as long as its plaintext
//! challenge, then the TLS handshake runs, then the authkey handshake inside TLS. A
//! client without TLS reads the greeting in place of a challenge and reports that the
//! listener requires TLS; a TLS client that gets a challenge instead reports that the
//! listener does not use TLS. Neither waits for the other until a time limit.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Authenticated;
use super::auth::{self, AuthKey, CHALLENGE_LEN, MAGIC, TLS_MAGIC};
use super::listener::{self, Config, PeerStream};
use crate::error::{Error, Result};

/// The most a listener reads from a peer before it has proved it holds the key: the
/// TLS handshake (a client hello is a few hundred bytes; a client certificate chain, if
/// the server configuration asks for one, a few KiB) and the authkey handshake.
pub(crate) const MAX_PREAUTH_TLS_READ: usize = 64 << 10;
/// Each direction of a relay reads up to this much at a time.
const RELAY_BUFFER: usize = 64 << 10;
/// How often a relay stuck writing to a peer that takes nothing checks whether its
/// connection was dropped meanwhile.
const HANG_UP_CHECK: Duration = Duration::from_millis(500);
/// How long a relay whose local end has closed tries to tell the peer with a TLS
/// `close_notify` before it closes the connection anyway.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// What a TLS listener sends first, in place of its challenge: as long as a challenge,
/// so that a client without TLS reads it whole and reports that TLS is required, while
/// a TLS client knows a listener without TLS by the challenge it gets instead. The
/// challenge then travels inside TLS.
const TLS_GREETING: [u8; CHALLENGE_LEN] = {
    let mut out = [0; CHALLENGE_LEN];
    let mut i = 0;
    while i < TLS_MAGIC.len() {
        out[i] = TLS_MAGIC[i];
        i += 1;
    }
    out
};

/// The relay of one connection: ends when either side does, closing both.
pub(super) type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A client's TLS settings: the configuration and the name the server's certificate
/// must be valid for.
#[derive(Debug, Clone)]
pub(super) struct ClientTls {
    pub(super) config: Arc<rustls::ClientConfig>,
    pub(super) server_name: String,
}

impl ClientTls {
    fn server_name(&self) -> Result<ServerName<'static>> {
        ServerName::try_from(self.server_name.clone()).map_err(|e| {
            Error::InvalidArgument(format!(
                "{:?} is not a server name for TLS: {e}",
                self.server_name
            ))
        })
    }
}

/// The listener's side: greeting, TLS handshake, authkey handshake inside TLS, all by
/// `deadline`; then the relay, on the current runtime. A peer turned away is counted.
pub(super) async fn admit<S: PeerStream>(
    stream: S,
    acceptor: &TlsAcceptor,
    config: &Config,
    deadline: Instant,
    rejected: &AtomicU64,
) -> Result<Authenticated> {
    let refused = |e: Error| {
        rejected.fetch_add(1, Ordering::SeqCst);
        e
    };
    stream.no_delay().map_err(|e| refused(e.into()))?;
    let mut stream = Budget::new(stream);
    let started = tokio::time::timeout_at(deadline, async {
        stream.write_all(&TLS_GREETING).await?;
        acceptor.accept(stream).await
    })
    .await;
    let mut tls = match started {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(refused(tls_error(e))),
        Err(_) => return Err(refused(listener::handshake_timed_out(config.timeout))),
    };
    listener::handshake(&mut tls, config, deadline, rejected).await?;
    tls.get_mut().0.lift();
    let (fd, relay) = pair(tls).map_err(refused)?;
    tokio::spawn(relay);
    Ok(Authenticated::Relayed(fd))
}

/// The client's side on a connected stream: the listener's greeting, the TLS handshake,
/// the authkey handshake inside TLS. The caller bounds it in time and runs the relay.
pub(super) async fn connect<S: PeerStream>(
    mut stream: S,
    tls: &ClientTls,
    key: &AuthKey,
) -> Result<(OwnedFd, Relay)> {
    let name = tls.server_name()?;
    stream.no_delay()?;
    let mut greeting = [0; CHALLENGE_LEN];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(auth::handshake_io_error)?;
    if greeting != TLS_GREETING {
        return Err(if greeting.starts_with(MAGIC) {
            Error::Tls("the listener does not use TLS, and this client requires it".into())
        } else {
            Error::Authentication(
                "the peer is not a multiprocess listener (unexpected greeting)".into(),
            )
        });
    }
    let connector = TlsConnector::from(tls.config.clone());
    let mut stream = connector.connect(name, stream).await.map_err(tls_error)?;
    auth::client_handshake(&mut stream, key).await?;
    pair(stream)
}

/// Runs `connect` and then its relay on a thread of its own with a runtime of its own,
/// for a caller without a runtime (or one it must not rely on); returns the local end
/// once connected. The thread ends with the relay.
pub(super) fn connect_on_relay_thread<F>(connect: F) -> Result<OwnedFd>
where
    F: Future<Output = Result<(OwnedFd, Relay)>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("multiprocess-tls-relay".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return drop(tx.send(Err(Error::Io(e)))),
            };
            runtime.block_on(async move {
                match connect.await {
                    Ok((fd, relay)) => {
                        // The caller waits for the descriptor; if it is gone, so is
                        // the connection.
                        if tx.send(Ok(fd)).is_ok() {
                            relay.await;
                        }
                    }
                    Err(e) => drop(tx.send(Err(e))),
                }
            });
        })?;
    rx.recv()
        .unwrap_or_else(|_| Err(Error::Io(io::Error::other("the TLS relay thread ended"))))
}

/// A Unix socket pair: one end for the connection, the other relayed to and from
/// `tls`. Runs in the context of the runtime that will drive the relay.
fn pair<T>(tls: T) -> Result<(OwnedFd, Relay)>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    // Both ends close on exec (the standard library asks for SOCK_CLOEXEC); the
    // connection's end stays blocking, as the crate's sockets do.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    theirs.set_nonblocking(true)?;
    let theirs = UnixStream::from_std(theirs)?;
    Ok((OwnedFd::from(ours), Box::pin(relay(tls, theirs))))
}

/// Copies bytes both ways until either side ends: the local end closing (the
/// connection was dropped), or the peer closing, failing or going silent for good (TCP
/// gives up). What one side sent before it ended is delivered first; then both close.
async fn relay<T>(tls: T, local: UnixStream)
where
    T: AsyncRead + AsyncWrite + Send,
{
    // Watches for the connection being dropped while the peer takes nothing.
    let Ok(watch) = local.as_fd().try_clone_to_owned() else {
        return;
    };
    let (tls_in, mut tls_out) = tokio::io::split(tls);
    let (local_in, mut local_out) = local.into_split();
    // Large buffers: a frame crosses in few reads and writes, and in full TLS records.
    let mut tls_in = BufReader::with_capacity(RELAY_BUFFER, tls_in);
    let mut local_in = BufReader::with_capacity(RELAY_BUFFER, local_in);
    let outbound = async {
        loop {
            let chunk = match local_in.fill_buf().await {
                Ok([]) => break,
                Ok(chunk) => chunk,
                Err(_) => return,
            };
            let n = chunk.len();
            let sent = async {
                tls_out.write_all(chunk).await?;
                tls_out.flush().await
            };
            tokio::select! {
                biased;
                sent = sent => if sent.is_err() { return },
                () = hung_up(&watch) => return,
            }
            local_in.consume(n);
        }
        // The connection was dropped: tell the peer it is the end, not a cut.
        let _ = tokio::time::timeout(CLOSE_LIMIT, tls_out.shutdown()).await;
    };
    let inbound = async {
        let _ = tokio::io::copy_buf(&mut tls_in, &mut local_out).await;
    };
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
    }
}

/// Completes once the connection's end of the pair is closed, checked every
/// [`HANG_UP_CHECK`]: for a relay stuck writing to a peer that reads nothing, which
/// would otherwise never read on and see the end.
async fn hung_up(watch: &OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        tokio::time::sleep(HANG_UP_CHECK).await;
        // POLLHUP is reported whatever is asked for, once both directions are shut.
        let mut fds = [PollFd::new(watch.as_fd(), PollFlags::empty())];
        let closed = poll(&mut fds, PollTimeout::ZERO).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP));
        if closed {
            return;
        }
    }
}

/// A TLS handshake failure as the crate's error.
fn tls_error(e: io::Error) -> Error {
    let inner = e.get_ref();
    if let Some(tls) = inner.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return Error::Tls(tls.to_string());
    }
    if inner.is_some_and(|inner| inner.is::<BudgetSpent>()) {
        return Error::Authentication(e.to_string());
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => {
            Error::Tls("the peer closed the connection during the TLS handshake".into())
        }
        _ => Error::Io(e),
    }
}

/// A peer stream whose reads are limited to [`MAX_PREAUTH_TLS_READ`] bytes in all
/// until the limit is lifted, once the peer has authenticated.
struct Budget<S> {
    inner: S,
    left: Option<usize>,
}

#[derive(Debug)]
struct BudgetSpent;

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the peer sent more than {MAX_PREAUTH_TLS_READ} bytes before authenticating"
        )
    }
}

impl std::error::Error for BudgetSpent {}

impl<S> Budget<S> {
    fn new(inner: S) -> Budget<S> {
        Budget {
            inner,
            left: Some(MAX_PREAUTH_TLS_READ),
        }
    }

    fn lift(&mut self) {
        self.left = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budget<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(left) = this.left else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, BudgetSpent)));
        }
        let limit = left.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(limit));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        this.left = Some(left - n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budget<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
