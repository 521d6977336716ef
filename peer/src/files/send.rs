//! The sending side: a file hashed once ([`Outgoing::prepare`]), then streamed to each peer on a
//! channel of its own with back-pressure, and the receiver's verdict reported.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use protocol::{FILE_LABEL, FileAnswer, FileHeader, MAX_FILE_CHUNK_BYTES, PeerId};

use super::events::{Reporter, next_transfer_id};
use super::{FileError, FileEvent, FileEvents, sanitize_name};
use crate::channels::ChannelOpener;

/// How long an "ok" that arrives while the last `send` has not returned waits for it.
const LAST_SEND_DEADLINE: Duration = Duration::from_secs(2);

/// A file to send: its header is computed once, then it is read again for every peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub path: PathBuf,
    pub header: FileHeader,
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
            header: FileHeader { name: sanitize_name(&name), size, sha256: hex::encode(hasher.finalize()) },
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
    /// Send the header, then nothing, and wait for the receiver's answer: what issue 13's
    /// attacker did to hold a receiver's slots.
    Stall,
}

/// Sends `file` to `remote` on a new `file` channel from `opener` and reports the outcome as
/// [`FileEvent::Sent`]. `corrupt` is for tests only.
pub async fn send(
    remote: PeerId,
    opener: ChannelOpener,
    file: Arc<Outgoing>,
    corrupt: Option<Corruption>,
    events: FileEvents,
) {
    // At most as many at once as the receiver takes from one peer; the rest wait their turn.
    // A stalling test sender is issue 13's attacker, who keeps to no limit.
    let _slot = match corrupt {
        Some(Corruption::Stall) => None,
        _ => opener.transfer_slot().await,
    };
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
    if let Err(e) = channel.send_text(&header.to_json()).await {
        return Err(refusal_in_queue(channel).await.unwrap_or(FileError::Channel(e.to_string())));
    }
    let limit = match corrupt {
        Some(Corruption::Truncate) => header.size / 2,
        Some(Corruption::Stall) => 0,
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
                if let Err(e) = result {
                    return Err(refusal_in_queue(channel).await.unwrap_or(e));
                }
                sent_all = true;
                if corrupt == Some(Corruption::Truncate) {
                    return Err(FileError::Test("closed the channel early on purpose (--test-corrupt-file truncate)"));
                }
            }
            event = channel.poll() => match event {
                Some(DataChannelEvent::OnMessage(message)) if message.is_string => {
                    let answer = FileAnswer::parse(&message.data).map_err(FileError::BadAnswer)?;
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

/// After a send failed on a closed channel: the receiver's refusal, if it is waiting in the
/// channel's queue, says more than "channel closed".
async fn refusal_in_queue(channel: &dyn DataChannel) -> Option<FileError> {
    let look = async {
        loop {
            match channel.poll().await {
                Some(DataChannelEvent::OnMessage(message)) if message.is_string => {
                    let answer = FileAnswer::parse(&message.data).ok()?;
                    return (!answer.ok).then(|| {
                        FileError::Refused(answer.error.unwrap_or_else(|| "no reason given".into()))
                    });
                }
                Some(DataChannelEvent::OnClose) | None => return None,
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(200), look).await.ok().flatten()
}

/// Streams the first `limit` of `size` bytes of `path` in [`MAX_FILE_CHUNK_BYTES`] messages. `send`
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
    let mut buf = vec![0u8; MAX_FILE_CHUNK_BYTES];
    while sent < limit {
        let want = (limit - sent).min(MAX_FILE_CHUNK_BYTES as u64) as usize;
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
