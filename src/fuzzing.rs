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
    let Ok((mut writer, reader)) = UnixStream::pair() else {
        return;
    };
    let data = &data[..data.len().min(100_000)];
    if writer.write_all(data).is_err() {
        return;
    }
    drop(writer);
    let Ok(mut conn) = Connection::<(), Sample>::from_fd(OwnedFd::from(reader)) else {
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

/// Every control message a process decodes from another: a child's start request,
/// a child's outcome, a pool's job and a worker's answer.
pub fn control(data: &[u8]) {
    let _ = wire::decode_payload::<crate::start::protocol::Start>(data, Vec::new());
    let _ = wire::decode_payload::<crate::start::protocol::Outcome<Sample>>(data, Vec::new());
    crate::pool::fuzz_decode(data);
}
