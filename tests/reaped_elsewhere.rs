//! Children reaped by another part of the program: a thread of this test binary reaps
//! every child that exits with `waitpid(-1)`, as some programs and C libraries do. A
//! handle must then neither abort the program nor signal a process that took over the
//! pid, and `join` still returns what a function child sent.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Once;
use std::time::{Duration, Instant};

use multiprocess::{Command, Error, Process, Signal, spawn_process};

/// Starts the thread that reaps whatever child of this process exits.
fn reap_every_child() {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::spawn(|| {
            loop {
                let mut status = 0;
                // SAFETY: waitpid(-1) with a pointer to a live c_int.
                if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
                    // No child at the moment.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
    });
}

fn seven(_: ()) -> u32 {
    7
}

async fn reaped_by_the_other_thread(pid: u32) {
    common::eventually("the child reaped by the other thread", || {
        !common::exists(pid)
    })
    .await;
}

#[tokio::test]
async fn dropping_a_child_reaped_elsewhere_does_not_abort() {
    reap_every_child();
    let leaks = common::LeakCheck::start().await;
    let function = spawn_process(seven, ()).unwrap();
    let lingering = Process::builder()
        .kill_on_drop(false)
        .spawn(seven, ())
        .unwrap();
    let program = Command::new("true").spawn().unwrap();
    for pid in [function.pid(), lingering.pid(), program.pid()] {
        reaped_by_the_other_thread(pid).await;
    }
    drop(function);
    drop(lingering);
    drop(program);
    // The next spawn sweeps the orphans left behind; still no abort.
    assert_eq!(spawn_process(seven, ()).unwrap().join().await.unwrap(), 7);
    leaks.finish().await;
}

#[tokio::test]
async fn join_returns_the_result_of_a_child_reaped_elsewhere() {
    reap_every_child();
    let leaks = common::LeakCheck::start().await;
    let mut function = spawn_process(seven, ()).unwrap();
    reaped_by_the_other_thread(function.pid()).await;
    assert!(!function.is_alive());
    assert_eq!(function.join().await.unwrap(), 7);
    assert_eq!(function.exit_status(), None);

    let mut program = Command::new("true").spawn().unwrap();
    let pid = program.pid();
    reaped_by_the_other_thread(pid).await;
    let err = program.join().await.unwrap_err();
    assert!(
        matches!(err, Error::ReapedElsewhere { pid: p } if p == pid),
        "{err:?}"
    );
    assert!(matches!(
        program.wait().await,
        Err(Error::ReapedElsewhere { .. })
    ));
    assert!(program.kill().is_ok());
    drop((function, program));
    leaks.finish().await;
}

/// Starts `sleep` with exactly the pid `pid`, by setting the last pid the kernel handed
/// out; other processes of the machine may take it first, so this retries until a
/// deadline. `None` where the kernel setting cannot be written (not root).
#[allow(clippy::zombie_processes)] // The reaping thread reaps every child of ours.
fn bystander_with_pid(pid: u32) -> Option<std::process::Child> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            return None;
        }
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        if child.id() == pid {
            return Some(child);
        }
        // SAFETY: kill on the pid of a child that is alive (the reaping thread only
        // reaps it once it has died).
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    panic!("pid {pid} could not be taken over within 20 s");
}

fn pidfd_of(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(raw >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw as i32) }
}

fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, no waiting.
    unsafe { libc::poll(&mut poll, 1, 0) == 1 }
}

#[tokio::test]
async fn signalling_a_child_reaped_elsewhere_spares_the_process_that_took_its_pid() {
    reap_every_child();
    let leaks = common::LeakCheck::start().await;
    let child = spawn_process(seven, ()).unwrap();
    let pid = child.pid();
    reaped_by_the_other_thread(pid).await;
    let Some(bystander) = bystander_with_pid(pid) else {
        eprintln!("skipped: taking over a pid needs to write /proc/sys/kernel/ns_last_pid");
        drop(child);
        leaks.finish().await;
        return;
    };
    let bystander_fd = pidfd_of(bystander.id());
    child.kill().unwrap();
    child.signal(Signal::SIGTERM).unwrap();
    drop(child);
    // Signals take effect before the sending call returns to a process that is
    // running; allow the kernel a moment anyway before asserting nothing happened.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!has_exited(&bystander_fd), "the bystander was signalled");
    // SAFETY: the bystander is alive and unreaped (checked just above).
    unsafe { libc::kill(bystander.id() as i32, libc::SIGKILL) };
    reaped_by_the_other_thread(pid).await;
    drop((bystander, bystander_fd));
    leaks.finish().await;
}

fn forked_seven() -> Process<u32> {
    Process::builder()
        .start_method(multiprocess::StartMethod::Forkserver)
        .spawn(seven, ())
        .unwrap()
}

/// The fork server's parked children, killed from outside and reaped by the other
/// thread before the crate can: no spawn fails, and nothing is left.
#[tokio::test]
async fn parked_children_reaped_elsewhere_fail_no_spawn() {
    reap_every_child();
    let leaks = common::LeakCheck::start().await;
    for round in 0..5 {
        forked_seven().join().await.unwrap();
        common::eventually("a child parked", || {
            !multiprocess::forkserver_stats().parked.is_empty()
        })
        .await;
        for pid in multiprocess::forkserver_stats().parked {
            // SAFETY: kill on a pid; the pool holds a pidfd of it, so it is not reaped
            // and reused until the pool lets go (at worst the kill misses).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let children: Vec<_> = (0..4).map(|_| forked_seven()).collect();
        for child in children {
            assert_eq!(child.await.unwrap(), 7, "round {round}");
        }
    }
    leaks.finish().await;
}
