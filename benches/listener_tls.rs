//! The cost of TLS on a connection by address: a child connects back to a listener on
//! loopback and echoes, plain TCP beside TLS (the relay and the encryption), same
//! process pair, same runtime, same message sizes.
//!
//! ```text
//! cargo bench --features tls --bench listener_tls
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use multiprocess::{Address, AuthKey, Client, Connection, Listener, Process, spawn_process};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_bytes::ByteBuf;

/// Address, key (hex), and the certificate to trust (DER) when TLS is on.
type Route = (Address, String, Option<Vec<u8>>);

/// Child side: connects back and echoes until hung up.
fn echo((address, key, cert): Route) {
    let key = AuthKey::from_hex(&key).unwrap();
    let mut client = Client::new(address, key);
    if let Some(cert) = cert {
        client = client.tls(trusting(cert), "localhost");
    }
    let mut conn: Connection<ByteBuf, ByteBuf> = client.connect_blocking().unwrap();
    while let Ok(msg) = conn.recv_blocking() {
        if conn.send_blocking(msg).is_err() {
            break;
        }
    }
}

fn trusting(cert: Vec<u8>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert)).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A listener (with TLS when `tls`), a child connected to it, and the parent's end.
async fn connected(tls: bool) -> (Connection<ByteBuf, ByteBuf>, Process<()>, Listener) {
    let key = AuthKey::random().unwrap();
    let mut builder = Listener::builder().authkey(&key);
    let mut cert = None;
    if tls {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![certified.cert.der().clone()],
                PrivateKeyDer::Pkcs8(der),
            )
            .unwrap();
        builder = builder.tls(config);
        cert = Some(certified.cert.der().to_vec());
    }
    let listener = builder.bind().await.unwrap();
    let child = spawn_process(echo, (listener.address().clone(), key.to_hex(), cert)).unwrap();
    let conn = listener.accept().await.unwrap();
    (conn, child, listener)
}

fn bench_roundtrip(c: &mut Criterion, runtime: &tokio::runtime::Runtime, size: usize) {
    let mut group = c.benchmark_group(format!("listener_roundtrip_{size}B"));
    group.measurement_time(Duration::from_secs(5));
    if size >= 4096 {
        group.throughput(Throughput::Bytes(2 * size as u64));
    }
    for (name, tls) in [("tcp", false), ("tls", true)] {
        let (mut conn, mut child, listener) = runtime.block_on(connected(tls));
        let msg = ByteBuf::from(vec![7u8; size]);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        conn.send(msg.clone()).await.unwrap();
                        conn.recv().await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
        drop(conn);
        runtime.block_on(child.join()).unwrap();
        drop(listener);
    }
    group.finish();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    bench_roundtrip(&mut c, &runtime, 64);
    bench_roundtrip(&mut c, &runtime, 64 << 10);
    c.final_summary();
}
