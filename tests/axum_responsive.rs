//! The example server answers cheap requests while every pool worker is busy: CPU work
//! in the pool never blocks the server's runtime.

mod common;

#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod server;

use std::sync::Arc;

use std::time::Duration;

use multiprocess::ProcessPool;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn health_answers_while_the_pool_is_saturated() {
    let leaks = common::LeakCheck::start().await;
    let pool = Arc::new(ProcessPool::builder().workers(2).build().await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(axum::serve(listener, server::app(pool.clone())).into_future());

    // fib(60) takes far longer than this test: both workers stay busy throughout.
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(server::http_get(addr, "/fib/60")))
        .collect();
    common::eventually("pool saturated", || pool.stats().busy == 2).await;

    for _ in 0..50 {
        let (status, body) = server::http_get(addr, "/health").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    let (status, stats) = server::http_get(addr, "/stats").await.unwrap();
    assert_eq!(status, 200);
    // Still saturated after all those answers: they did not wait for the CPU work.
    let now = pool.stats();
    assert_eq!(now.busy, 2, "{now:?}");
    assert_eq!(now.completed, 0, "{now:?} / {stats}");

    // Ending the pool fails the slow requests with a clear error, not a hang.
    pool.terminate().await;
    for request in slow {
        let (status, body) = request.await.unwrap().unwrap();
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("pool is closed"), "{body}");
    }
    serving.abort();
    let _ = serving.await;
    drop(pool);
    leaks.finish().await;
}

/// Sends a request and returns the connection without reading the answer.
async fn ask(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn clients_that_hang_up_free_their_workers() {
    let leaks = common::LeakCheck::start().await;
    let pool = Arc::new(server::pool_settings().workers(2).build().await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(axum::serve(listener, server::app(pool.clone())).into_future());

    // fib(100) would outlast any timeout this test could wait for.
    let greedy = [ask(addr, "/fib/100").await, ask(addr, "/fib/100").await];
    common::eventually("both workers busy", || pool.stats().busy == 2).await;
    drop(greedy);

    let answered = tokio::time::timeout(Duration::from_secs(1), async {
        let health = server::http_get(addr, "/health").await.unwrap();
        let fib = server::http_get(addr, "/fib/10").await.unwrap();
        (health, fib)
    })
    .await
    .expect("the server answered within a second after the greedy clients left");
    assert_eq!(answered.0, (200, "ok\n".to_string()));
    assert_eq!(answered.1, (200, "fib(10) = 55\n".to_string()));

    serving.abort();
    let _ = serving.await;
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}
