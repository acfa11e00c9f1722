//! Scratch directories of the tests: sockets, key files, copies of the test binary.

use std::path::{Path, PathBuf};

/// A directory of one test, empty when made, removed with its contents when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `mp-PREFIX-NAME-PID` under the temporary directory. The process id keeps
    /// concurrent runs of one test binary apart; whatever a killed run left is removed.
    pub fn new(prefix: &str, name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mp-{prefix}-{name}-{}", std::process::id()));
        Scratch::at(dir)
    }

    /// The directory `dir`, made empty.
    pub fn at(dir: PathBuf) -> Scratch {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `contents` to the file `name` in the directory.
    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
