//! What a child prints when it panics (`PanicOutput`), and the report the parent gets
//! in `Error::Panicked` whatever is printed.
//!
//! Each child points its own standard error at a file before it panics, so the test
//! reads exactly what that process printed, apart from everything else on the stream.

mod common;

use std::path::PathBuf;

use futures::StreamExt;
use multiprocess::{Error, PanicOutput, Process, ProcessBuilder, ProcessPool};

/// A file of its own for one test's child stderr, removed when the test ends.
struct StderrFile(PathBuf);

impl StderrFile {
    fn new(test: &str) -> StderrFile {
        let path = std::env::temp_dir().join(format!(
            "multiprocess-panic-output-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        StderrFile(path)
    }

    fn path(&self) -> String {
        self.0.to_str().unwrap().to_string()
    }

    /// What the child wrote (nothing if it never opened the file).
    fn contents(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
}

impl Drop for StderrFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Appends this process's standard error to `path`.
fn stderr_to(path: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    nix::unistd::dup2_stderr(&file).unwrap();
}

fn panics_into(path: String) {
    stderr_to(&path);
    panic!("out of cheese\nand of wine");
}

fn panics_into_with_index((path, n): (String, u32)) -> u32 {
    stderr_to(&path);
    if n % 2 == 1 {
        panic!("odd {n}");
    }
    n
}

/// A builder with the backtrace variables set as given (and the others removed), so
/// that the test does not depend on the environment it runs in.
fn with_backtrace_env(
    builder: ProcessBuilder,
    rust: Option<&str>,
    lib: Option<&str>,
) -> ProcessBuilder {
    let mut builder = builder
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    if let Some(value) = rust {
        builder = builder.env("RUST_BACKTRACE", value);
    }
    if let Some(value) = lib {
        builder = builder.env("RUST_LIB_BACKTRACE", value);
    }
    builder
}

struct Panicked {
    message: String,
    location: String,
    process: String,
    pid: u32,
    backtrace: Option<String>,
    display: String,
    report: String,
}

fn panicked(err: Error) -> Panicked {
    let display = err.to_string();
    let report = err.panic_report().expect("a panic has a report");
    match err {
        Error::Panicked {
            message,
            location,
            process,
            pid,
            backtrace,
            ..
        } => Panicked {
            message,
            location: location.expect("a panic has a location"),
            process,
            pid,
            backtrace,
            display,
            report,
        },
        other => panic!("expected Panicked, got {other:?}"),
    }
}

async fn run(builder: ProcessBuilder, file: &StderrFile) -> (Panicked, u32) {
    let mut child = builder.spawn(panics_into, file.path()).unwrap();
    let pid = child.pid();
    let err = child.join().await.unwrap_err();
    (panicked(err), pid)
}

#[tokio::test]
async fn tidy_prints_one_line_naming_the_process_and_carries_the_backtrace() {
    let leaks = common::LeakCheck::start().await;
    let file = StderrFile::new("tidy");
    let builder = with_backtrace_env(Process::builder().name("cheese-shop"), Some("1"), None);
    let (panic, pid) = run(builder, &file).await;

    assert_eq!(panic.message, "out of cheese\nand of wine");
    assert!(
        panic.location.starts_with("tests/panic_output.rs:"),
        "{}",
        panic.location
    );
    assert_eq!((panic.process.as_str(), panic.pid), ("cheese-shop", pid));
    let line = format!(
        "process 'cheese-shop' (pid {pid}) panicked at {}: out of cheese\\nand of wine",
        panic.location
    );
    assert_eq!(file.contents(), format!("{line}\n"));
    // The error displays as the line the child printed.
    assert_eq!(panic.display, line);
    let backtrace = panic
        .backtrace
        .expect("RUST_BACKTRACE=1 asks for a backtrace");
    assert!(backtrace.starts_with("stack backtrace:\n"), "{backtrace}");
    assert!(backtrace.contains("panics_into"), "{backtrace}");
    // Short: the panic machinery and the child's bootstrap are left out.
    assert!(
        !backtrace.contains("__rust_end_short_backtrace"),
        "{backtrace}"
    );
    assert!(!backtrace.contains("bootstrap"), "{backtrace}");
    leaks.finish().await;
}

#[tokio::test]
async fn tidy_is_the_default_with_the_fork_server_too() {
    let file = StderrFile::new("default");
    let builder = Process::builder().start_method(multiprocess::StartMethod::Forkserver);
    let (panic, pid) = run(builder, &file).await;
    let contents = file.contents();
    assert_eq!(contents.lines().count(), 1, "{contents}");
    assert!(
        contents.starts_with(&format!(
            "process '{}' (pid {pid}) panicked at tests/",
            panic.process
        )),
        "{contents}"
    );
}

#[tokio::test]
async fn full_prints_the_std_report_naming_the_process() {
    let leaks = common::LeakCheck::start().await;
    let file = StderrFile::new("full");
    let builder = with_backtrace_env(
        Process::builder()
            .name("full-report")
            .panic_output(PanicOutput::Full),
        Some("1"),
        None,
    );
    let (panic, pid) = run(builder, &file).await;
    let contents = file.contents();
    let head = format!(
        "process 'full-report' (pid {pid}) panicked at {}:\nout of cheese\nand of wine\nstack backtrace:\n",
        panic.location
    );
    assert!(contents.starts_with(&head), "{contents}");
    assert!(contents.contains("panics_into"), "{contents}");
    assert!(!contents.contains("<unnamed>"), "{contents}");
    // What was printed is what the parent can print.
    assert_eq!(panic.report, contents);
    assert!(panic.backtrace.is_some());
    leaks.finish().await;
}

#[tokio::test]
async fn full_without_a_backtrace_says_how_to_get_one() {
    let file = StderrFile::new("full-short");
    let builder = with_backtrace_env(
        Process::builder()
            .name("no-trace")
            .panic_output(PanicOutput::Full),
        None,
        None,
    );
    let (panic, pid) = run(builder, &file).await;
    assert_eq!(
        file.contents(),
        format!(
            "process 'no-trace' (pid {pid}) panicked at {}:\nout of cheese\nand of wine\n\
             note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
            panic.location
        )
    );
    assert_eq!(panic.backtrace, None);
    assert_eq!(
        panic.report,
        format!(
            "process 'no-trace' (pid {pid}) panicked at {}:\nout of cheese\nand of wine\n",
            panic.location
        )
    );
}

#[tokio::test]
async fn silent_prints_nothing_and_still_reports_everything() {
    let leaks = common::LeakCheck::start().await;
    let file = StderrFile::new("silent");
    let builder = with_backtrace_env(
        Process::builder()
            .name("quiet")
            .panic_output(PanicOutput::Silent),
        Some("full"),
        None,
    );
    let (panic, pid) = run(builder, &file).await;
    assert_eq!(file.contents(), "");
    assert_eq!(panic.message, "out of cheese\nand of wine");
    assert_eq!((panic.process.as_str(), panic.pid), ("quiet", pid));
    let backtrace = panic
        .backtrace
        .expect("RUST_BACKTRACE=full asks for a backtrace");
    // Full: every frame, the bootstrap's included.
    assert!(
        backtrace.contains("__rust_end_short_backtrace"),
        "{backtrace}"
    );
    assert!(!backtrace.contains("RUST_BACKTRACE=full"), "{backtrace}");
    leaks.finish().await;
}

#[tokio::test]
async fn the_carried_backtrace_follows_rust_lib_backtrace_first() {
    let file = StderrFile::new("lib-off");
    let builder = with_backtrace_env(Process::builder(), Some("1"), Some("0"));
    let (panic, _) = run(builder, &file).await;
    assert_eq!(panic.backtrace, None);
    assert_eq!(file.contents().lines().count(), 1);

    let file = StderrFile::new("lib-on");
    let builder = with_backtrace_env(Process::builder(), Some("0"), Some("1"));
    let (panic, _) = run(builder, &file).await;
    assert!(panic.backtrace.is_some_and(|b| b.contains("panics_into")));
    assert_eq!(file.contents().lines().count(), 1);
}

#[tokio::test]
async fn a_pool_worker_prints_one_line_per_task_panic() {
    let leaks = common::LeakCheck::start().await;
    let file = StderrFile::new("pool-tidy");
    let pool = ProcessPool::builder()
        .workers(1)
        .name("grater")
        .build()
        .await
        .unwrap();
    let path = file.path();
    let inputs = (0..4).map(move |n| (path.clone(), n));
    let results: Vec<Result<u32, Error>> = pool
        .map_chunked(panics_into_with_index, inputs, 2)
        .collect()
        .await;
    let failures: Vec<Panicked> = results
        .into_iter()
        .filter_map(|r| r.err())
        .map(panicked)
        .collect();
    assert_eq!(failures.len(), 2);
    let contents = file.contents();
    let lines: Vec<&str> = contents.lines().collect();
    assert_eq!(lines.len(), 2, "{contents}");
    for (line, (panic, n)) in lines.iter().zip(failures.iter().zip([1, 3])) {
        assert_eq!(panic.message, format!("odd {n}"));
        assert!(panic.process.starts_with("grater-"), "{}", panic.process);
        assert_eq!(*line, panic.display);
        assert_eq!(
            *line,
            format!(
                "process '{}' (pid {}) panicked at {}: odd {n}",
                panic.process, panic.pid, panic.location
            )
        );
    }
    pool.close().await;
    drop(pool);
    leaks.finish().await;
}

#[tokio::test]
async fn a_silent_pool_prints_nothing() {
    let file = StderrFile::new("pool-silent");
    let pool = ProcessPool::builder()
        .workers(1)
        .panic_output(PanicOutput::Silent)
        .build()
        .await
        .unwrap();
    let err = pool.apply(panics_into, file.path()).await.unwrap_err();
    assert_eq!(panicked(err).message, "out of cheese\nand of wine");
    assert_eq!(file.contents(), "");
    pool.close().await;
}
