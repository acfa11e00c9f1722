//! An axum server whose handlers await CPU-bound work in a process pool, while cheap
//! endpoints keep answering.
//!
//! Two settings keep clients that ask for endless work (`/fib/100` would run for
//! centuries) from jamming the server: a task timeout, and
//! `CancelRunning::KillWorker`, so that when a client hangs up (axum then drops its
//! handler, and with it the task's handle) the worker running its task is killed and
//! replaced at once instead of working on for nobody.
//!
//! ```text
//! cargo run --release --example axum_server            # serves on 127.0.0.1:3000
//! curl localhost:3000/fib/40                           # CPU work, in a worker process
//! curl localhost:3000/health                           # answers at once, however busy
//! curl localhost:3000/stats                            # the pool's counters
//! cargo run --release --example axum_server -- --demo  # saturate the pool, time /health
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use multiprocess::{CancelRunning, PoolBuilder, ProcessPool};

/// Deliberately slow: exponential time.
pub fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

async fn fib_handler(
    State(pool): State<Arc<ProcessPool>>,
    Path(n): Path<u64>,
) -> Result<String, (StatusCode, String)> {
    match pool.apply(fib, n).await {
        Ok(value) => Ok(format!("fib({n}) = {value}\n")),
        Err(err) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n"))),
    }
}

async fn stats_handler(State(pool): State<Arc<ProcessPool>>) -> String {
    format!("{:?}\n", pool.stats())
}

/// The pool settings a server needs: no task runs longer than a minute, and a task
/// whose client left is stopped.
pub fn pool_settings() -> PoolBuilder {
    ProcessPool::builder()
        .task_timeout(Duration::from_secs(60))
        .cancel_running(CancelRunning::KillWorker)
}

/// The application: `/fib/{n}` runs in the pool, `/health` and `/stats` in the server.
pub fn app(pool: Arc<ProcessPool>) -> Router {
    Router::new()
        .route("/fib/{n}", get(fib_handler))
        .route("/health", get(|| async { "ok\n" }))
        .route("/stats", get(stats_handler))
        .with_state(pool)
}

/// A minimal HTTP/1.1 GET over a fresh connection, returning status line and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// Saturates the pool with slow requests and times `/health` meanwhile.
async fn demo(addr: std::net::SocketAddr, pool: Arc<ProcessPool>) {
    let workers = pool.stats().workers;
    println!(
        "saturating {workers} workers with {} requests for fib(42)...",
        workers * 2
    );
    let slow: Vec<_> = (0..workers * 2)
        .map(|_| tokio::spawn(async move { http_get(addr, "/fib/42").await }))
        .collect();
    while pool.stats().busy < workers {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let (status, _) = http_get(addr, "/health").await.expect("health request");
        assert_eq!(status, 200);
        latencies.push(started.elapsed());
    }
    let busy = pool.stats();
    latencies.sort();
    println!(
        "/health while the pool was saturated ({busy:?}): median {:?}, p99 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1]
    );
    for request in slow {
        let (status, body) = request.await.unwrap().unwrap();
        println!("/fib/42 -> {status} {}", body.trim());
    }
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> multiprocess::Result<()> {
    let pool = Arc::new(pool_settings().build().await?);
    let demo_mode = std::env::args().any(|a| a == "--demo");
    let address = if demo_mode {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(address).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, app(pool.clone())).into_future());
    if demo_mode {
        demo(addr, pool.clone()).await;
        server.abort();
    } else {
        println!("listening on http://{addr} (try /fib/40, /health, /stats)");
        let _ = server.await;
    }
    pool.close().await;
    Ok(())
}
