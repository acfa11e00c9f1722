//! Producers and consumers in separate processes over a bounded queue, with a
//! semaphore limiting how many consumers use a scarce resource at once: the async
//! counterpart of the classic Python `multiprocessing` example.
//!
//! ```text
//! cargo run --release --example producer_consumer
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use multiprocess::{Queue, Semaphore, Value, spawn_process};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    producer: u32,
    number: u64,
}

/// A producer process: puts jobs, waiting whenever the queue is full.
fn producer((queue, id, count): (Queue<Job>, u32, u64)) -> u64 {
    for n in 0..count {
        queue
            .put_blocking(Job {
                producer: id,
                number: n * 1_000 + id as u64,
            })
            .unwrap();
    }
    count
}

/// A consumer process: takes jobs until the queue is closed. Each job needs one of the
/// few "licenses" (the semaphore) for a moment.
fn consumer(
    (queue, licenses, in_use, busiest): (Queue<Job>, Semaphore, Value<u32>, Value<u32>),
) -> (u32, u64) {
    let mut done = 0;
    while let Ok(job) = queue.get_blocking() {
        let _license = licenses.acquire_blocking().unwrap();
        let now = in_use.atomic().fetch_add(1, Ordering::SeqCst) + 1;
        busiest.atomic().fetch_max(now, Ordering::SeqCst);
        // The scarce resource is used for a moment per job.
        std::hint::black_box(job.number.wrapping_mul(job.producer as u64));
        std::thread::sleep(Duration::from_micros(200));
        in_use.atomic().fetch_sub(1, Ordering::SeqCst);
        done += 1;
    }
    (std::process::id(), done)
}

#[tokio::main]
async fn main() -> multiprocess::Result<()> {
    let started = Instant::now();
    let queue = Queue::<Job>::new(32)?;
    let licenses = Semaphore::new(2)?;
    let in_use = Value::new(0u32)?;
    let busiest = Value::new(0u32)?;

    let producers: Vec<_> = (0..2)
        .map(|id| spawn_process(producer, (queue.clone(), id, 500)))
        .collect::<Result<_, _>>()?;
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            spawn_process(
                consumer,
                (
                    queue.clone(),
                    licenses.clone(),
                    in_use.clone(),
                    busiest.clone(),
                ),
            )
        })
        .collect::<Result<_, _>>()?;
    println!(
        "2 producers and 4 consumers started; the queue holds at most {} jobs",
        queue.capacity()
    );

    let mut produced = 0;
    for p in producers {
        produced += p.await?;
    }
    println!("producers done: {produced} jobs put");
    queue.close();

    let mut consumed = 0;
    for c in consumers {
        let (pid, done) = c.await?;
        println!("consumer {pid} processed {done} jobs");
        consumed += done;
    }
    println!(
        "{consumed} of {produced} jobs processed in {:?}; at most {} consumers held a license at once (limit {})",
        started.elapsed(),
        busiest.get(),
        2
    );
    assert_eq!(consumed, produced);
    Ok(())
}
