//! Children on another host through the real engines: an `sshd` on loopback and a
//! single-node Slurm, both fixtures of this test process.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cluster::{NetnsHost, Slurm, Sshd};
use common::launchers::{srun_on, ssh_to};
use common::running::{all_gone, exits_42_on_term, ready_then_forever, spawn_running};
use common::{Scratch, alive};
use multiprocess::{Error, Launcher, Process};

const LONG: Duration = Duration::from_secs(120);

fn double(x: u64) -> u64 {
    x * 2
}

fn slurm_job(_: ()) -> Option<String> {
    std::env::var("SLURM_JOB_ID").ok()
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

fn prints_then_returns(n: u32) -> u32 {
    for i in 0..n {
        println!("line {i} of noise on standard output");
    }
    n
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The processes running this test binary's program under a daemon: the agent and the
/// function child it started.
fn ours_among(pids: &[u32]) -> Vec<u32> {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    pids.iter()
        .copied()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == exe))
        .collect()
}

async fn start_sshd() -> Sshd {
    tokio::task::spawn_blocking(Sshd::start).await.unwrap()
}

async fn start_slurm() -> Slurm {
    tokio::task::spawn_blocking(Slurm::start).await.unwrap()
}

#[tokio::test]
async fn over_ssh_results_panics_and_exit_codes_come_back() {
    let sshd = start_sshd().await;
    let ssh = Process::builder().launcher(ssh_to(&sshd));
    assert_eq!(
        ssh.spawn(double, 21)
            .unwrap()
            .join_timeout(LONG)
            .await
            .unwrap(),
        42
    );
    let err = ssh
        .spawn(panics, "over ssh".to_string())
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { message, .. } if message == "over ssh"),
        "{err:?}"
    );
    let err = ssh
        .spawn(exits, 9)
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exited { code: 9 }), "{err:?}");
    let got = ssh
        .spawn(prints_then_returns, 20)
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap();
    assert_eq!(got, 20);
    // Large both ways: the argument and the result cross sshd's pipes in pieces.
    let big = "x".repeat(8 << 20);
    let got = ssh
        .spawn(shout, big.clone())
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap();
    assert_eq!(got, big.to_uppercase());
}

#[tokio::test]
async fn over_ssh_terminate_travels_in_band_and_kill_leaves_nothing() {
    let sshd = start_sshd().await;
    let dir = Scratch::new("cluster", "ssh-signals");
    let ssh = Process::builder().launcher(ssh_to(&sshd));

    let ready = dir.join("term");
    let mut child = spawn_running(&ssh, exits_42_on_term, &ready).await;
    child.terminate().unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
    assert!(matches!(err, Error::Exited { code: 42 }), "{err:?}");

    let ready = dir.join("kill");
    let mut child = spawn_running(&ssh, ready_then_forever, &ready).await;
    let remote = ours_among(&sshd.pids());
    assert_eq!(remote.len(), 2, "the agent and its child: {remote:?}");
    child.kill().unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
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
    all_gone(&remote).await;

    let ready = dir.join("drop");
    let child = spawn_running(&ssh, ready_then_forever, &ready).await;
    let remote = ours_among(&sshd.pids());
    drop(child);
    all_gone(&remote).await;
}

#[tokio::test]
async fn over_ssh_a_killed_ssh_ends_the_remote_child() {
    let sshd = start_sshd().await;
    let dir = Scratch::new("cluster", "ssh-cut");
    let ready = dir.join("ready");
    let mut child = spawn_running(
        &Process::builder().launcher(ssh_to(&sshd)),
        ready_then_forever,
        &ready,
    )
    .await;
    let remote = ours_among(&sshd.pids());
    assert_eq!(remote.len(), 2, "{remote:?}");
    // The launcher is a child of the handle's local stand-in.
    let stand_in = child.pid();
    let ssh: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{stand_in}/task/{stand_in}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter(|p| comm(*p) == "ssh")
            .collect();
    assert_eq!(ssh.len(), 1, "{ssh:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ssh[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
    match &err {
        Error::ConnectionLost { host, reason } => {
            assert!(host.contains(&sshd.port().to_string()), "{host}");
            assert!(
                reason.contains("closed") && reason.contains("ssh"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    all_gone(&remote).await;
}

#[tokio::test]
async fn over_ssh_a_refused_login_is_a_lost_connection_naming_the_host() {
    let sshd = start_sshd().await;
    let stranger = start_sshd().await;
    let mut launcher = Launcher::ssh(sshd.host().to_string())
        .port(sshd.port())
        .user(sshd.user());
    for (key, value) in sshd.option_pairs() {
        let value = match key.as_str() {
            "IdentityFile" => stranger.identity().display().to_string(),
            _ => value,
        };
        launcher = launcher.option(key, value);
    }
    let err = Process::builder()
        .launcher(launcher)
        .spawn(double, 1)
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    match &err {
        Error::ConnectionLost { host, reason } => {
            assert_eq!(host, &format!("root@127.0.0.1:{}", sshd.port()));
            assert!(reason.contains("code 255"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn over_ssh_the_executable_is_shipped() {
    let sshd = start_sshd().await;
    let cache = Scratch::new("cluster", "ssh-ship");
    // The daemon may or may not accept the variable: the copy lands in one of the two.
    let home_cache = PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/multiprocess");
    let dirs = |dir: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let before = dirs(&home_cache);
    let launcher = ssh_to(&sshd)
        .option("SetEnv", format!("XDG_CACHE_HOME={}", cache.display()))
        .ship_executable(true);
    let ssh = Process::builder().launcher(launcher);
    let got = ssh.spawn(double, 5).unwrap().join_timeout(LONG).await;
    let new_in_home: Vec<PathBuf> = dirs(&home_cache)
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    let shipped: Vec<PathBuf> = dirs(&cache.join("multiprocess"))
        .into_iter()
        .chain(new_in_home.iter().cloned())
        .flat_map(|d| dirs(&d))
        .collect();
    let again = ssh.spawn(double, 6).unwrap().join_timeout(LONG).await;
    for dir in &new_in_home {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert_eq!(got.unwrap(), 10);
    assert_eq!(again.unwrap(), 12);
    let name = std::fs::read_link("/proc/self/exe").unwrap();
    assert_eq!(shipped.len(), 1, "{shipped:?}");
    assert_eq!(shipped[0].file_name(), name.file_name());
}

#[tokio::test]
async fn over_srun_results_signals_and_kill() {
    let slurm = start_slurm().await;
    let dir = Scratch::new("cluster", "srun");
    let srun = Process::builder().launcher(srun_on(&slurm));
    assert_eq!(
        srun.spawn(double, 21)
            .unwrap()
            .join_timeout(LONG)
            .await
            .unwrap(),
        42
    );
    let err = srun
        .spawn(panics, "in a job step".to_string())
        .unwrap()
        .join_timeout(LONG)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { message, .. } if message == "in a job step"),
        "{err:?}"
    );

    let ready = dir.join("term");
    let mut child = spawn_running(&srun, exits_42_on_term, &ready).await;
    child.terminate().unwrap();
    let err = child.join_timeout(LONG).await.unwrap_err();
    assert!(matches!(err, Error::Exited { code: 42 }), "{err:?}");

    let ready = dir.join("kill");
    let mut child = spawn_running(&srun, ready_then_forever, &ready).await;
    let remote = ours_among(&slurm.pids());
    assert_eq!(remote.len(), 2, "the agent and its child: {remote:?}");
    child.kill().unwrap();
    assert!(child.join_timeout(LONG).await.is_err());
    common::eventually("nothing left in the job step", || {
        remote.iter().all(|p| !alive(*p))
    })
    .await;
}

#[tokio::test]
async fn over_a_network_that_falls_silent_both_sides_give_up() {
    let test = "over_a_network_that_falls_silent_both_sides_give_up";
    let Some(host) = tokio::task::spawn_blocking(move || NetnsHost::start_or_skip(test))
        .await
        .unwrap()
    else {
        return;
    };
    let ssh =
        Process::builder().launcher(ssh_to(host.sshd()).heartbeat(Duration::from_millis(250)));
    // Over real TCP to the other namespace first, to see the path works.
    assert_eq!(
        ssh.spawn(double, 4)
            .unwrap()
            .join_timeout(LONG)
            .await
            .unwrap(),
        8
    );

    let dir = Scratch::new("cluster", "silent-network");
    let ready = dir.join("ready");
    let mut child = spawn_running(&ssh, ready_then_forever, &ready).await;
    let remote = ours_among(&host.sshd().pids());
    assert_eq!(remote.len(), 2, "the agent and its child: {remote:?}");
    // The other host's link goes down: no byte and no reset either way from now on.
    let down = std::process::Command::new("nsenter")
        .arg(format!("--net={}", host.namespace().display()))
        .args(["ip", "link", "set", "eth0", "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let err = child.join_timeout(LONG).await.unwrap_err();
    match &err {
        Error::ConnectionLost { host: name, reason } => {
            assert!(name.contains(&host.address().to_string()), "{name}");
            assert!(reason.contains("nothing heard"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // On the far side, the agent heard nothing either: it killed the child and left.
    all_gone(&remote).await;
}

#[tokio::test]
async fn over_srun_inside_an_allocation() {
    let slurm = start_slurm().await;
    // An allocation with no shell, as `salloc` makes for a batch of steps.
    let mut salloc = slurm.client("salloc");
    salloc.args(["--no-shell", "-N1", "--job-name=mp-remote-test"]);
    let out = tokio::task::spawn_blocking(move || {
        common::cluster::output_within(&mut salloc, LONG).unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let job = said
        .split_whitespace()
        .filter_map(|w| w.parse::<u32>().ok())
        .next()
        .unwrap_or_else(|| panic!("no job id in {said:?}"));
    let mut inside = Launcher::srun([format!("--jobid={job}"), "--overlap".to_string()]);
    for (key, value) in slurm.env() {
        inside = inside.env(key, value);
    }
    let got = Process::builder()
        .launcher(inside)
        .spawn(slurm_job, ())
        .unwrap()
        .join_timeout(LONG)
        .await;
    let mut scancel = slurm.client("scancel");
    scancel.arg(job.to_string());
    tokio::task::spawn_blocking(move || common::cluster::output_within(&mut scancel, LONG))
        .await
        .unwrap()
        .unwrap();
    // The child ran as a step of that job.
    assert_eq!(got.unwrap(), Some(job.to_string()));
}
