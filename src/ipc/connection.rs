//! Typed, framed connections between processes: [`Connection`], [`Sender`], [`Receiver`].

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::socket::{ReadHalf, SocketFd, WRITE_HIGH_WATER, WriteHalf};
use super::wire;
use crate::error::{Error, Result};
use crate::sys;

/// Creates a duplex pipe: two connected ends, each sending what the other receives.
///
/// Like Python's `multiprocessing.Pipe()`. Either end may be moved into a child as part
/// of its argument (or sent inside a message); its descriptor travels with it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let (mut here, mut there) = multiprocess::pipe::<String, usize>()?;
/// here.send("hello".to_string()).await?;
/// let s = there.recv().await?;
/// there.send(s.len()).await?;
/// assert_eq!(here.recv().await?, 5);
/// # Ok(())
/// # }
/// ```
pub fn pipe<A, B>() -> Result<(Connection<A, B>, Connection<B, A>)> {
    let (left, right) = sys::stream_socketpair()?;
    Ok((Connection::from_fd(left)?, Connection::from_fd(right)?))
}

/// Creates a one-way channel of `T`: a [`Sender`] and a [`Receiver`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let (mut tx, mut rx) = multiprocess::channel::<Vec<u32>>()?;
/// tx.send(vec![1, 2, 3]).await?;
/// drop(tx);
/// assert_eq!(rx.recv().await?, vec![1, 2, 3]);
/// assert!(matches!(rx.recv().await, Err(multiprocess::Error::Disconnected)));
/// # Ok(())
/// # }
/// ```
pub fn channel<T>() -> Result<(Sender<T>, Receiver<T>)> {
    let (left, right) = sys::stream_socketpair()?;
    let sender = Sender {
        write: WriteHalf::new(SocketFd::new(left)?),
        _type: PhantomData,
    };
    let receiver = Receiver {
        read: ReadHalf::new(SocketFd::new(right)?),
        _type: PhantomData,
    };
    Ok((sender, receiver))
}

/// One end of a duplex, framed, typed connection: sends `S`, receives `R`.
///
/// Implements [`Sink<S>`](futures_sink::Sink) and [`Stream<Item = Result<R>>`](futures_core::Stream);
/// the inherent [`send`](Connection::send) and [`recv`](Connection::recv) are the usual way
/// in. Every operation also has a `_blocking` form for code without a runtime, such as a
/// plain function running in a child.
///
/// A frame larger than the maximum ([`DEFAULT_MAX_FRAME_LEN`](crate::DEFAULT_MAX_FRAME_LEN)
/// unless changed) is refused on both sides before any allocation. Bytes that break the
/// framing end the connection with [`Error::Protocol`]; a frame whose payload does not
/// decode as `R` gives [`Error::Decode`] and the next frame can still be read.
///
/// Dropping a `send` future before it completes leaves the message buffered: it goes out
/// with the next `send` or `flush`.
///
/// ```
/// use multiprocess::Connection;
///
/// fn child(mut conn: Connection<u64, u64>) -> u64 {
///     let mut total = 0;
///     while let Ok(n) = conn.recv_blocking() {
///         total += n;
///         conn.send_blocking(total).unwrap();
///     }
///     total
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let (mut parent, child_end) = multiprocess::pipe::<u64, u64>()?;
/// let mut process = multiprocess::spawn_process(child, child_end)?;
/// for n in 1..=3 {
///     parent.send(n).await?;
///     println!("running total {}", parent.recv().await?);
/// }
/// drop(parent);
/// assert_eq!(process.join().await?, 6);
/// # Ok(())
/// # }
/// ```
pub struct Connection<S, R> {
    read: ReadHalf,
    write: WriteHalf,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.read.socket().fd())
            .finish_non_exhaustive()
    }
}

impl<S, R> Connection<S, R> {
    /// Wraps a connected Unix stream socket, for instance one a parent left open for an
    /// external program of ours (see [`Command::channel`](crate::Command::channel)).
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// let conn = multiprocess::Connection::<u8, u8>::from_fd(OwnedFd::from(a))?;
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let sock = SocketFd::new(fd)?;
        Ok(Connection {
            read: ReadHalf::new(sock.clone()),
            write: WriteHalf::new(sock),
            _types: PhantomData,
        })
    }

    /// One end of a Unix socket pair whose other end a relay copies to and from a
    /// network connection: descriptors are refused as on the network itself.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn from_relayed_fd(fd: OwnedFd) -> Self {
        let sock = SocketFd::relayed(fd);
        Connection {
            read: ReadHalf::new(sock.clone()),
            write: WriteHalf::new(sock),
            _types: PhantomData,
        }
    }

    /// Sets the largest frame this end sends or accepts (default 256 MiB).
    ///
    /// ```
    /// let (mut a, _b) = multiprocess::pipe::<Vec<u8>, ()>()?;
    /// a.set_max_frame_len(1024);
    /// assert!(matches!(
    ///     a.send_blocking(vec![0; 4096]),
    ///     Err(multiprocess::Error::FrameTooLarge { .. })
    /// ));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.read.set_max_frame_len(max);
        self.write.set_max_frame_len(max);
    }

    /// The same socket seen with other message types (both ends must agree on what the
    /// bytes mean).
    pub(crate) fn retype<S2, R2>(self) -> Connection<S2, R2> {
        Connection {
            read: self.read,
            write: self.write,
            _types: PhantomData,
        }
    }

    /// Splits the connection into its sending and receiving halves, which can then be
    /// used from different tasks.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (a, mut b) = multiprocess::pipe::<u8, u8>()?;
    /// let (mut tx, mut rx) = a.split();
    /// tx.send(1).await?;
    /// let got = b.recv().await?;
    /// b.send(got + 1).await?;
    /// assert_eq!(rx.recv().await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn split(self) -> (Sender<S>, Receiver<R>) {
        (
            Sender {
                write: self.write,
                _type: PhantomData,
            },
            Receiver {
                read: self.read,
                _type: PhantomData,
            },
        )
    }

    /// Sends `bytes` as one frame of raw bytes, like Python's `Connection.send_bytes`.
    /// No serialization is involved, and a large payload goes from `bytes` to the socket
    /// without being copied first. The peer takes it with
    /// [`recv_bytes`](Connection::recv_bytes), or as a typed `serde_bytes::ByteBuf`
    /// (the frame is the same).
    ///
    /// If the future is dropped part way, what is unsent is buffered and goes out with
    /// the next send or flush, so the frame stays whole.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, mut b) = multiprocess::pipe::<(), ()>()?;
    /// a.send_bytes(b"raw").await?;
    /// assert_eq!(b.recv_bytes().await?, b"raw");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.write.send_bytes(bytes).await
    }

    /// [`send_bytes`](Connection::send_bytes), blocking the calling thread.
    ///
    /// ```
    /// let (mut a, mut b) = multiprocess::pipe::<(), ()>()?;
    /// a.send_bytes_blocking(&[1, 2, 3])?;
    /// assert_eq!(b.recv_bytes_blocking()?, [1, 2, 3]);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn send_bytes_blocking(&mut self, bytes: &[u8]) -> Result<()> {
        self.write.send_bytes_blocking(bytes)
    }

    /// Receives the next frame as raw bytes, like Python's `Connection.recv_bytes`; the
    /// frame must hold raw bytes ([`send_bytes`](Connection::send_bytes), or a typed
    /// `serde_bytes` value), else `Err(Decode)` and the frame is skipped.
    /// `Err(Disconnected)` once the other end is closed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, mut b) = multiprocess::pipe::<(), ()>()?;
    /// a.send_bytes(&[0; 1 << 20]).await?;
    /// assert_eq!(b.recv_bytes().await?.len(), 1 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        recv_bytes_on(&mut self.read).await
    }

    /// Receives the next frame of raw bytes into `buf` (replacing what it held) and
    /// returns its length, like Python's `Connection.recv_bytes_into`. Reusing one
    /// buffer, a large payload goes from the socket into it with no other copy.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, mut b) = multiprocess::pipe::<(), ()>()?;
    /// let mut buf = Vec::new();
    /// a.send_bytes(b"one").await?;
    /// a.send_bytes(b"two").await?;
    /// assert_eq!(b.recv_bytes_into(&mut buf).await?, 3);
    /// assert_eq!(b.recv_bytes_into(&mut buf).await?, 3);
    /// assert_eq!(buf, b"two");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_bytes_into(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        recv_bytes_into_on(&mut self.read, buf).await
    }

    /// [`recv_bytes`](Connection::recv_bytes), blocking the calling thread.
    ///
    /// ```
    /// let (mut a, mut b) = multiprocess::pipe::<(), ()>()?;
    /// a.send_bytes_blocking(b"x")?;
    /// assert_eq!(b.recv_bytes_blocking()?, b"x");
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_bytes_blocking(&mut self) -> Result<Vec<u8>> {
        recv_bytes_blocking_on(&mut self.read)
    }

    /// [`recv_bytes_into`](Connection::recv_bytes_into), blocking the calling thread.
    ///
    /// ```
    /// let (mut a, mut b) = multiprocess::pipe::<(), ()>()?;
    /// let mut buf = Vec::new();
    /// a.send_bytes_blocking(b"xy")?;
    /// assert_eq!(b.recv_bytes_into_blocking(&mut buf)?, 2);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_bytes_into_blocking(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        recv_bytes_into_blocking_on(&mut self.read, buf)
    }
}

impl<S: Serialize, R> Connection<S, R> {
    /// Sends one message and waits until it is handed to the kernel.
    /// `Err(Disconnected)` if the other end is closed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, mut b) = multiprocess::pipe::<&str, ()>()?;
    /// a.send("hi").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&mut self, message: S) -> Result<()> {
        send_on(&mut self.write, &message).await
    }

    /// Sends one message, blocking the calling thread (for code without a runtime).
    ///
    /// ```
    /// let (mut a, mut b) = multiprocess::pipe::<u32, u32>()?;
    /// a.send_blocking(7)?;
    /// assert_eq!(b.recv_blocking()?, 7);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn send_blocking(&mut self, message: S) -> Result<()> {
        self.write.encode(&message)?;
        self.write.flush_blocking()
    }

    /// [`send`](Connection::send) with a time limit on waiting for the peer to make
    /// room: [`Error::Timeout`] after `timeout`. The message is then partly written
    /// or not at all; the rest stays buffered and goes out, whole, with the next send
    /// or flush (as when a `send` future is dropped).
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, mut b) = multiprocess::pipe::<u8, u8>()?;
    /// a.send_timeout(1, Duration::from_secs(1)).await?;
    /// assert_eq!(b.recv().await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_timeout(&mut self, message: S, timeout: Duration) -> Result<()> {
        with_timeout(timeout, send_on(&mut self.write, &message)).await
    }

    /// [`send_blocking`](Connection::send_blocking) with a time limit on waiting for
    /// the peer to make room: [`Error::Timeout`] after `timeout`, the unsent rest
    /// buffered as for [`send_timeout`](Connection::send_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, b) = multiprocess::pipe::<Vec<u8>, ()>()?;
    /// // Nobody reads `b`: a message larger than the socket holds cannot go out.
    /// let sent = a.send_blocking_timeout(vec![0; 8 << 20], Duration::from_millis(50));
    /// assert!(matches!(sent, Err(multiprocess::Error::Timeout { .. })));
    /// # drop(b);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn send_blocking_timeout(&mut self, message: S, timeout: Duration) -> Result<()> {
        self.write.encode(&message)?;
        self.write.flush_blocking_timeout(Some(timeout))
    }
}

/// Runs `fut` for at most `timeout`; `Err(Timeout)` after that.
async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(Error::Timeout { after: timeout }))
}

impl<S, R: DeserializeOwned> Connection<S, R> {
    /// Receives the next message. `Err(Disconnected)` once the other end is closed and
    /// everything it sent has been read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, mut b) = multiprocess::pipe::<u8, u8>()?;
    /// b.send(1).await?;
    /// drop(b);
    /// assert_eq!(a.recv().await?, 1);
    /// assert!(matches!(a.recv().await, Err(multiprocess::Error::Disconnected)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<R> {
        recv_on(&mut self.read).await
    }

    /// [`recv`](Connection::recv) with a time limit: [`Error::Timeout`] if no whole
    /// message came within `timeout`. Nothing is lost: bytes of a message that had
    /// begun to arrive are kept for the next receive.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut a, _b) = multiprocess::pipe::<u8, u8>()?;
    /// let waited = a.recv_timeout(Duration::from_millis(10)).await;
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<R> {
        with_timeout(timeout, recv_on(&mut self.read)).await
    }

    /// Receives the next message, blocking the calling thread.
    ///
    /// ```
    /// let (mut a, mut b) = multiprocess::pipe::<u8, u8>()?;
    /// b.send_blocking(3)?;
    /// assert_eq!(a.recv_blocking()?, 3);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_blocking(&mut self) -> Result<R> {
        self.read
            .recv_blocking(None)
            .unwrap_or(Err(Error::Disconnected))
    }

    /// Receives the next message, blocking at most `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, _b) = multiprocess::pipe::<u8, u8>()?;
    /// let waited = a.recv_blocking_timeout(Duration::from_millis(10));
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_blocking_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.read
            .recv_blocking(Some(timeout))
            .unwrap_or(Err(Error::Disconnected))
    }
}

async fn recv_bytes_on(read: &mut ReadHalf) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read.recv_bytes(&mut out).await?;
    Ok(out)
}

async fn recv_bytes_into_on(read: &mut ReadHalf, buf: &mut Vec<u8>) -> Result<usize> {
    read.recv_bytes(buf).await?;
    Ok(buf.len())
}

fn recv_bytes_blocking_on(read: &mut ReadHalf) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read.recv_bytes_blocking(&mut out, None)?;
    Ok(out)
}

fn recv_bytes_into_blocking_on(read: &mut ReadHalf, buf: &mut Vec<u8>) -> Result<usize> {
    read.recv_bytes_blocking(buf, None)?;
    Ok(buf.len())
}

async fn send_on<T: Serialize + ?Sized>(write: &mut WriteHalf, message: &T) -> Result<()> {
    write.encode(message)?;
    std::future::poll_fn(|cx| write.poll_flush(cx)).await
}

async fn recv_on<T: DeserializeOwned>(read: &mut ReadHalf) -> Result<T> {
    std::future::poll_fn(|cx| read.poll_recv(cx))
        .await
        .unwrap_or(Err(Error::Disconnected))
}

fn poll_ready_on(write: &mut WriteHalf, cx: &mut Context<'_>) -> Poll<Result<()>> {
    if write.buffered() >= WRITE_HIGH_WATER {
        ready!(write.poll_flush(cx))?;
    }
    Poll::Ready(Ok(()))
}

impl<S: Serialize, R> Sink<S> for Connection<S, R> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        poll_ready_on(&mut self.get_mut().write, cx)
    }

    fn start_send(self: Pin<&mut Self>, item: S) -> Result<()> {
        self.get_mut().write.encode(&item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().write.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().write.poll_flush(cx)
    }
}

impl<S, R: DeserializeOwned> Stream for Connection<S, R> {
    type Item = Result<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<R>>> {
        self.get_mut().read.poll_recv(cx)
    }
}

/// The sending end of a [`channel`], or the sending half of a split [`Connection`].
///
/// ```
/// use futures::SinkExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let (mut tx, mut rx) = multiprocess::channel::<u16>()?;
/// SinkExt::send(&mut tx, 9).await?;
/// assert_eq!(rx.recv().await?, 9);
/// # Ok(())
/// # }
/// ```
pub struct Sender<T> {
    write: WriteHalf,
    _type: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("fd", &self.write.socket().fd())
            .finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Sends `bytes` as one frame of raw bytes; see [`Connection::send_bytes`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut tx, mut rx) = multiprocess::channel::<()>()?;
    /// tx.send_bytes(b"raw").await?;
    /// assert_eq!(rx.recv_bytes().await?, b"raw");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.write.send_bytes(bytes).await
    }

    /// [`send_bytes`](Sender::send_bytes), blocking the calling thread.
    ///
    /// ```
    /// let (mut tx, mut rx) = multiprocess::channel::<()>()?;
    /// tx.send_bytes_blocking(b"raw")?;
    /// assert_eq!(rx.recv_bytes_blocking()?, b"raw");
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn send_bytes_blocking(&mut self, bytes: &[u8]) -> Result<()> {
        self.write.send_bytes_blocking(bytes)
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends one message; see [`Connection::send`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut tx, _rx) = multiprocess::channel::<String>()?;
    /// tx.send("x".into()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&mut self, message: T) -> Result<()> {
        send_on(&mut self.write, &message).await
    }

    /// Sends one message, blocking the calling thread.
    ///
    /// ```
    /// let (mut tx, mut rx) = multiprocess::channel::<u8>()?;
    /// tx.send_blocking(1)?;
    /// assert_eq!(rx.recv_blocking()?, 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn send_blocking(&mut self, message: T) -> Result<()> {
        self.write.encode(&message)?;
        self.write.flush_blocking()
    }

    /// Sends one message with a time limit; see [`Connection::send_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut tx, mut rx) = multiprocess::channel::<u8>()?;
    /// tx.send_timeout(3, Duration::from_secs(1)).await?;
    /// assert_eq!(rx.recv().await?, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_timeout(&mut self, message: T, timeout: Duration) -> Result<()> {
        with_timeout(timeout, send_on(&mut self.write, &message)).await
    }

    /// Sends one message, blocking at most `timeout`; see
    /// [`Connection::send_blocking_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut tx, mut rx) = multiprocess::channel::<u8>()?;
    /// tx.send_blocking_timeout(3, Duration::from_secs(1))?;
    /// assert_eq!(rx.recv_blocking()?, 3);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn send_blocking_timeout(&mut self, message: T, timeout: Duration) -> Result<()> {
        self.write.encode(&message)?;
        self.write.flush_blocking_timeout(Some(timeout))
    }

    /// Shuts down the sending direction: the peer reads end of stream once it has read
    /// everything sent before, even if other copies of the socket (the receiving half of
    /// a split connection, say) stay open.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (a, mut b) = multiprocess::pipe::<u8, u8>()?;
    /// let (mut tx, _rx) = a.split();
    /// tx.send(1).await?;
    /// tx.close().await?;
    /// assert_eq!(b.recv().await?, 1);
    /// assert!(matches!(b.recv().await, Err(multiprocess::Error::Disconnected)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&mut self) -> Result<()> {
        std::future::poll_fn(|cx| self.write.poll_flush(cx)).await?;
        self.write.shutdown()
    }

    /// Sets the largest frame this end sends (default 256 MiB).
    ///
    /// ```
    /// let (mut tx, _rx) = multiprocess::channel::<Vec<u8>>()?;
    /// tx.set_max_frame_len(16);
    /// assert!(tx.send_blocking(vec![0; 17]).is_err());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.write.set_max_frame_len(max);
    }
}

impl<T: Serialize> Sink<T> for Sender<T> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        poll_ready_on(&mut self.get_mut().write, cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<()> {
        self.get_mut().write.encode(&item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().write.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().write.poll_flush(cx)
    }
}

/// The receiving end of a [`channel`], or the receiving half of a split [`Connection`].
///
/// ```
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let (mut tx, rx) = multiprocess::channel::<u8>()?;
/// tx.send(1).await?;
/// tx.send(2).await?;
/// drop(tx);
/// let all: Vec<u8> = rx.map(|m| m.unwrap()).collect().await;
/// assert_eq!(all, [1, 2]);
/// # Ok(())
/// # }
/// ```
pub struct Receiver<T> {
    read: ReadHalf,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("fd", &self.read.socket().fd())
            .finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// Receives the next frame as raw bytes; see [`Connection::recv_bytes`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut tx, mut rx) = multiprocess::channel::<()>()?;
    /// tx.send_bytes(b"abc").await?;
    /// assert_eq!(rx.recv_bytes().await?, b"abc");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        recv_bytes_on(&mut self.read).await
    }

    /// Receives the next frame of raw bytes into `buf`; see
    /// [`Connection::recv_bytes_into`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut tx, mut rx) = multiprocess::channel::<()>()?;
    /// let mut buf = Vec::with_capacity(1 << 20);
    /// tx.send_bytes(&[7; 1000]).await?;
    /// assert_eq!(rx.recv_bytes_into(&mut buf).await?, 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_bytes_into(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        recv_bytes_into_on(&mut self.read, buf).await
    }

    /// [`recv_bytes`](Receiver::recv_bytes), blocking the calling thread.
    ///
    /// ```
    /// let (mut tx, mut rx) = multiprocess::channel::<()>()?;
    /// tx.send_bytes_blocking(b"abc")?;
    /// assert_eq!(rx.recv_bytes_blocking()?, b"abc");
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_bytes_blocking(&mut self) -> Result<Vec<u8>> {
        recv_bytes_blocking_on(&mut self.read)
    }

    /// [`recv_bytes_into`](Receiver::recv_bytes_into), blocking the calling thread.
    ///
    /// ```
    /// let (mut tx, mut rx) = multiprocess::channel::<()>()?;
    /// let mut buf = Vec::new();
    /// tx.send_bytes_blocking(b"abc")?;
    /// assert_eq!(rx.recv_bytes_into_blocking(&mut buf)?, 3);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_bytes_into_blocking(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        recv_bytes_into_blocking_on(&mut self.read, buf)
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Receives the next message; see [`Connection::recv`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (mut tx, mut rx) = multiprocess::channel::<u8>()?;
    /// tx.send(5).await?;
    /// assert_eq!(rx.recv().await?, 5);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<T> {
        recv_on(&mut self.read).await
    }

    /// Receives the next message, blocking the calling thread.
    ///
    /// ```
    /// let (mut tx, mut rx) = multiprocess::channel::<u8>()?;
    /// tx.send_blocking(2)?;
    /// assert_eq!(rx.recv_blocking()?, 2);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_blocking(&mut self) -> Result<T> {
        self.read
            .recv_blocking(None)
            .unwrap_or(Err(Error::Disconnected))
    }

    /// Receives the next message with a time limit; see [`Connection::recv_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multiprocess::Result<()> {
    /// let (_tx, mut rx) = multiprocess::channel::<u8>()?;
    /// let waited = rx.recv_timeout(Duration::from_millis(10)).await;
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        with_timeout(timeout, recv_on(&mut self.read)).await
    }

    /// Receives the next message, blocking at most `timeout`; see
    /// [`Connection::recv_blocking_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut tx, mut rx) = multiprocess::channel::<u8>()?;
    /// let waited = rx.recv_blocking_timeout(Duration::from_millis(10));
    /// assert!(matches!(waited, Err(multiprocess::Error::Timeout { .. })));
    /// tx.send_blocking(1)?;
    /// assert_eq!(rx.recv_blocking_timeout(Duration::from_secs(1))?, 1);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn recv_blocking_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.read
            .recv_blocking(Some(timeout))
            .unwrap_or(Err(Error::Disconnected))
    }

    /// Sets the largest frame this end accepts (default 256 MiB).
    ///
    /// ```
    /// let (_tx, mut rx) = multiprocess::channel::<Vec<u8>>()?;
    /// rx.set_max_frame_len(1 << 20);
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.read.set_max_frame_len(max);
    }
}

impl<T: DeserializeOwned> Stream for Receiver<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        self.get_mut().read.poll_recv(cx)
    }
}

// Crossing a process boundary: a handle serializes as its descriptor (duplicated into
// the frame) and its frame limit. Buffered data cannot follow the descriptor, so a
// handle with unread or unsent bytes refuses to be sent rather than lose them.

struct HandleOut<'a> {
    fd: BorrowedFd<'a>,
    max_frame_len: usize,
}

struct FdOut<'a>(BorrowedFd<'a>);

impl Serialize for FdOut<'_> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        wire::serialize_fd(self.0, serializer)
    }
}

impl Serialize for HandleOut<'_> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        (FdOut(self.fd), self.max_frame_len as u64).serialize(serializer)
    }
}

#[derive(Deserialize)]
struct HandleIn(wire::PassFd, u64);

fn serialize_handle<Z: Serializer>(
    fd: BorrowedFd<'_>,
    max_frame_len: usize,
    buffered: bool,
    serializer: Z,
) -> Result<Z::Ok, Z::Error> {
    if buffered {
        return Err(Z::Error::custom(
            "cannot send a connection that has unread or unsent data buffered",
        ));
    }
    HandleOut { fd, max_frame_len }.serialize(serializer)
}

fn deserialize_handle<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<(Arc<SocketFd>, usize), D::Error> {
    let HandleIn(wire::PassFd(fd), max) = HandleIn::deserialize(deserializer)?;
    let sock = SocketFd::new(fd).map_err(D::Error::custom)?;
    Ok((sock, usize::try_from(max).unwrap_or(usize::MAX)))
}

impl<S, R> Serialize for Connection<S, R> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let buffered = self.read.has_buffered() || self.write.buffered() > 0;
        let fd = self.read.socket().fd();
        serialize_handle(fd, self.read.max_frame_len(), buffered, serializer)
    }
}

impl<'de, S, R> Deserialize<'de> for Connection<S, R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (sock, max) = deserialize_handle(deserializer)?;
        let mut conn = Connection {
            read: ReadHalf::new(sock.clone()),
            write: WriteHalf::new(sock),
            _types: PhantomData,
        };
        conn.set_max_frame_len(max);
        Ok(conn)
    }
}

impl<T> Serialize for Sender<T> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let fd = self.write.socket().fd();
        serialize_handle(
            fd,
            self.write.max_frame_len(),
            self.write.buffered() > 0,
            serializer,
        )
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (sock, max) = deserialize_handle(deserializer)?;
        let mut write = WriteHalf::new(sock);
        write.set_max_frame_len(max);
        Ok(Sender {
            write,
            _type: PhantomData,
        })
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let fd = self.read.socket().fd();
        serialize_handle(
            fd,
            self.read.max_frame_len(),
            self.read.has_buffered(),
            serializer,
        )
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (sock, max) = deserialize_handle(deserializer)?;
        let mut read = ReadHalf::new(sock);
        read.set_max_frame_len(max);
        Ok(Receiver {
            read,
            _type: PhantomData,
        })
    }
}

impl<S, R> AsFd for Connection<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.socket().fd()
    }
}
