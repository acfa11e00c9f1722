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

/// A connection reading `data` as raw bytes frames, now and then as a typed message, so
/// that large frames read straight into the caller's buffer meet every other path.
pub fn connection_bytes(data: &[u8]) {
    let Ok((writer, reader)) = UnixStream::pair() else {
        return;
    };
    let data = &data[..data.len().min(150_000)];
    // The socket may hold less than that: write from a thread while the reader reads.
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || {
        use nix::sys::socket::{MsgFlags, send};
        use std::os::fd::AsRawFd;
        // Not `write`: the reader may hang up first, and a fuzzing harness does not
        // ignore SIGPIPE.
        let mut rest = &data[..];
        while let Ok(n @ 1..) = send(writer.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            rest = &rest[n..];
        }
    });
    let Ok(mut conn) = Connection::<(), Sample>::from_fd(OwnedFd::from(reader)) else {
        let _ = feeder.join();
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
    drop(conn);
    let _ = feeder.join();
}

/// Every control message a process decodes from another: a child's start request,
/// a child's outcome, a pool's job and a worker's answer.
pub fn control(data: &[u8]) {
    let _ = wire::decode_payload::<crate::start::protocol::Start>(data, Vec::new());
    let _ = wire::decode_payload::<crate::start::protocol::Outcome<Sample>>(data, Vec::new());
    crate::pool::fuzz_decode(data);
}
