//! Files over `file` data channels (PROTOCOL.md, "Data channels"; INTERFACES.md, "Files").
//!
//! One transfer is one ordered, reliable channel labelled `file`, opened by the sender. Its
//! first message is the text header `{"name":..,"size":..,"sha256":..}`, then `size` bytes follow
//! as binary messages of at most [`CHUNK_BYTES`]. The receiver checks the SHA-256, answers
//! `{"ok":true}` or `{"ok":false,"error":..}` on the same channel, and the sender closes it.
//!
//! - [`sanitize_name`] and [`Header::parse`]: what a remote claims, made safe at the edge.
//! - [`Incoming`]: the receiver as a synchronous state machine (no channel, no async): it writes
//!   to a temporary file inside the receive directory, hashes as it goes, and on success links
//!   the file under a name that clashes with nothing. A failed or abandoned transfer removes its
//!   temporary file when the [`Incoming`] drops, whatever path ended it.
//! - [`receive`] (module `receive`): which channels are taken (opt-in, per-peer slots, idle
//!   timeout) and the async shell that feeds one into an [`Incoming`].
//! - [`send`] (module `send`): the sending side.
//! - [`json_event`], [`human_line`], [`ProgressBars`] (module `display`): how events are shown.
//!
//! Memory stays bounded on both sides. The sender reads one chunk at a time and `send` waits
//! while the channel has [`crate::transport::SEND_BUFFER_LIMIT`] bytes unacknowledged (webrtc-rs's
//! form of `bufferedAmount` + `bufferedamountlow`). The receiver writes each chunk before it
//! polls for the next; webrtc-rs delivers channel events through a bounded queue and stops
//! reading SCTP when it is full, so the remote's window closes instead of our memory growing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};

mod display;
mod receive;
mod send;

pub use display::{ProgressBars, format_rate, format_size, human_line, json_event};
pub use receive::{BUSY, DEFAULT_IDLE, MAX_INCOMING, NOT_ACCEPTING, PER_PEER_INCOMING, receive, refuse};
pub use send::{Corruption, Outgoing, send};

/// The label of a file channel (PROTOCOL.md).
pub const FILE_LABEL: &str = "file";
/// Largest binary message of a transfer (PROTOCOL.md): what every browser sends and accepts.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Largest header we read. A real one is well under 1 KiB; a bigger one is refused unparsed.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest stored name in bytes, below the usual 255-byte file-name limit, with room for a
/// " (123)" suffix.
const MAX_NAME_BYTES: usize = 200;
/// Name used when nothing is left of the sender's claim.
const FALLBACK_NAME: &str = "file";
/// How many " (n)" suffixes to try before giving up on a free name.
const MAX_SUFFIX: u32 = 10_000;
/// Progress events at most this often per transfer: enough for a smooth bar and a rate.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// `--max-file-size` when not given (INTERFACES.md): 4 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;
/// Prefix of temporary files in the receive directory. Hidden, and never a sanitized name
/// (those never start with a dot), so a received file cannot be mistaken for one.
const TEMP_PREFIX: &str = ".switchboard-";

#[derive(Debug, Error)]
pub enum FileError {
    #[error("bad header: {0}")]
    BadHeader(String),
    #[error("a text message arrived in the middle of the file's bytes")]
    UnexpectedText,
    #[error("received more bytes than the {expected} announced")]
    TooManyBytes { expected: u64 },
    #[error("SHA-256 mismatch: announced {expected}, received data hashes to {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("channel closed after {received} of {expected} bytes")]
    ClosedEarly { received: u64, expected: u64 },
    #[error("channel closed before the header")]
    ClosedBeforeHeader,
    #[error("channel closed before the receiver answered")]
    ClosedBeforeAnswer,
    #[error("the receiver refused the file: {0}")]
    Refused(String),
    #[error("the receiver's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("data channel: {0}")]
    Channel(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("file too large: {size} bytes announced, the limit is {max} (--max-file-size)")]
    TooLarge { size: u64, max: u64 },
    #[error("not enough space: {size} bytes announced, {free} free in the receive dir")]
    NoSpace { size: u64, free: u64 },
    #[error("nothing received for {} s", .0.as_secs())]
    Idle(Duration),
    #[error("test mode: {0}")]
    Test(&'static str),
}

impl FileError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
        let context = context.into();
        move |source| FileError::Io { context, source }
    }
}

/// The first message of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The sender's claim: never used as a path (see [`sanitize_name`]).
    pub name: String,
    pub size: u64,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

impl Header {
    /// Parses and checks a received header.
    pub fn parse(data: &[u8]) -> Result<Header, FileError> {
        if data.len() > MAX_HEADER_BYTES {
            return Err(FileError::BadHeader(format!(
                "{} bytes, the limit is {MAX_HEADER_BYTES}",
                data.len()
            )));
        }
        let header: Header = serde_json::from_slice(data).map_err(|e| FileError::BadHeader(e.to_string()))?;
        let hex_ok = header.sha256.len() == 64
            && header.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(FileError::BadHeader("sha256 is not 64 lowercase hex digits".into()));
        }
        Ok(header)
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({"name": self.name, "size": self.size, "sha256": self.sha256}).to_string()
    }
}

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false}"#.to_string())
    }
}

/// Turns a sender's claimed name into a plain file name that is safe to create inside the
/// receive directory: only the last path component (`/` or `\` separated), no control
/// characters (NUL included), no leading dot (no hidden files, no `.` or `..`), at most
/// [`MAX_NAME_BYTES`] bytes; [`FALLBACK_NAME`] when nothing is left.
pub fn sanitize_name(claim: &str) -> String {
    let last = claim.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut name = String::with_capacity(trimmed.len().min(MAX_NAME_BYTES));
    for c in trimmed.chars() {
        if name.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        name.push(c);
    }
    let name = name.trim_end().to_string();
    if name.is_empty() { FALLBACK_NAME.to_string() } else { name }
}

/// `name`, then `stem (1).ext`, `stem (2).ext`, ... for the n-th try.
fn candidate_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

/// A temporary file that is removed when dropped, unless it was [`TempFile::persist`]ed.
#[derive(Debug)]
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    fn create(dir: &Path) -> Result<(TempFile, File), FileError> {
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
    fn persist(mut self, dir: &Path, name: &str) -> Result<PathBuf, FileError> {
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

/// A file received and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sanitized name it was announced under.
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Where it was stored (inside the receive directory).
    pub path: PathBuf,
}

/// What an accepted message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The header was accepted: the bytes may come.
    Started { name: String, size: u64 },
    /// Bytes received so far.
    Progress(u64),
    /// All bytes arrived and the hash matched; the file is stored.
    Done(Received),
}

enum State {
    AwaitingHeader,
    Receiving(Box<Partial>),
    Finished,
}

struct Partial {
    name: String,
    header: Header,
    temp: TempFile,
    writer: BufWriter<File>,
    hasher: Sha256,
    received: u64,
}

/// The receiving side of one transfer (see the module docs). Plain synchronous file I/O: one
/// chunk is at most 16 KiB into the page cache, which costs less than handing it to a thread.
pub struct Incoming {
    dir: PathBuf,
    /// Largest size a header may announce.
    max_size: u64,
    state: State,
}

impl Incoming {
    /// A transfer that will store its file in `dir` (created if missing), of any size that fits.
    pub fn new(dir: impl Into<PathBuf>) -> Incoming {
        Incoming { dir: dir.into(), max_size: u64::MAX, state: State::AwaitingHeader }
    }

    /// Refuses a header announcing more than `max_size` bytes.
    pub fn with_max_size(mut self, max_size: u64) -> Incoming {
        self.max_size = max_size;
        self
    }

    /// Gives up the transfer (its sender went silent): the temporary file is gone when this
    /// returns, and nothing more is expected.
    pub fn abandon(&mut self) {
        self.state = State::Finished;
    }

    /// The sanitized name, once the header arrived.
    pub fn name(&self) -> Option<&str> {
        match &self.state {
            State::Receiving(p) => Some(&p.name),
            _ => None,
        }
    }

    /// True once the file was stored (or the transfer failed): nothing more is expected.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Handles one message of the channel. An error ends the transfer: the temporary file is
    /// gone when this returns.
    pub fn on_message(&mut self, is_string: bool, data: &[u8]) -> Result<Step, FileError> {
        let result = self.step(is_string, data);
        if result.is_err() {
            self.state = State::Finished;
        }
        result
    }

    /// The channel closed. Returns the error to report if the transfer was not finished.
    pub fn on_close(&mut self) -> Option<FileError> {
        let error = match &self.state {
            State::AwaitingHeader => Some(FileError::ClosedBeforeHeader),
            State::Receiving(p) => {
                Some(FileError::ClosedEarly { received: p.received, expected: p.header.size })
            }
            State::Finished => None,
        };
        self.state = State::Finished;
        error
    }

    fn step(&mut self, is_string: bool, data: &[u8]) -> Result<Step, FileError> {
        match &mut self.state {
            State::Finished => {
                // Only after an answer: the sender is about to close. Extra data is its bug.
                tracing::debug!(bytes = data.len(), "message after the transfer ended; ignored");
                Ok(Step::Progress(0))
            }
            State::AwaitingHeader => {
                if !is_string {
                    return Err(FileError::BadHeader(
                        "the first message is binary, not a text header".into(),
                    ));
                }
                let header = Header::parse(data)?;
                let name = sanitize_name(&header.name);
                // Both checks before anything is written: a refused file leaves no trace.
                if header.size > self.max_size {
                    return Err(FileError::TooLarge { size: header.size, max: self.max_size });
                }
                std::fs::create_dir_all(&self.dir)
                    .map_err(FileError::io(format!("cannot create {}", self.dir.display())))?;
                let free = free_space(&self.dir)?;
                if header.size > free {
                    return Err(FileError::NoSpace { size: header.size, free });
                }
                let (temp, file) = TempFile::create(&self.dir)?;
                let size = header.size;
                self.state = State::Receiving(Box::new(Partial {
                    name: name.clone(),
                    header,
                    temp,
                    writer: BufWriter::with_capacity(4 * CHUNK_BYTES, file),
                    hasher: Sha256::new(),
                    received: 0,
                }));
                if size == 0 {
                    return self.finish();
                }
                Ok(Step::Started { name, size })
            }
            State::Receiving(p) => {
                if is_string {
                    return Err(FileError::UnexpectedText);
                }
                let received = p.received + data.len() as u64;
                if received > p.header.size {
                    return Err(FileError::TooManyBytes { expected: p.header.size });
                }
                p.writer
                    .write_all(data)
                    .map_err(FileError::io(format!("cannot write to {}", self.dir.display())))?;
                p.hasher.update(data);
                p.received = received;
                if received == p.header.size { self.finish() } else { Ok(Step::Progress(received)) }
            }
        }
    }

    /// All bytes are in: verify, then store under a free name.
    fn finish(&mut self) -> Result<Step, FileError> {
        let State::Receiving(p) = std::mem::replace(&mut self.state, State::Finished) else {
            return Err(FileError::Test("finish without a transfer"));
        };
        let Partial { name, header, temp, writer, hasher, received } = *p;
        let actual = hex::encode(hasher.finalize());
        if actual != header.sha256 {
            return Err(FileError::HashMismatch { expected: header.sha256, actual });
        }
        let file = writer.into_inner().map_err(|e| FileError::io("cannot write the file")(e.into_error()))?;
        file.sync_all().map_err(FileError::io("cannot write the file"))?;
        drop(file);
        let path = temp.persist(&self.dir, &name)?;
        Ok(Step::Done(Received { name, size: received, sha256: actual, path }))
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn free_space(dir: &Path) -> Result<u64, FileError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| FileError::Io {
        context: format!("cannot read the free space of {}", dir.display()),
        source: std::io::Error::from(e),
    })?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let free = u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
    Ok(free)
}

/// A unique number per transfer in this process, to tell progress reports apart.
pub type TransferId = u64;

fn next_transfer_id() -> TransferId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What transfers report to their owner (the mesh), tagged with the remote peer's id.
#[derive(Debug, Clone, PartialEq)]
pub enum FileEvent {
    Started {
        peer: String,
        transfer: TransferId,
        outgoing: bool,
        name: String,
        size: u64,
    },
    Progress {
        transfer: TransferId,
        bytes: u64,
    },
    Received {
        peer: String,
        transfer: TransferId,
        file: Received,
        elapsed: Duration,
    },
    /// An incoming transfer failed; nothing of it is left on disk.
    Failed {
        peer: String,
        transfer: TransferId,
        name: String,
        error: String,
    },
    /// An outgoing transfer ended: `error` is `None` when the receiver answered ok.
    Sent {
        peer: String,
        transfer: TransferId,
        name: String,
        size: u64,
        error: Option<String>,
        elapsed: Duration,
    },
}

/// Where transfers send their events. Bounded; progress reports are dropped when it is full,
/// final ones wait.
pub type FileEvents = mpsc::Sender<FileEvent>;

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
}

/// What a link needs to accept incoming files: one per remote peer, since it holds that
/// peer's slots.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub receiving: Receiving,
    pub events: FileEvents,
    /// This remote's running transfers (at most [`PER_PEER_INCOMING`]).
    slots: Arc<Semaphore>,
}

impl Inbox {
    /// The inbox of one remote peer, with all its slots free.
    pub fn new(receiving: Receiving, events: FileEvents) -> Inbox {
        Inbox { receiving, events, slots: Arc::new(Semaphore::new(PER_PEER_INCOMING)) }
    }
}

/// Throttles progress reports of one transfer.
struct Reporter {
    events: FileEvents,
    transfer: TransferId,
    last: Instant,
}

impl Reporter {
    fn new(events: FileEvents, transfer: TransferId) -> Reporter {
        Reporter { events, transfer, last: Instant::now() }
    }

    fn progress(&mut self, bytes: u64) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            // Progress is only for the eye: never wait for room, never fail a transfer over it.
            let _ = self.events.try_send(FileEvent::Progress { transfer: self.transfer, bytes });
        }
    }

    async fn emit(&self, event: FileEvent) {
        // The owner is gone only while exiting; nothing is left to tell then.
        let _ = self.events.send(event).await;
    }
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

#[cfg(test)]
mod tests;
