//! What transfers report to their owner (the mesh): a [`FileEvent`] per start and end, and
//! progress, throttled ([`Reporter`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::PeerId;
use tokio::sync::mpsc;

use super::Received;

/// Progress events at most this often per transfer: enough for a smooth bar and a rate.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A unique number per transfer in this process, to tell progress reports apart.
pub type TransferId = u64;

pub(crate) fn next_transfer_id() -> TransferId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What transfers report to their owner (the mesh), tagged with the remote peer's id.
#[derive(Debug, Clone, PartialEq)]
pub enum FileEvent {
    Started {
        peer: PeerId,
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
        peer: PeerId,
        transfer: TransferId,
        file: Received,
        elapsed: Duration,
    },
    /// An incoming transfer failed; nothing of it is left on disk.
    Failed {
        peer: PeerId,
        transfer: TransferId,
        name: String,
        error: String,
    },
    /// An outgoing transfer ended: `error` is `None` when the receiver answered ok.
    Sent {
        peer: PeerId,
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

/// Throttles progress reports of one transfer.
pub(crate) struct Reporter {
    events: FileEvents,
    transfer: TransferId,
    last: Instant,
}

impl Reporter {
    pub(crate) fn new(events: FileEvents, transfer: TransferId) -> Reporter {
        Reporter { events, transfer, last: Instant::now() }
    }

    pub(crate) fn progress(&mut self, bytes: u64) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            // Progress is only for the eye: never wait for room, never fail a transfer over it.
            let _ = self.events.try_send(FileEvent::Progress { transfer: self.transfer, bytes });
        }
    }

    pub(crate) async fn emit(&self, event: FileEvent) {
        // The owner is gone only while exiting; nothing is left to tell then.
        let _ = self.events.send(event).await;
    }
}
