//! The receiver of one transfer as a synchronous state machine: no channel, no async. It writes
//! to a temporary file inside the receive directory, hashes as it goes, and on success links the
//! file under a name that clashes with nothing. A failed or abandoned transfer removes its
//! temporary file when the [`Incoming`] drops, whatever path ended it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use protocol::{FileHeader, MAX_FILE_CHUNK_BYTES};
use sha2::{Digest, Sha256};

use super::FileError;
use super::names::sanitize_name;
use super::temp::{TempFile, free_space};

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
    header: FileHeader,
    temp: TempFile,
    writer: BufWriter<File>,
    hasher: Sha256,
    received: u64,
}

/// The receiving side of one transfer (see the module docs). Plain synchronous file I/O, so it
/// blocks: `receive` runs it on the blocking pool, never on an async worker.
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
                let header = FileHeader::parse(data)?;
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
                    writer: BufWriter::with_capacity(4 * MAX_FILE_CHUNK_BYTES, file),
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
