//! Daemons that live exactly as long as their fixture, and no longer than the test.
//!
//! Three mechanisms, each covering what the others cannot:
//! - `PR_SET_PDEATHSIG`, armed from a thread that never exits (the signal follows the
//!   parent *thread*), kills the daemons themselves if the test process dies;
//! - a cgroup per fixture holds everything the daemons start, including processes that
//!   left their tree (an `sshd` session's detached command, a `slurmstepd`, which
//!   daemonises), and `cgroup.kill` ends them all at once when the fixture is dropped;
//! - fixtures whose test process is gone (it was killed, so nothing was dropped) are
//!   killed and removed by the next fixture that starts.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

/// Pids of the fixture daemons alive in this process, so that leak checks can tell
/// them from children a test forgot.
static DAEMONS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Whether `pid` is a daemon of a live fixture of this process.
pub fn is_fixture_daemon(pid: u32) -> bool {
    DAEMONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&pid)
}

/// The name every fixture's directory and cgroup starts with, followed by the owning
/// test process's pid: what finds the leftovers of a killed test process.
pub(super) const PREFIX: &str = "multiprocess-fixture-";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique name for a new fixture of this process: `PREFIX<pid>-<n>-<kind>`.
fn unique_name(kind: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}-{kind}", std::process::id())
}

/// The pid that owns a fixture named by [`unique_name`], if the name is one.
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether a fixture named `name` belongs to a test process that no longer exists.
fn is_stale(name: &str) -> bool {
    owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// A fixture's directory for keys, configuration, state and logs; removed on drop.
pub(super) struct FixtureDir {
    path: PathBuf,
}

impl FixtureDir {
    pub(super) fn create(kind: &str) -> FixtureDir {
        let tmp = std::env::temp_dir();
        remove_stale_dirs(&tmp);
        let path = tmp.join(unique_name(kind));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        FixtureDir { path }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for FixtureDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stale(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Runs `f` on the fixtures' spawning thread, which lives as long as the process, so
/// that the parent-death signal of what it spawns fires when the process dies rather
/// than when some test's thread ends.
fn on_spawner_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (done_tx, done_rx) = channel();
    let job: Job = Box::new(move || {
        let _ = done_tx.send(f());
    });
    let sender = SPAWNER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("fixture-spawner".into())
                .spawn(move || rx.into_iter().for_each(|job| job()))
                .expect("cannot start the fixture spawning thread");
            tx
        })
        .clone();
    sender.send(job).expect("the spawning thread never exits");
    done_rx.recv().expect("the spawning thread runs every job")
}

/// A cgroup (v2) holding one fixture's processes.
struct Cgroup {
    path: PathBuf,
}

/// Where the fixtures' cgroups live, if this machine has a writable cgroup v2 hierarchy.
fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mount = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })?;
    let root = mount.join("multiprocess-fixtures");
    std::fs::create_dir_all(&root).ok()?;
    Some(root)
}

impl Cgroup {
    /// A new cgroup, or `None` (said once, loudly) where cgroup v2 is not available.
    fn create(name: &str) -> Option<Cgroup> {
        let Some(root) = cgroup_root() else {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "NOTE: no writable cgroup v2 hierarchy: fixtures kill their daemons \
                     and the daemons' descendants still in their tree, but not processes \
                     that left it (detached session commands, slurmstepd)"
                )
            });
            return None;
        };
        remove_stale_cgroups(&root);
        let path = root.join(name);
        std::fs::create_dir(&path).ok()?;
        Some(Cgroup { path })
    }

    /// `cgroup.procs`, opened for a child to move itself in before it executes.
    fn procs(&self) -> std::io::Result<File> {
        File::options()
            .write(true)
            .open(self.path.join("cgroup.procs"))
    }

    /// Kills every process in the cgroup and waits (bounded) until none is left.
    fn kill_all(&self) {
        kill_and_wait(&self.path);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn kill_and_wait(path: &Path) {
    if std::fs::write(path.join("cgroup.kill"), "1").is_err() {
        // Kernels before 5.14 have no cgroup.kill: signal the members one by one.
        for pid in members(path) {
            // SAFETY: a plain kill(2); at worst the pid is already gone.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !members(path).is_empty() && Instant::now() < deadline {
        // The kernel empties the cgroup as the killed processes finish exiting; there
        // is no event to wait on short of inotify on cgroup.events.
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn members(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn remove_stale_cgroups(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stale(&entry.file_name().to_string_lossy()) {
            kill_and_wait(&entry.path());
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// How a daemon is started.
pub(super) struct Spawn {
    /// What the failure messages call it.
    pub name: &'static str,
    pub command: Command,
    /// Its standard output and error go here.
    pub log: PathBuf,
    /// Whether it starts in a network namespace of its own.
    pub new_netns: bool,
}

/// The daemons of one fixture.
pub(super) struct Daemons {
    // Dropped after the children are killed and reaped: see `Drop`.
    cgroup: Option<Cgroup>,
    children: Vec<(&'static str, PathBuf, Child)>,
}

impl Daemons {
    pub(super) fn new(kind: &str) -> Daemons {
        Daemons {
            cgroup: Cgroup::create(&unique_name(kind)),
            children: Vec::new(),
        }
    }

    /// Starts a daemon and returns its pid.
    pub(super) fn spawn(&mut self, spawn: Spawn) -> Result<u32, String> {
        let Spawn {
            name,
            mut command,
            log,
            new_netns,
        } = spawn;
        let procs = match &self.cgroup {
            Some(cgroup) => Some(cgroup.procs().map_err(|e| format!("cgroup: {e}"))?),
            None => None,
        };
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        let parent = std::process::id();
        // SAFETY: the hook runs between fork and exec and makes only async-signal-safe
        // system calls (prctl, getppid, write, unshare, _exit) on values prepared
        // before the fork; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the signal was armed.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                // "0" moves the writing process: the daemon is in its fixture's cgroup
                // before it can start anything.
                if let Some(fd) = procs_fd {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if new_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = on_spawner_thread(move || command.spawn())
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        drop(procs);
        let pid = child.id();
        DAEMONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        self.children.push((name, log, child));
        Ok(pid)
    }

    /// An error naming the first daemon that has exited, with the end of its log.
    pub(super) fn check_alive(&mut self) -> Result<(), String> {
        for (name, log, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{name} exited ({status}); {}",
                    super::run::log_tail(log)
                ));
            }
        }
        Ok(())
    }

    /// The end of every daemon's log, for failure messages.
    pub(super) fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(_, log, _)| super::run::log_tail(log))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The pids of the daemons and of every process in the fixture's cgroup.
    pub(super) fn pids(&self) -> Vec<u32> {
        let mut pids: BTreeSet<u32> = self.children.iter().map(|(_, _, c)| c.id()).collect();
        if let Some(cgroup) = &self.cgroup {
            pids.extend(members(&cgroup.path));
        }
        pids.into_iter().collect()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        match &self.cgroup {
            Some(cgroup) => cgroup.kill_all(),
            None => {
                let roots: Vec<u32> = self.children.iter().map(|(_, _, c)| c.id()).collect();
                for pid in descendants(&roots) {
                    // SAFETY: a plain kill(2) of processes in our daemons' trees.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        let mut registry = DAEMONS.lock().unwrap_or_else(|p| p.into_inner());
        for (_, _, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            registry.remove(&child.id());
        }
    }
}

/// `roots` and every process below them, as far as parent links still show it.
fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found
}

/// Writes a file, with the path in the message if that fails.
pub(super) fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
