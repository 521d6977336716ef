//! Wire types of the Switchboard signaling protocol, version 1 (see docs/protocol.md).
//!
//! Every message is one JSON object per WebSocket text frame, tagged by `"type"`. Field names are
//! snake_case, except inside a [`Signal`], which carries the browser's own shapes
//! (`RTCSessionDescriptionInit`, `RTCIceCandidateInit`) unchanged.
//!
//! The server relays signals without re-encoding them (it validates them with [`Signal`] and
//! forwards the original text), so unknown fields a browser adds survive the trip.
//!
//! Also here, for every client: the messages of the `file` data channel ([`FileHeader`],
//! [`FileAnswer`]; PROTOCOL.md, "Data channels"), which never pass through the server, and
//! [`PeerId`], the type of the ids the server hands out.

mod files;
mod names;
mod peer_id;

pub use files::{
    FILE_LABEL, FileAnswer, FileHeader, FileHeaderError, MAX_FILE_CHUNK_BYTES, MAX_FILE_HEADER_BYTES,
};
pub use names::{DisplayName, MAX_NAME_CHARS, MAX_ROOM_CHARS, NameError, RoomName};
pub use peer_id::PeerId;

use serde::{Deserialize, Serialize};

/// Largest chat line, in bytes, that a `chat` data channel carries.
pub const MAX_CHAT_LINE_BYTES: usize = 16 * 1024;

/// A message a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first message of a connection.
    Join(Join),
    /// Relay `signal` to the peer `to`, which must be in the sender's room.
    Signal { to: String, signal: Signal },
    /// Leave the room now; the server closes the connection with 1000.
    Leave,
}

/// The `join` request.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Join {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A `resume_token` from an earlier `welcome`: get the same id back within the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// A room token, required when the server was started with a token secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// With `resume` (v1.1): the highest `seq` this client has handled. The server then
    /// delivers exactly the messages after it, or refuses the resume if it no longer holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

/// What peers exchange through the server to set up a WebRTC connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    /// A trickled ICE candidate; `None` (JSON `null`) ends the candidates.
    Candidate {
        candidate: Option<IceCandidate>,
    },
}

impl Signal {
    /// True for an end-of-candidates marker: `null`, or a candidate whose string is empty.
    pub fn is_end_of_candidates(&self) -> bool {
        match self {
            Signal::Candidate { candidate: None } => true,
            Signal::Candidate { candidate: Some(c) } => c.candidate.is_empty(),
            _ => false,
        }
    }
}

/// `RTCIceCandidateInit`, in the browser's own camelCase field names.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(rename = "usernameFragment", default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A member of a room as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
}

/// An `RTCIceServer`, passed to `RTCPeerConnection` as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The answer to a successful `join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub id: String,
    pub room: String,
    /// Everyone already in the room, oldest first.
    pub peers: Vec<PeerInfo>,
    pub ice_servers: Vec<IceServer>,
    pub resume_token: String,
    pub resumed: bool,
    /// v1.1: the first numbered message after this welcome carries `seq + 1` (0 after a fresh
    /// join). `None` from a v1 server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// A message the server sends to a client.
///
/// `seq` (v1.1): the member's own counter, +1 for every `peer_joined`, `peer_left` and `signal`
/// it is sent, continuing across resumes; `None` from a v1 server. A client remembers the
/// highest it handled and sends it as `last_seq` when it resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome(Welcome),
    PeerJoined {
        peer: PeerInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    PeerLeft {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    Signal {
        from: String,
        signal: Signal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    Error(ErrorMessage),
}

impl ServerMessage {
    /// The message's sequence number, for the three kinds that carry one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerMessage::PeerJoined { seq, .. }
            | ServerMessage::PeerLeft { seq, .. }
            | ServerMessage::Signal { seq, .. } => *seq,
            ServerMessage::Welcome(_) | ServerMessage::Error(_) => None,
        }
    }
}

/// A refused request. The connection stays open unless the code says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
    /// Set when the refused request was a `signal`: the peer it was addressed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Every error code of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    BadJson,
    /// Valid JSON, but not a known message: not an object, unknown type, missing or ill-typed field.
    BadMessage,
    /// Anything but `join` before joining.
    NotJoined,
    /// A second `join` on a joined connection.
    AlreadyJoined,
    BadRoom,
    BadName,
    RoomFull,
    /// The `to` of a signal is not in the sender's room (or is the sender).
    UnknownPeer,
    /// The frame is over the size limit; the connection is closed with 1009.
    TooLarge,
    /// Over the per-connection budget; the message was dropped.
    RateLimited,
    /// The server is at its room cap.
    ServerBusy,
    /// Missing, expired, forged or other-room token; the connection is closed with 1008.
    Unauthorized,
    /// A binary frame.
    BinaryUnsupported,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::BadName => "bad_name",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the protocol gives a meaning to.
pub mod close_code {
    /// After `leave`.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down, or the connection was idle too long: reconnect and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// RFC 6455 protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy: not reading, rate abuse, unauthorized, join timeout. Final.
    pub const POLICY: u16 = 1008;
    /// Frame over the size limit. Final.
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A resume from elsewhere replaced this connection. Final.
    pub const REPLACED: u16 = 4000;

    /// True when a client should reconnect and resume after this close (INTERFACES.md).
    pub fn should_resume(code: Option<u16>) -> bool {
        matches!(
            code,
            None | Some(GOING_AWAY) | Some(INTERNAL_ERROR) | Some(SERVICE_RESTART) | Some(TRY_AGAIN_LATER)
        )
    }
}

impl ClientMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialize")
    }
}

impl ServerMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

#[cfg(test)]
mod tests;
