//! One remote peer: its RTCPeerConnection, perfect negotiation, and its `chat` channel.
//!
//! A [`Link`] knows nothing about the server. It takes the remote's signals in
//! ([`Link::handle_signal`]) and reports what it produces as [`LinkEvent`]s (signals to relay,
//! channel open, chat lines, closed, failed), each tagged with the remote's id. Tests wire two
//! links together directly.
//!
//! Negotiation runs in one task per link, which handles one request at a time (make an offer,
//! apply a remote description or candidate). Because an offer is created and applied before the
//! next request is looked at, the W3C "perfect negotiation" pattern reduces to: an offer that
//! arrives while we have a local offer pending is a collision; the polite side rolls back and
//! accepts it, the impolite side ignores it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use protocol::{IceCandidate, MAX_CHAT_LINE_BYTES, PeerId, Signal};
use thiserror::Error;
use tokio::sync::Notify;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
};

use crate::channels::{ChannelOpener, LocalChannels};
use crate::files::{self, Inbox};
use crate::media::{self, LinkMedia, Media};
use crate::sync::lock;
use crate::transport;
use protocol::FILE_LABEL;

/// The label of the chat channel (PROTOCOL.md).
pub const CHAT_LABEL: &str = "chat";

/// Chat lines queued for one channel before [`Link::send_chat`] waits.
const CHAT_QUEUE: usize = 256;
/// Remote candidates kept while no remote description is set yet.
const MAX_EARLY_CANDIDATES: usize = 64;
/// How soon the selected candidate pair is looked at again besides ICE state changes (webrtc-rs
/// 0.21 has no event for a new pair): after 1 s, then twice as long each time up to
/// [`PAIR_CHECK_MAX`], from 1 s again after each state change. A pair is nominated while ICE
/// connects, so the early looks catch it; once connected it rarely changes, and a look locks the
/// connection's core: at a fixed 1 s it was a third of an idle connection's wake-ups
/// (docs/benchmarks.md, "Idle CPU").
const PAIR_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between two looks at the selected pair.
const PAIR_CHECK_MAX: Duration = Duration::from_secs(64);

#[derive(Debug, Error)]
pub enum LinkError {
    #[error("cannot create the peer connection: {0}")]
    Build(webrtc::error::Error),
    #[error("the chat channel to this peer is not open")]
    ChatNotOpen,
    #[error("chat line is {0} bytes; the limit is {MAX_CHAT_LINE_BYTES}")]
    LineTooLong(usize),
}

/// What a link reports, tagged with the remote id in [`LinkEvents`].
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A signal to relay to the remote peer through the server.
    Signal(Signal),
    /// The `chat` channel is open: lines can be sent.
    ChannelOpen,
    /// A chat line from the remote (valid UTF-8, within the size limit).
    Message(String),
    /// The `chat` channel closed (after it was open).
    ChannelClosed,
    /// The connection failed (ICE or DTLS); the owner should close the link.
    Failed(String),
    /// ICE selected a candidate pair of these types (`host`, `srflx`, `prflx`, `relay`): once
    /// per connection, and again when the pair's types change.
    IceSelected { local: String, remote: String },
    /// Gathering ended without a relay candidate although TURN servers were given: why, for
    /// the user. With `relay_only`, a [`LinkEvent::Failed`] follows.
    TurnFailed(String),
}

/// Where links send their events: `(remote id, event)`. Bounded; the owner must keep reading.
pub type LinkEvents = mpsc::Sender<(PeerId, LinkEvent)>;

/// Per-link options.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Local UDP addresses to bind (see [`transport::DEFAULT_BIND`]).
    pub bind: Vec<String>,
    /// ICE servers, from `welcome`.
    pub ice_servers: Vec<protocol::IceServer>,
    /// Where incoming `file` channels store their files; `None` refuses them.
    pub inbox: Option<Inbox>,
    /// The ICE timer tick (see [`transport::DEFAULT_ICE_TICK`]).
    pub ice_tick: Duration,
    /// ICE transport policy `relay`: connect only through TURN (`--relay-only`).
    pub relay_only: bool,
    /// Audio and video (`--record`, `--echo-media`, `--send-*`); `None` takes no media.
    pub media: Option<Arc<Media>>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            bind: transport::DEFAULT_BIND.iter().map(|s| s.to_string()).collect(),
            ice_servers: Vec::new(),
            inbox: None,
            ice_tick: transport::DEFAULT_ICE_TICK,
            relay_only: false,
            media: None,
        }
    }
}

enum Input {
    /// We are the newcomer: create the `chat` channel and offer.
    Offer,
    Remote(Signal),
    NegotiationNeeded,
}

/// State shared by the link, its negotiation task, its event handler and its channel task.
struct Shared {
    remote: PeerId,
    polite: bool,
    events: LinkEvents,
    /// The open `chat` channel's writer, if any.
    chat: Mutex<Option<ChatWriter>>,
    /// `a=mid` and `a=ice-ufrag` of our latest local description, for the candidates we send
    /// (webrtc-rs fills `sdpMid` with "" and no ufrag, which browsers may reject).
    local_mid: Mutex<(Option<String>, Option<String>)>,
    inbox: Option<Inbox>,
    /// Channels opened here on the live connection (issue 8's `file` channels).
    local_channels: Arc<LocalChannels>,
    /// Our DTLS role once the first offer/answer settled it; every later answer keeps it.
    dtls_role: Mutex<Option<dtls_role::Setup>>,
    media: Option<LinkMedia>,
    tasks: TaskTracker,
    /// What explains a missing relay candidate ([`LinkEvent::TurnFailed`]).
    relay: RelayWatch,
    /// Woken on ICE state changes: the selected pair may have changed.
    ice_changed: Notify,
    /// Cancelled when the link closes: ends the pair watcher.
    closed: CancellationToken,
}

/// Relay candidates gathered, and what to tell the user when there are none.
struct RelayWatch {
    ice_servers: Vec<protocol::IceServer>,
    relay_only: bool,
    gathered: AtomicUsize,
    reported: AtomicBool,
}

struct ChatWriter {
    tx: mpsc::Sender<String>,
    channel: Arc<dyn DataChannel>,
    writer: JoinHandle<()>,
}

impl Shared {
    async fn emit(&self, event: LinkEvent) {
        // The owner is gone only while shutting down; nothing is left to tell then.
        let _ = self.events.send((self.remote.clone(), event)).await;
    }
}

/// The connection to one remote peer. Dropping it without [`Link::close`] aborts nothing
/// gracefully; always close it.
pub struct Link {
    shared: Arc<Shared>,
    pc: Arc<dyn PeerConnection>,
    /// Unbounded, so that the mesh never waits on a link: what goes in is the remote's signals
    /// (rate-limited by the server) and our own offers, handled as fast as they come.
    input: mpsc::UnboundedSender<Input>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("remote", &self.shared.remote)
            .field("polite", &self.shared.polite)
            .finish()
    }
}

impl Link {
    /// Creates the peer connection toward `remote`. `polite` is true toward a peer listed in
    /// our `welcome` (PROTOCOL.md). Nothing is sent until [`Link::offer`] or a remote offer.
    pub async fn new(
        remote: PeerId,
        polite: bool,
        options: &LinkOptions,
        events: LinkEvents,
    ) -> Result<Link, LinkError> {
        let media = options.media.as_ref().map(|m| m.for_link(remote.clone()));
        let shared = Arc::new(Shared {
            remote,
            polite,
            events,
            chat: Mutex::new(None),
            local_mid: Mutex::new((None, None)),
            inbox: options.inbox.clone(),
            local_channels: Arc::default(),
            dtls_role: Mutex::new(None),
            media,
            tasks: TaskTracker::new(),
            relay: RelayWatch {
                ice_servers: options.ice_servers.clone(),
                relay_only: options.relay_only,
                gathered: AtomicUsize::new(0),
                reported: AtomicBool::new(false),
            },
            ice_changed: Notify::new(),
            closed: CancellationToken::new(),
        });
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let handler = Arc::new(Handler { shared: shared.clone(), input: input_tx.downgrade() });
        let policy =
            if options.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All };
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(transport::ice_servers(&options.ice_servers))
            .with_ice_transport_policy(policy)
            .build();
        let mut builder = PeerConnectionBuilder::new();
        if options.media.is_some() {
            let (engine, interceptors) = media::media_engine().map_err(LinkError::Build)?;
            builder = builder.with_media_engine(engine).with_interceptor_registry(interceptors);
        }
        let pc = builder
            .with_configuration(config)
            .with_setting_engine(
                transport::setting_engine_builder(options.ice_tick)
                    .with_relay_acceptance_min_wait(Some(transport::relay_acceptance_wait(
                        options.relay_only,
                    )))
                    .build(),
            )
            .with_runtime(transport::BigBufferRuntime::shared())
            .with_handler(handler)
            .with_udp_addrs(options.bind.clone())
            .with_data_channel_send_buffer_limit(transport::SEND_BUFFER_LIMIT)
            .build()
            .await
            .map_err(LinkError::Build)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        if let Some(media) = &shared.media {
            media.start(&pc, &shared.tasks).await;
        }
        shared.tasks.spawn(negotiate(shared.clone(), pc.clone(), input_rx));
        shared.tasks.spawn(watch_selected_pair(shared.clone(), pc.clone()));
        Ok(Link { shared, pc, input: input_tx })
    }

    /// The remote peer's id.
    pub fn remote(&self) -> &PeerId {
        &self.shared.remote
    }

    /// True toward a peer listed in our `welcome`.
    pub fn polite(&self) -> bool {
        self.shared.polite
    }

    /// As the newcomer: create the `chat` channel and send an offer.
    pub fn offer(&self) {
        let _ = self.input.send(Input::Offer);
    }

    /// A signal the remote sent us; handled in order, without waiting here.
    pub fn handle_signal(&self, signal: Signal) {
        let _ = self.input.send(Input::Remote(signal));
    }

    /// The open `chat` channel's line queue (bounded: [`CHAT_QUEUE`]), to queue lines without
    /// waiting; `None` while the channel is not open.
    pub fn chat_sender(&self) -> Option<mpsc::Sender<String>> {
        lock(&self.shared.chat).as_ref().map(|c| c.tx.clone())
    }

    /// True while the `chat` channel is open.
    pub fn chat_open(&self) -> bool {
        lock(&self.shared.chat).is_some()
    }

    /// Queues a chat line on the `chat` channel; waits while the channel's queue is full.
    pub async fn send_chat(&self, text: String) -> Result<(), LinkError> {
        if text.len() > MAX_CHAT_LINE_BYTES {
            return Err(LinkError::LineTooLong(text.len()));
        }
        let tx = lock(&self.shared.chat).as_ref().map(|c| c.tx.clone()).ok_or(LinkError::ChatNotOpen)?;
        tx.send(text).await.map_err(|_| LinkError::ChatNotOpen)
    }

    /// Opens data channels on this link's connection (issue 8's `file` channels).
    pub fn channel_opener(&self) -> ChannelOpener {
        ChannelOpener { pc: self.pc.clone(), channels: self.shared.local_channels.clone() }
    }

    #[cfg(test)]
    fn peer_connection(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }

    /// Closes the link. With `flush` set, first waits (at most `flush`) until every chat line
    /// queued so far has been handed to SCTP and acknowledged by the remote, so that lines
    /// sent just before exit are not lost.
    pub async fn close(self, flush: Option<Duration>) {
        let chat = lock(&self.shared.chat).take();
        if let (Some(chat), Some(limit)) = (chat, flush) {
            let ChatWriter { tx, channel, writer } = chat;
            drop(tx);
            let drained = async {
                let _ = writer.await;
                // `outstanding_bytes` counts what SCTP has not had acknowledged yet.
                while channel.outstanding_bytes().await.unwrap_or(0) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            if tokio::time::timeout(limit, drained).await.is_err() {
                tracing::warn!(peer = %self.shared.remote, "chat lines not acknowledged within {limit:?}; closing anyway");
            }
        }
        if let Some(media) = &self.shared.media {
            media.stop();
        }
        if let Err(e) = self.pc.close().await {
            tracing::debug!(peer = %self.shared.remote, "closing the peer connection: {e}");
        }
        self.shared.local_channels.release();
        self.shared.closed.cancel();
        drop(self.input);
        self.shared.tasks.close();
        // The channel task ends when the connection closes; don't wait on a stuck driver forever.
        if tokio::time::timeout(Duration::from_secs(2), self.shared.tasks.wait()).await.is_err() {
            tracing::debug!(peer = %self.shared.remote, "link tasks still running after close");
        }
    }
}

/// webrtc-rs callbacks. They run inside the connection's driver, so they only hand work on.
struct Handler {
    shared: Arc<Shared>,
    /// Weak, so that closing the link ends the negotiation task (the handler lives as long as
    /// the peer connection, which that task holds).
    input: mpsc::WeakUnboundedSender<Input>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_negotiation_needed(&self) {
        if let Some(input) = self.input.upgrade() {
            let _ = input.send(Input::NegotiationNeeded);
        }
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let address = event.candidate.address.as_str();
        // A wildcard bound on a machine without other interfaces yields an unroutable
        // 0.0.0.0 / :: candidate; it would only cost the remote a useless check.
        if address == "0.0.0.0" || address == "::" {
            return;
        }
        if event.candidate.typ == RTCIceCandidateType::Relay {
            self.shared.relay.gathered.fetch_add(1, Ordering::Relaxed);
        }
        let init = match event.candidate.to_json() {
            Ok(init) => init,
            Err(e) => {
                tracing::warn!(peer = %self.shared.remote, "cannot encode a local candidate: {e}");
                return;
            }
        };
        let (mid, ufrag) = lock(&self.shared.local_mid).clone();
        let candidate = IceCandidate {
            candidate: init.candidate,
            sdp_mid: mid.or(init.sdp_mid.filter(|m| !m.is_empty())),
            sdp_m_line_index: init.sdp_mline_index.or(Some(0)),
            username_fragment: ufrag.or(init.username_fragment),
        };
        self.shared.emit(LinkEvent::Signal(Signal::Candidate { candidate: Some(candidate) })).await;
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.report_missing_relay().await;
            self.shared.emit(LinkEvent::Signal(Signal::Candidate { candidate: None })).await;
        }
    }

    async fn on_ice_connection_state_change(&self, _state: RTCIceConnectionState) {
        self.shared.ice_changed.notify_one();
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(peer = %self.shared.remote, "connection state {state}");
        if let Some(media) = &self.shared.media {
            media.set_connected(state == RTCPeerConnectionState::Connected);
        }
        if state == RTCPeerConnectionState::Failed {
            self.shared.emit(LinkEvent::Failed("connection failed".to_string())).await;
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        match &self.shared.media {
            Some(media) => media.on_track(track, &self.shared.tasks),
            None => tracing::debug!(peer = %self.shared.remote, "ignoring a media track (no media flags)"),
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        // In a task: telling a phantom (see `channels`) from a remote's channel may wait for a
        // `create_data_channel` in progress, which must not hold up the driver.
        self.shared.tasks.spawn(serve_remote_channel(self.shared.clone(), channel));
    }
}

impl Handler {
    /// Once per link: gathering ended with TURN servers given but no relay candidate.
    async fn report_missing_relay(&self) {
        let relay = &self.shared.relay;
        if relay.gathered.load(Ordering::Relaxed) > 0 || relay.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let Some(why) = transport::turn_failure(&relay.ice_servers, SystemTime::now()) else { return };
        tracing::warn!(peer = %self.shared.remote, "{why}");
        self.shared.emit(LinkEvent::TurnFailed(why.clone())).await;
        if relay.relay_only {
            // Nothing else may be used: the connection cannot come up.
            self.shared.emit(LinkEvent::Failed(format!("relay only, and {why}"))).await;
        }
    }
}

/// Reports the selected candidate pair's types when ICE selects one and whenever they change.
/// Looks on every ICE state change and, backing off from [`PAIR_CHECK_INTERVAL`] to
/// [`PAIR_CHECK_MAX`], in between, until the link closes.
async fn watch_selected_pair(shared: Arc<Shared>, pc: Arc<dyn PeerConnection>) {
    let mut reported: Option<(String, String)> = None;
    let mut wait = PAIR_CHECK_INTERVAL;
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = shared.ice_changed.notified() => wait = PAIR_CHECK_INTERVAL,
            _ = tokio::time::sleep(wait) => wait = (wait * 2).min(PAIR_CHECK_MAX),
        }
        let Some(sctp) = pc.sctp().await else { continue };
        let Ok(Some(pair)) = sctp.transport().ice_transport().get_selected_candidate_pair().await else {
            continue;
        };
        let types = (pair.local().typ.to_string(), pair.remote().typ.to_string());
        if reported.as_ref() != Some(&types) {
            let (local, remote) = types.clone();
            shared.emit(LinkEvent::IceSelected { local, remote }).await;
            reported = Some(types);
        }
    }
}

/// Serves a channel the remote opened: `chat`, or `file` (refused at once when we take no
/// files).
async fn serve_remote_channel(shared: Arc<Shared>, channel: Arc<dyn DataChannel>) {
    if shared.local_channels.adopt_if_own(&channel).await {
        tracing::debug!(peer = %shared.remote, "webrtc-rs announced a channel of ours as remote; kept aside");
        return;
    }
    let label = channel.label().await.unwrap_or_default();
    if label == CHAT_LABEL {
        run_chat_channel(shared, channel).await;
    } else if label == FILE_LABEL {
        match &shared.inbox {
            Some(inbox) => files::receive(shared.remote.clone(), channel, inbox.clone()).await,
            None => {
                tracing::info!(peer = %shared.remote, "refused a file: not accepting files (--receive-dir DIR takes them)");
                files::refuse(&shared.remote, channel.as_ref(), files::NOT_ACCEPTING).await;
            }
        }
    } else {
        tracing::info!(peer = %shared.remote, "closing unsupported data channel {label:?}");
        let _ = channel.close().await;
    }
}

/// The negotiation task: one request at a time (see the module docs).
async fn negotiate(
    shared: Arc<Shared>,
    pc: Arc<dyn PeerConnection>,
    mut input: mpsc::UnboundedReceiver<Input>,
) {
    let mut early_candidates: Vec<RTCIceCandidateInit> = Vec::new();
    let mut ignoring_offer = false;
    while let Some(request) = input.recv().await {
        let result = match request {
            Input::Offer => start_offer(&shared, pc.as_ref()).await,
            Input::NegotiationNeeded => renegotiate(&shared, pc.as_ref()).await,
            Input::Remote(Signal::Candidate { candidate }) => {
                add_candidate(&shared, pc.as_ref(), candidate, &mut early_candidates, ignoring_offer).await
            }
            Input::Remote(description) => {
                match apply_description(&shared, pc.as_ref(), description, &mut ignoring_offer).await {
                    Ok(()) if pc.remote_description().await.is_some() => {
                        for candidate in early_candidates.drain(..) {
                            if let Err(e) = pc.add_ice_candidate(candidate).await {
                                tracing::debug!(peer = %shared.remote, "early remote candidate refused: {e}");
                            }
                        }
                        Ok(())
                    }
                    other => other,
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(peer = %shared.remote, "negotiation: {e}");
        }
    }
}

async fn start_offer(shared: &Arc<Shared>, pc: &dyn PeerConnection) -> webrtc::error::Result<()> {
    // Ordered and reliable are the defaults of a data channel.
    let channel = pc.create_data_channel(CHAT_LABEL, None).await?;
    shared.tasks.spawn(run_chat_channel(shared.clone(), channel));
    send_offer(shared, pc).await
}

async fn renegotiate(shared: &Shared, pc: &dyn PeerConnection) -> webrtc::error::Result<()> {
    // Only from a stable state after a first exchange: the first offer is explicit, and an
    // offer already in flight covers whatever changed meanwhile.
    if pc.remote_description().await.is_none() || pc.pending_local_description().await.is_some() {
        return Ok(());
    }
    send_offer(shared, pc).await
}

async fn send_offer(shared: &Shared, pc: &dyn PeerConnection) -> webrtc::error::Result<()> {
    let offer = pc.create_offer(None).await?;
    remember_mid(shared, &offer.sdp);
    pc.set_local_description(offer).await?;
    let sdp = pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
    shared.emit(LinkEvent::Signal(Signal::Offer { sdp })).await;
    Ok(())
}

async fn apply_description(
    shared: &Shared,
    pc: &dyn PeerConnection,
    signal: Signal,
    ignoring_offer: &mut bool,
) -> webrtc::error::Result<()> {
    let (is_offer, description) = match signal {
        Signal::Offer { sdp } => (true, RTCSessionDescription::offer(sdp)?),
        Signal::Answer { sdp } => (false, RTCSessionDescription::answer(sdp)?),
        Signal::Candidate { .. } => return Ok(()),
    };
    let collision = is_offer && pc.pending_local_description().await.is_some();
    *ignoring_offer = !shared.polite && collision;
    if *ignoring_offer {
        tracing::info!(peer = %shared.remote, "offer collision: impolite side keeps its own offer");
        return Ok(());
    }
    if collision {
        tracing::info!(peer = %shared.remote, "offer collision: polite side rolls back");
        pc.set_local_description(RTCSessionDescription::rollback(None)?).await?;
    }
    let remote_sdp = (!is_offer).then(|| description.sdp.clone());
    pc.set_remote_description(description).await?;
    if let Some(sdp) = remote_sdp {
        let mut role = lock(&shared.dtls_role);
        if role.is_none() {
            *role = dtls_role::ours_from_remote_answer(&sdp);
        }
    }
    if is_offer {
        let answer = pc.create_answer(None).await?;
        remember_mid(shared, &answer.sdp);
        pc.set_local_description(answer).await?;
        let mut sdp = pc.local_description().await.map(|d| d.sdp).unwrap_or_default();
        // Only the text sent is changed: webrtc-rs refuses a local answer other than the one it
        // made, and never reads the role back from it (see `dtls_role`).
        let settled = *lock(&shared.dtls_role);
        match settled {
            Some(ours) => sdp = dtls_role::keep_role(&sdp, ours),
            None => *lock(&shared.dtls_role) = dtls_role::ours_from_local_answer(&sdp),
        }
        shared.emit(LinkEvent::Signal(Signal::Answer { sdp })).await;
    }
    Ok(())
}

async fn add_candidate(
    shared: &Shared,
    pc: &dyn PeerConnection,
    candidate: Option<IceCandidate>,
    early: &mut Vec<RTCIceCandidateInit>,
    ignoring_offer: bool,
) -> webrtc::error::Result<()> {
    // `null` or an empty candidate string ends the remote's candidates. webrtc-rs needs no
    // notice of that: checks simply run on the candidates it has.
    let Some(candidate) = candidate.filter(|c| !c.candidate.is_empty()) else {
        return Ok(());
    };
    let init = RTCIceCandidateInit {
        candidate: candidate.candidate,
        sdp_mid: candidate.sdp_mid,
        sdp_mline_index: candidate.sdp_m_line_index,
        username_fragment: candidate.username_fragment,
        ..Default::default()
    };
    if pc.remote_description().await.is_none() {
        if early.len() < MAX_EARLY_CANDIDATES {
            early.push(init);
        } else {
            tracing::warn!(peer = %shared.remote, "too many candidates before the offer; dropping one");
        }
        return Ok(());
    }
    match pc.add_ice_candidate(init).await {
        // Candidates of an offer we ignored in a collision are expected to fail.
        Err(_) if ignoring_offer => Ok(()),
        other => other,
    }
}

fn remember_mid(shared: &Shared, sdp: &str) {
    let attribute =
        |name: &str| sdp.lines().find_map(|l| l.trim_end().strip_prefix(name)).map(|v| v.trim().to_string());
    *lock(&shared.local_mid) = (attribute("a=mid:"), attribute("a=ice-ufrag:"));
}

/// Reads one `chat` channel until it closes: open → writer task, text → chat lines.
///
/// After a glare both sides may have created a `chat` channel, so a link can get two. The
/// first to open carries our lines and decides `ChannelOpen`/`ChannelClosed`; lines arriving
/// on the other one are still delivered.
async fn run_chat_channel(shared: Arc<Shared>, channel: Arc<dyn DataChannel>) {
    let mut primary = false;
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                {
                    let mut slot = lock(&shared.chat);
                    if slot.is_none() {
                        let (tx, rx) = mpsc::channel(CHAT_QUEUE);
                        let writer = tokio::spawn(write_chat(shared.remote.clone(), channel.clone(), rx));
                        *slot = Some(ChatWriter { tx, channel: channel.clone(), writer });
                        primary = true;
                    }
                }
                if primary {
                    shared.emit(LinkEvent::ChannelOpen).await;
                } else {
                    tracing::debug!(peer = %shared.remote, "a second chat channel opened (glare); reading it too");
                }
            }
            DataChannelEvent::OnMessage(message) => {
                if let Some(line) = chat_line(&shared.remote, message.is_string, message.data) {
                    shared.emit(LinkEvent::Message(line)).await;
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    if primary {
        {
            let mut slot = lock(&shared.chat);
            if slot.as_ref().is_some_and(|c| c.channel.id() == channel.id())
                && let Some(chat) = slot.take()
            {
                chat.writer.abort();
            }
        }
        shared.emit(LinkEvent::ChannelClosed).await;
    }
}

/// Validates a received `chat` message (PROTOCOL.md): text, UTF-8, at most 16 KiB. Anything
/// else is dropped with a log line; a remote peer can never make us crash.
pub fn chat_line(remote: &PeerId, is_string: bool, data: BytesMut) -> Option<String> {
    if !is_string {
        tracing::warn!(peer = %remote, bytes = data.len(), "ignoring a binary message on the chat channel");
        return None;
    }
    if data.len() > MAX_CHAT_LINE_BYTES {
        tracing::warn!(peer = %remote, bytes = data.len(), "ignoring a chat line over {MAX_CHAT_LINE_BYTES} bytes");
        return None;
    }
    match String::from_utf8(data.to_vec()) {
        Ok(line) => Some(line),
        Err(_) => {
            tracing::warn!(peer = %remote, bytes = data.len(), "ignoring a chat message that is not valid UTF-8");
            None
        }
    }
}

/// Hands queued lines to the channel in order; `send_text` waits while the channel has
/// [`transport::SEND_BUFFER_LIMIT`] bytes outstanding.
async fn write_chat(remote: PeerId, channel: Arc<dyn DataChannel>, mut rx: mpsc::Receiver<String>) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = channel.send_text(&line).await {
            tracing::warn!(peer = %remote, "chat line not sent: {e}");
            break;
        }
    }
}

mod dtls_role;

#[cfg(test)]
mod tests;
