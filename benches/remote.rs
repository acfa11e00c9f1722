//! How long one child takes, spawned and joined, when it runs on the far side of a
//! launcher: locally for reference, through the `env` launcher (the agent and stream
//! without any transport), through ssh to an `sshd` on loopback, and through Slurm's
//! `srun` on a single-node cluster (both started by this benchmark as children, with
//! the test fixtures).
//!
//! `cargo bench --bench remote`. Prints a Markdown table.

use std::time::{Duration, Instant};

#[allow(dead_code)]
mod common;

#[path = "../tests/common/cluster/mod.rs"]
mod cluster;

use common::stats;
use multiprocess::{Launcher, Process};

fn trivial(x: u32) -> u32 {
    x + 1
}

async fn spawn_join_times(launcher: Option<Launcher>, runs: usize) -> Vec<Duration> {
    let mut builder = Process::builder();
    if let Some(launcher) = launcher {
        builder = builder.launcher(launcher);
    }
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = Instant::now();
        let child = builder.spawn(trivial, i as u32).unwrap();
        assert_eq!(child.await.unwrap(), i as u32 + 1);
        times.push(start.elapsed());
    }
    times
}

/// The transport's own floor: the launcher running `true` there.
fn command_times(mut command: std::process::Command, runs: usize) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let status = command.status().unwrap();
            assert!(status.success());
            start.elapsed()
        })
        .collect()
}

fn row(what: &str, times: Vec<Duration>) {
    let runs = times.len();
    let s = stats(times);
    println!(
        "| {what} | {runs} | {:.2} | {:.2} |",
        s.median.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let runs = 50;
    let sshd = tokio::task::spawn_blocking(cluster::Sshd::start)
        .await
        .unwrap();
    let slurm = tokio::task::spawn_blocking(cluster::Slurm::start)
        .await
        .unwrap();
    let mut ssh = Launcher::ssh(sshd.host().to_string())
        .port(sshd.port())
        .user(sshd.user());
    for (key, value) in sshd.option_pairs() {
        ssh = ssh.option(key, value);
    }
    let mut srun = Launcher::srun(Vec::<String>::new());
    for (key, value) in slurm.env() {
        srun = srun.env(key, value);
    }
    let launchers = [
        ("local (fork server)", None),
        (
            "`env` launcher",
            Some(Launcher::command("env", Vec::<String>::new())),
        ),
        ("ssh to 127.0.0.1", Some(ssh)),
        ("srun, one node", Some(srun)),
    ];
    println!("| spawn + join of a trivial function | runs | median ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for (what, launcher) in launchers {
        // Warm: the fork server, the page cache, ssh's and Slurm's first connections.
        spawn_join_times(launcher.clone(), 3).await;
        row(what, spawn_join_times(launcher, runs).await);
    }
    let mut ssh_true = sshd.ssh();
    ssh_true.arg("true");
    let mut srun_true = slurm.srun();
    srun_true.arg("true");
    for (what, command) in [
        ("plain `ssh host true`", ssh_true),
        ("plain `srun true`", srun_true),
    ] {
        let times = tokio::task::spawn_blocking(move || command_times(command, 20))
            .await
            .unwrap();
        row(what, times);
    }
}
