//! External programs under the same handle as function children.

mod common;

use std::time::Duration;

use multiprocess::{Command, Error, Process, spawn_process};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn exit_codes_and_signals() {
    let leaks = common::LeakCheck::start().await;
    Command::new("true").spawn().unwrap().join().await.unwrap();
    let err = Command::new("sh")
        .args(["-c", "exit 3"])
        .spawn()
        .unwrap()
        .join()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exited { code: 3 }), "{err:?}");
    let err = Command::new("sh")
        .args(["-c", "kill -SEGV $$"])
        .spawn()
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
    leaks.finish().await;
}

#[tokio::test]
async fn timeout_terminate_and_shutdown() {
    let leaks = common::LeakCheck::start().await;
    let mut sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
    assert_eq!(sleeper.name(), "sleep");
    let waited = sleeper.join_timeout(Duration::from_millis(50)).await;
    assert!(matches!(waited, Err(Error::Timeout { .. })));
    assert!(sleeper.is_alive());
    sleeper.terminate().unwrap();
    let err = sleeper.join().await.unwrap_err();
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
    drop(sleeper);

    // A program that ignores SIGTERM is killed when the grace period ends.
    let mut stubborn = Command::new("sh")
        .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = stubborn.take_stdout().unwrap().unwrap();
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).await.unwrap();
    let status = stubborn.shutdown(Duration::from_millis(200)).await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    drop((stubborn, out));
    leaks.finish().await;
}

#[tokio::test]
async fn kill_on_drop_applies_to_commands() {
    let leaks = common::LeakCheck::start().await;
    let sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
    let pid = sleeper.pid();
    drop(sleeper);
    assert!(common::await_exit_of(pid, Duration::from_secs(20)).await);
    leaks.finish().await;
}

#[tokio::test]
async fn a_framed_channel_on_an_inherited_descriptor() {
    let leaks = common::LeakCheck::start().await;
    // `cat` copies our frames back byte for byte: a round trip through a foreign program.
    let mut cmd = Process::builder().name("echoer").command("sh");
    cmd.args(["-c", "exec cat <&5 >&5"]);
    let mut conn = cmd.channel::<Vec<String>, Vec<String>>(5).unwrap();
    let mut echo = cmd.spawn().unwrap();
    assert_eq!(echo.name(), "echoer");
    for i in 0..100 {
        let message: Vec<String> = (0..i).map(|j| format!("{i}:{j}")).collect();
        conn.send(message.clone()).await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), message);
    }
    drop(conn);
    echo.join().await.unwrap();
    drop(echo);
    leaks.finish().await;
}

#[tokio::test]
async fn environment_and_working_directory() {
    let leaks = common::LeakCheck::start().await;
    let mut cmd = Process::builder()
        .env_clear()
        .env("ONLY", "this")
        .current_dir("/tmp")
        .command("/bin/sh");
    cmd.args(["-c", "echo \"$ONLY $(pwd) ${HOME:-unset}\""])
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = common::read_stdout(&mut child).await;
    child.join().await.unwrap();
    assert_eq!(out, "this /tmp unset\n");
    drop(child);
    leaks.finish().await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_error() {
    let leaks = common::LeakCheck::start().await;
    let err = Command::new("/nonexistent/program").spawn().unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/program"));
    leaks.finish().await;
}

#[tokio::test]
async fn no_descriptor_of_ours_leaks_into_a_program() {
    let leaks = common::LeakCheck::start().await;
    // Hold plenty of our own descriptors open while spawning.
    let _pipes: Vec<_> = (0..10)
        .map(|_| multiprocess::pipe::<u8, u8>().unwrap())
        .collect();
    let _child = spawn_process(|()| std::thread::park(), ()).unwrap();
    let mut ls = Command::new("ls")
        .arg("/proc/self/fd")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    ls.take_stdout()
        .unwrap()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    ls.join().await.unwrap();
    let inherited_by_us = inheritable_fds();
    let fds: Vec<i32> = out
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .filter(|fd| !inherited_by_us.contains(fd))
        .collect();
    // stdin, stdout, stderr, and the descriptor `ls` opened to read the directory.
    assert!(fds.len() <= 4, "program inherited {fds:?}");
    drop((_pipes, _child, ls));
    leaks.finish().await;
}

/// Descriptors this test process itself was started with and passes on to anything it
/// executes (the harness's environment, not ours to judge).
fn inheritable_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|fd| {
            // SAFETY: F_GETFD on a descriptor number only reads its flags.
            let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC == 0
        })
        .collect()
}

fn my_descriptors(_: ()) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let fd = e.file_name().to_string_lossy().parse().unwrap();
            (
                fd,
                std::fs::read_link(e.path())
                    .unwrap_or_default()
                    .display()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_function_child_inherits_only_stdio_and_its_control_socket() {
    let leaks = common::LeakCheck::start().await;
    let _pipes: Vec<_> = (0..10)
        .map(|_| multiprocess::pipe::<u8, u8>().unwrap())
        .collect();
    let inherited_by_us = inheritable_fds();
    let fds: Vec<(i32, String)> = spawn_process(my_descriptors, ())
        .unwrap()
        .join()
        .await
        .unwrap()
        .into_iter()
        .filter(|(fd, _)| !inherited_by_us.contains(fd) || *fd == 0)
        .collect();
    // 0-2, the control socket, and the directory being listed.
    assert!(fds.len() <= 5, "child inherited {fds:?}");
    assert_eq!(
        fds.iter().filter(|(_, f)| f.starts_with("socket:")).count(),
        1,
        "{fds:?}"
    );
    assert_eq!(fds[0], (0, "/dev/null".to_string()), "stdin is /dev/null");
    drop(_pipes);
    leaks.finish().await;
}
