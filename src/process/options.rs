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
    /// faster. Children see the environment the zygote started with and start in the
    /// parent's working directory of the moment; a builder that sets the environment,
    /// the directory or the process group uses `Exec`.
    Forkserver,
}

impl StartMethod {
    /// The default: `Forkserver`, unless `MULTIPROCESS_START_METHOD=exec` is in the
    /// environment. (Where the kernel cannot fork for the server, spawns fall back to
    /// `Exec` by themselves.)
    ///
    /// ```
    /// let method = multiprocess::StartMethod::from_env();
    /// ```
    pub fn from_env() -> StartMethod {
        static CHOICE: std::sync::OnceLock<StartMethod> = std::sync::OnceLock::new();
        *CHOICE.get_or_init(
            || match std::env::var("MULTIPROCESS_START_METHOD").as_deref() {
                Ok("exec") => StartMethod::Exec,
                _ => StartMethod::Forkserver,
            },
        )
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) name: Option<String>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) env_clear: bool,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) kill_on_drop: bool,
    pub(crate) die_with_parent: bool,
    pub(crate) process_group: Option<i32>,
    pub(crate) start_method: Option<StartMethod>,
    pub(crate) memory_limit: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            name: None,
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            kill_on_drop: true,
            die_with_parent: false,
            process_group: None,
            start_method: None,
            memory_limit: None,
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

    /// Whether a fork server child can honour these options.
    pub(crate) fn use_forkserver(&self) -> bool {
        self.start_method.unwrap_or_else(StartMethod::from_env) == StartMethod::Forkserver
            && self.env.is_empty()
            && !self.env_clear
            && self.current_dir.is_none()
            && self.process_group.is_none()
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
        if let Some(group) = self.process_group {
            command.process_group(group);
        }
    }
}
