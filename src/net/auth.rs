//! The authkey and the mutual HMAC-SHA256 challenge–response run on every connection by
//! address before any frame is read from it.
//!
//! ```text
//! listener -> client   MAGIC | Ns                       (40 bytes)
//! client   -> listener MAGIC | Nc | HMAC(K, "client" | Ns | Nc)   (72 bytes)
//! listener -> client   ACCEPT | HMAC(K, "listener" | Ns | Nc)     (33 bytes), or REFUSE
//! client   -> listener ACCEPT, or REFUSE                (1 byte)
//! ```
//!
//! Both sides pick a fresh 32-byte random nonce, so neither proof can be replayed, and
//! each proof is labelled with the side that makes it, so a peer cannot get one side's
//! proof by reflecting the other's challenge back. Every read is of a fixed, small
//! length: a listener reads at most [`MAX_PREAUTH_READ`] bytes from a peer that has not
//! proved it holds the key.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

pub(crate) const MAGIC: &[u8; 8] = b"mpauth1\n";
/// What a TLS listener sends first, in place of its challenge (padded with zeros to the
/// challenge's length), so that a client without TLS knows it for what it is.
pub(crate) const TLS_MAGIC: &[u8; 8] = b"mptls01\n";
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const ACCEPT: u8 = 1;
const REFUSE: u8 = 0;
pub(crate) const CHALLENGE_LEN: usize = MAGIC.len() + NONCE_LEN;
const RESPONSE_LEN: usize = MAGIC.len() + NONCE_LEN + MAC_LEN;
const VERDICT_LEN: usize = 1 + MAC_LEN;

/// The most a listener reads from a peer before the peer has proved it holds the key.
pub(crate) const MAX_PREAUTH_READ: usize = RESPONSE_LEN + 1;
// "A few dozen bytes", as the listener's documentation promises.
const _: () = assert!(MAX_PREAUTH_READ < 100);

/// The shared secret of a [`Listener`](crate::Listener) and its
/// [`Client`](crate::Client)s, like Python's `authkey`.
///
/// Both sides prove they hold it without sending it: see the crate's Security notes for
/// what it protects and what it does not. Use a long random key
/// ([`AuthKey::random`]) rather than a password; pass it to other hosts as
/// [`to_hex`](AuthKey::to_hex) through a file or the environment, never on a command line
/// (other users of a host can read those). `Debug` never shows the key.
///
/// ```
/// use multiprocess::AuthKey;
///
/// let key = AuthKey::random()?;
/// assert_eq!(key.as_bytes().len(), 32);
/// let again = AuthKey::from_hex(&key.to_hex())?;
/// assert_eq!(again.as_bytes(), key.as_bytes());
/// assert_eq!(format!("{key:?}"), "AuthKey(..)");
/// let simple = AuthKey::from("a shared secret");
/// # Ok::<(), multiprocess::Error>(())
/// ```
#[derive(Clone)]
pub struct AuthKey(Arc<[u8]>);

impl AuthKey {
    /// A new key of 32 bytes from the operating system's random source, as Python gives
    /// each process (`os.urandom(32)`).
    ///
    /// ```
    /// let a = multiprocess::AuthKey::random()?;
    /// let b = multiprocess::AuthKey::random()?;
    /// assert_ne!(a.as_bytes(), b.as_bytes());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn random() -> Result<AuthKey> {
        Ok(AuthKey(Arc::from(random_bytes::<32>()?.as_slice())))
    }

    /// The key's bytes.
    ///
    /// ```
    /// assert_eq!(multiprocess::AuthKey::from("k").as_bytes(), b"k");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as lowercase hexadecimal, for a key file or an environment variable.
    ///
    /// ```
    /// assert_eq!(multiprocess::AuthKey::from(&[0xab, 0x01][..]).to_hex(), "ab01");
    /// ```
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a key written by [`to_hex`](AuthKey::to_hex) (surrounding whitespace, such
    /// as a key file's final newline, is ignored). `Err(InvalidArgument)` for anything
    /// else.
    ///
    /// ```
    /// let key = multiprocess::AuthKey::from_hex("ab01\n")?;
    /// assert_eq!(key.as_bytes(), [0xab, 0x01]);
    /// assert!(multiprocess::AuthKey::from_hex("xyz").is_err());
    /// # Ok::<(), multiprocess::Error>(())
    /// ```
    pub fn from_hex(hex: &str) -> Result<AuthKey> {
        let hex = hex.trim();
        let invalid =
            || Error::InvalidArgument("an authkey in hex has an even number of hex digits".into());
        if hex.len() % 2 != 0 || !hex.is_ascii() {
            return Err(invalid());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| invalid()))
            .collect::<Result<Vec<u8>>>()?;
        Ok(AuthKey(Arc::from(bytes)))
    }

    /// The key, refused if it is empty (an empty key would authenticate anyone).
    pub(crate) fn checked(&self) -> Result<&AuthKey> {
        if self.0.is_empty() {
            return Err(Error::InvalidArgument("the authkey is empty".into()));
        }
        Ok(self)
    }

    fn mac(&self, label: &[u8], ours: &[u8; NONCE_LEN], theirs: &[u8; NONCE_LEN]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(ours);
        mac.update(theirs);
        mac
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

impl From<&[u8]> for AuthKey {
    fn from(bytes: &[u8]) -> AuthKey {
        AuthKey(Arc::from(bytes))
    }
}

impl From<Vec<u8>> for AuthKey {
    fn from(bytes: Vec<u8>) -> AuthKey {
        AuthKey(Arc::from(bytes))
    }
}

impl From<&str> for AuthKey {
    fn from(text: &str) -> AuthKey {
        AuthKey::from(text.as_bytes())
    }
}

impl From<String> for AuthKey {
    fn from(text: String) -> AuthKey {
        AuthKey::from(text.into_bytes())
    }
}

impl From<&AuthKey> for AuthKey {
    fn from(key: &AuthKey) -> AuthKey {
        key.clone()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::Io(io::Error::other(format!(
            "no random bytes from the OS: {e}"
        )))
    })?;
    Ok(bytes)
}

const CLIENT_LABEL: &[u8] = b"multiprocess client proof";
const LISTENER_LABEL: &[u8] = b"multiprocess listener proof";

/// Why a listener turned a peer away, and whether the peer should be told.
pub(crate) struct Rejection {
    pub(crate) error: Error,
    /// The peer speaks the protocol and gets a REFUSE byte before the connection closes.
    tell: bool,
}

impl Rejection {
    fn silent(error: Error) -> Rejection {
        Rejection { error, tell: false }
    }

    /// Tells a peer that speaks the protocol that its proof was refused, so that it
    /// reports the authkeys differ rather than a lost connection. The peer may be gone
    /// already; the rejection stands either way.
    pub(crate) async fn tell<T: AsyncWrite + Unpin>(&self, stream: &mut T) {
        if self.tell {
            let _ = stream.write_all(&[REFUSE]).await;
        }
    }
}

impl From<io::Error> for Rejection {
    fn from(e: io::Error) -> Rejection {
        Rejection::silent(handshake_io_error(e))
    }
}

pub(crate) fn handshake_io_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => {
            Error::Authentication("the peer closed the connection during the handshake".into())
        }
        _ => Error::Io(e),
    }
}

/// The listener's half: its challenge, then the check of the client's proof.
struct ListenerSide<'k> {
    key: &'k AuthKey,
    nonce: [u8; NONCE_LEN],
}

impl<'k> ListenerSide<'k> {
    fn new(key: &'k AuthKey) -> Result<Self> {
        Ok(ListenerSide {
            key,
            nonce: random_bytes()?,
        })
    }

    fn challenge(&self) -> [u8; CHALLENGE_LEN] {
        let mut out = [0; CHALLENGE_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        out[MAGIC.len()..].copy_from_slice(&self.nonce);
        out
    }

    /// Checks the client's proof; on success, the verdict with our own proof.
    fn verdict(&self, response: &[u8; RESPONSE_LEN]) -> Result<[u8; VERDICT_LEN], Rejection> {
        let (magic, rest) = response.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(Rejection::silent(Error::Authentication(
                "the peer does not speak this crate's handshake".into(),
            )));
        }
        let (client_nonce, proof) = rest.split_at(NONCE_LEN);
        let client_nonce: &[u8; NONCE_LEN] = client_nonce.try_into().expect("split at NONCE_LEN");
        let expected = self.key.mac(CLIENT_LABEL, &self.nonce, client_nonce);
        // `verify_slice` compares in constant time.
        if expected.verify_slice(proof).is_err() {
            return Err(Rejection {
                error: Error::Authentication(
                    "the client's proof does not match our authkey".into(),
                ),
                tell: true,
            });
        }
        let mut out = [0; VERDICT_LEN];
        out[0] = ACCEPT;
        let ours = self.key.mac(LISTENER_LABEL, &self.nonce, client_nonce);
        out[1..].copy_from_slice(&ours.finalize().into_bytes());
        Ok(out)
    }
}

/// The client's half: its proof for the listener's challenge, then the check of the
/// listener's proof.
struct ClientSide<'k> {
    key: &'k AuthKey,
    listener_nonce: [u8; NONCE_LEN],
    nonce: [u8; NONCE_LEN],
}

impl<'k> ClientSide<'k> {
    fn respond(
        key: &'k AuthKey,
        challenge: &[u8; CHALLENGE_LEN],
    ) -> Result<(Self, [u8; RESPONSE_LEN])> {
        let (magic, listener_nonce) = challenge.split_at(MAGIC.len());
        if magic == TLS_MAGIC {
            return Err(Error::Tls(
                "the listener requires TLS, and this client has no TLS configuration".into(),
            ));
        }
        if magic != MAGIC {
            return Err(Error::Authentication(
                "the peer is not a multiprocess listener (unexpected greeting)".into(),
            ));
        }
        let side = ClientSide {
            key,
            listener_nonce: listener_nonce.try_into().expect("split at MAGIC"),
            nonce: random_bytes()?,
        };
        let mut out = [0; RESPONSE_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        out[MAGIC.len()..MAGIC.len() + NONCE_LEN].copy_from_slice(&side.nonce);
        let proof = key.mac(CLIENT_LABEL, &side.listener_nonce, &side.nonce);
        out[MAGIC.len() + NONCE_LEN..].copy_from_slice(&proof.finalize().into_bytes());
        Ok((side, out))
    }

    fn check(&self, verdict: &[u8; VERDICT_LEN]) -> Result<()> {
        if verdict[0] != ACCEPT {
            return Err(Error::Authentication(
                "the listener refused our proof: the authkeys differ".into(),
            ));
        }
        let expected = self
            .key
            .mac(LISTENER_LABEL, &self.listener_nonce, &self.nonce);
        expected.verify_slice(&verdict[1..]).map_err(|_| {
            Error::Authentication("the listener's proof does not match our authkey".into())
        })
    }
}

/// Runs the listener's side of the handshake. The caller bounds it in time.
pub(crate) async fn listener_handshake<T>(stream: &mut T, key: &AuthKey) -> Result<(), Rejection>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let side = ListenerSide::new(key).map_err(Rejection::silent)?;
    stream.write_all(&side.challenge()).await?;
    let mut response = [0; RESPONSE_LEN];
    stream.read_exact(&mut response).await?;
    let verdict = side.verdict(&response)?;
    stream.write_all(&verdict).await?;
    let mut answer = [0; 1];
    stream.read_exact(&mut answer).await?;
    if answer[0] != ACCEPT {
        return Err(Rejection::silent(Error::Authentication(
            "the client refused our proof: the authkeys differ".into(),
        )));
    }
    Ok(())
}

/// Runs the client's side of the handshake. The caller bounds it in time.
pub(crate) async fn client_handshake<T>(stream: &mut T, key: &AuthKey) -> Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let io = handshake_io_error;
    let mut challenge = [0; CHALLENGE_LEN];
    stream.read_exact(&mut challenge).await.map_err(io)?;
    let (side, response) = ClientSide::respond(key, &challenge)?;
    stream.write_all(&response).await.map_err(io)?;
    let mut verdict = [0; VERDICT_LEN];
    read_verdict(stream, &mut verdict).await?;
    match side.check(&verdict) {
        Ok(()) => stream.write_all(&[ACCEPT]).await.map_err(io),
        Err(e) => {
            if verdict[0] == ACCEPT {
                // Tell a listener whose proof failed; it may be gone, the error stands.
                let _ = stream.write_all(&[REFUSE]).await;
            }
            Err(e)
        }
    }
}

/// Reads the listener's verdict; a refusal is one byte followed by the end of the
/// connection, so it is recognised from its first byte.
async fn read_verdict<T: AsyncRead + Unpin>(
    stream: &mut T,
    verdict: &mut [u8; VERDICT_LEN],
) -> Result<()> {
    stream
        .read_exact(&mut verdict[..1])
        .await
        .map_err(handshake_io_error)?;
    if verdict[0] != ACCEPT {
        return Ok(());
    }
    stream
        .read_exact(&mut verdict[1..])
        .await
        .map_err(handshake_io_error)?;
    Ok(())
}

/// A blocking stream whose reads and writes can be given a time limit.
pub(crate) trait TimedStream: Read + Write {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedStream for std::net::TcpStream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

impl TimedStream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

/// A blocking stream with one deadline over all its reads and writes, so that a peer
/// trickling bytes cannot stretch the handshake.
struct Deadlined<'s, T: TimedStream> {
    stream: &'s mut T,
    deadline: Instant,
    timeout: Duration,
}

impl<T: TimedStream> Deadlined<'_, T> {
    fn arm(&self) -> Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                after: self.timeout,
            });
        }
        self.stream.set_timeouts(Some(left))?;
        Ok(())
    }

    fn fail(&self, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
                after: self.timeout,
            },
            _ => handshake_io_error(e),
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            self.arm()?;
            match self.stream.read(buf) {
                Ok(0) => return Err(self.fail(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            self.arm()?;
            match self.stream.write(buf) {
                Ok(0) => return Err(self.fail(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }
}

/// [`client_handshake`] on a blocking stream, all of it within `timeout`; the stream's
/// own timeouts are cleared afterwards.
pub(crate) fn client_handshake_blocking<T: TimedStream>(
    stream: &mut T,
    key: &AuthKey,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let mut io = Deadlined {
        stream,
        deadline,
        timeout,
    };
    let mut challenge = [0; CHALLENGE_LEN];
    io.read_exact(&mut challenge)?;
    let (side, response) = ClientSide::respond(key, &challenge)?;
    io.write_all(&response)?;
    let mut verdict = [0; VERDICT_LEN];
    io.read_exact(&mut verdict[..1])?;
    if verdict[0] == ACCEPT {
        io.read_exact(&mut verdict[1..])?;
    }
    if let Err(e) = side.check(&verdict) {
        if verdict[0] == ACCEPT {
            let _ = io.write_all(&[REFUSE]);
        }
        return Err(e);
    }
    io.write_all(&[ACCEPT])?;
    io.stream.set_timeouts(None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs both sides over an in-memory duplex stream.
    async fn run(
        listener_key: &AuthKey,
        client_key: &AuthKey,
    ) -> (Result<(), Rejection>, Result<()>) {
        let (mut a, mut b) = tokio::io::duplex(256);
        // As the listener does: tell a refused peer, then close.
        let listener = async {
            let result = listener_handshake(&mut a, listener_key).await;
            if let Err(rejection) = &result {
                rejection.tell(&mut a).await;
            }
            drop(a);
            result
        };
        let client = async {
            let result = client_handshake(&mut b, client_key).await;
            drop(b);
            result
        };
        tokio::join!(listener, client)
    }

    #[tokio::test]
    async fn same_key_authenticates_both_ways() {
        let key = AuthKey::from("k");
        let (listener, client) = run(&key, &key).await;
        assert!(listener.is_ok());
        client.unwrap();
    }

    #[tokio::test]
    async fn different_keys_fail_on_both_sides() {
        let (listener, client) = run(&AuthKey::from("k1"), &AuthKey::from("k2")).await;
        let rejection = listener.err().unwrap();
        assert!(rejection.tell);
        assert!(matches!(rejection.error, Error::Authentication(_)));
        assert!(matches!(client, Err(Error::Authentication(_))));
    }

    /// A stream that counts what is read from it.
    struct Counting<T> {
        inner: T,
        read: usize,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let before = buf.filled().len();
            let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
            self.read += buf.filled().len() - before;
            polled
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_listener_reads_a_bounded_prefix_of_a_flood() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut listener = Counting { inner: a, read: 0 };
        // A peer that answers the challenge with a megabyte of the right magic.
        let flood = MAGIC
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect::<Vec<u8>>();
        let peer = tokio::spawn(async move {
            let _ = b.write_all(&flood).await;
            b
        });
        let rejection = listener_handshake(&mut listener, &AuthKey::from("k")).await;
        assert!(matches!(
            rejection.err().unwrap().error,
            Error::Authentication(_)
        ));
        assert!(listener.read <= MAX_PREAUTH_READ, "read {}", listener.read);
        drop(listener);
        drop(peer.await.unwrap());
    }

    #[tokio::test]
    async fn a_successful_handshake_reads_exactly_the_bound() {
        let key = AuthKey::from("k");
        let (a, mut b) = tokio::io::duplex(4096);
        let mut listener = Counting { inner: a, read: 0 };
        let (listened, connected) = tokio::join!(
            listener_handshake(&mut listener, &key),
            client_handshake(&mut b, &key)
        );
        assert!(listened.is_ok());
        connected.unwrap();
        assert_eq!(listener.read, MAX_PREAUTH_READ);
    }

    #[test]
    fn a_reflected_client_proof_is_not_a_listener_proof() {
        let key = AuthKey::from("k");
        let side = ListenerSide::new(&key).unwrap();
        let (client, response) = ClientSide::respond(&key, &side.challenge()).unwrap();
        // A peer echoing the client's own proof as the listener's must be refused.
        let mut forged = [0; VERDICT_LEN];
        forged[0] = ACCEPT;
        forged[1..].copy_from_slice(&response[MAGIC.len() + NONCE_LEN..]);
        assert!(client.check(&forged).is_err());
        let genuine = side.verdict(&response).ok().unwrap();
        client.check(&genuine).unwrap();
    }

    #[test]
    fn hex_round_trip_and_garbage() {
        let key = AuthKey::random().unwrap();
        assert_eq!(
            AuthKey::from_hex(&key.to_hex()).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert!(AuthKey::from_hex("abc").is_err());
        assert!(AuthKey::from_hex("zz").is_err());
        assert!(AuthKey::from_hex("é1").is_err());
        assert!(AuthKey::from("").checked().is_err());
    }
}
