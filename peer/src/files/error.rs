//! Why a transfer failed, on either side.

use std::time::Duration;

use protocol::FileHeaderError;
use thiserror::Error;

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
    #[error("the peer is exiting")]
    Exiting,
    #[error("test mode: {0}")]
    Test(&'static str),
}

impl FileError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
        let context = context.into();
        move |source| FileError::Io { context, source }
    }
}

impl From<FileHeaderError> for FileError {
    fn from(e: FileHeaderError) -> FileError {
        FileError::BadHeader(e.to_string())
    }
}
