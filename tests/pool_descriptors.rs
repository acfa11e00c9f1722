//! Pool tasks return handles that carry descriptors (queues, connections, shared
//! memory) as a spawned child does, and an initializer's argument can carry them too.

mod common;

use futures::TryStreamExt;
use multiprocess::{Connection, ProcessPool, Queue, SharedMemory, Value};

fn make_queue(first: u32) -> Queue<u32> {
    let queue = Queue::new(4).unwrap();
    queue.put_blocking(first).unwrap();
    queue
}

fn make_connection(first: u32) -> Connection<u32, u32> {
    let (ours, mut theirs) = multiprocess::pipe::<u32, u32>().unwrap();
    theirs.send_blocking(first).unwrap();
    ours
}

fn make_memory(fill: u8) -> SharedMemory {
    let memory = SharedMemory::new(16).unwrap();
    memory.write(0, &[fill; 16]);
    memory
}

fn count_start(started: Value<u32>) {
    started.update(|n| *n += 1);
}

fn pid_of(_: ()) -> u32 {
    std::process::id()
}

#[tokio::test]
async fn a_task_returns_a_queue_a_connection_and_shared_memory() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();

    let queue = pool.apply(make_queue, 11).await.unwrap();
    assert_eq!(queue.get().await.unwrap(), 11);
    queue.put(12).await.unwrap();
    assert_eq!(queue.get().await.unwrap(), 12);

    let mut connection = pool.apply(make_connection, 21).await.unwrap();
    assert_eq!(connection.recv().await.unwrap(), 21);

    let memory = pool.apply(make_memory, 7).await.unwrap();
    let mut bytes = [0u8; 16];
    memory.read(0, &mut bytes);
    assert_eq!(bytes, [7; 16]);

    pool.close().await;
    drop((pool, queue, connection, memory));
    leaks.finish().await;
}

#[tokio::test]
async fn map_returns_shared_memory_for_every_input() {
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder().workers(2).build().await.unwrap();
    let memories: Vec<SharedMemory> = pool.map(make_memory, 0..20u8).try_collect().await.unwrap();
    for (fill, memory) in memories.iter().enumerate() {
        let mut bytes = [0u8; 16];
        memory.read(0, &mut bytes);
        assert_eq!(bytes, [fill as u8; 16]);
    }
    pool.close().await;
    drop((pool, memories));
    leaks.finish().await;
}

#[tokio::test]
async fn an_initializer_argument_carries_shared_memory() {
    let leaks = common::LeakCheck::start().await;
    let started = Value::new(0u32).unwrap();
    let pool = ProcessPool::builder()
        .workers(2)
        .max_tasks_per_worker(1)
        .initializer(count_start, started.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(started.get(), 2);
    // A replacement worker runs the initializer with its own copy of the handle.
    pool.apply(pid_of, ()).await.unwrap();
    common::eventually("the replacement initialised", || started.get() == 3).await;
    pool.close().await;
    drop((pool, started));
    leaks.finish().await;
}
