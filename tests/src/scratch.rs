//! A test's own directory under the system temp dir, removed when dropped.

use std::path::{Path, PathBuf};

pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory named after the suite (`files`, `media`, ...) and the test's `label`.
    pub fn new(suite: &str, label: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("switchboard-{suite}-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// [`Scratch::join`] as a string, for command-line arguments.
    pub fn join_str(&self, name: &str) -> String {
        let path = self.join(name);
        path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display())).to_string()
    }

    /// The directory as a string, for command-line arguments.
    pub fn str(&self) -> &str {
        self.0.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", self.0.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
