//! The frame codec over plain byte streams, including an external program's stdio.

mod common;

use futures::{SinkExt, StreamExt};
use multiprocess::{Command, Error, FrameCodec};
use tokio_util::codec::{FramedRead, FramedWrite};

#[tokio::test]
async fn many_frames_through_an_external_program() {
    let leaks = common::LeakCheck::start().await;
    let mut cat = Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut tx = FramedWrite::new(
        cat.take_stdin().unwrap().unwrap(),
        FrameCodec::<Vec<u32>, ()>::new(),
    );
    let rx = FramedRead::new(
        cat.take_stdout().unwrap().unwrap(),
        FrameCodec::<(), Vec<u32>>::new(),
    );
    let sender = tokio::spawn(async move {
        for i in 0..2000u32 {
            tx.send((0..i % 100).collect()).await.unwrap();
        }
    });
    let received: Vec<Vec<u32>> = rx.map(|r| r.unwrap()).collect().await;
    sender.await.unwrap();
    assert_eq!(received.len(), 2000);
    for (i, v) in received.iter().enumerate() {
        assert_eq!(*v, (0..i as u32 % 100).collect::<Vec<_>>());
    }
    cat.join().await.unwrap();
    drop(cat);
    leaks.finish().await;
}

async fn decode_all(bytes: Vec<u8>, max: usize) -> Vec<Result<String, Error>> {
    let codec = FrameCodec::<(), String>::with_max_frame_len(max);
    FramedRead::new(&bytes[..], codec).collect().await
}

#[tokio::test]
async fn hostile_streams_give_errors() {
    let mut oversized = 1_000_000u32.to_le_bytes().to_vec();
    oversized.extend([0, 0xA7, 0, 0]);
    let out = decode_all(oversized, 1000).await;
    assert!(matches!(
        out[0],
        Err(Error::FrameTooLarge {
            len: 1_000_000,
            max: 1000
        })
    ));

    let mut with_fds = 1u32.to_le_bytes().to_vec();
    with_fds.extend([1, 0xA7, 0, 0, 0]);
    assert!(matches!(
        decode_all(with_fds, 1000).await[0],
        Err(Error::Protocol(_))
    ));

    let mut truncated = 10u32.to_le_bytes().to_vec();
    truncated.extend([0, 0xA7, 0, 0, 1, 2, 3]);
    assert!(matches!(
        decode_all(truncated, 1000).await[0],
        Err(Error::Protocol(_))
    ));

    assert!(matches!(
        decode_all(b"garbage!".to_vec(), 1000).await[0],
        Err(Error::Protocol(_))
    ));
}
