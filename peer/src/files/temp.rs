//! The receive directory's side of a transfer: free space, and the temporary file the bytes go
//! to until they are verified, then linked under a name that clashes with nothing.
//!
//! A temporary file is removed when its [`TempFile`] drops, and also when the peer exits
//! ([`remove_temp_files`]): the peer ends with `std::process::exit`, which runs no destructor,
//! so a transfer still running at exit (Ctrl-C, `--timeout`, `--expect` reached, end of stdin)
//! would otherwise leave its `.part` file behind.
//!
//! Everything here blocks on the file system: it runs on the blocking pool, never on an async
//! worker (see `receive`).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sync::lock;

use super::FileError;
use super::names::candidate_name;

/// Prefix of temporary files in the receive directory. Hidden, and never a sanitized name
/// (those never start with a dot), so a received file cannot be mistaken for one.
pub(crate) const TEMP_PREFIX: &str = ".switchboard-";
/// How many " (n)" suffixes to try before giving up on a free name.
const MAX_SUFFIX: u32 = 10_000;

/// Every temporary file of this process; `None` once [`remove_temp_files`] ran, after which no
/// new one is created. Creating, removing and the exit's sweep hold the lock, so a file cannot
/// be created behind the sweep.
static LIVE: Mutex<Option<BTreeSet<PathBuf>>> = Mutex::new(Some(BTreeSet::new()));

/// Removes every temporary file still there, and refuses new ones: call it when exiting.
/// Returns how many were removed.
pub fn remove_temp_files() -> usize {
    let Some(paths) = lock(&LIVE).take() else { return 0 };
    for path in &paths {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
    paths.len()
}

/// A temporary file that is removed when dropped, unless it was [`TempFile::persist`]ed.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub(crate) fn create(dir: &Path) -> Result<(TempFile, File), FileError> {
        let mut live = lock(&LIVE);
        let Some(paths) = live.as_mut() else { return Err(FileError::Exiting) };
        for _ in 0..16 {
            let path = dir.join(format!("{TEMP_PREFIX}{:016x}.part", rand::random::<u64>()));
            // create_new: never opens an existing file or follows a planted symlink.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    paths.insert(path.clone());
                    return Ok((TempFile { path: Some(path) }, file));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FileError::io(format!("cannot create a file in {}", dir.display()))(e)),
            }
        }
        Err(FileError::Io {
            context: format!("cannot create a temporary file in {}", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }

    /// Gives the file its final `name` in `dir`, adding a suffix on a clash; never replaces
    /// an existing file. Returns the final path.
    pub(crate) fn persist(mut self, dir: &Path, name: &str) -> Result<PathBuf, FileError> {
        let Some(temp) = self.path.clone() else {
            return Err(FileError::Test("temporary file already persisted"));
        };
        for n in 0..=MAX_SUFFIX {
            let target = dir.join(candidate_name(name, n));
            // A hard link fails if the target exists, where rename would silently replace it.
            match std::fs::hard_link(&temp, &target) {
                Ok(()) => {
                    // The drop removes the temporary name; the data lives on under `target`.
                    drop(self);
                    return Ok(target);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FileError::io(format!("cannot store {}", target.display()))(e)),
            }
        }
        self.path = Some(temp);
        Err(FileError::Io {
            context: format!("no free name for {name} in {}", dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else { return };
        let mut live = lock(&LIVE);
        // Not in the set: the exit's sweep removed it already.
        if live.as_mut().is_some_and(|paths| paths.remove(&path))
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
pub(crate) fn free_space(dir: &Path) -> Result<u64, FileError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| FileError::Io {
        context: format!("cannot read the free space of {}", dir.display()),
        source: std::io::Error::from(e),
    })?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let free = u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
    Ok(free)
}
