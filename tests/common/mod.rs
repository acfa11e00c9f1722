//! Helpers shared by the integration tests: leak checks read from `/proc`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

pub mod cluster;
pub mod launchers;
pub mod running;
mod scratch;

#[allow(unused_imports)]
pub use scratch::Scratch;

/// Open descriptors of this test process, counted so that other tests' runtimes do not
/// disturb the count: tokio's epoll and eventfd descriptors are left out, and sockets
/// count once per socket (each runtime with signal handling holds a duplicate of one
/// process-wide signal socket), so a leaked socket of ours still shows as a new one.
pub fn fd_count() -> usize {
    let list = fd_list();
    let targets = list
        .iter()
        .map(|fd| fd.split_once("->").map(|(_, t)| t).unwrap_or(""));
    let mut sockets = std::collections::HashSet::new();
    let mut others = 0;
    for target in targets {
        if target.ends_with("[eventpoll]") || target.ends_with("[eventfd]") {
            continue;
        }
        if target.starts_with("socket:") {
            sockets.insert(target.to_string());
        } else {
            others += 1;
        }
    }
    sockets.len() + others
}

/// What each open descriptor points at, for failure messages.
pub fn fd_list() -> Vec<String> {
    let mut list: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    list.sort();
    list
}

/// `(pid, state)` of every process whose parent is this test process.
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces: parse after it.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        // Fixture daemons (sshd, Slurm) live as long as their fixture, by design.
        if ppid == me && !cluster::is_fixture_daemon(pid) {
            found.push((pid, state));
        }
    }
    found
}

pub fn zombies() -> usize {
    children().iter().filter(|(_, state)| *state == 'Z').count()
}

/// Whether `pid` is the fork server's zygote.
pub fn is_forkserver(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "mp-forkserver")
}

/// Whether a process with this pid exists at all (zombies included).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until `done` holds, for background reaping to catch up; fails after 20 s.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; now open: {:?}",
            fd_list()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The children the fork server holds parked right now (children of ours that no
/// handle owns, each holding two descriptors of ours: its pidfd and its control
/// socket), and the descriptor count without theirs; read so that no child joins or
/// leaves the pool while the descriptors are counted.
pub fn parked_and_fds() -> (Vec<u32>, usize) {
    loop {
        let before = multiprocess::forkserver_stats().parked;
        let fds = fd_count();
        let after = multiprocess::forkserver_stats().parked;
        if before == after {
            return (after.clone(), fds - 2 * after.len());
        }
    }
}

/// Tests in one binary share the process's descriptor table and children, so leak
/// checks take this lock to see only their own.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A snapshot of descriptors and children, compared when the test ends.
pub struct LeakCheck {
    fds: usize,
    fd_list: Vec<String>,
    servers: Vec<u32>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Live fork servers among our children. A forked child killed before it named itself
/// still bears the server's name: only a live process counts as the server.
fn live_servers() -> Vec<u32> {
    children()
        .into_iter()
        .filter(|(pid, state)| *state != 'Z' && is_forkserver(*pid))
        .map(|(pid, _)| pid)
        .collect()
}

impl LeakCheck {
    pub async fn start() -> LeakCheck {
        let serial = SERIAL.lock().await;
        warm_up().await;
        LeakCheck {
            fds: parked_and_fds().1,
            fd_list: fd_list(),
            servers: live_servers(),
            _serial: serial,
        }
    }

    /// [`LeakCheck::start`] for a test that drives runtimes of its own.
    pub fn start_blocking() -> LeakCheck {
        side_runtime().block_on(LeakCheck::start())
    }

    /// [`LeakCheck::finish`] for a test that drives runtimes of its own.
    pub fn finish_blocking(self) {
        side_runtime().block_on(self.finish())
    }

    pub async fn finish_ignoring_forkserver(self) {
        self.finish().await
    }

    /// Waits until every child is gone (reaped, not even a zombie) and the descriptor
    /// count is back to where it started, and fails the test if that does not happen.
    /// The fork server, a deliberate long-lived child, is left out; so are the three
    /// descriptors of ours it holds if the test started a new one, and the children it
    /// holds parked with their descriptors, which no handle owns.
    pub async fn finish(self) {
        let LeakCheck {
            fds,
            fd_list: before,
            servers,
            ..
        } = self;
        let clean = || {
            let now = live_servers();
            let (parked, fds_now) = parked_and_fds();
            let only_servers = children()
                .iter()
                .all(|(pid, _)| now.contains(pid) || parked.contains(pid));
            let started = now.iter().filter(|pid| !servers.contains(pid)).count();
            only_servers && zombies() == 0 && fds_now <= fds + 3 * started
        };
        eventually(
            &format!(
                "no child left and fd count back to {fds} (had {before:?}; children {:?})",
                children()
            ),
            clean,
        )
        .await;
    }
}

/// A runtime for the leak check itself, apart from the ones a test builds and drops.
fn side_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn warm_up_child(_: ()) {}

/// Spawns and joins one child, so that process-wide state created once (a signal
/// pipe, cached identity, the fork server) exists before the baseline is taken.
pub async fn warm_up() {
    multiprocess::spawn_process(warm_up_child, ())
        .unwrap()
        .join()
        .await
        .unwrap();
}

/// Waits for an arbitrary process (not necessarily our child) to exit, through a pidfd
/// of the test's own.
pub async fn await_exit_of(pid: u32, limit: Duration) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        return true; // Already gone.
    }
    // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    #[allow(deprecated)] // `register` needs a newer tokio than the tests require.
    let afd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).unwrap();
    tokio::time::timeout(limit, afd.readable()).await.is_ok()
}

/// Whether this run forces the SIGCHLD backend.
pub fn forced_backend() -> Option<String> {
    std::env::var("MULTIPROCESS_REAPER").ok()
}

/// Reads everything a command wrote to its piped stdout.
pub async fn read_stdout(process: &mut multiprocess::Process<()>) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = String::new();
    process
        .take_stdout()
        .expect("stdout taken once")
        .expect("stdout piped")
        .read_to_string(&mut out)
        .await
        .expect("stdout readable");
    out
}

/// The descriptor of this worker's connection to the pool. A worker is a function
/// child holding two sockets: first the one every function child reports its end on,
/// then the connection it was given as its argument.
pub fn worker_socket() -> i32 {
    let sockets: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(sockets.len(), 2, "worker sockets: {sockets:?}");
    sockets.into_iter().max().unwrap()
}

pub fn write_to_pool(bytes: &[u8]) {
    // SAFETY: a plain write of a live buffer to a descriptor this process holds.
    let written = unsafe { libc::write(worker_socket(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(written, bytes.len() as isize);
}

/// The start of a frame: a header announcing 100 bytes (no descriptors), and 40 of them.
pub fn torn_frame() -> Vec<u8> {
    let mut frame = 100u32.to_le_bytes().to_vec();
    frame.extend([0, 0xA7, 0, 0]);
    frame.extend([1; 40]);
    frame
}

/// Every process below `pid`, found through `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        parents.entry(ppid).or_default().push(child);
    }
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in parents.get(&p).into_iter().flatten() {
            found.push(c);
            todo.push(c);
        }
    }
    found
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .is_some_and(|i| !stat[i + 2..].starts_with('Z'))
    })
}
