//! Options shared by function children and external commands.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) name: Option<String>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) env_clear: bool,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) kill_on_drop: bool,
    pub(crate) die_with_parent: bool,
    pub(crate) process_group: Option<i32>,
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
