//! The descriptor limit: the first spawn raises the soft limit to the hard limit, and
//! every program started gets the original soft limit back.
//!
//! The test runs itself again as a fresh process with a low soft limit (this machine's
//! may already equal the hard one), and checks from there.

mod common;

use std::os::unix::process::CommandExt;

use multiprocess::{Connection, PassFd, Process, StartMethod};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::AsyncReadExt;

const LOWERED: &str = "MP_TEST_LOWERED_NOFILE";
const LOW: u64 = 512;

fn soft_limit(_: ()) -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

/// Runs `test` in a fresh copy of this test binary whose soft limit is `LOW`.
fn run_lowered(test: &str) {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard > LOW,
        "the hard limit here ({hard}) leaves nothing to raise"
    );
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(LOWERED, "1");
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, LOW, hard).map_err(std::io::Error::from)
        });
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "lowered run of {test} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn command_soft_limit() -> u64 {
    let mut sh = multiprocess::Command::new("sh")
        .args(["-c", "ulimit -Sn"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = sh.take_stdout().unwrap().unwrap();
    stdout.read_to_string(&mut out).await.unwrap();
    sh.join().await.unwrap();
    out.trim().parse().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn programs_started_see_the_original_soft_limit_while_ours_is_raised() {
    if std::env::var_os(LOWERED).is_none() {
        return run_lowered("programs_started_see_the_original_soft_limit_while_ours_is_raised");
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(soft, LOW, "started with the lowered limit");
    assert_eq!(command_soft_limit().await, LOW, "an external program");
    assert_eq!(
        getrlimit(Resource::RLIMIT_NOFILE).unwrap().0,
        hard,
        "ours raised"
    );
    for method in [StartMethod::Exec, StartMethod::Forkserver] {
        let child = Process::builder()
            .start_method(method)
            .spawn(soft_limit, ());
        assert_eq!(
            child.unwrap().await.unwrap(),
            LOW,
            "a function child by {method:?}"
        );
    }
    assert_eq!(
        getrlimit(Resource::RLIMIT_NOFILE).unwrap().0,
        hard,
        "ours still raised"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_limit_the_program_sets_itself_is_left_to_its_programs() {
    if std::env::var_os(LOWERED).is_none() {
        return run_lowered("a_limit_the_program_sets_itself_is_left_to_its_programs");
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(command_soft_limit().await, LOW);
    // The program chose a limit of its own after the crate raised it: that one stands.
    setrlimit(Resource::RLIMIT_NOFILE, LOW * 2, hard).unwrap();
    assert_eq!(command_soft_limit().await, LOW * 2);
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// Descriptors a spawn adds to this process, the child left running (those of the
/// children the fork server holds parked left out).
fn spawn_cost() -> (usize, Process<()>) {
    let before = common::parked_and_fds().1;
    let child = multiprocess::spawn_process(sleep_forever, ()).unwrap();
    (common::parked_and_fds().1 - before, child)
}

#[tokio::test(flavor = "current_thread")]
async fn a_child_started_short_of_descriptors_costs_one_and_is_watched_all_the_same() {
    if std::env::var_os(LOWERED).is_none() {
        return run_lowered(
            "a_child_started_short_of_descriptors_costs_one_and_is_watched_all_the_same",
        );
    }
    common::warm_up().await;
    let (plenty, mut first) = spawn_cost();
    assert_eq!(plenty, 2, "a control socket and a pidfd");
    assert!(first.pidfd().is_some());
    first.kill().unwrap();
    assert!(first.join().await.is_err());
    // Half the limit in use: the next child goes without its pidfd.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, LOW, hard).unwrap();
    let mut filler = Vec::new();
    while filler.len() < LOW as usize / 2 + 8 {
        filler.push(std::fs::File::open("/dev/null").unwrap());
    }
    let (scarce, mut lean) = spawn_cost();
    assert_eq!(scarce, 1, "the control socket alone");
    let (_, dropped) = spawn_cost();
    let dropped_pid = dropped.pid();
    // Dropped unawaited: killed, and reaped in the background all the same.
    drop(dropped);
    common::eventually("the dropped child reaped", || {
        !common::children()
            .iter()
            .any(|(pid, _)| *pid == dropped_pid)
    })
    .await;
    // Its pidfd when asked for: a descriptor for the program's own use.
    assert!(lean.pidfd().is_some());
    lean.kill().unwrap();
    let err = lean.join().await.unwrap_err();
    assert!(
        matches!(
            err,
            multiprocess::Error::Signaled {
                signal: libc::SIGKILL,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(lean.exitcode(), Some(-libc::SIGKILL));
    let mut exits = multiprocess::spawn_process(|x: u32| x + 1, 41).unwrap();
    assert_eq!(exits.join().await.unwrap(), 42);
    assert_eq!(common::zombies(), 0);
}

type Carrier = Connection<(), (Connection<u8, u8>, PassFd)>;

/// What the child saw: whether the error was the descriptor limit, its message, and
/// how many descriptors it held afterwards beyond what it held before filling up.
type AtTheLimit = (bool, String, i64);

fn open_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as i64
}

/// Fills the descriptor table to one free slot below a low limit, then receives a
/// message carrying two descriptors: one can be installed, the other cannot.
fn receive_at_the_limit(mut carrier: Carrier) -> AtTheLimit {
    let before = open_fds();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, before as u64 + 32, hard).unwrap();
    let mut filler = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        filler.push(file);
    }
    filler.pop();
    let outcome = match carrier.recv_blocking() {
        Ok(_) => (false, "received at the limit".into(), 0),
        Err(err) => (
            matches!(err, multiprocess::Error::DescriptorLimit { .. }),
            err.to_string(),
            0,
        ),
    };
    drop(filler);
    (outcome.0, outcome.1, open_fds() - before)
}

#[tokio::test(flavor = "current_thread")]
async fn descriptors_received_at_the_limit_fail_with_a_clear_error_and_leak_nothing() {
    let leaks = common::LeakCheck::start().await;
    let (mut ours, theirs) = multiprocess::pipe::<(Connection<u8, u8>, PassFd), ()>().unwrap();
    let child = multiprocess::spawn_process(receive_at_the_limit, theirs).unwrap();
    let (sent, _kept) = multiprocess::pipe::<u8, u8>().unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    ours.send((sent, PassFd(null.into()))).await.unwrap();
    let (typed, message, leaked) = child.await.unwrap();
    assert!(typed, "not Error::DescriptorLimit: {message}");
    assert!(message.contains("descriptor"), "{message}");
    assert_eq!(leaked, 0, "descriptors left open in the child");
    drop(ours);
    leaks.finish().await;
}
