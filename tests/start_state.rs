//! What a child starts with, whatever state its parent is in: default signal
//! dispositions and an empty mask, no descriptor it was not given, and the parent's
//! working directory of the moment.

mod common;

use std::time::Duration;

use multiprocess::{Command, Error, Process, Signal, StartMethod, spawn_process};

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

fn signal_of<R: std::fmt::Debug>(result: multiprocess::Result<R>) -> Option<i32> {
    match result {
        Err(Error::Signaled { signal, .. }) => Some(signal),
        other => {
            eprintln!("not killed by a signal: {other:?}");
            None
        }
    }
}

/// Runs in a child of the test: ignores `SIGINT` and blocks it (as a program started
/// under `nohup` or in the background of a script, or a thread masking signals, does),
/// then spawns a function child and a program and interrupts both. Returns the signal
/// each died of.
async fn interrupts_its_children_while_ignoring_sigint(_: ()) -> Vec<Option<i32>> {
    // SAFETY: SIG_IGN runs no handler code; the mask is a plain sigset of this thread.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut blocked);
        libc::sigaddset(&mut blocked, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
    }
    let limit = Duration::from_secs(10);
    let mut function = spawn_process(sleeps_forever, ()).unwrap();
    function.signal(Signal::SIGINT).unwrap();
    let function_died = signal_of(function.join_timeout(limit).await);
    let _ = function.kill();
    let mut program = Command::new("sleep").arg("1000").spawn().unwrap();
    program.signal(Signal::SIGINT).unwrap();
    let program_died = signal_of(program.join_timeout(limit).await);
    let _ = program.kill();
    vec![function_died, program_died]
}

#[tokio::test]
async fn children_of_a_parent_ignoring_sigint_die_of_sigint() {
    let leaks = common::LeakCheck::start().await;
    let mut parent = Process::builder()
        .spawn_async(interrupts_its_children_while_ignoring_sigint, ())
        .unwrap();
    let died = parent.join_timeout(Duration::from_secs(60)).await.unwrap();
    assert_eq!(died, vec![Some(libc::SIGINT), Some(libc::SIGINT)]);
    leaks.finish().await;
}

/// A descriptor opened without close-on-exec, as C libraries and `F_DUPFD` make them.
struct Inheritable(i32);

impl Inheritable {
    fn open() -> Inheritable {
        // SAFETY: open and fcntl(F_DUPFD) on a path and descriptors of our own.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            assert!(fd >= 0);
            let high = libc::fcntl(fd, libc::F_DUPFD, 300);
            assert!(high >= 300);
            libc::close(fd);
            Inheritable(high)
        }
    }
}

impl Drop for Inheritable {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

fn own_descriptors(_: ()) -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn descriptors_opened_without_cloexec_do_not_reach_children() {
    let leaks = common::LeakCheck::start().await;
    let stray = Inheritable::open();
    for method in [StartMethod::Exec, StartMethod::Forkserver] {
        let seen = Process::builder()
            .start_method(method)
            .spawn(own_descriptors, ())
            .unwrap()
            .await
            .unwrap();
        assert!(!seen.contains(&stray.0), "{method:?} child got {seen:?}");
    }
    let mut ls = Command::new("sh");
    ls.args(["-c", "ls /proc/$$/fd"])
        .stdout(std::process::Stdio::piped());
    let channel = ls.channel::<(), ()>(7).unwrap();
    let mut ls = ls.spawn().unwrap();
    let listed: Vec<i32> = common::read_stdout(&mut ls)
        .await
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    ls.join().await.unwrap();
    assert!(!listed.contains(&stray.0), "program got {listed:?}");
    assert!(listed.contains(&7), "the channel is missing: {listed:?}");
    drop((channel, stray));
    leaks.finish().await;
}

fn writes_a_relative_path(_: ()) -> std::path::PathBuf {
    std::fs::write("written-by-the-child", b"here").unwrap();
    std::env::current_dir().unwrap()
}

#[tokio::test]
async fn children_start_in_the_parents_working_directory_of_the_moment() {
    let leaks = common::LeakCheck::start().await;
    let original = std::env::current_dir().unwrap();
    let dir = std::env::temp_dir().join(format!("mp-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_current_dir(&dir).unwrap();
    let result = async {
        let mut seen = Vec::new();
        for method in [StartMethod::Forkserver, StartMethod::Exec] {
            let cwd = Process::builder()
                .start_method(method)
                .spawn(writes_a_relative_path, ())
                .unwrap()
                .await
                .unwrap();
            let written = std::fs::read(dir.join("written-by-the-child")).ok();
            std::fs::remove_file(dir.join("written-by-the-child")).ok();
            seen.push((method, cwd, written));
        }
        seen
    }
    .await;
    std::env::set_current_dir(&original).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for (method, cwd, written) in result {
        assert_eq!(cwd, dir, "{method:?}");
        assert_eq!(written.as_deref(), Some(&b"here"[..]), "{method:?}");
    }
    leaks.finish().await;
}
