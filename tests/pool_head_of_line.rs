//! An idle worker never waits while a task that has not started sits in another
//! worker's window: it takes that task back.

mod common;

use std::time::Duration;

use multiprocess::{ProcessPool, Value};

/// Runs until bit `bit` of `gate` is set.
fn held(args: (Value<u32>, u32)) -> u32 {
    let (gate, bit) = args;
    while gate.get() & (1 << bit) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    bit
}

fn quick(x: u32) -> u32 {
    x + 1
}

#[tokio::test]
async fn an_idle_worker_takes_back_a_task_waiting_behind_a_long_one() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(3).build().await.unwrap();
    let gate = Value::new(0u32).unwrap();
    let long: Vec<_> = (0..3)
        .map(|bit| pool.submit(held, (gate.clone(), bit)))
        .collect();
    common::eventually("three workers busy", || pool.stats().busy == 3).await;
    // Every worker runs a long task; this one waits in a window behind one of them.
    let waiting = pool.submit(quick, 1);
    common::eventually("the task in a window", || pool.stats().queued == 0).await;
    // The last worker (the one the waiting task is not behind, on a fresh pool) frees up.
    gate.update(|g| *g |= 1 << 2);
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("an idle worker took the task back while the long ones ran");
    assert_eq!(answer.unwrap(), 2);
    gate.update(|g| *g |= 0b011);
    for (bit, task) in long.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), bit as u32);
    }
    pool.close().await;
    drop((pool, gate));
    leaks.finish().await;
}
