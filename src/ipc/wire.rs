//! The wire format: a fixed header, then a postcard payload.
//!
//! ```text
//! 0      4        5        6        8
//! +------+--------+--------+--------+------------------+
//! | len  | n_fds  | magic  |   0    | payload (len B)  |
//! +------+--------+--------+--------+------------------+
//! ```
//!
//! `len` is little-endian. `n_fds` descriptors travel as `SCM_RIGHTS` with the frame's
//! first bytes. The magic byte and the zero padding make garbage fail fast instead of
//! being read as an enormous length.
//!
//! Descriptors inside a value are serialized as indices into the frame's descriptor list;
//! a thread-local context collects them while encoding and hands them out while decoding,
//! which is how a [`Connection`](crate::Connection) inside a message reaches the other side.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys;

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 8;
const MAGIC: u8 = 0xA7;

/// The default largest payload a connection accepts: 256 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 << 20;

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) len: usize,
    pub(crate) n_fds: usize,
}

pub(crate) fn write_header(out: &mut [u8], len: usize, n_fds: usize) {
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4] = n_fds as u8;
    out[5] = MAGIC;
    out[6] = 0;
    out[7] = 0;
}

pub(crate) fn read_header(bytes: &[u8], max_len: usize) -> Result<Header> {
    if bytes[5] != MAGIC || bytes[6] != 0 || bytes[7] != 0 {
        return Err(Error::Protocol(format!(
            "bad frame header {:02x?}",
            &bytes[..HEADER_LEN]
        )));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len > max_len {
        return Err(Error::FrameTooLarge {
            len: len as u64,
            max: max_len,
        });
    }
    Ok(Header {
        len,
        n_fds: bytes[4] as usize,
    })
}

/// Appends one complete frame for `value` to `out` and returns the descriptors it
/// carries. On error `out` is left as it was.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    max_len: usize,
) -> Result<Vec<OwnedFd>> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let encoded = with_outgoing_fds(|| {
        postcard::serialize_with_flavor(value, VecFlavor(out)).map_err(|e| e.to_string())
    });
    let fail = |out: &mut Vec<u8>, err| {
        out.truncate(start);
        Err(err)
    };
    let fds = match encoded {
        Ok(fds) => fds,
        Err(err) => return fail(out, err),
    };
    let len = out.len() - start - HEADER_LEN;
    if len > max_len || len > u32::MAX as usize {
        return fail(
            out,
            Error::FrameTooLarge {
                len: len as u64,
                max: max_len,
            },
        );
    }
    if fds.len() > sys::MAX_FDS_PER_MESSAGE {
        let msg = format!(
            "a message may carry at most {} descriptors, this one has {}",
            sys::MAX_FDS_PER_MESSAGE,
            fds.len()
        );
        return fail(out, Error::Encode(msg));
    }
    write_header(&mut out[start..start + HEADER_LEN], len, fds.len());
    Ok(fds)
}

/// Encodes `value` on its own (no frame header), returning the bytes and the
/// descriptors it carries; for payloads nested inside another message.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut out = Vec::new();
    let fds = with_outgoing_fds(|| {
        postcard::serialize_with_flavor(value, VecFlavor(&mut out)).map_err(|e| e.to_string())
    })?;
    Ok((out, fds))
}

/// Serializes borrowed descriptors as a sequence, the way a `Vec<PassFd>` serializes.
pub(crate) struct FdsOut<'a>(pub(crate) &'a [OwnedFd]);

impl Serialize for FdsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for fd in self.0 {
            seq.serialize_element(&FdOut(fd.as_fd()))?;
        }
        seq.end()
    }
}

struct FdOut<'a>(BorrowedFd<'a>);

impl Serialize for FdOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, serializer)
    }
}

/// Decodes a payload, handing `fds` to any descriptor-carrying values inside it.
/// Descriptors the value does not claim are closed.
pub(crate) fn decode_payload<T: DeserializeOwned>(payload: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    with_incoming_fds(fds, || postcard::from_bytes(payload))
        .map_err(|e| Error::Decode(format!("{e} (as {})", std::any::type_name::<T>())))
}

/// A postcard output flavor appending to a borrowed vector, so frames are encoded
/// straight into a connection's write buffer.
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// Why a descriptor could not be duplicated into the message being encoded. The
    /// encoder keeps only that serialization failed ("Serde Serialization Error"), so
    /// the cause travels beside it.
    static DUP_FAILED: RefCell<Option<std::io::Error>> = const { RefCell::new(None) };
}

/// Runs `encode` collecting the descriptors it serializes. A descriptor that could not
/// be duplicated (out of descriptors) fails the encoding with that I/O error.
fn with_outgoing_fds(encode: impl FnOnce() -> Result<(), String>) -> Result<Vec<OwnedFd>> {
    let saved = OUTGOING.with(|slot| slot.replace(Some(Vec::new())));
    let result = encode();
    let fds = OUTGOING
        .with(|slot| slot.replace(saved))
        .unwrap_or_default();
    let dup_failed = DUP_FAILED.with(|slot| slot.take());
    match (result, dup_failed) {
        (Ok(()), _) => Ok(fds),
        (Err(_), Some(err)) => Err(Error::Io(err)),
        (Err(msg), None) => Err(Error::Encode(msg)),
    }
}

fn with_incoming_fds<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    let table = fds.into_iter().map(Some).collect();
    let saved = INCOMING.with(|slot| slot.replace(Some(table)));
    let result = decode();
    INCOMING.with(|slot| slot.replace(saved));
    result
}

/// Serializes a descriptor as an index into the frame being encoded. The descriptor is
/// duplicated, so the caller keeps its own copy until it drops it.
pub(crate) fn serialize_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = OUTGOING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(fds) = slot.as_mut() else {
            return Err(S::Error::custom(
                "descriptors can only be serialized by a multiprocess channel",
            ));
        };
        let dup = sys::dup_cloexec(fd, 3).map_err(|err| {
            let error = S::Error::custom(&err);
            DUP_FAILED.with(|slot| *slot.borrow_mut() = Some(err));
            error
        })?;
        fds.push(dup);
        Ok(fds.len() - 1)
    })?;
    (index as u32).serialize(serializer)
}

/// Takes the descriptor a frame carried at the serialized index.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    INCOMING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(fds) = slot.as_mut() else {
            return Err(D::Error::custom(
                "descriptors can only be deserialized by a multiprocess channel",
            ));
        };
        fds.get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| D::Error::custom(format!("frame has no descriptor #{index}")))
    })
}

/// Any file descriptor, sent to another process inside a message.
///
/// Serializing duplicates the descriptor into the frame (the sender keeps its own);
/// the receiver gets a fresh close-on-exec descriptor for the same open file.
///
/// ```
/// use multiprocess::PassFd;
/// use std::os::fd::OwnedFd;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let (mut tx, mut rx) = multiprocess::channel::<PassFd>()?;
/// let file = std::fs::File::open("/dev/null")?;
/// tx.send(PassFd(OwnedFd::from(file))).await?;
/// let PassFd(fd) = rx.recv().await?;
/// let _file = std::fs::File::from(fd);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PassFd(pub OwnedFd);

impl Serialize for PassFd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0.as_fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for PassFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fd(deserializer).map(PassFd)
    }
}
