//! The receiving side's async shell: which `file` channels are taken, and moving one taken
//! transfer's messages into its [`Incoming`].
//!
//! What a remote can make us hold is bounded (issue 13): a channel we do not take is answered
//! `{"ok":false,..}` at once and closed; a remote has at most [`PER_PEER_INCOMING`] transfers
//! running (the rest are answered `busy`), all remotes together [`MAX_INCOMING`] (each holds an
//! open file); and a transfer that receives nothing for the inbox's idle time fails and frees
//! its slot, leaving nothing on disk. Before this, 64 slots were shared by everyone and had no
//! idle limit: one room member opening 64 channels that sent a header and stalled made every
//! later transfer, from anyone, be refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use webrtc::data_channel::{DataChannel, DataChannelEvent};

use protocol::{FileAnswer, FileHeader, PeerId};
use tokio::sync::Semaphore;

use super::events::{Reporter, next_transfer_id};
use super::{FileError, FileEvent, FileEvents, Incoming, Receiving, Step, sanitize_name};

/// Incoming transfers at once, from all peers together. Each holds an open file and a write
/// buffer; this bounds our file descriptors whatever the number of peers.
pub const MAX_INCOMING: usize = 64;
/// Incoming transfers at once from one remote peer (INTERFACES.md): a remote that holds its
/// slots only refuses itself. Our own sender keeps to it (see [`crate::channels`]).
pub const PER_PEER_INCOMING: usize = crate::channels::TRANSFERS_AT_ONCE;
/// How long an incoming transfer may receive nothing before it fails (INTERFACES.md).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);
/// The refusal of a peer that takes no files (INTERFACES.md).
pub const NOT_ACCEPTING: &str = "not accepting files";
/// The refusal of a transfer over the slots (INTERFACES.md).
pub const BUSY: &str = "busy";
/// How long the receiver waits for its answer to be acknowledged before reporting the file:
/// a peer that exits on `--expect-files` must not close the connection under its own answer.
const ANSWER_ACK_DEADLINE: Duration = Duration::from_secs(5);
/// How long a refused channel stays open for its sender to read the answer and close it.
const REFUSED_CLOSE_DEADLINE: Duration = Duration::from_secs(5);

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

/// Counts a running incoming transfer (all peers together) while it lives.
struct GlobalSlot;

static INCOMING: AtomicUsize = AtomicUsize::new(0);

impl GlobalSlot {
    fn take() -> Option<GlobalSlot> {
        let before = INCOMING.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_INCOMING {
            INCOMING.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(GlobalSlot)
    }
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        INCOMING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Receives one transfer on a `file` channel opened by `remote`, until the channel closes or
/// stays silent for the inbox's idle time.
pub async fn receive(remote: PeerId, channel: Arc<dyn DataChannel>, inbox: Inbox) {
    // The remote's own slot first: a remote over its share never takes one of everyone's.
    let Ok(peer_slot) = inbox.slots.clone().try_acquire_owned() else {
        tracing::warn!(peer = %remote, "refusing a file: {PER_PEER_INCOMING} transfers from this peer are running");
        return refuse(&remote, channel.as_ref(), BUSY).await;
    };
    let Some(global_slot) = GlobalSlot::take() else {
        tracing::warn!(peer = %remote, "refusing a file: {MAX_INCOMING} transfers are already coming in");
        return refuse(&remote, channel.as_ref(), BUSY).await;
    };
    // Given back as soon as the transfer is decided, before the answer goes out: a sender that
    // starts its next file on our answer must find the slot free, not wait for this channel's
    // close to reach us.
    let mut slots = Some((peer_slot, global_slot));
    let idle = inbox.receiving.idle;
    let transfer = next_transfer_id();
    let mut reporter = Reporter::new(inbox.events.clone(), transfer);
    let mut incoming = Incoming::new(&inbox.receiving.dir).with_max_size(inbox.receiving.max_size);
    let started = Instant::now();
    let mut claimed = String::new();
    let mut idle_error = None;
    loop {
        let event = match tokio::time::timeout(idle, channel.poll()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => {
                // Silent too long: before the answer that is a failed transfer (answered, so
                // that a live sender hears why); after it, a sender that never closed.
                if !incoming.is_finished() {
                    let error = FileError::Idle(idle);
                    incoming.abandon();
                    slots = None;
                    idle_error = Some(error.to_string());
                    answer(&remote, channel.as_ref(), &FileAnswer::refused(error.to_string())).await;
                }
                let _ = channel.close().await;
                break;
            }
        };
        match event {
            DataChannelEvent::OnMessage(message) => {
                if incoming.is_finished() {
                    tracing::debug!(peer = %remote, "message after the answer; ignored");
                    continue;
                }
                if message.is_string && claimed.is_empty() {
                    // For the failure event only: what the sender called it, made printable.
                    claimed =
                        FileHeader::parse(&message.data).map(|h| sanitize_name(&h.name)).unwrap_or_default();
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
                        slots = None;
                        answer(&remote, channel.as_ref(), &FileAnswer::accepted()).await;
                        let elapsed = started.elapsed();
                        tracing::debug!(peer = %remote, "received {} ({} bytes) into {}", file.name, file.size, file.path.display());
                        reporter
                            .emit(FileEvent::Received { peer: remote.clone(), transfer, file, elapsed })
                            .await;
                    }
                    Err(error) => {
                        slots = None;
                        let error = error.to_string();
                        tracing::warn!(peer = %remote, "incoming file {claimed:?} failed: {error}");
                        answer(&remote, channel.as_ref(), &FileAnswer::refused(error.clone())).await;
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
    drop(slots);
    // A channel that closes early is a failed transfer (PROTOCOL.md), before its header too;
    // so is one that went silent. The temporary file is gone before anyone hears of it.
    if let Some(error) = idle_error.or_else(|| incoming.on_close().map(|e| e.to_string())) {
        tracing::warn!(peer = %remote, "incoming file {claimed:?} failed: {error}");
        reporter.emit(FileEvent::Failed { peer: remote, transfer, name: claimed, error }).await;
    }
}

/// Answers a channel we do not take, at once (before its header: nothing of it is read). The
/// sender closes the channel when it reads the answer (PROTOCOL.md); we close it ourselves only
/// if it has not within [`REFUSED_CLOSE_DEADLINE`]. Closing at once made a sender that had not
/// yet sent its header fail on "data channel closed" before reading why.
pub async fn refuse(remote: &PeerId, channel: &dyn DataChannel, reason: &str) {
    let answered = async {
        answer(remote, channel, &FileAnswer::refused(reason)).await;
        // Whatever the sender still sends (its header, bytes already on the way) is dropped.
        while let Some(event) = channel.poll().await {
            if matches!(event, DataChannelEvent::OnClose) {
                return;
            }
        }
    };
    if tokio::time::timeout(REFUSED_CLOSE_DEADLINE, answered).await.is_err() {
        tracing::debug!(peer = %remote, "a refused sender kept its file channel open; closing it");
    }
    let _ = channel.close().await;
}

/// Sends the answer and waits (bounded) until the remote acknowledged it.
async fn answer(remote: &PeerId, channel: &dyn DataChannel, answer: &FileAnswer) {
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
