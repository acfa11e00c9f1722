//! Arguments and results of many types travel to a child and back.

mod common;

use std::collections::BTreeMap;

use multiprocess::{Process, spawn_process};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { r: f64 },
    Rect(u32, u32),
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scene {
    name: String,
    shapes: Vec<Shape>,
    tags: BTreeMap<String, i64>,
    parent: Option<Box<Scene>>,
}

fn describe(scene: Scene) -> (usize, String, Option<String>) {
    (
        scene.shapes.len(),
        scene.name.to_uppercase(),
        scene.parent.map(|p| p.name),
    )
}

fn identity<T>(value: T) -> T {
    value
}

fn checksum(bytes: serde_bytes::ByteBuf) -> (usize, u64) {
    (bytes.len(), bytes.iter().map(|b| *b as u64).sum())
}

fn make_big(len: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn nothing(_: ()) {}

fn fallible(n: i32) -> Result<i32, String> {
    if n >= 0 {
        Ok(n * 10)
    } else {
        Err(format!("{n} is negative"))
    }
}

async fn async_sum(v: Vec<u64>) -> u64 {
    tokio::task::yield_now().await;
    v.iter().sum()
}

#[tokio::test]
async fn scalars_strings_and_unit() {
    let leaks = common::LeakCheck::start().await;
    assert_eq!(
        spawn_process(identity::<u64>, u64::MAX)
            .unwrap()
            .join()
            .await
            .unwrap(),
        u64::MAX
    );
    assert_eq!(
        spawn_process(identity::<i8>, -5)
            .unwrap()
            .join()
            .await
            .unwrap(),
        -5
    );
    let pi = spawn_process(identity::<f64>, std::f64::consts::PI)
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(pi, std::f64::consts::PI);
    let s = spawn_process(identity::<String>, "héllo wörld".to_string()).unwrap();
    assert_eq!(s.await.unwrap(), "héllo wörld");
    spawn_process(nothing, ()).unwrap().join().await.unwrap();
    leaks.finish().await;
}

#[tokio::test]
async fn structs_enums_maps_and_options() {
    let leaks = common::LeakCheck::start().await;
    let scene = Scene {
        name: "outer".into(),
        shapes: vec![Shape::Circle { r: 1.5 }, Shape::Rect(2, 3), Shape::Empty],
        tags: [("a".to_string(), -1), ("b".to_string(), 2)].into(),
        parent: Some(Box::new(Scene {
            name: "root".into(),
            shapes: vec![],
            tags: BTreeMap::new(),
            parent: None,
        })),
    };
    let echoed = spawn_process(identity::<Scene>, scene.clone())
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(echoed, scene);
    let summary = spawn_process(describe, scene)
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(summary, (3, "OUTER".to_string(), Some("root".to_string())));
    assert_eq!(
        spawn_process(fallible, 4).unwrap().join().await.unwrap(),
        Ok(40)
    );
    assert_eq!(
        spawn_process(fallible, -1).unwrap().join().await.unwrap(),
        Err("-1 is negative".to_string())
    );
    leaks.finish().await;
}

#[tokio::test]
async fn large_argument_and_larger_result() {
    let leaks = common::LeakCheck::start().await;
    // Both far beyond a socket buffer: the argument is sent from a task, the result is
    // read while the parent waits for the exit.
    let big = make_big(8 << 20);
    let (len, sum) = spawn_process(checksum, big.clone())
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!((len, sum), (big.len(), big.iter().map(|b| *b as u64).sum()));
    let result = spawn_process(make_big, 16 << 20)
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(result, make_big(16 << 20));
    leaks.finish().await;
}

#[tokio::test]
async fn async_entry_point() {
    let leaks = common::LeakCheck::start().await;
    let mut child = Process::builder()
        .spawn_async(async_sum, vec![1, 2, 3, 4])
        .unwrap();
    assert_eq!(child.join().await.unwrap(), 10);
    leaks.finish().await;
}

#[test]
fn spawn_outside_a_runtime_and_join_inside_one() {
    let leaks = common::LeakCheck::start_blocking();
    let mut child = spawn_process(identity::<u32>, 9).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(child.join()).unwrap(), 9);
    drop((child, runtime));
    leaks.finish_blocking();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime() {
    let leaks = common::LeakCheck::start().await;
    let handles: Vec<_> = (0..16u32)
        .map(|i| tokio::spawn(async move { spawn_process(identity::<u32>, i).unwrap().await }))
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap().unwrap(), i as u32);
    }
    leaks.finish().await;
}
