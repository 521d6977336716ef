//! The room as this peer sees it: one [`Link`] per remote peer, kept in step with the server's
//! messages, and the chat behaviour of the command line (`--send`, `--echo`, `--expect`, stdin).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use protocol::{ErrorCode, MAX_CHAT_LINE_BYTES, PeerInfo};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::files::{self, FileEvent, FileOptions, Inbox};
use crate::link::{Link, LinkEvent, LinkOptions};
use crate::media::{MEDIA_EVENT_QUEUE, Media, MediaEvent, MediaOptions};
use crate::output::Event;
use crate::signaling::{Signaling, SignalingEvent};

/// Link events queued for the mesh; links wait when it is full.
pub const LINK_EVENT_QUEUE: usize = 1024;
/// How long the lines sent so far may take to be acknowledged when exiting.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// File events queued for the mesh; final ones wait when it is full, progress is dropped.
const FILE_EVENT_QUEUE: usize = 256;
/// How long files still being sent may take to finish when exiting.
const FILE_FLUSH_DEADLINE: Duration = Duration::from_secs(60);
/// How long `leave` may take when exiting.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Sent, in order, on every `chat` channel once it opens.
    pub send: Vec<String>,
    /// Send every received line back to its sender.
    pub echo: bool,
    /// Done once this many lines have been received in total.
    pub expect: Option<usize>,
    /// Local addresses to bind for peer connections.
    pub bind: Vec<String>,
    /// `--ice-tick`.
    pub ice_tick: std::time::Duration,
    /// `--relay-only`: ICE transport policy `relay`.
    pub relay_only: bool,
    /// `--send-file`, `--receive-dir`, `--expect-files`.
    pub files: FileOptions,
    /// `--record`, `--echo-media`, `--send-video`, `--send-audio`, `--expect-frames`.
    pub media: MediaOptions,
}

/// Why the mesh stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `--expect` reached, end of stdin, or a shutdown signal: exit 0.
    Done,
    /// Signaling ended for good, or `--timeout`: exit 1.
    Failed(String),
}

/// Inputs besides the server and the links.
pub struct Inputs<S, T> {
    /// Lines typed by the user; `None` at end of input.
    pub lines: mpsc::Receiver<String>,
    /// Resolves on Ctrl-C / SIGTERM.
    pub shutdown: S,
    /// Resolves when `--timeout` is reached.
    pub timeout: T,
}

struct Mesh<'a> {
    options: ChatOptions,
    signaling: Signaling,
    link_tx: mpsc::Sender<(String, LinkEvent)>,
    /// Events of every link, in one queue. Read here, not only in [`run`]'s loop, so that
    /// [`Mesh::remove_peer`] can take what a leaving peer's link handed over before it closed.
    link_rx: mpsc::Receiver<(String, LinkEvent)>,
    links: HashMap<String, Link>,
    /// Peers whose `channel_open` was reported and whose `channel_closed` was not yet: each
    /// open is followed by exactly one close, whichever of the link, the server (`peer_left`)
    /// or a failure reports the end first.
    open: HashSet<String>,
    /// Members of the room besides us, by id.
    members: HashMap<String, String>,
    self_id: Option<String>,
    ice_servers: Vec<protocol::IceServer>,
    received: usize,
    file_tx: files::FileEvents,
    file_rx: mpsc::Receiver<FileEvent>,
    files_received: usize,
    /// Outgoing transfers, waited for on exit unless interrupted.
    sends: TaskTracker,
    /// Ctrl-C / SIGTERM: stop, without waiting for files still being sent.
    interrupted: bool,
    /// Audio and video, when a media flag was given; its events come through `media_rx`.
    media: Option<std::sync::Arc<Media>>,
    media_rx: mpsc::Receiver<MediaEvent>,
    frames_expected: bool,
    emit: &'a mut dyn FnMut(Event),
}

/// Runs the mesh until it is done or fails, then closes every link (delivering what was sent)
/// and leaves the room.
pub async fn run<S, T>(
    options: ChatOptions,
    signaling: Signaling,
    mut server_events: mpsc::Receiver<SignalingEvent>,
    inputs: Inputs<S, T>,
    emit: &mut dyn FnMut(Event),
) -> Outcome
where
    S: Future<Output = ()>,
    T: Future<Output = ()>,
{
    let Inputs { mut lines, shutdown, timeout } = inputs;
    tokio::pin!(shutdown);
    tokio::pin!(timeout);
    let mut mesh = Mesh::new(options, signaling, emit);
    let mut stdin_open = true;
    let outcome = loop {
        tokio::select! {
            event = server_events.recv() => match event {
                Some(event) => if let Some(outcome) = mesh.on_server(event).await { break outcome },
                None => break Outcome::Failed("signaling stopped".into()),
            },
            Some((remote, event)) = mesh.link_rx.recv() => {
                if let Some(outcome) = mesh.on_link(remote, event).await { break outcome }
            }
            Some(event) = mesh.file_rx.recv() => {
                if let Some(outcome) = mesh.on_file(event) { break outcome }
            }
            Some(event) = mesh.media_rx.recv() => {
                if let Some(outcome) = mesh.on_media(event) { break outcome }
            }
            line = lines.recv(), if stdin_open => match line {
                Some(line) => mesh.on_line(line).await,
                None => {
                    stdin_open = false;
                    if mesh.options.expect.is_none() && mesh.options.files.expect.is_none() && mesh.options.media.expect_frames.is_none() { break Outcome::Done }
                }
            },
            _ = &mut shutdown => {
                mesh.interrupted = true;
                break Outcome::Done;
            }
            _ = &mut timeout => break Outcome::Failed("timed out".into()),
        }
    };
    if let Outcome::Failed(reason) = &outcome {
        (mesh.emit)(Event::Error { message: reason.clone() });
    }
    mesh.finish().await;
    outcome
}

impl<'a> Mesh<'a> {
    /// A mesh that knows no one yet.
    fn new(options: ChatOptions, signaling: Signaling, emit: &'a mut dyn FnMut(Event)) -> Self {
        let (link_tx, link_rx) = mpsc::channel(LINK_EVENT_QUEUE);
        let (file_tx, file_rx) = mpsc::channel(FILE_EVENT_QUEUE);
        let (media_tx, media_rx) = mpsc::channel(MEDIA_EVENT_QUEUE);
        let media = options.media.enabled().then(|| Media::new(options.media.clone(), media_tx));
        Mesh {
            options,
            signaling,
            link_tx,
            link_rx,
            links: HashMap::new(),
            open: HashSet::new(),
            members: HashMap::new(),
            self_id: None,
            ice_servers: Vec::new(),
            received: 0,
            file_tx,
            file_rx,
            files_received: 0,
            sends: TaskTracker::new(),
            interrupted: false,
            media,
            media_rx,
            frames_expected: false,
            emit,
        }
    }
}

impl Mesh<'_> {
    async fn on_server(&mut self, event: SignalingEvent) -> Option<Outcome> {
        match event {
            SignalingEvent::Welcome(welcome) => {
                let resumed = welcome.resumed && self.self_id.as_deref() == Some(welcome.id.as_str());
                if resumed {
                    // Keep every connection; drop only peers that left while we were away.
                    let listed: Vec<&str> = welcome.peers.iter().map(|p| p.id.as_str()).collect();
                    let gone: Vec<String> =
                        self.members.keys().filter(|id| !listed.contains(&id.as_str())).cloned().collect();
                    for id in gone {
                        if let Some(outcome) = self.remove_peer(&id).await {
                            return Some(outcome);
                        }
                    }
                } else if self.self_id.is_some() {
                    // Refused resume (a server restart, or grace ran out): every old id is gone.
                    tracing::info!("resume refused; rebuilding the mesh as a newcomer");
                    let old: Vec<String> = self.members.keys().cloned().collect();
                    for id in old {
                        if let Some(outcome) = self.remove_peer(&id).await {
                            return Some(outcome);
                        }
                    }
                }
                self.ice_servers = welcome.ice_servers.clone();
                self.self_id = Some(welcome.id.clone());
                for p in &welcome.peers {
                    self.members.insert(p.id.clone(), p.name.clone());
                }
                (self.emit)(Event::Welcome {
                    id: welcome.id.clone(),
                    room: welcome.room.clone(),
                    peers: welcome.peers.clone(),
                    resumed,
                });
                if !resumed {
                    // The newcomer offers, and is polite, toward everyone already there.
                    for PeerInfo { id, .. } in &welcome.peers {
                        if let Some(link) = self.open_link(id, true).await {
                            link.offer().await;
                        }
                    }
                }
            }
            SignalingEvent::PeerJoined(peer) => {
                self.members.insert(peer.id.clone(), peer.name.clone());
                (self.emit)(Event::PeerJoined { id: peer.id.clone(), name: peer.name.clone() });
                // Impolite toward a peer announced by `peer_joined`; it will offer.
                self.open_link(&peer.id, false).await;
            }
            SignalingEvent::PeerLeft(id) => return self.remove_peer(&id).await,
            SignalingEvent::Signal { from, signal } => {
                if !self.links.contains_key(&from) {
                    // A member whose link failed and was closed offers again: a fresh link.
                    if matches!(signal, protocol::Signal::Offer { .. }) && self.members.contains_key(&from) {
                        self.open_link(&from, false).await;
                    } else {
                        tracing::debug!(peer = %from, "ignoring a signal from a peer without a link");
                        return None;
                    }
                }
                if let Some(link) = self.links.get(&from) {
                    link.handle_signal(signal).await;
                }
            }
            SignalingEvent::Error(e) => {
                // A signal to a peer that just left is refused with unknown_peer: expected.
                if e.code == ErrorCode::UnknownPeer {
                    tracing::debug!("server: {} ({})", e.message, e.code);
                } else {
                    tracing::warn!("server refused a request: {} ({})", e.message, e.code);
                }
            }
            SignalingEvent::Reconnecting { reason } => (self.emit)(Event::Reconnecting { reason }),
            SignalingEvent::Fatal(reason) => return Some(Outcome::Failed(reason)),
        }
        None
    }

    async fn open_link(&mut self, id: &str, polite: bool) -> Option<&Link> {
        if let Some(old) = self.links.remove(id) {
            old.close(None).await;
        }
        let options = LinkOptions {
            bind: self.options.bind.clone(),
            ice_tick: self.options.ice_tick,
            ice_servers: self.ice_servers.clone(),
            relay_only: self.options.relay_only,
            // A fresh inbox per link: its slots are this remote's.
            inbox: self.options.files.receive.clone().map(|r| Inbox::new(r, self.file_tx.clone())),
            media: self.media.clone(),
        };
        match Link::new(id.to_string(), polite, &options, self.link_tx.clone()).await {
            Ok(link) => {
                self.links.insert(id.to_string(), link);
                self.links.get(id)
            }
            Err(e) => {
                tracing::error!(peer = %id, "{e}");
                (self.emit)(Event::Error { message: format!("cannot connect to {id}: {e}") });
                None
            }
        }
    }

    /// The peer is gone: close its link, report the lines it sent before it left, then
    /// `channel_closed` (if it was open) and `peer_left`.
    ///
    /// `peer_left` comes from the server and the peer's last lines from its link, on two
    /// queues with no order between them (and `select!` in [`run`] picks among ready ones at
    /// random). A peer that sends a line and exits at once is common (`--send` with
    /// `--expect`): its line is acknowledged by SCTP, so the sender exits content, but the
    /// line may still be queued here, or still in the link's channel task, when `peer_left`
    /// is handled. So the link is closed first, which waits for its tasks and thereby for
    /// them to queue everything received, and the queue is then handled up to what it holds
    /// now. Lines left in it used to be dropped with the link as stale: seen once, under load,
    /// as a peer that waited for `--expect` forever, with the sender's `channel_closed`
    /// missing as well.
    async fn remove_peer(&mut self, id: &str) -> Option<Outcome> {
        if let Some(link) = self.links.remove(id) {
            link.close(None).await;
        }
        let outcome = self.handle_queued_link_events().await;
        self.report_closed(id);
        if self.members.remove(id).is_some() {
            (self.emit)(Event::PeerLeft { id: id.to_string() });
        }
        outcome
    }

    /// Handles the link events queued at this moment (not those that arrive meanwhile: the
    /// other links keep going), in order, as [`run`]'s loop would.
    async fn handle_queued_link_events(&mut self) -> Option<Outcome> {
        for _ in 0..self.link_rx.len() {
            let Ok((remote, event)) = self.link_rx.try_recv() else { break };
            if let Some(outcome) = self.on_link(remote, event).await {
                return Some(outcome);
            }
        }
        None
    }

    async fn close_link(&mut self, id: &str, flush: Option<Duration>) {
        if let Some(link) = self.links.remove(id) {
            link.close(flush).await;
        }
        self.report_closed(id);
    }

    /// `channel_closed`, once per reported `channel_open`. A link whose channel task already
    /// saw the close, but whose `ChannelClosed` is still queued, no longer says it is open
    /// (`Link::chat_open`); hence this record rather than asking the link.
    fn report_closed(&mut self, id: &str) {
        if self.open.remove(id) {
            (self.emit)(Event::ChannelClosed { peer: id.to_string() });
        }
    }

    async fn on_link(&mut self, remote: String, event: LinkEvent) -> Option<Outcome> {
        let live = self.links.contains_key(&remote);
        match event {
            // A line still counts when its link has closed since (see `remove_peer`): it was
            // received, SCTP acknowledged it, and its sender took it as delivered.
            LinkEvent::Message(text) => {
                self.received += 1;
                (self.emit)(Event::Message { from: remote.clone(), text: text.clone() });
                if self.options.echo {
                    self.send_to(&remote, text).await;
                }
                if self.expectations_met() {
                    return Some(Outcome::Done);
                }
            }
            // The remote closed the connection; a `peer_left` usually follows.
            LinkEvent::ChannelClosed => self.close_link(&remote, None).await,
            // Anything else from a link already closed (a stale task) is of no interest.
            _ if !live => {}
            LinkEvent::Signal(signal) => {
                let id = self.self_id.clone().unwrap_or_default();
                self.signaling.signal(&id, &remote, signal).await;
            }
            LinkEvent::ChannelOpen => {
                self.open.insert(remote.clone());
                (self.emit)(Event::ChannelOpen { peer: remote.clone() });
                for text in self.options.send.clone() {
                    self.send_to(&remote, text).await;
                }
                if let Some(link) = self.links.get(&remote) {
                    for file in &self.options.files.send {
                        let opener = link.channel_opener();
                        let (file, corrupt) = (file.clone(), self.options.files.corrupt);
                        self.sends.spawn(files::send(
                            remote.clone(),
                            opener,
                            file,
                            corrupt,
                            self.file_tx.clone(),
                        ));
                    }
                }
            }
            LinkEvent::IceSelected { local, remote: remote_type } => {
                (self.emit)(Event::IceSelected { peer: remote.clone(), local, remote: remote_type });
            }
            LinkEvent::TurnFailed(why) => (self.emit)(Event::Error { message: format!("{remote}: {why}") }),
            LinkEvent::Failed(reason) => {
                tracing::warn!(peer = %remote, "{reason}; closing the connection");
                self.close_link(&remote, None).await;
            }
        }
        None
    }

    fn on_file(&mut self, event: FileEvent) -> Option<Outcome> {
        let received = matches!(event, FileEvent::Received { .. });
        (self.emit)(Event::File(event));
        if received {
            self.files_received += 1;
            if self.expectations_met() {
                return Some(Outcome::Done);
            }
        }
        None
    }

    fn on_media(&mut self, event: MediaEvent) -> Option<Outcome> {
        if event == MediaEvent::FramesExpected {
            self.frames_expected = true;
            return self.expectations_met().then_some(Outcome::Done);
        }
        (self.emit)(Event::Media(event));
        None
    }

    /// `--expect`, `--expect-files` and `--expect-frames`: done once every one given is reached.
    fn expectations_met(&self) -> bool {
        let (lines, files, frames) =
            (self.options.expect, self.options.files.expect, self.options.media.expect_frames);
        (lines.is_some() || files.is_some() || frames.is_some())
            && lines.is_none_or(|n| self.received >= n)
            && files.is_none_or(|n| self.files_received >= n)
            && (frames.is_none() || self.frames_expected)
    }

    /// Lets outgoing files finish (bounded), still reporting their outcome. After Ctrl-C they
    /// are abandoned: closing the links fails them on both sides, and receivers keep nothing.
    async fn finish_sends(&mut self) {
        self.sends.close();
        if self.sends.is_empty() || self.interrupted {
            return;
        }
        let sends = self.sends.clone();
        let done = sends.wait();
        tokio::pin!(done);
        let deadline = tokio::time::sleep(FILE_FLUSH_DEADLINE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut done => break,
                Some(event) = self.file_rx.recv() => { self.on_file(event); }
                _ = &mut deadline => {
                    tracing::warn!("files still being sent after {FILE_FLUSH_DEADLINE:?}; exiting anyway");
                    break;
                }
            }
        }
        // Outcomes reported just before the last send ended.
        while let Ok(event) = self.file_rx.try_recv() {
            self.on_file(event);
        }
    }

    async fn send_to(&self, remote: &str, text: String) {
        if let Some(link) = self.links.get(remote)
            && let Err(e) = link.send_chat(text).await
        {
            tracing::warn!(peer = %remote, "line not sent: {e}");
        }
    }

    async fn on_line(&mut self, line: String) {
        if line.len() > MAX_CHAT_LINE_BYTES {
            let message = format!(
                "line not sent: it is {} bytes, and a chat line is at most {MAX_CHAT_LINE_BYTES} bytes",
                line.len()
            );
            tracing::warn!("{message}");
            (self.emit)(Event::Error { message });
            return;
        }
        let open: Vec<String> =
            self.links.iter().filter(|(_, l)| l.chat_open()).map(|(id, _)| id.clone()).collect();
        if open.is_empty() {
            tracing::warn!("line not sent: no open chat channel yet");
        }
        for id in open {
            self.send_to(&id, line.clone()).await;
        }
    }

    /// Delivers what was sent on every link, closes them, and leaves.
    async fn finish(&mut self) {
        self.finish_sends().await;
        let links: Vec<Link> = self.links.drain().map(|(_, l)| l).collect();
        futures_util::future::join_all(links.into_iter().map(|l| l.close(Some(FLUSH_DEADLINE)))).await;
        // Every recording is complete before exit, also those whose task did not get to it.
        if let Some(media) = self.media.clone() {
            media.finish().await;
        }
        while let Ok(event) = self.media_rx.try_recv() {
            self.on_media(event);
        }
        tracing::debug!("links closed; leaving");
        self.signaling.leave(LEAVE_DEADLINE).await;
        tracing::debug!("left");
    }
}

#[cfg(test)]
mod tests;
