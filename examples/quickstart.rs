//! A tour of the basics: run a function in a child process, talk to a child over a
//! pipe, time a child out and kill it, see how failures come back.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::{Duration, Instant};

use multiprocess::{Command, Connection, Error, PanicOutput, Process, spawn_process};

fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

/// Runs in a child: answers each word with its length until the parent hangs up.
fn word_lengths(mut conn: Connection<usize, String>) -> usize {
    let mut answered = 0;
    while let Ok(word) = conn.recv_blocking() {
        conn.send_blocking(word.len()).expect("parent went away");
        answered += 1;
    }
    answered
}

fn never_returns(_: ()) {
    loop {
        std::thread::park();
    }
}

fn panics(message: String) {
    panic!("{message}");
}

#[tokio::main]
async fn main() -> multiprocess::Result<()> {
    // 1. CPU-bound work in another process, awaited like a task.
    let started = Instant::now();
    let mut child = spawn_process(fib, 32)?;
    println!("[spawn] child {} computes fib(32)", child.pid());
    let value = child.join().await?;
    println!("[spawn] fib(32) = {value} in {:?}", started.elapsed());

    // 2. A pipe handed to the child inside its argument, like Python's Pipe().
    let (mut conn, child_end) = multiprocess::pipe::<String, usize>()?;
    let mut talker = Process::builder()
        .name("word-lengths")
        .spawn(word_lengths, child_end)?;
    for word in ["process", "pipe", "tokio"] {
        conn.send(word.to_string()).await?;
        println!("[pipe] {word:>8} -> {} letters", conn.recv().await?);
    }
    drop(conn);
    let answered = talker.join().await?;
    println!("[pipe] {} answered {answered} words", talker.name());

    // 3. A child that never finishes: time it out, then kill it.
    let mut stuck = spawn_process(never_returns, ())?;
    match stuck.join_timeout(Duration::from_millis(200)).await {
        Err(Error::Timeout { after }) => println!("[timeout] still running after {after:?}"),
        other => println!("[timeout] unexpected: {other:?}"),
    }
    stuck.kill()?;
    match stuck.join().await {
        Err(err) => println!("[kill] {err}"),
        Ok(()) => println!("[kill] unexpectedly finished"),
    }

    // 4. Failures come back typed, with what happened. A panicking child prints one
    //    line on stderr by default; this one prints nothing and we print the error
    //    (`err.panic_report()` has the whole report, backtrace included).
    let err = Process::builder()
        .panic_output(PanicOutput::Silent)
        .spawn(panics, "the child panicked on purpose".to_string())?
        .join()
        .await
        .unwrap_err();
    println!("[panic] {err}");
    let err = Command::new("sh")
        .args(["-c", "exit 3"])
        .spawn()?
        .join()
        .await
        .unwrap_err();
    println!("[command] sh -c 'exit 3': {err}");

    // 5. Graceful shutdown: SIGTERM, a grace period, then SIGKILL if needed.
    let mut sleeper = Command::new("sleep").arg("60").spawn()?;
    let status = sleeper.shutdown(Duration::from_secs(1)).await?;
    println!("[shutdown] sleep 60 ended with {status}");
    Ok(())
}
