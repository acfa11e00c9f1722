//! The cluster fixtures are real: a command runs through the `sshd` and through Slurm
//! with its output and exit code, the second "host" is reached over its own link, and
//! dropping a fixture leaves no process of it behind.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{NetnsHost, Slurm, Sshd, output_within, process_is_running};

/// Generous: only a hang should ever reach it.
const LIMIT: Duration = Duration::from_secs(60);

fn run(command: &mut Command) -> (String, String, Option<i32>) {
    let out = output_within(command, LIMIT).unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn ssh_runs_a_command_with_its_output_and_exit_code() {
    let sshd = Sshd::start();
    let (out, err, code) = run(sshd
        .ssh()
        .arg("echo out; echo err >&2; echo $SSH_CONNECTION; exit 7"));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("out"), "{out}");
    assert_eq!(err.trim(), "err");
    assert_eq!(code, Some(7));
    // The command ran in a session of that daemon: it saw our connection arrive there.
    let connection: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(connection[2], "127.0.0.1");
    assert_eq!(connection[3], sshd.port().to_string());
}

#[test]
fn ssh_refuses_a_key_it_was_not_given() {
    let sshd = Sshd::start();
    let stranger = Sshd::start();
    // With the key of another daemon's client, this daemon must refuse.
    let mut args = sshd.ssh_args();
    let own = args
        .iter()
        .position(|a| a.starts_with("IdentityFile="))
        .unwrap();
    args[own] = format!("IdentityFile={}", stranger.identity().display());
    let (_, err, code) = run(Command::new("ssh").args(args).arg("true"));
    assert_eq!(code, Some(255), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn ssh_takes_many_connections_at_once() {
    let sshd = Sshd::start();
    let sessions: Vec<_> = (0..20)
        .map(|i| {
            let mut ssh = sshd.ssh();
            ssh.arg(format!("echo {i}"));
            std::thread::spawn(move || run(&mut ssh))
        })
        .collect();
    for (i, session) in sessions.into_iter().enumerate() {
        let (out, err, code) = session.join().unwrap();
        assert_eq!(
            (out.trim(), code),
            (i.to_string().as_str(), Some(0)),
            "{err}"
        );
    }
}

#[test]
fn scp_copies_a_file_to_the_host() {
    let sshd = Sshd::start();
    let source = sshd.dir().join("source");
    std::fs::write(&source, b"shipped bytes").unwrap();
    let target = sshd.dir().join("copied");
    let (_, err, code) = run(Command::new("scp")
        .args(sshd.options())
        .args(["-P", &sshd.port().to_string()])
        .arg(&source)
        .arg(format!("{}:{}", sshd.destination(), target.display())));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"shipped bytes");
}

#[test]
fn srun_runs_a_command_as_a_job_step() {
    let slurm = Slurm::start();
    let (out, err, code) = run(slurm
        .srun()
        .args(["-N1", "sh", "-c"])
        .arg("echo job $SLURM_JOB_ID; cat /proc/$PPID/comm; echo err >&2; exit 3"));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0]
            .strip_prefix("job ")
            .is_some_and(|id| id.parse::<u32>().is_ok()),
        "{out}"
    );
    // Started by the node daemon's step process, not by us.
    assert_eq!(lines[1], "slurmstepd", "{out}");
    assert!(err.contains("err"), "{err}");
    assert_eq!(code, Some(3), "{err}");
}

#[test]
fn slurm_runs_steps_side_by_side() {
    let slurm = Slurm::start();
    let meeting = slurm.dir().join("meeting");
    std::fs::create_dir(&meeting).unwrap();
    // Each step checks in, then waits (bounded) for all the others: steps that queued
    // behind one another instead would never all meet.
    let script = format!(
        "touch {m}/$SLURM_JOB_ID; for _ in $(seq 600); do \
         [ $(ls {m} | wc -l) -ge 4 ] && exit 0; sleep 0.1; done; exit 1",
        m = meeting.display()
    );
    let steps: Vec<_> = (0..4)
        .map(|_| {
            let mut srun = slurm.srun();
            srun.args(["-N1", "sh", "-c", &script]);
            std::thread::spawn(move || run(&mut srun))
        })
        .collect();
    for step in steps {
        let (_, err, code) = step.join().unwrap();
        assert_eq!(code, Some(0), "{err}");
    }
}

#[test]
fn the_netns_host_is_reached_over_its_link_not_loopback() {
    let Some(host) =
        NetnsHost::start_or_skip("the_netns_host_is_reached_over_its_link_not_loopback")
    else {
        return;
    };
    let sshd = host.sshd();
    let (out, err, code) = run(sshd
        .ssh()
        .arg("echo $SSH_CONNECTION; readlink /proc/self/ns/net; ip -o -4 addr show"));
    assert_eq!(code, Some(0), "{err}");
    let mut lines = out.lines();
    let connection: Vec<&str> = lines.next().unwrap().split(' ').collect();
    assert_eq!(connection[0], host.local_address().to_string(), "{out}");
    assert_eq!(connection[2], host.address().to_string(), "{out}");
    assert_eq!(connection[3], "22", "{out}");
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        lines.next().unwrap(),
        ours.to_string_lossy(),
        "same namespace"
    );
    let addresses = lines.collect::<Vec<_>>().join("\n");
    assert!(
        addresses.contains(&format!(" {}/30", host.address())),
        "{addresses}"
    );
    assert!(
        !addresses.contains(&format!(" {}/", host.local_address())),
        "{addresses}"
    );

    // Its daemon is not on our loopback.
    let mut args = sshd.options();
    args.extend([
        "-p".into(),
        "22".into(),
        "root@127.0.0.1".into(),
        "true".into(),
    ]);
    let (_, err, code) = run(Command::new("ssh").args(args));
    assert_eq!(code, Some(255), "{err}");
}

#[test]
fn the_netns_host_connects_back_to_us() {
    let Some(host) = NetnsHost::start_or_skip("the_netns_host_connects_back_to_us") else {
        return;
    };
    let listener = TcpListener::bind((host.local_address(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let local = host.local_address();
    // The host connects, writes and exits before we accept: the connection waits in
    // the listen queue, so nothing here can block on a failed attempt.
    let (_, err, code) = run(host
        .sshd()
        .ssh()
        .arg(format!("exec 3<>/dev/tcp/{local}/{port}; echo hello >&3")));
    assert_eq!(code, Some(0), "{err}");
    listener.set_nonblocking(true).unwrap();
    let (mut stream, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), host.address());
    stream.set_nonblocking(false).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello\n");
}

#[test]
fn dropped_fixtures_leave_no_process_behind() {
    let sshd = Sshd::start();
    // A command that leaves its session and its daemon's process tree.
    let (out, err, code) = run(sshd
        .ssh()
        .arg("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"));
    assert_eq!(code, Some(0), "{err}");
    let detached: u32 = out.trim().parse().unwrap();
    assert!(process_is_running(detached));
    let mut pids = sshd.pids();
    assert!(pids.contains(&detached), "{pids:?}");

    let slurm = Slurm::start();
    // A step still running, whose step daemon (slurmstepd) left slurmd's tree.
    // In a process group of its own: srun forks a helper that outlives a killed srun.
    let mut step = slurm
        .srun()
        .args(["-N1", "sh", "-c", "echo $$; exec sleep 1000"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(step.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let task: u32 = line.trim().parse().unwrap();
    assert!(process_is_running(task));
    let slurm_pids = slurm.pids();
    assert!(slurm_pids.contains(&task), "{slurm_pids:?}");
    assert!(
        slurm_pids.len() >= 5,
        "munged, slurmctld, slurmd, slurmstepd, task: {slurm_pids:?}"
    );
    pids.extend(slurm_pids);
    let dirs = [sshd.dir().to_owned(), slurm.dir().to_owned()];

    drop(sshd);
    drop(slurm);
    let running: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| process_is_running(*p))
        .collect();
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
    // The srun client is ours, not the fixture's: it is for the test to end it.
    // SAFETY: a plain killpg(2) of the group this test created for the client.
    assert_eq!(unsafe { libc::killpg(step.id() as i32, libc::SIGKILL) }, 0);
    step.wait().unwrap();
}

#[test]
fn a_dropped_netns_host_takes_its_namespace_and_link_along() {
    let Some(host) =
        NetnsHost::start_or_skip("a_dropped_netns_host_takes_its_namespace_and_link_along")
    else {
        return;
    };
    let address = host.local_address();
    let pids = host.sshd().pids();
    drop(host);
    assert!(pids.iter().all(|p| !process_is_running(*p)), "{pids:?}");
    // The kernel frees a namespace, and the veth pair with it, asynchronously.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let (out, _, _) = run(Command::new("ip").args(["-o", "-4", "addr", "show"]));
        if !out.contains(&format!(" {address}/")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "link still up: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn leak_checks_see_through_live_fixtures() {
    let leaks = common::LeakCheck::start().await;
    let sshd = tokio::task::spawn_blocking(Sshd::start).await.unwrap();
    let mut ssh = multiprocess::Command::new("ssh");
    ssh.args(sshd.ssh_args()).arg("true");
    ssh.spawn().unwrap().join().await.unwrap();
    leaks.finish().await;
    drop(sshd);
}
