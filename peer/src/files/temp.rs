//! The receive directory's side of a transfer: free space, and the temporary file the bytes go
//! to until they are verified, then linked under a name that clashes with nothing.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::FileError;
use super::names::candidate_name;

/// Prefix of temporary files in the receive directory. Hidden, and never a sanitized name
/// (those never start with a dot), so a received file cannot be mistaken for one.
pub(crate) const TEMP_PREFIX: &str = ".switchboard-";
/// How many " (n)" suffixes to try before giving up on a free name.
const MAX_SUFFIX: u32 = 10_000;

/// A temporary file that is removed when dropped, unless it was [`TempFile::persist`]ed.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    pub(crate) fn create(dir: &Path) -> Result<(TempFile, File), FileError> {
        for _ in 0..16 {
            let path = dir.join(format!("{TEMP_PREFIX}{:016x}.part", rand::random::<u64>()));
            // create_new: never opens an existing file or follows a planted symlink.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempFile { path: Some(path) }, file)),
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
        if let Some(path) = self.path.take()
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
