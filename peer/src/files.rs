//! Files over `file` data channels (PROTOCOL.md, "Data channels"; INTERFACES.md, "Files").
//!
//! One transfer is one ordered, reliable channel labelled `file`, opened by the sender. Its
//! first message is the text header `{"name":..,"size":..,"sha256":..}`, then `size` bytes follow
//! as binary messages of at most [`MAX_FILE_CHUNK_BYTES`]. The receiver checks the SHA-256,
//! answers `{"ok":true}` or `{"ok":false,"error":..}` on the same channel, and the sender closes
//! it. The messages themselves ([`FileHeader`], [`FileAnswer`]) and their checks live in the
//! `protocol` crate; this module is what the peer does with them, one job per module:
//!
//! - `names`: [`sanitize_name`], what a remote claims made a safe file name.
//! - `temp`: the temporary file the bytes go to, and the receive directory's free space.
//! - `incoming`: [`Incoming`], the receiver as a synchronous state machine (header → temporary
//!   file, hashed as it is written → verified → linked under a free name).
//! - `receive`: which channels are taken (opt-in, per-peer slots, idle timeout) and the async
//!   shell that feeds one into an [`Incoming`].
//! - `send`: the sending side ([`Outgoing`], [`send`]).
//! - `events`: what a transfer reports ([`FileEvent`]), progress throttled.
//! - `display`: how events are shown ([`json_event`], [`human_line`], [`ProgressBars`]).
//! - `options`: what the command line asked for ([`FileOptions`], [`Receiving`]).
//! - `error`: [`FileError`].
//!
//! Memory stays bounded on both sides. The sender reads one chunk at a time and `send` waits
//! while the channel has [`crate::transport::SEND_BUFFER_LIMIT`] bytes unacknowledged (webrtc-rs's
//! form of `bufferedAmount` + `bufferedamountlow`). The receiver hands chunks to its writer (on
//! the blocking pool: file-system calls block) through a short queue and stops reading the
//! channel while that queue is full; webrtc-rs delivers channel events through a bounded queue
//! and stops reading SCTP when it is full, so the remote's window closes instead of our memory
//! growing.
//!
//! Temporary files never outlive the process: each is removed when its transfer ends, and
//! [`remove_temp_files`] removes any still there when the peer exits, whatever made it exit.

mod display;
mod error;
mod events;
mod incoming;
mod names;
mod options;
mod receive;
mod send;
mod temp;

pub use display::{ProgressBars, format_rate, format_size, human_line, json_event};
pub use error::FileError;
pub use events::{FileEvent, FileEvents, TransferId};
pub use incoming::{Incoming, Received, Step};
pub use names::sanitize_name;
pub use options::{DEFAULT_MAX_FILE_SIZE, FileOptions, Receiving, parse_size};
pub use protocol::{FILE_LABEL, FileAnswer, FileHeader, MAX_FILE_CHUNK_BYTES};
pub use receive::{
    BUSY, DEFAULT_IDLE, Inbox, MAX_INCOMING, NOT_ACCEPTING, PER_PEER_INCOMING, receive, refuse,
};
pub use send::{Corruption, Outgoing, send};
pub use temp::remove_temp_files;

#[cfg(test)]
mod tests;
