//! Introspection as Python's `multiprocessing` offers it: this process, and our children.

use crate::{exit, sys};

/// This process as the crate sees it: what [`current_process`] returns.
///
/// ```
/// let me = multiprocess::current_process();
/// assert_eq!(me.pid(), std::process::id());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    name: String,
    pid: u32,
    parent_pid: u32,
}

impl CurrentProcess {
    /// The process's name: the one given to [`ProcessBuilder::name`](crate::ProcessBuilder::name)
    /// (or `Process-N`) in a function child, `MainProcess` elsewhere, as in Python.
    ///
    /// ```
    /// assert_eq!(multiprocess::current_process().name(), "MainProcess");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    ///
    /// ```
    /// assert_eq!(multiprocess::current_process().pid(), std::process::id());
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The parent's process id (the process that spawned a function child, also for
    /// fork-server children, which are their spawner's own children).
    ///
    /// ```
    /// let me = multiprocess::current_process();
    /// assert_eq!(me.parent_pid(), std::os::unix::process::parent_id());
    /// ```
    pub fn parent_pid(&self) -> u32 {
        self.parent_pid
    }
}

/// This process: its name (`MainProcess` unless it is a function child of ours), pid
/// and parent's pid. Python's `multiprocessing.current_process()`.
///
/// ```
/// fn whoami(_: ()) -> (String, u32) {
///     let me = multiprocess::current_process();
///     (me.name().to_string(), me.parent_pid())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let child = multiprocess::Process::builder().name("resizer").spawn(whoami, ())?;
/// let (name, parent) = child.await?;
/// assert_eq!(name, "resizer");
/// assert_eq!(parent, std::process::id());
/// # Ok(())
/// # }
/// ```
pub fn current_process() -> CurrentProcess {
    let name = crate::start::own_name();
    CurrentProcess {
        name: name.unwrap_or_else(|| "MainProcess".to_string()),
        pid: std::process::id(),
        parent_pid: std::os::unix::process::parent_id(),
    }
}

/// A live child of this process, as [`active_children`] lists it.
///
/// ```
/// for child in multiprocess::active_children() {
///     println!("{} {}", child.pid(), child.name());
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveChild {
    pid: u32,
    name: String,
}

impl ActiveChild {
    /// The child's process id.
    ///
    /// ```
    /// let pids: Vec<u32> = multiprocess::active_children().iter().map(|c| c.pid()).collect();
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's name (a function child's, or a program's name).
    ///
    /// ```
    /// let names: Vec<String> =
    ///     multiprocess::active_children().iter().map(|c| c.name().to_string()).collect();
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The children this process started through the crate (function children and
/// programs, handles held or dropped) that are still running, in pid order. Children
/// that have exited are left out, and those whose handle was dropped are reaped on the
/// way, as Python's `multiprocessing.active_children()` joins them. The fork server is
/// not listed.
///
/// ```
/// fn forever(_: ()) {
///     loop { std::thread::park(); }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> multiprocess::Result<()> {
/// let child = multiprocess::spawn_process(forever, ())?;
/// assert!(multiprocess::active_children().iter().any(|c| c.pid() == child.pid()));
/// # Ok(())
/// # }
/// ```
pub fn active_children() -> Vec<ActiveChild> {
    exit::reap_orphans();
    exit::active::snapshot()
        .into_iter()
        .filter(|(pid, _)| !sys::child_has_exited(*pid))
        .map(|(pid, name)| ActiveChild { pid, name })
        .collect()
}
