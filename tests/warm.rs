//! Warm children: fork-server children parked ahead of demand. A spawn that takes one
//! must give a child indistinguishable from one forked for it; parked children must be
//! invisible to the program's own view of its children, and never left behind.

mod common;

use std::time::Duration;

use multiprocess::{Process, ProcessBuilder, StartMethod, forkserver_stats};

fn forked() -> ProcessBuilder {
    Process::builder().start_method(StartMethod::Forkserver)
}

fn nothing(_: ()) {}

/// Waits until the fork server holds at least one child parked, and returns them.
async fn some_parked() -> Vec<u32> {
    if forkserver_stats().parked.is_empty() {
        // Demand, whatever start method this run defaults to.
        forked().spawn(nothing, ()).unwrap().join().await.unwrap();
    }
    common::eventually("a child parked", || !forkserver_stats().parked.is_empty()).await;
    forkserver_stats().parked
}

/// Spawns with `builder`, retrying until the spawn was served by a child parked before
/// it (one may be let go between looking and spawning).
async fn spawn_warm<A, R>(builder: &ProcessBuilder, f: fn(A) -> R, arg: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Clone,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    for _ in 0..50 {
        let parked = some_parked().await;
        let child = builder.spawn(f, arg.clone()).unwrap();
        if parked.contains(&child.pid()) {
            return child;
        }
    }
    panic!("no spawn was served by a parked child");
}

/// A new empty directory, by its canonical path.
fn new_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-warm-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).unwrap();
    dir.canonicalize().unwrap()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The process group of `pid`, from `/proc`.
fn pgrp(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// What a child sees of itself that a spawn decides.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Seen {
    name: String,
    comm: String,
    cwd: std::path::PathBuf,
    parent_death_signal: i32,
    group: u32,
    memory_limit: u64,
    signals: String,
}

fn seen(_: ()) -> Seen {
    let mut parent_death_signal = 0;
    // SAFETY: PR_GET_PDEATHSIG stores an int through the pointer, which is live.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut parent_death_signal as *mut i32) };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let signals = status
        .lines()
        .filter(|l| {
            ["SigBlk", "SigIgn", "SigCgt"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join(",");
    Seen {
        name: multiprocess::current_process().name().to_string(),
        comm: comm(std::process::id()),
        cwd: std::env::current_dir().unwrap(),
        parent_death_signal,
        group: nix::unistd::getpgrp().as_raw() as u32,
        memory_limit: limit.rlim_cur,
        signals,
    }
}

fn sleeps_forever(_: ()) {
    loop {
        std::thread::park();
    }
}

#[tokio::test]
async fn a_warm_child_honours_every_builder_option() {
    let leaks = common::LeakCheck::start().await;
    let dir = new_dir("options");
    let builder = forked()
        .name("warm-options")
        .kill_tree(true)
        .die_with_parent(false)
        .memory_limit(1 << 40)
        .current_dir(&dir);
    let mut child = spawn_warm(&builder, seen, ()).await;
    let pid = child.pid();
    // Set before the spawn returned: the name and the group are there at once.
    assert_eq!(comm(pid), "warm-options");
    assert_eq!(pgrp(pid), pid);
    let warm = child.join().await.unwrap();
    let exec = Process::builder()
        .start_method(StartMethod::Exec)
        .spawn(seen, ())
        .unwrap()
        .join()
        .await
        .unwrap();
    assert_eq!(
        warm,
        Seen {
            name: "warm-options".into(),
            comm: "warm-options".into(),
            cwd: dir.clone(),
            parent_death_signal: 0,
            group: pid,
            memory_limit: 1 << 40,
            signals: exec.signals.clone(),
        }
    );
    // The defaults: dies with us, in our group, in our directory of the moment.
    let defaults = spawn_warm(&forked(), seen, ()).await.join().await.unwrap();
    assert_eq!(defaults.parent_death_signal, libc::SIGKILL);
    assert_eq!(defaults.group, nix::unistd::getpgrp().as_raw() as u32);
    assert_eq!(defaults.cwd, std::env::current_dir().unwrap());
    assert_eq!(defaults.signals, exec.signals);
    assert!(defaults.name.starts_with("Process-"), "{}", defaults.name);
    std::fs::remove_dir(&dir).unwrap();
    leaks.finish().await;
}

fn cwd(_: ()) -> std::path::PathBuf {
    std::env::current_dir().unwrap()
}

#[tokio::test]
async fn a_warm_child_starts_in_the_directory_of_the_moment_of_the_spawn() {
    let leaks = common::LeakCheck::start().await;
    let before = std::env::current_dir().unwrap();
    let dir_path = new_dir("moment");
    // Parked before the directory changes.
    some_parked().await;
    std::env::set_current_dir(&dir_path).unwrap();
    let seen = spawn_warm(&forked(), cwd, ()).await.join().await;
    std::env::set_current_dir(&before).unwrap();
    std::fs::remove_dir(&dir_path).unwrap();
    assert_eq!(seen.unwrap(), dir_path);
    leaks.finish().await;
}

#[tokio::test]
async fn a_dropped_warm_child_is_killed_and_reaped() {
    let leaks = common::LeakCheck::start().await;
    let child = spawn_warm(&forked().name("warm-dropped"), sleeps_forever, ()).await;
    let pid = child.pid();
    let listed = multiprocess::active_children();
    assert!(
        listed
            .iter()
            .any(|c| c.pid() == pid && c.name() == "warm-dropped"),
        "{listed:?}"
    );
    drop(child);
    assert!(common::await_exit_of(pid, Duration::from_secs(20)).await);
    leaks.finish().await;
}

#[tokio::test]
async fn parked_children_are_ours_but_not_the_programs() {
    let leaks = common::LeakCheck::start().await;
    let parked = some_parked().await;
    let children = common::children();
    let listed = multiprocess::active_children();
    for pid in &parked {
        assert!(
            children.iter().any(|(child, _)| child == pid),
            "parked {pid} is a child of ours"
        );
        assert_eq!(comm(*pid), "mp-parked");
        assert!(!listed.iter().any(|c| c.pid() == *pid), "{listed:?}");
    }
    leaks.finish().await;
}

#[tokio::test]
async fn the_zygote_dying_leaves_no_parked_child_behind() {
    let leaks = common::LeakCheck::start().await;
    let parked = some_parked().await;
    let server = forkserver_stats().server.expect("a fork server runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // No spawn comes to notice: the parked children go, and everything is reaped.
    common::eventually("the server and its parked children gone", || {
        !common::exists(server) && parked.iter().all(|pid| !common::exists(*pid))
    })
    .await;
    let stats = forkserver_stats();
    assert_eq!(stats.server, None);
    assert!(stats.parked.is_empty(), "{stats:?}");
    assert_eq!(common::zombies(), 0);
    // And the next spawn starts over.
    forked().spawn(nothing, ()).unwrap().join().await.unwrap();
    leaks.finish().await;
}

#[tokio::test]
async fn a_parked_child_killed_from_outside_is_replaced() {
    let leaks = common::LeakCheck::start().await;
    some_parked().await;
    // Found as anyone would: children of ours that bear the parked name.
    let killed: Vec<u32> = common::children()
        .into_iter()
        .filter(|(pid, state)| *state != 'Z' && comm(*pid) == "mp-parked")
        .map(|(pid, _)| pid)
        .collect();
    assert!(!killed.is_empty());
    for pid in &killed {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    for i in 0..20u32 {
        let mut child = forked().spawn(|x: u32| x * 2, i).unwrap();
        assert!(!killed.contains(&child.pid()));
        assert_eq!(child.join().await.unwrap(), i * 2);
    }
    common::eventually("the killed children reaped, and others parked", || {
        let parked = forkserver_stats().parked;
        killed.iter().all(|pid| !common::exists(*pid))
            && !parked.is_empty()
            && parked.iter().all(|pid| !killed.contains(pid))
    })
    .await;
    leaks.finish().await;
}

#[tokio::test]
async fn an_idle_fork_server_keeps_no_child_parked() {
    let leaks = common::LeakCheck::start().await;
    // A burst makes demand grow.
    let burst: Vec<_> = (0..8)
        .map(|i| forked().spawn(|x: u32| x + 1, i).unwrap())
        .collect();
    for (i, child) in burst.into_iter().enumerate() {
        assert_eq!(child.await.unwrap(), i as u32 + 1);
    }
    let parked = some_parked().await;
    common::eventually("no child parked once idle", || {
        let stats = forkserver_stats();
        stats.parked.is_empty() && stats.target == 0
    })
    .await;
    assert!(parked.iter().all(|pid| !common::exists(*pid)));
    assert!(
        forkserver_stats().server.is_some(),
        "the server itself stays"
    );
    leaks.finish().await;
}
