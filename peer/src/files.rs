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
//! - [`receive`] and [`send`]: the async shells that move bytes between a channel and those.
//! - [`ProgressBars`]: the terminal progress bars of human output.
//!
//! Memory stays bounded on both sides. The sender reads one chunk at a time and `send` waits
//! while the channel has [`crate::transport::SEND_BUFFER_LIMIT`] bytes unacknowledged (webrtc-rs's
//! form of `bufferedAmount` + `bufferedamountlow`). The receiver writes each chunk before it
//! polls for the next; webrtc-rs delivers channel events through a bounded queue and stops
//! reading SCTP when it is full, so the remote's window closes instead of our memory growing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use crate::channels::ChannelOpener;

/// The label of a file channel (PROTOCOL.md).
pub const FILE_LABEL: &str = "file";
/// Largest binary message of a transfer (PROTOCOL.md): what every browser sends and accepts.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// How long an "ok" that arrives while the last `send` has not returned waits for it.
const LAST_SEND_DEADLINE: Duration = Duration::from_secs(2);
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
/// How long the receiver waits for its answer to be acknowledged before reporting the file:
/// a peer that exits on `--expect-files` must not close the connection under its own answer.
const ANSWER_ACK_DEADLINE: Duration = Duration::from_secs(5);
/// Incoming transfers at once, from all peers together. Each holds an open file and a write
/// buffer; a peer opening thousands of `file` channels gets refusals, not our file descriptors.
pub const MAX_INCOMING: usize = 64;
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
    state: State,
}

impl Incoming {
    /// A transfer that will store its file in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Incoming {
        Incoming { dir: dir.into(), state: State::AwaitingHeader }
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
                std::fs::create_dir_all(&self.dir)
                    .map_err(FileError::io(format!("cannot create {}", self.dir.display())))?;
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

/// What a link needs to accept incoming files.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub dir: PathBuf,
    pub events: FileEvents,
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

/// Counts a running incoming transfer while it lives.
struct IncomingSlot;

static INCOMING: AtomicUsize = AtomicUsize::new(0);

impl IncomingSlot {
    fn take() -> Option<IncomingSlot> {
        let before = INCOMING.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_INCOMING {
            INCOMING.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(IncomingSlot)
    }
}

impl Drop for IncomingSlot {
    fn drop(&mut self) {
        INCOMING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Receives one transfer on a `file` channel opened by `remote`, until the channel closes.
pub async fn receive(remote: String, channel: Arc<dyn DataChannel>, inbox: Inbox) {
    let Some(_slot) = IncomingSlot::take() else {
        tracing::warn!(peer = %remote, "refusing a file: {MAX_INCOMING} transfers are already coming in");
        refuse_busy(&remote, channel.as_ref()).await;
        return;
    };
    let transfer = next_transfer_id();
    let mut reporter = Reporter::new(inbox.events.clone(), transfer);
    let mut incoming = Incoming::new(&inbox.dir);
    let started = Instant::now();
    let mut claimed = String::new();
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnMessage(message) => {
                if incoming.is_finished() {
                    tracing::debug!(peer = %remote, "message after the answer; ignored");
                    continue;
                }
                if message.is_string && claimed.is_empty() {
                    // For the failure event only: what the sender called it, made printable.
                    claimed =
                        Header::parse(&message.data).map(|h| sanitize_name(&h.name)).unwrap_or_default();
                }
                match incoming.on_message(message.is_string, &message.data) {
                    Ok(Step::Started { name, size }) => {
                        reporter
                            .emit(FileEvent::Started {
                                peer: remote.clone(),
                                transfer,
                                outgoing: false,
                                name,
                                size,
                            })
                            .await;
                    }
                    Ok(Step::Progress(bytes)) => reporter.progress(bytes),
                    Ok(Step::Done(file)) => {
                        answer(&remote, channel.as_ref(), &Answer { ok: true, error: None }).await;
                        let elapsed = started.elapsed();
                        tracing::debug!(peer = %remote, "received {} ({} bytes) into {}", file.name, file.size, file.path.display());
                        reporter
                            .emit(FileEvent::Received { peer: remote.clone(), transfer, file, elapsed })
                            .await;
                    }
                    Err(error) => {
                        let error = error.to_string();
                        tracing::warn!(peer = %remote, "incoming file {claimed:?} failed: {error}");
                        answer(&remote, channel.as_ref(), &Answer { ok: false, error: Some(error.clone()) })
                            .await;
                        reporter
                            .emit(FileEvent::Failed {
                                peer: remote.clone(),
                                transfer,
                                name: claimed.clone(),
                                error,
                            })
                            .await;
                    }
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    // A channel that closes early is a failed transfer (PROTOCOL.md), before its header too.
    if let Some(error) = incoming.on_close() {
        // `on_close` removed the temporary file before anyone hears of the failure.
        let error = error.to_string();
        tracing::warn!(peer = %remote, "incoming file {claimed:?} failed: {error}");
        reporter.emit(FileEvent::Failed { peer: remote, transfer, name: claimed, error }).await;
    }
}

/// Answers a transfer we cannot take now, once its header arrived, and closes the channel.
async fn refuse_busy(remote: &str, channel: &dyn DataChannel) {
    let busy =
        Answer { ok: false, error: Some(format!("the receiver is busy ({MAX_INCOMING} transfers at once)")) };
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnMessage(_) => {
                // Acknowledged before the close: a close sent right behind the answer reached
                // the sender first, which then reported "closed before the receiver answered".
                answer(remote, channel, &busy).await;
                break;
            }
            DataChannelEvent::OnClose => return,
            _ => {}
        }
    }
    let _ = channel.close().await;
}

/// Sends the answer and waits (bounded) until the remote acknowledged it.
async fn answer(remote: &str, channel: &dyn DataChannel, answer: &Answer) {
    if let Err(e) = channel.send_text(&answer.to_json()).await {
        tracing::debug!(peer = %remote, "cannot answer on the file channel: {e}");
        return;
    }
    let acked = async {
        while channel.outstanding_bytes().await.unwrap_or(0) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(ANSWER_ACK_DEADLINE, acked).await.is_err() {
        tracing::debug!(peer = %remote, "file answer not acknowledged within {ANSWER_ACK_DEADLINE:?}");
    }
}

/// A file to send: its header is computed once, then it is read again for every peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub path: PathBuf,
    pub header: Header,
}

impl Outgoing {
    /// Reads `path` once to learn its size and SHA-256. Blocking: call it off the runtime
    /// (`spawn_blocking`) or before it starts.
    pub fn prepare(path: &Path) -> Result<Outgoing, FileError> {
        let context = || format!("cannot read {}", path.display());
        let mut file = File::open(path).map_err(FileError::io(context()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(FileError::io(context()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Outgoing {
            path: path.to_path_buf(),
            header: Header { name: sanitize_name(&name), size, sha256: hex::encode(hasher.finalize()) },
        })
    }
}

/// Ways to break a transfer on purpose, for tests of the receiver (`--test-corrupt-file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Corruption {
    /// Announce a SHA-256 that does not match the bytes.
    Hash,
    /// Send half of the bytes, then close the channel.
    Truncate,
}

/// Sends `file` to `remote` on a new `file` channel from `opener` and reports the outcome as
/// [`FileEvent::Sent`]. `corrupt` is for tests only.
pub async fn send(
    remote: String,
    opener: ChannelOpener,
    file: Arc<Outgoing>,
    corrupt: Option<Corruption>,
    events: FileEvents,
) {
    let transfer = next_transfer_id();
    let mut reporter = Reporter::new(events, transfer);
    let started = Instant::now();
    let name = file.header.name.clone();
    let size = file.header.size;
    reporter
        .emit(FileEvent::Started { peer: remote.clone(), transfer, outgoing: true, name: name.clone(), size })
        .await;
    let result = match opener.open(FILE_LABEL).await {
        Ok(channel) => {
            let result = send_on(channel.as_ref(), &file, corrupt, &mut reporter).await;
            // The protocol's last step, whatever happened: the sender closes the channel.
            if let Err(e) = channel.close().await {
                tracing::debug!(peer = %remote, "closing the file channel: {e}");
            }
            result
        }
        Err(e) => Err(FileError::Channel(e.to_string())),
    };
    let error = result.err().map(|e| e.to_string());
    match &error {
        None => tracing::debug!(peer = %remote, "sent {name} ({size} bytes)"),
        Some(e) => tracing::warn!(peer = %remote, "sending {name} failed: {e}"),
    }
    reporter
        .emit(FileEvent::Sent { peer: remote, transfer, name, size, error, elapsed: started.elapsed() })
        .await;
}

/// Sends header and bytes on the open channel while watching its events,
/// and returns the receiver's verdict.
async fn send_on(
    channel: &dyn DataChannel,
    file: &Outgoing,
    corrupt: Option<Corruption>,
    reporter: &mut Reporter,
) -> Result<(), FileError> {
    let mut header = file.header.clone();
    if corrupt == Some(Corruption::Hash) {
        header.sha256 = hex::encode(Sha256::digest(b"not the file"));
    }
    channel.send_text(&header.to_json()).await.map_err(|e| FileError::Channel(e.to_string()))?;
    let limit = match corrupt {
        Some(Corruption::Truncate) => header.size / 2,
        _ => header.size,
    };
    let bytes = send_bytes(channel, &file.path, header.size, limit, reporter);
    tokio::pin!(bytes);
    let mut sent_all = false;
    // Events must be read while sending: webrtc-rs queues them per channel, and a full queue
    // would stall the whole connection. They also carry an early answer or close.
    loop {
        tokio::select! {
            result = &mut bytes, if !sent_all => {
                result?;
                sent_all = true;
                if corrupt == Some(Corruption::Truncate) {
                    return Err(FileError::Test("closed the channel early on purpose (--test-corrupt-file truncate)"));
                }
            }
            event = channel.poll() => match event {
                Some(DataChannelEvent::OnMessage(message)) if message.is_string => {
                    let answer: Answer = serde_json::from_slice(&message.data)
                        .map_err(|e| FileError::BadAnswer(e.to_string()))?;
                    if !answer.ok {
                        return Err(FileError::Refused(answer.error.unwrap_or_else(|| "no reason given".into())));
                    }
                    if sent_all {
                        return Ok(());
                    }
                    // The last bytes can be on their way while `send` has not returned yet
                    // (it still waits on the driver), and a fast receiver's "ok" can come
                    // first: give it a moment to return. Not returning means the receiver
                    // answered before it could have had everything.
                    return match tokio::time::timeout(LAST_SEND_DEADLINE, &mut bytes).await {
                        Ok(result) => result,
                        Err(_) => Err(FileError::BadAnswer("ok before all bytes were sent".into())),
                    };
                }
                Some(DataChannelEvent::OnClose) | None => {
                    return Err(FileError::ClosedBeforeAnswer);
                }
                Some(_) => {}
            }
        }
    }
}

/// Streams the first `limit` of `size` bytes of `path` in [`CHUNK_BYTES`] messages. `send`
/// waits while the channel's unacknowledged bytes are at the send-buffer limit: that is the
/// back-pressure that keeps at most one window of the file in memory.
async fn send_bytes(
    channel: &dyn DataChannel,
    path: &Path,
    size: u64,
    limit: u64,
    reporter: &mut Reporter,
) -> Result<(), FileError> {
    let context = || format!("cannot read {}", path.display());
    let mut file = tokio::fs::File::open(path).await.map_err(FileError::io(context()))?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    while sent < limit {
        let want = (limit - sent).min(CHUNK_BYTES as u64) as usize;
        let n = file.read(&mut buf[..want]).await.map_err(FileError::io(context()))?;
        if n == 0 {
            return Err(FileError::Io {
                context: format!(
                    "{} shrank to {sent} bytes while being sent ({size} announced)",
                    path.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        }
        channel.send(BytesMut::from(&buf[..n])).await.map_err(|e| FileError::Channel(e.to_string()))?;
        sent += n as u64;
        reporter.progress(sent);
    }
    Ok(())
}

/// What the command line asked for about files.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Sent to every peer once its connection is up (`--send-file`).
    pub send: Vec<Arc<Outgoing>>,
    /// Where received files go (`--receive-dir`).
    pub receive_dir: PathBuf,
    /// Done once this many files were received and verified (`--expect-files`).
    pub expect: Option<usize>,
    /// Tests only (`--test-corrupt-file`): break every outgoing transfer this way.
    pub corrupt: Option<Corruption>,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { send: Vec::new(), receive_dir: PathBuf::from("received"), expect: None, corrupt: None }
    }
}

/// The `--json` line of a file event (INTERFACES.md); `None` for progress, which is only drawn.
pub fn json_event(event: &FileEvent) -> Option<serde_json::Value> {
    use serde_json::json;
    match event {
        FileEvent::Started { .. } | FileEvent::Progress { .. } => None,
        FileEvent::Received { peer, file, .. } => Some(json!({
            "event": "file_received", "from": peer, "name": file.name, "size": file.size,
            "sha256": file.sha256, "path": file.path.display().to_string(),
        })),
        FileEvent::Failed { peer, name, error, .. } => {
            Some(json!({"event": "file_failed", "from": peer, "name": name, "error": error}))
        }
        FileEvent::Sent { peer, name, size, error: None, .. } => {
            Some(json!({"event": "file_sent", "to": peer, "name": name, "size": size, "ok": true}))
        }
        FileEvent::Sent { peer, name, size, error: Some(error), .. } => Some(json!({
            "event": "file_sent", "to": peer, "name": name, "size": size, "ok": false, "error": error,
        })),
    }
}

/// The human line of a file event, `who` being the remote's display form; `None` for progress.
/// With `bars`, starts and progress are drawn as bars instead of printed.
pub fn human_line(event: &FileEvent, who: &str, bars: Option<&mut ProgressBars>) -> Option<String> {
    match event {
        FileEvent::Started { transfer, outgoing, name, size, .. } => {
            let (verb, dir) = if *outgoing { ("sending", "to") } else { ("receiving", "from") };
            match bars {
                Some(bars) => {
                    bars.start(*transfer, format!("{name} {dir} {who}"), *size);
                    None
                }
                None => Some(format!("* {verb} {name} ({}) {dir} {who}", format_size(*size))),
            }
        }
        FileEvent::Progress { transfer, bytes } => {
            if let Some(bars) = bars {
                bars.update(*transfer, *bytes);
            }
            None
        }
        FileEvent::Received { transfer, file, elapsed, .. } => {
            if let Some(bars) = bars {
                bars.finish(*transfer);
            }
            Some(format!(
                "* received {} ({}) from {who} in {:.1} s, {}; sha256 {}; saved as {}",
                file.name,
                format_size(file.size),
                elapsed.as_secs_f64(),
                format_rate(file.size, *elapsed),
                file.sha256,
                file.path.display()
            ))
        }
        FileEvent::Failed { transfer, name, error, .. } => {
            if let Some(bars) = bars {
                bars.finish(*transfer);
            }
            Some(format!("! receiving {name:?} from {who} failed: {error}"))
        }
        FileEvent::Sent { transfer, name, size, error, elapsed, .. } => {
            if let Some(bars) = bars {
                bars.finish(*transfer);
            }
            Some(match error {
                None => format!(
                    "* sent {name} ({}) to {who} in {:.1} s, {}; verified by the receiver",
                    format_size(*size),
                    elapsed.as_secs_f64(),
                    format_rate(*size, *elapsed)
                ),
                Some(error) => format!("! sending {name} to {who} failed: {error}"),
            })
        }
    }
}

impl FileEvent {
    /// The remote peer's id, when the event names one.
    pub fn peer(&self) -> Option<&str> {
        match self {
            FileEvent::Started { peer, .. }
            | FileEvent::Received { peer, .. }
            | FileEvent::Failed { peer, .. }
            | FileEvent::Sent { peer, .. } => Some(peer),
            FileEvent::Progress { .. } => None,
        }
    }
}

/// `12.3 MB/s` for `bytes` moved in `elapsed`.
pub fn format_rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", indicatif::HumanBytes((bytes as f64 / secs) as u64))
}

/// `1.50 MiB`.
pub fn format_size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// One progress bar per transfer on the terminal (stderr), for human output.
pub struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: HashMap<TransferId, indicatif::ProgressBar>,
}

impl std::fmt::Debug for ProgressBars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressBars").field("bars", &self.bars.len()).finish()
    }
}

impl Default for ProgressBars {
    fn default() -> Self {
        ProgressBars::new()
    }
}

impl ProgressBars {
    pub fn new() -> ProgressBars {
        ProgressBars {
            multi: indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()),
            bars: HashMap::new(),
        }
    }

    pub fn start(&mut self, transfer: TransferId, label: String, size: u64) {
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = self.multi.add(indicatif::ProgressBar::new(size).with_style(style).with_message(label));
        self.bars.insert(transfer, bar);
    }

    pub fn update(&mut self, transfer: TransferId, bytes: u64) {
        if let Some(bar) = self.bars.get(&transfer) {
            bar.set_position(bytes);
        }
    }

    pub fn finish(&mut self, transfer: TransferId) {
        if let Some(bar) = self.bars.remove(&transfer) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    /// Runs `f` (which prints to stdout) with the bars hidden, so lines and bars don't mix.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

#[cfg(test)]
mod tests;
