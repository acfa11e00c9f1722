//! Entry points for fuzzing every decoder that reads bytes from another process.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

use crate::ipc::wire;
use crate::{Connection, FrameCodec};

/// A message type with most of serde's shapes in it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Sample {
    Unit,
    Number(u64, i32, f64),
    Text(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    List(Vec<Option<Sample>>),
    Map(BTreeMap<String, u16>),
}

/// The frame codec over a byte stream, whole and at its end.
pub fn frames(data: &[u8]) {
    let mut codec = FrameCodec::<(), Sample>::with_max_frame_len(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    let _ = codec.decode_eof(&mut buf);
}

/// A connection reading `data` from a real socket (buffering, framing, decoding).
pub fn connection(data: &[u8]) {
    let Some(mut conn) = connection_fed_with(data) else {
        return;
    };
    conn.set_max_frame_len(1 << 20);
    for _ in 0..10_000 {
        match conn.recv_blocking() {
            Ok(_) | Err(crate::Error::Decode(_)) => continue,
            Err(_) => break,
        }
    }
}

/// A connection whose peer wrote (at most the first 100,000 bytes of) `data`, all of
/// which the socket holds, and hung up.
fn connection_fed_with(data: &[u8]) -> Option<Connection<(), Sample>> {
    let (mut writer, reader) = UnixStream::pair().ok()?;
    let data = &data[..data.len().min(100_000)];
    writer.write_all(data).ok()?;
    drop(writer);
    Connection::from_fd(OwnedFd::from(reader)).ok()
}

/// A connection reading `data` as raw bytes frames, now and then as a typed message, so
/// that large frames read straight into the caller's buffer meet every other path.
pub fn connection_bytes(data: &[u8]) {
    let Some(mut conn) = connection_fed_with(data) else {
        return;
    };
    conn.set_max_frame_len(1 << 20);
    let mut buf = Vec::new();
    for round in 0..10_000 {
        let got = if round % 3 == 2 {
            conn.recv_blocking().map(drop)
        } else {
            conn.recv_bytes_into_blocking(&mut buf).map(drop)
        };
        match got {
            Ok(()) | Err(crate::Error::Decode(_)) => continue,
            Err(_) => break,
        }
    }
}

/// Every control message a process decodes from another: a child's start request,
/// a child's outcome, a pool's job and a worker's answer.
pub fn control(data: &[u8]) {
    let _ = wire::decode_payload::<crate::start::protocol::Start>(data, Vec::new());
    let _ = wire::decode_payload::<crate::start::protocol::Outcome<Sample>>(data, Vec::new());
    crate::pool::fuzz_decode(data);
}

/// The envelopes between a remote child's agent and its local stand-in.
pub fn envelope(data: &[u8]) {
    crate::remote::fuzz_envelopes(data);
}
