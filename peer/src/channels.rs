//! The data channels this side opens on a live connection, guarded against a race in
//! webrtc-rs 0.21.1.
//!
//! `PeerConnection::create_data_channel` creates the channel in the core, releases the core's
//! lock, and only then registers the channel's event queue. On a connection that is already up
//! the DCEP OPEN goes out at once, and if the driver processes the remote's ACK in that gap it
//! finds no queue and takes the channel for one the *remote* opened: it registers a queue of its
//! own, hands the channel to `on_data_channel` (a "phantom" with our own label) and delivers
//! `OnOpen` there. `create_data_channel` then overwrites that registration with its own queue.
//! So, without this module:
//! - our channel never sees `OnOpen` (a file transfer waited for it forever: seen in CI as a
//!   Rust → browser file that never arrived);
//! - the phantom was served as an incoming channel, and dropping or closing it ends the stream
//!   our channel uses (dropping a webrtc-rs `DataChannel` unregisters its id's queue, which by
//!   then is ours).
//!
//! Measured in `link::tests`: 300 channels opened at once on a live connection, ~50 of them
//! lost this way without the guard, none with it.
//!
//! [`LocalChannels::open`] waits for `OnOpen` *or* for the channel's state to read open, and
//! [`LocalChannels::adopt_if_own`] recognises a phantom by its id and keeps it, unserved and
//! alive, until [`LocalChannels::release`]. (A channel's id is webrtc-rs's handle for it, given
//! out in sequence and never reused, so a remote-opened channel never has an id created here.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelId, RTCDataChannelState};
use webrtc::peer_connection::PeerConnection;

/// How often [`LocalChannels::open`] reads the channel's state while no `OnOpen` came. Only the
/// racy case waits this long; an `OnOpen` ends the wait at once.
const STATE_CHECK: Duration = Duration::from_millis(20);

/// The channels one peer connection opened on this side. Owned by the link; it never holds the
/// peer connection itself (the connection's handler holds the link's state, so that would be a
/// reference cycle).
#[derive(Default)]
pub struct LocalChannels {
    /// Ids of the channels created here. Locked across `create_data_channel`, so that
    /// a phantom announced during the call is checked only once its id is recorded.
    created: tokio::sync::Mutex<HashSet<RTCDataChannelId>>,
    /// Phantoms, kept alive until [`LocalChannels::release`] (see the module docs).
    phantoms: Mutex<Vec<Arc<dyn DataChannel>>>,
}

/// Opens channels on one peer connection: what a task that sends files holds.
#[derive(Clone)]
pub struct ChannelOpener {
    pub(crate) pc: Arc<dyn PeerConnection>,
    pub(crate) channels: Arc<LocalChannels>,
}

impl ChannelOpener {
    /// See [`LocalChannels::open`].
    pub async fn open(&self, label: &str) -> Result<Arc<dyn DataChannel>, OpenError> {
        self.channels.open(self.pc.as_ref(), label).await
    }
}

/// Why [`LocalChannels::open`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data channel: {0}")]
    Create(webrtc::error::Error),
    #[error("the data channel closed before it opened")]
    ClosedBeforeOpen,
}

impl LocalChannels {
    /// Opens an ordered, reliable channel labelled `label` on `pc` and returns it once open.
    pub async fn open(
        &self,
        pc: &dyn PeerConnection,
        label: &str,
    ) -> Result<Arc<dyn DataChannel>, OpenError> {
        let channel = {
            let mut created = self.created.lock().await;
            let channel = pc.create_data_channel(label, None).await.map_err(OpenError::Create)?;
            created.insert(channel.id());
            channel
        };
        loop {
            tokio::select! {
                event = channel.poll() => match event {
                    Some(DataChannelEvent::OnOpen) => return Ok(channel),
                    Some(DataChannelEvent::OnClose) | None => return Err(OpenError::ClosedBeforeOpen),
                    Some(_) => {}
                },
                // The `OnOpen` went to a phantom: the state is the only witness left.
                () = tokio::time::sleep(STATE_CHECK) => match channel.ready_state().await {
                    Ok(RTCDataChannelState::Open) => return Ok(channel),
                    Ok(RTCDataChannelState::Connecting) => {}
                    Ok(_) | Err(_) => return Err(OpenError::ClosedBeforeOpen),
                },
            }
        }
    }

    /// True if `channel`, announced by `on_data_channel`, is one this side opened: then it is
    /// kept (not served, not dropped) and the caller must leave it alone.
    pub async fn adopt_if_own(&self, channel: &Arc<dyn DataChannel>) -> bool {
        if !self.created.lock().await.contains(&channel.id()) {
            return false;
        }
        lock(&self.phantoms).push(channel.clone());
        true
    }

    /// Lets go of the phantoms (each holds the peer connection): call once the connection is
    /// closed.
    pub fn release(&self) {
        lock(&self.phantoms).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
