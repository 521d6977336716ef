//! The `file` data channel's messages (PROTOCOL.md, "Data channels"): the sender's header, the
//! receiver's answer, and the limits both sides keep to.
//!
//! A received header is checked here, at the edge ([`FileHeader::parse`]): past it, `size` is a
//! number and `sha256` is 64 lowercase hex digits. `name` stays the sender's claim: a receiver
//! makes it a safe file name of its own before using it (the peer's `files::names`).

use serde::{Deserialize, Serialize};

/// The label of a file channel.
pub const FILE_LABEL: &str = "file";

/// Largest binary message of a `file` data channel, in bytes: what every browser sends and
/// accepts.
pub const MAX_FILE_CHUNK_BYTES: usize = 16 * 1024;

/// Largest header a receiver reads. A real one is well under 1 KiB; a bigger one is refused
/// unparsed.
pub const MAX_FILE_HEADER_BYTES: usize = 16 * 1024;

/// Why a received header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileHeaderError {
    #[error("{0} bytes, the limit is {MAX_FILE_HEADER_BYTES}")]
    TooLarge(usize),
    #[error("{0}")]
    Json(String),
    #[error("sha256 is not 64 lowercase hex digits")]
    BadHash,
}

/// The first message of a transfer: `{"name":..,"size":..,"sha256":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The sender's claim: never to be used as a path.
    pub name: String,
    pub size: u64,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

impl FileHeader {
    /// Parses and checks a received header.
    pub fn parse(data: &[u8]) -> Result<FileHeader, FileHeaderError> {
        if data.len() > MAX_FILE_HEADER_BYTES {
            return Err(FileHeaderError::TooLarge(data.len()));
        }
        let header: FileHeader =
            serde_json::from_slice(data).map_err(|e| FileHeaderError::Json(e.to_string()))?;
        let hex_ok = header.sha256.len() == 64
            && header.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(FileHeaderError::BadHash);
        }
        Ok(header)
    }

    /// The header as sent: the fields in PROTOCOL.md's order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a file header always serializes")
    }
}

/// The receiver's answer: `{"ok":true}` or `{"ok":false,"error":".."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAnswer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FileAnswer {
    /// `{"ok":true}`.
    pub fn accepted() -> FileAnswer {
        FileAnswer { ok: true, error: None }
    }

    /// `{"ok":false,"error":reason}`.
    pub fn refused(reason: impl Into<String>) -> FileAnswer {
        FileAnswer { ok: false, error: Some(reason.into()) }
    }

    /// Parses a received answer; extra fields are ignored.
    pub fn parse(data: &[u8]) -> Result<FileAnswer, String> {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a file answer always serializes")
    }
}
