//! The Switchboard headless peer: joins a room through the signaling server and keeps a full
//! mesh of WebRTC data channels with everyone in it.
//!
//! - [`files`]: files over `file` data channels (header, receiver, sender, progress bars).
//! - [`link`]: one remote peer (peer connection, perfect negotiation, `chat` channel); no server.
//! - [`media`]: audio and video (record, echo, play files) on the same connections.
//! - [`signaling`]: the WebSocket client (join, resume, reconnect with backoff, outbox).
//! - [`mesh`]: the room as this peer sees it: which links exist, who offers, what to tell the user.
//! - [`transport`]: how connections are built (settings, sockets, buffers).
//! - [`output`]: human-readable and `--json` output.
//! - [`tls`]: rustls settings for `wss://` (system roots plus `--ca-cert`).
//! - [`channels`]: the data channels this side opens (`file`), guarded against webrtc-rs faults.
//! - `sync`: the lock helper every module's shared state uses.

pub mod channels;
pub mod files;
pub mod link;
pub mod media;
pub mod mesh;
pub mod output;
pub mod signaling;
mod sync;
pub mod tls;
pub mod transport;
