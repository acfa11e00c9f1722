//! Our frames over any byte stream, through `tokio_util::codec`.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use super::wire::{self, HEADER_LEN};
use crate::error::{Error, Result};

/// The crate's wire format as a [`tokio_util::codec`] codec, for byte streams that
/// cannot carry descriptors: an external program's stdin and stdout, a TCP or SSH
/// connection, a file. Encodes `S`, decodes `R`.
///
/// The frames are the same as a [`Connection`](crate::Connection)'s; a frame that
/// announces descriptors is refused with [`Error::Protocol`], as is any value that would
/// need one. Lengths are checked against the maximum before any allocation.
///
/// ```
/// use futures::{SinkExt, StreamExt};
/// use multiprocess::{Command, FrameCodec};
/// use tokio_util::codec::{FramedRead, FramedWrite};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// // `cat` sends our frames back: a framed round trip over a program's stdio.
/// let mut cat = Command::new("cat")
///     .stdin(std::process::Stdio::piped())
///     .stdout(std::process::Stdio::piped())
///     .spawn()?;
/// let mut to_cat = FramedWrite::new(cat.take_stdin()?.unwrap(), FrameCodec::<String, ()>::new());
/// let mut from_cat = FramedRead::new(cat.take_stdout()?.unwrap(), FrameCodec::<(), String>::new());
/// to_cat.send("over stdio".to_string()).await?;
/// assert_eq!(from_cat.next().await.unwrap()?, "over stdio");
/// drop(to_cat);
/// cat.join().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FrameCodec<S, R> {
    max_frame_len: usize,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> FrameCodec<S, R> {
    /// A codec with the default maximum frame length (256 MiB).
    ///
    /// ```
    /// let codec = multiprocess::FrameCodec::<u32, u32>::new();
    /// ```
    pub fn new() -> Self {
        Self::with_max_frame_len(wire::DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec refusing frames longer than `max` bytes, in both directions.
    ///
    /// ```
    /// let codec = multiprocess::FrameCodec::<u32, u32>::with_max_frame_len(4096);
    /// ```
    pub fn with_max_frame_len(max: usize) -> Self {
        FrameCodec {
            max_frame_len: max,
            _types: PhantomData,
        }
    }
}

impl<S, R> Default for FrameCodec<S, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, R> Clone for FrameCodec<S, R> {
    fn clone(&self) -> Self {
        Self::with_max_frame_len(self.max_frame_len)
    }
}

impl<S: Serialize, R> Encoder<S> for FrameCodec<S, R> {
    type Error = Error;

    fn encode(&mut self, item: S, dst: &mut BytesMut) -> Result<()> {
        let mut frame = Vec::new();
        let fds = wire::encode_frame(&item, &mut frame, self.max_frame_len)?;
        if !fds.is_empty() {
            return Err(Error::Encode(
                "this stream cannot carry descriptors; use a Connection".into(),
            ));
        }
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

impl<S, R: DeserializeOwned> Decoder for FrameCodec<S, R> {
    type Item = R;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<R>> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = wire::read_header(&src[..HEADER_LEN], self.max_frame_len)?;
        if header.n_fds != 0 {
            return Err(Error::Protocol(
                "frame announces descriptors on a stream that cannot carry them".into(),
            ));
        }
        let total = HEADER_LEN + header.len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let value = wire::decode_payload(&src[HEADER_LEN..total], Vec::new());
        src.advance(total);
        value.map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<R>> {
        match self.decode(src)? {
            Some(value) => Ok(Some(value)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::Protocol(format!(
                "stream ended in the middle of a frame ({} bytes pending)",
                src.len()
            ))),
        }
    }
}
