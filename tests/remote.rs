//! Children on another host, through a launcher: here with local prefixes (`env`,
//! `sh -c`), which run the far side on this machine, so that every process on both
//! sides can be checked in `/proc`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::running::{all_gone, exits_42_on_term, ready_then_forever, spawn_running};
use common::{Scratch, descendants};
use multiprocess::{Error, Launcher, Process};

const LONG: Duration = Duration::from_secs(60);

fn here() -> Launcher {
    Launcher::command("env", Vec::<String>::new())
}

fn builder() -> multiprocess::ProcessBuilder {
    Process::builder().launcher(here())
}

fn double(x: u64) -> u64 {
    x * 2
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn panics(message: String) {
    panic!("{message}");
}

fn exits(code: i32) {
    std::process::exit(code);
}

fn aborts(_: ()) {
    std::process::abort();
}

fn prints_then_returns(n: u32) -> u32 {
    for i in 0..n {
        println!("line {i} of noise on standard output \x00\x01\x7f");
    }
    print!("no newline at the end");
    n
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn results_come_back() {
    let leaks = common::LeakCheck::start().await;
    let mut child = builder().spawn(double, 21).unwrap();
    assert_eq!(child.join().await.unwrap(), 42);
    assert!(child.exit_status().unwrap().success());
    let big = "x".repeat(3 << 20);
    let got = builder()
        .spawn(shout, big.clone())
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(got, big.to_uppercase());
    leaks.finish().await;
}

#[tokio::test]
async fn a_panic_comes_back_with_its_message() {
    let leaks = common::LeakCheck::start().await;
    let err = builder()
        .spawn(panics, "far away".to_string())
        .unwrap()
        .join()
        .await
        .unwrap_err();
    match err {
        Error::Panicked { message, .. } => assert_eq!(message, "far away"),
        other => panic!("not a panic: {other:?}"),
    }
    leaks.finish().await;
}

#[tokio::test]
async fn exit_codes_and_signals_are_the_remote_childs() {
    let leaks = common::LeakCheck::start().await;
    let mut child = builder().spawn(exits, 7).unwrap();
    assert!(matches!(child.join().await, Err(Error::Exited { code: 7 })));
    assert_eq!(child.exitcode(), Some(7));
    let mut child = builder().spawn(aborts, ()).unwrap();
    let err = child.join().await.unwrap_err();
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
    assert_eq!(child.exitcode(), Some(-libc::SIGABRT));
    leaks.finish().await;
}

#[tokio::test]
async fn timeout_then_kill_leaves_nothing_behind() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "kill");
    let ready = dir.join("ready");
    let mut child = spawn_running(&builder(), ready_then_forever, &ready).await;
    let below = descendants(child.pid());
    assert!(below.len() >= 2, "an agent and its child: {below:?}");
    let waited = child.join_timeout(Duration::from_millis(100)).await;
    assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");
    child.kill().unwrap();
    let err = child.join().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Signaled {
                signal: libc::SIGKILL,
                ..
            }
        ),
        "{err:?}"
    );
    all_gone(&below).await;
    leaks.finish().await;
}

#[tokio::test]
async fn terminate_reaches_the_remote_child() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "term");
    let ready = dir.join("ready");
    let mut child = spawn_running(&builder(), exits_42_on_term, &ready).await;
    child.terminate().unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
    assert!(matches!(err, Error::Exited { code: 42 }), "{err:?}");

    // Unhandled, the signal ends the remote child, and the handle says so.
    let ready = dir.join("ready2");
    let mut child = spawn_running(&builder(), ready_then_forever, &ready).await;
    let below = descendants(child.pid());
    let status = child.shutdown(LONG).await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    all_gone(&below).await;
    leaks.finish().await;
}

#[tokio::test]
async fn dropping_the_handle_ends_the_remote_side() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "drop");
    let ready = dir.join("ready");
    let child = spawn_running(&builder(), ready_then_forever, &ready).await;
    let mut below = descendants(child.pid());
    below.push(child.pid());
    drop(child);
    all_gone(&below).await;
    leaks.finish().await;
}

#[tokio::test]
async fn a_cut_connection_ends_both_sides() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "cut");
    let ready = dir.join("ready");
    // The stream passes through two `cat`s, as it passes through a network.
    let relay = Launcher::command("sh", ["-c", "cat | \"$@\" | cat", "sh"]);
    let mut child = spawn_running(
        &Process::builder().launcher(relay),
        ready_then_forever,
        &ready,
    )
    .await;
    let below = descendants(child.pid());
    let cats: Vec<u32> = below
        .iter()
        .copied()
        .filter(|p| comm(*p) == "cat")
        .collect();
    assert_eq!(cats.len(), 2, "{below:?}");
    for cat in cats {
        // The second may be gone already: the first one's death ends the chain.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(cat as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let err = child.join_timeout(LONG).await.unwrap_err();
    match &err {
        Error::ConnectionLost { host, reason } => {
            assert!(host.starts_with("sh -c"), "{host}");
            assert!(reason.contains("closed"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    all_gone(&below).await;
    leaks.finish().await;
}

#[tokio::test]
async fn a_silent_agent_is_given_up() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "silent-agent");
    let ready = dir.join("ready");
    let launcher = here().heartbeat(Duration::from_millis(250));
    let mut child = spawn_running(
        &Process::builder().launcher(launcher),
        ready_then_forever,
        &ready,
    )
    .await;
    let below = descendants(child.pid());
    // The `env` launcher became the agent: the stand-in's only child.
    let stand_in = child.pid();
    let agent: u32 = std::fs::read_to_string(format!("/proc/{stand_in}/task/{stand_in}/children"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
    match &err {
        Error::ConnectionLost { reason, .. } => {
            assert!(reason.contains("nothing heard"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    all_gone(&below).await;
    leaks.finish().await;
}

#[tokio::test]
async fn a_silent_parent_side_makes_the_agent_kill_its_child() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "silent-proxy");
    let ready = dir.join("ready");
    let launcher = here().heartbeat(Duration::from_millis(250));
    let mut child = spawn_running(
        &Process::builder().launcher(launcher),
        ready_then_forever,
        &ready,
    )
    .await;
    let below = descendants(child.pid());
    let proxy = nix::unistd::Pid::from_raw(child.pid() as i32);
    nix::sys::signal::kill(proxy, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The agent exits (a zombie until the stopped proxy reaps it), its child is gone.
    all_gone(&below).await;
    nix::sys::signal::kill(proxy, nix::sys::signal::Signal::SIGCONT).unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
    leaks.finish().await;
}

#[tokio::test]
async fn a_job_slow_to_arrive_is_not_taken_for_a_silent_agent() {
    let leaks = common::LeakCheck::start().await;
    // The agent's input is held back for a while, as over a slow link: it must keep
    // the heartbeat going before it has its job (and so knows the heartbeat asked).
    let slow = Launcher::command("sh", ["-c", "(sleep 2; exec cat) | \"$@\"", "sh"])
        .heartbeat(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let mut child = Process::builder().launcher(slow).spawn(double, 8).unwrap();
    assert_eq!(child.join_timeout(LONG).await.unwrap(), 16);
    assert!(
        started.elapsed() < Duration::from_secs(2) * 5,
        "waited for the relay"
    );
    leaks.finish().await;
}

#[tokio::test]
async fn printing_to_stdout_does_not_corrupt_the_stream() {
    let leaks = common::LeakCheck::start().await;
    let mut child = builder().spawn(prints_then_returns, 20).unwrap();
    assert_eq!(child.join_timeout(LONG).await.unwrap(), 20);
    leaks.finish().await;
}

#[tokio::test]
async fn garbage_on_the_stream_is_a_typed_error() {
    let leaks = common::LeakCheck::start().await;
    let banner = Launcher::command(
        "sh",
        ["-c", "echo Welcome to the cluster; exec sleep 600", "sh"],
    );
    let mut child = Process::builder()
        .launcher(banner)
        .spawn(double, 1)
        .unwrap();
    let below = descendants(child.pid());
    let err = child.join_timeout(LONG).await.unwrap_err();
    match &err {
        Error::ConnectionLost { reason, .. } => {
            assert!(reason.contains("Welcome to the cluster"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    all_gone(&below).await;
    leaks.finish().await;
}

#[tokio::test]
async fn a_launcher_that_cannot_start_is_a_typed_error() {
    let leaks = common::LeakCheck::start().await;
    let missing = Launcher::command("/nonexistent/launcher", Vec::<String>::new());
    let err = Process::builder()
        .launcher(missing)
        .spawn(double, 1)
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    match &err {
        Error::ConnectionLost { host, reason } => {
            assert_eq!(host, "/nonexistent/launcher");
            assert!(reason.contains("cannot start"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let exits_at_once = Launcher::command("false", Vec::<String>::new());
    let err = Process::builder()
        .launcher(exits_at_once)
        .spawn(double, 1)
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    match &err {
        Error::ConnectionLost { reason, .. } => assert!(reason.contains("code 1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    leaks.finish().await;
}

/// A copy of this test binary whose build identity differs in one byte.
fn other_build(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read("/proc/self/exe").unwrap();
    let note: &[u8] = &[4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let at = bytes
        .windows(note.len())
        .position(|w| w == note)
        .expect("a GNU build-id note");
    bytes[at + note.len()] ^= 0xff;
    let path = dir.join("other-build");
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn another_build_on_the_far_side_is_refused_by_name() {
    let leaks = common::LeakCheck::start().await;
    let dir = Scratch::new("remote", "mismatch");
    let launcher = here().executable(other_build(&dir));
    let err = Process::builder()
        .launcher(launcher)
        .spawn(double, 1)
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    match &err {
        Error::BuildMismatch { host, ours, theirs } => {
            assert!(host.starts_with("env"), "{host}");
            assert!(ours.starts_with("build-id:") && theirs.starts_with("build-id:"));
            assert_ne!(ours, theirs);
            let shown = err.to_string();
            assert!(
                shown.contains(ours.as_str()) && shown.contains(theirs.as_str()),
                "{shown}"
            );
        }
        other => panic!("{other:?}"),
    }
    leaks.finish().await;
}

#[tokio::test]
async fn the_executable_is_shipped_once_and_checked() {
    let leaks = common::LeakCheck::start().await;
    let cache = Scratch::new("remote", "ship");
    let log = cache.join("launches");
    // Each launch leaves a line in the log.
    let script = format!(
        "echo launch >> '{}'; XDG_CACHE_HOME='{}' exec \"$@\"",
        log.display(),
        cache.display()
    );
    let shipping = Launcher::command("sh", ["-c", script.as_str(), "sh"]).ship_executable(true);
    let launches = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let spawn = || {
        Process::builder()
            .launcher(shipping.clone())
            .spawn(double, 4)
    };
    assert_eq!(spawn().unwrap().join_timeout(LONG).await.unwrap(), 8);
    assert_eq!(launches(), 3, "a try, the copy, the run");
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let builds = entries(&cache.join("multiprocess"));
    assert_eq!(builds.len(), 1);
    let copies = entries(&builds[0]);
    assert_eq!(copies.len(), 1, "no temporary left: {copies:?}");
    let copy = copies[0].clone();
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&copy).unwrap().ino();
    assert_eq!(spawn().unwrap().join_timeout(LONG).await.unwrap(), 8);
    assert_eq!(
        std::fs::metadata(&copy).unwrap().ino(),
        inode,
        "copied again"
    );

    // A cached copy that is another build is refused, not run.
    std::fs::rename(other_build(&cache), &copy).unwrap();
    let err = spawn().unwrap().join_timeout(LONG).await.unwrap_err();
    assert!(matches!(err, Error::BuildMismatch { .. }), "{err:?}");
    leaks.finish().await;
}

#[tokio::test]
async fn descriptors_cannot_travel_to_another_host() {
    let (_ours, theirs) = multiprocess::pipe::<(), ()>().unwrap();
    let err = builder()
        .spawn(|_c: multiprocess::Connection<(), ()>| (), theirs)
        .unwrap_err();
    assert!(
        matches!(err, Error::Encode(ref m) if m.contains("another host")),
        "{err:?}"
    );
}

#[tokio::test]
async fn ssh_settings_on_other_launchers_are_refused() {
    let err = Process::builder()
        .launcher(here().port(22))
        .spawn(double, 1)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}
