//! What the command line asked for about files: `--send-file`, `--receive-dir`,
//! `--expect-files`, `--max-file-size` and the idle limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Corruption, Outgoing};

/// `--max-file-size` when not given (INTERFACES.md): 4 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;

/// How incoming files are taken: `--receive-dir` (or `--expect-files`), `--max-file-size`, and
/// the idle limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiving {
    /// Where received files go.
    pub dir: PathBuf,
    /// Largest size a header may announce (the receive dir's free space also bounds it).
    pub max_size: u64,
    /// An incoming transfer that receives nothing this long fails.
    pub idle: Duration,
    /// Tests only (`--test-file-write-delay`): the receiver's writer waits this long before each
    /// chunk, a disk too slow to finish before the peer exits.
    pub test_write_delay: Option<Duration>,
}

/// What the command line asked for about files.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Sent to every peer once its connection is up (`--send-file`).
    pub send: Vec<Arc<Outgoing>>,
    /// How files are received; `None` refuses every incoming file (`--receive-dir` or
    /// `--expect-files` turn it on).
    pub receive: Option<Receiving>,
    /// Done once this many files were received and verified (`--expect-files`).
    pub expect: Option<usize>,
    /// Tests only (`--test-corrupt-file`): break every outgoing transfer this way.
    pub corrupt: Option<Corruption>,
}

/// A byte count with an optional binary suffix: `4096`, `512K`, `100M`, `4G` (K/M/G are KiB,
/// MiB, GiB; either case). For `--max-file-size`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a byte count (e.g. 4096, 512K, 100M, 4G)"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{text:?} is too large"))
}
