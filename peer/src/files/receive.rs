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

use bytes::BytesMut;
use tokio::sync::mpsc;
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
/// Messages (of at most 16 KiB) queued for a transfer's writer before the channel is not read:
/// enough to keep the writer busy while the next ones arrive.
const WRITE_QUEUE: usize = 16;
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
///
/// The [`Incoming`] runs on the blocking pool ([`write_transfer`]), fed through a queue of
/// [`WRITE_QUEUE`] messages; this task only moves messages and answers. Creating the receive
/// dir and the temporary file, writing, hashing, `sync_all` and the hard links all block (a
/// write stalls for as long as the kernel throttles dirty pages; `sync_all` of a large file
/// takes seconds on a slow disk): on an async worker they would stall every connection the
/// worker drives, the sender's included. When the queue is full this task stops reading the
/// channel, so webrtc-rs's bounded queue fills and the sender's SCTP window closes: the bytes
/// held here stay bounded.
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
    let incoming = Incoming::new(&inbox.receiving.dir).with_max_size(inbox.receiving.max_size);
    let (to_disk, from_channel) = mpsc::channel(WRITE_QUEUE);
    let (steps_tx, mut steps) = mpsc::unbounded_channel();
    let delay = inbox.receiving.test_write_delay;
    let writer = tokio::task::spawn_blocking(move || write_transfer(incoming, from_channel, steps_tx, delay));
    let started = Instant::now();
    let mut claimed = String::new();
    let mut idle_error = None;
    let mut timed_out = false;
    // The answer went out (or the transfer was abandoned): later messages are dropped here.
    let mut decided = false;
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            // Steps first: an answer never waits behind messages still coming in.
            biased;
            Some(step) = steps.recv() => {
                let done = match step {
                    Ok(Step::Started { name, size }) => {
                        let started = FileEvent::Started { peer: remote.clone(), transfer, outgoing: false, name, size };
                        reporter.emit(started).await;
                        continue;
                    }
                    Ok(Step::Progress(bytes)) => {
                        reporter.progress(bytes);
                        continue;
                    }
                    Ok(Step::Done(file)) => Ok(file),
                    Err(error) => Err(error.to_string()),
                };
                decided = true;
                slots = None;
                match done {
                    Ok(file) => {
                        answer(&remote, channel.as_ref(), &FileAnswer::accepted()).await;
                        let elapsed = started.elapsed();
                        tracing::debug!(peer = %remote, "received {} ({} bytes) into {}", file.name, file.size, file.path.display());
                        reporter.emit(FileEvent::Received { peer: remote.clone(), transfer, file, elapsed }).await;
                    }
                    Err(error) => {
                        tracing::warn!(peer = %remote, "incoming file {claimed:?} failed: {error}");
                        answer(&remote, channel.as_ref(), &FileAnswer::refused(error.clone())).await;
                        let failed = FileEvent::Failed { peer: remote.clone(), transfer, name: claimed.clone(), error };
                        reporter.emit(failed).await;
                    }
                }
            }
            event = channel.poll() => {
                silence.as_mut().reset(tokio::time::Instant::now() + idle);
                match event {
                    Some(DataChannelEvent::OnMessage(message)) => {
                        if decided {
                            tracing::debug!(peer = %remote, "message after the answer; ignored");
                            continue;
                        }
                        if message.is_string && claimed.is_empty() {
                            // For the failure event only: what the sender called it, made printable.
                            claimed = FileHeader::parse(&message.data).map(|h| sanitize_name(&h.name)).unwrap_or_default();
                        }
                        // Fails only once the writer stopped on an error, which `steps` reports.
                        let _ = to_disk.send((message.is_string, message.data)).await;
                    }
                    Some(DataChannelEvent::OnClose) | None => break,
                    Some(_) => {}
                }
            }
            () = &mut silence => {
                // Silent too long: before the answer that is a failed transfer (answered below,
                // once the temporary file is gone, so that a live sender hears why); after it,
                // a sender that never closed.
                if !decided {
                    idle_error = Some(FileError::Idle(idle).to_string());
                }
                timed_out = true;
                break;
            }
        }
    }
    drop(slots);
    // The writer finishes what was queued (which may complete the file: the sender closed right
    // after its last bytes), then sees the end.
    drop(to_disk);
    let mut late = None;
    while let Some(step) = steps.recv().await {
        match step {
            Ok(Step::Done(file)) if idle_error.is_none() => late = Some(Ok(file)),
            Err(error) if idle_error.is_none() => late = Some(Err(error.to_string())),
            _ => {}
        }
    }
    let closed_early = match writer.await {
        Ok(closed_early) => closed_early.map(|e| e.to_string()),
        Err(e) => Some(format!("the transfer's writer failed: {e}")),
    };
    if timed_out {
        if let Some(error) = &idle_error {
            answer(&remote, channel.as_ref(), &FileAnswer::refused(error.clone())).await;
        }
        let _ = channel.close().await;
    }
    // A channel that closes early is a failed transfer (PROTOCOL.md), before its header too;
    // so is one that went silent. The temporary file is gone before anyone hears of it.
    let outcome = match (idle_error, late) {
        (Some(error), _) => Err(error),
        (None, Some(late)) => late,
        (None, None) => match closed_early {
            Some(error) => Err(error),
            None => return,
        },
    };
    match outcome {
        Ok(file) => {
            // Too late to answer: the channel is closed. The file is whole and verified.
            let elapsed = started.elapsed();
            reporter.emit(FileEvent::Received { peer: remote, transfer, file, elapsed }).await;
        }
        Err(error) => {
            tracing::warn!(peer = %remote, "incoming file {claimed:?} failed: {error}");
            reporter.emit(FileEvent::Failed { peer: remote, transfer, name: claimed, error }).await;
        }
    }
}

/// The blocking half of [`receive`]: feeds every queued message into `incoming` and reports
/// each step, until the queue ends (the channel closed, went silent, or the shell gave up);
/// then says how the transfer ended if it had not ([`Incoming::on_close`]). Removing the
/// temporary file of a failed transfer happens here too.
fn write_transfer(
    mut incoming: Incoming,
    mut messages: mpsc::Receiver<(bool, BytesMut)>,
    steps: mpsc::UnboundedSender<Result<Step, FileError>>,
    test_delay: Option<Duration>,
) -> Option<FileError> {
    while let Some((is_string, data)) = messages.blocking_recv() {
        if incoming.is_finished() {
            continue;
        }
        if let Some(delay) = test_delay.filter(|_| !is_string) {
            std::thread::sleep(delay);
        }
        let step = incoming.on_message(is_string, &data);
        // Progress only when caught up: the next message reports more.
        if matches!(step, Ok(Step::Progress(_))) && !messages.is_empty() {
            continue;
        }
        let _ = steps.send(step);
    }
    incoming.on_close()
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
