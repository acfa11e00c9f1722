//! A child that fails in every way a process can comes back as the matching error.

mod common;

use std::time::Duration;

use multiprocess::{Error, spawn_process};

fn panics(n: u32) -> u32 {
    if n > 0 {
        panic!("boom {n}");
    }
    n
}

fn panics_with_a_caught_panic_first(_: ()) -> String {
    let caught = std::panic::catch_unwind(|| panic!("handled inside"));
    assert!(caught.is_err());
    "survived".to_string()
}

fn aborts(_: ()) {
    std::process::abort();
}

fn segfaults(_: ()) {
    // SAFETY: none; this deliberately writes through a null pointer to die of SIGSEGV.
    unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
}

fn exits(code: i32) {
    std::process::exit(code);
}

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

#[tokio::test]
async fn a_panic_comes_back_with_its_message_and_location() {
    let leaks = common::LeakCheck::start().await;
    let err = spawn_process(panics, 7).unwrap().join().await.unwrap_err();
    match err {
        Error::Panicked {
            message, location, ..
        } => {
            assert_eq!(message, "boom 7");
            assert!(location.unwrap().contains("failures.rs"));
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    leaks.finish().await;
}

#[tokio::test]
async fn a_panic_caught_inside_the_child_is_no_failure() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(panics_with_a_caught_panic_first, ()).unwrap();
    assert_eq!(child.join().await.unwrap(), "survived");
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn abort_is_sigabrt() {
    let leaks = common::LeakCheck::start().await;
    let err = spawn_process(aborts, ()).unwrap().join().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signaled {
                signal: libc::SIGABRT,
                ..
            }
        ),
        "{err:?}"
    );
    leaks.finish().await;
}

#[tokio::test]
async fn segfault_is_sigsegv() {
    let leaks = common::LeakCheck::start().await;
    let err = spawn_process(segfaults, ())
        .unwrap()
        .join()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signaled {
                signal: libc::SIGSEGV,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("SIGSEGV"), "{err}");
    leaks.finish().await;
}

#[tokio::test]
async fn exit_code_is_reported() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(exits, 3).unwrap();
    let err = child.join().await.unwrap_err();
    assert!(matches!(err, Error::Exited { code: 3 }), "{err:?}");
    assert_eq!(child.exit_status().unwrap().code(), Some(3));
    drop(child);
    let err = spawn_process(exits, 0).unwrap().join().await.unwrap_err();
    assert!(
        matches!(err, Error::Exited { code: 0 }),
        "exit(0) without a result: {err:?}"
    );
    leaks.finish().await;
}

#[tokio::test]
async fn timeout_then_kill() {
    let leaks = common::LeakCheck::start().await;
    let mut child = spawn_process(sleeps_forever, ()).unwrap();
    let waited = child.join_timeout(Duration::from_millis(100)).await;
    assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");
    assert!(child.is_alive());
    assert!(child.try_join().unwrap().is_none());
    child.kill().unwrap();
    let err = child.join().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            }
        ),
        "{err:?}"
    );
    assert!(!child.is_alive());
    assert!(matches!(child.join().await, Err(Error::AlreadyJoined)));
    // Signalling a reaped child is a harmless no-op.
    child.kill().unwrap();
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn a_missing_working_directory_is_named_as_such() {
    let leaks = common::LeakCheck::start().await;
    let missing = std::path::Path::new("/nonexistent/mp-missing-dir");
    let builder = multiprocess::Process::builder().current_dir(missing);
    let errors = [
        builder.spawn(exits, 0).unwrap_err(),
        builder.command("true").spawn().unwrap_err(),
    ];
    for err in errors {
        match &err {
            Error::CurrentDir { path, source } => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("not a working-directory error: {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("/nonexistent/mp-missing-dir"), "{message}");
        assert!(!message.contains("failed to spawn"), "{message}");
    }
    leaks.finish().await;
}

fn spawns_with_the_default_start_method(_: ()) -> String {
    match spawn_process(exits, 0) {
        Ok(_) => "spawned".to_string(),
        Err(err) => format!("{err:?}"),
    }
}

#[tokio::test]
async fn an_unknown_start_method_is_an_error_not_the_fork_server() {
    let leaks = common::LeakCheck::start().await;
    for value in ["spawn", "frokserver"] {
        let outcome = multiprocess::Process::builder()
            .env("MULTIPROCESS_START_METHOD", value)
            .spawn(spawns_with_the_default_start_method, ())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            outcome,
            format!("UnknownStartMethod {{ value: {value:?} }}")
        );
    }
    leaks.finish().await;
}
