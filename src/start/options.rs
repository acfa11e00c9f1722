//! Options shared by function children and external commands.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a function child is started.
///
/// ```
/// use multiprocess::{Process, StartMethod};
/// let builder = Process::builder().start_method(StartMethod::Forkserver);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMethod {
    /// Execute this program again; the child reaches our bootstrap before `main`.
    /// Safe from any state of the parent, about a millisecond per child.
    Exec,
    /// Fork from a zygote process (itself started by `exec`, so clean and
    /// single-threaded); the child is still the spawning process's own child. Much
    /// faster; faster still when the zygote has forked a child ahead of demand, which
    /// the spawn then hands its work to (see [`forkserver_stats`](crate::forkserver_stats)
    /// and [`set_max_parked`](crate::set_max_parked)). Children see the environment the
    /// zygote started with and start in the builder's directory, or else the parent's
    /// working directory of the moment; a builder that sets the environment or a
    /// process group to join uses `Exec`.
    Forkserver,
}

impl StartMethod {
    /// The default: `Forkserver`, unless `MULTIPROCESS_START_METHOD` says `exec` (or
    /// `forkserver`). Any other value of that variable (Python's `spawn` or `fork`, a
    /// typo) is refused: every spawn using the default then fails with an error naming
    /// it, and this function returns `Forkserver`. (Where the kernel cannot fork for the
    /// server, spawns fall back to `Exec` by themselves.)
    ///
    /// ```
    /// let method = multiprocess::StartMethod::from_env();
    /// ```
    pub fn from_env() -> StartMethod {
        StartMethod::configured().unwrap_or(StartMethod::Forkserver)
    }

    /// The method `MULTIPROCESS_START_METHOD` asks for, read once.
    pub(crate) fn configured() -> Result<StartMethod, crate::error::Error> {
        static CHOICE: std::sync::OnceLock<Result<StartMethod, String>> =
            std::sync::OnceLock::new();
        let choice = CHOICE.get_or_init(|| match std::env::var("MULTIPROCESS_START_METHOD") {
            Err(std::env::VarError::NotPresent) => Ok(StartMethod::Forkserver),
            Ok(value) => match value.as_str() {
                "exec" => Ok(StartMethod::Exec),
                "forkserver" => Ok(StartMethod::Forkserver),
                _ => Err(value),
            },
            Err(std::env::VarError::NotUnicode(value)) => Err(value.to_string_lossy().into()),
        });
        choice
            .clone()
            .map_err(|value| crate::error::Error::UnknownStartMethod { value })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) name: Option<String>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) env_clear: bool,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) kill_on_drop: bool,
    /// `None`: as `kill_on_drop`.
    pub(crate) die_with_parent: Option<bool>,
    pub(crate) process_group: Option<i32>,
    /// The child leads a process group of its own, which kill and kill-on-drop signal.
    pub(crate) kill_tree: bool,
    pub(crate) start_method: Option<StartMethod>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) panic_output: crate::PanicOutput,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            name: None,
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            kill_on_drop: true,
            die_with_parent: None,
            process_group: None,
            kill_tree: false,
            start_method: None,
            memory_limit: None,
            panic_output: crate::PanicOutput::Tidy,
        }
    }
}

impl Options {
    /// The configured name, or `Process-N` as Python numbers its processes.
    pub(crate) fn resolved_name(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        self.name
            .clone()
            .unwrap_or_else(|| format!("Process-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// Whether the child gets `SIGKILL` when this process dies: as asked, or else
    /// whenever it must not outlive its handle.
    pub(crate) fn dies_with_parent(&self) -> bool {
        self.die_with_parent.unwrap_or(self.kill_on_drop)
    }

    /// Checks the working directory can be entered, so that a missing one is reported
    /// as such rather than as the program (or the spawn) failing.
    pub(crate) fn check_current_dir(&self) -> Result<(), crate::error::Error> {
        let Some(dir) = &self.current_dir else {
            return Ok(());
        };
        let problem = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            Err(err) => err,
        };
        Err(crate::error::Error::CurrentDir {
            path: dir.clone(),
            source: problem,
        })
    }

    /// Whether a fork server child can honour these options.
    pub(crate) fn use_forkserver(&self) -> Result<bool, crate::error::Error> {
        let method = match self.start_method {
            Some(method) => method,
            None => StartMethod::configured()?,
        };
        Ok(method == StartMethod::Forkserver
            && self.env.is_empty()
            && !self.env_clear
            && self.process_group.is_none())
    }

    pub(crate) fn apply(&self, command: &mut std::process::Command) {
        if self.env_clear {
            command.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        if self.kill_tree {
            command.process_group(0);
        } else if let Some(group) = self.process_group {
            command.process_group(group);
        }
    }
}
