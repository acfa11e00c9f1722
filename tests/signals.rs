//! terminate, signal and graceful shutdown.

mod common;

use std::time::Duration;

use multiprocess::{Connection, Error, Signal, spawn_process};

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// Ignores SIGTERM, says so, then sleeps: only SIGKILL can stop it.
fn ignores_sigterm(mut conn: Connection<String, ()>) {
    // SAFETY: installing SIG_IGN runs no handler code.
    unsafe {
        nix::sys::signal::signal(Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn).unwrap();
    }
    conn.send_blocking("ready".to_string()).unwrap();
    sleeps_forever(());
}

#[tokio::test]
async fn terminate_sends_sigterm() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(sleeps_forever, ()).unwrap();
    child.terminate().unwrap();
    let err = child.join().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signaled {
                signal: libc::SIGTERM,
                ..
            }
        ),
        "{err:?}"
    );
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn any_signal_can_be_sent() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(sleeps_forever, ()).unwrap();
    child.signal(Signal::SIGUSR1).unwrap();
    let err = child.join().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signaled {
                signal: libc::SIGUSR1,
                ..
            }
        ),
        "{err:?}"
    );
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn shutdown_stops_a_cooperative_child_with_sigterm() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(sleeps_forever, ()).unwrap();
    let status = child.shutdown(Duration::from_secs(30)).await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn shutdown_kills_a_child_that_ignores_sigterm() {
    let leaks = common::LeakCheck::start().await;
    let (mut conn, child_end) = multiprocess::pipe::<(), String>().unwrap();
    let mut child = spawn_process(ignores_sigterm, child_end).unwrap();
    assert_eq!(conn.recv().await.unwrap(), "ready");
    let status = child.shutdown(Duration::from_millis(200)).await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // Shutting down again reports the same exit without signalling anyone.
    assert_eq!(child.shutdown(Duration::ZERO).await.unwrap(), status);
    drop((child, conn));
    leaks.finish().await;
}
