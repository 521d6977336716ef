//! The room as this peer sees it: one [`Link`] per remote peer, kept in step with the server's
//! messages, and the chat behaviour of the command line (`--send`, `--echo`, `--expect`, stdin).
//!
//! Every decision is made by [`rules::Rules`], which does no I/O. This module is its shell: it
//! waits for the next input (the server, a link, a file transfer, the media, stdin, a signal,
//! `--timeout`), hands it to the rules, and carries out the commands they return. It never waits
//! on one link while handling an input: a chat line for a link whose queue is full waits in that
//! link's backlog, a link is closed in a task of its own, and a signal to the server is queued
//! without waiting. So a slow or stuck link stalls nobody else, and no cycle of waits can form
//! between the mesh and a link (the mesh waiting for room in a link's chat queue while the link's
//! channel task waits for room in the mesh's event queue: `--echo` against a burst of long lines
//! used to close exactly that loop).
//!
//! Back-pressure still holds: each link has its own bounded event queue. With `--echo`, a link
//! whose backlog is not empty is not read until it drains (its lines would only add to the
//! backlog), so the remote's channel is not read either and SCTP slows the remote down. Typed
//! lines are not read while any link has a backlog.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use protocol::PeerId;
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::files::{self, FileEvent, FileOptions, Inbox};
use crate::link::{Link, LinkEvent, LinkOptions};
use crate::media::{MEDIA_EVENT_QUEUE, Media, MediaEvent, MediaOptions};
use crate::output::Event;
use crate::signaling::{Signaling, SignalingEvent};

pub mod rules;

pub use rules::Outcome;
use rules::{Command, Input, LinkId, Rules, RulesOptions};

/// Events queued by one link before it waits for the mesh to read them.
pub const LINK_EVENT_QUEUE: usize = 256;
/// How long the lines sent so far may take to be acknowledged when exiting.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// File events queued for the mesh; final ones wait when it is full, progress is dropped.
const FILE_EVENT_QUEUE: usize = 256;
/// How long files still being sent may take to finish when exiting.
const FILE_FLUSH_DEADLINE: Duration = Duration::from_secs(60);
/// How long `leave` may take when exiting.
const LEAVE_DEADLINE: Duration = Duration::from_secs(2);

/// What the command line asked the mesh for, one part per concern.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub chat: ChatOptions,
    pub connections: ConnectionOptions,
    /// `--send-file`, `--receive-dir`, `--expect-files`.
    pub files: FileOptions,
    /// `--record`, `--echo-media`, `--send-video`, `--send-audio`, `--expect-frames`.
    pub media: MediaOptions,
}

/// Chat lines: `--send`, `--echo`, `--expect`.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// Sent, in order, on every `chat` channel once it opens.
    pub send: Vec<String>,
    /// Send every received line back to its sender.
    pub echo: bool,
    /// Done once this many lines have been received in total.
    pub expect: Option<usize>,
}

/// How peer connections are made: `--bind`, `--ice-tick`, `--relay-only`.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Local addresses to bind for peer connections.
    pub bind: Vec<String>,
    /// `--ice-tick`.
    pub ice_tick: std::time::Duration,
    /// `--relay-only`: ICE transport policy `relay`.
    pub relay_only: bool,
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

type Room = Pin<Box<dyn Future<Output = Result<mpsc::OwnedPermit<String>, SendError<()>>> + Send>>;

/// One link as the shell holds it.
struct Slot {
    /// `None` once it is being closed.
    link: Option<Link>,
    events: mpsc::Receiver<(PeerId, LinkEvent)>,
    /// The link's tasks have all ended (its queue's senders are gone).
    events_done: bool,
    /// Fires when a close started by the rules is complete.
    closed: Option<oneshot::Receiver<()>>,
    /// Chat lines for the link's full chat queue, in order.
    backlog: VecDeque<String>,
    /// Resolves when the chat queue has room for the backlog's first line.
    room: Option<Room>,
}

/// What [`Links::next_item`] found.
enum LinkItem {
    Event(LinkId, LinkEvent),
    /// A link the rules closed has ended; every event it queued came before.
    Ended(LinkId),
    /// A backlog was moved into its chat queue entirely.
    Drained,
}

/// Every link, and what their events and backlogs need.
struct Links {
    slots: HashMap<LinkId, Slot>,
    /// Where [`Links::next_item`] starts looking, so that a busy link cannot starve others.
    turn: usize,
    /// `--echo`: a backlogged link is not read (see the module docs).
    echo: bool,
}

struct Shell<'a> {
    rules: Rules,
    options: MeshOptions,
    signaling: Signaling,
    links: Links,
    file_tx: files::FileEvents,
    file_rx: mpsc::Receiver<FileEvent>,
    /// Outgoing transfers, waited for on exit unless interrupted.
    sends: TaskTracker,
    /// Links being closed.
    closes: TaskTracker,
    /// Ctrl-C / SIGTERM: stop, without waiting for files still being sent.
    interrupted: bool,
    media: Option<Arc<Media>>,
    media_rx: mpsc::Receiver<MediaEvent>,
    emit: &'a mut dyn FnMut(Event),
}

/// Runs the mesh until it is done or fails, then closes every link (delivering what was sent)
/// and leaves the room.
pub async fn run<S, T>(
    options: MeshOptions,
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
    let mut shell = Shell::new(options, signaling, emit);
    let mut stdin_open = true;
    let mut server_open = true;
    let outcome = loop {
        let read_stdin = stdin_open && !shell.links.backlogged();
        let input = tokio::select! {
            event = server_events.recv(), if server_open => event.map(Input::Server).unwrap_or_else(|| {
                server_open = false;
                Input::Server(SignalingEvent::Fatal("signaling stopped".into()))
            }),
            item = std::future::poll_fn(|cx| shell.links.next_item(cx)) => match item {
                LinkItem::Event(link, event) => Input::Link(link, event),
                LinkItem::Ended(link) => Input::LinkEnded(link),
                // Typed lines may be read again.
                LinkItem::Drained => continue,
            },
            Some(event) = shell.file_rx.recv() => Input::File(event),
            Some(event) = shell.media_rx.recv() => Input::Media(event),
            line = lines.recv(), if read_stdin => line.map(Input::Line).unwrap_or_else(|| {
                stdin_open = false;
                Input::EndOfInput
            }),
            _ = &mut shutdown => Input::Shutdown,
            _ = &mut timeout => Input::Timeout,
        };
        if let Some(outcome) = shell.apply(input).await {
            break outcome;
        }
    };
    shell.finish().await;
    outcome
}

impl<'a> Shell<'a> {
    fn new(options: MeshOptions, signaling: Signaling, emit: &'a mut dyn FnMut(Event)) -> Self {
        let (file_tx, file_rx) = mpsc::channel(FILE_EVENT_QUEUE);
        let (media_tx, media_rx) = mpsc::channel(MEDIA_EVENT_QUEUE);
        let media = options.media.enabled().then(|| Media::new(options.media.clone(), media_tx));
        let rules = Rules::new(RulesOptions {
            send: options.chat.send.clone(),
            echo: options.chat.echo,
            expect_lines: options.chat.expect,
            expect_files: options.files.expect,
            expect_frames: options.media.expect_frames.is_some(),
            send_files: !options.files.send.is_empty(),
        });
        Shell {
            rules,
            links: Links { slots: HashMap::new(), turn: 0, echo: options.chat.echo },
            options,
            signaling,
            file_tx,
            file_rx,
            sends: TaskTracker::new(),
            closes: TaskTracker::new(),
            interrupted: false,
            media,
            media_rx,
            emit,
        }
    }
}

impl Links {
    /// True while some link has chat lines waiting for room.
    fn backlogged(&self) -> bool {
        self.slots.values().any(|s| !s.backlog.is_empty())
    }

    /// The next event of any link, or the end of a link that was closed (after every event it
    /// queued). Also moves backlogs into chat queues as room appears, and says when the last
    /// one is drained.
    fn next_item(&mut self, cx: &mut Context<'_>) -> Poll<LinkItem> {
        let echo = self.echo;
        let count = self.slots.len();
        if count == 0 {
            return Poll::Pending;
        }
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % count;
        let ids: Vec<LinkId> = self.slots.keys().cloned().collect();
        for i in 0..count {
            let id = &ids[(start + i) % count];
            let Some(slot) = self.slots.get_mut(id) else { continue };
            if let Some(room) = slot.room.as_mut()
                && let Poll::Ready(permit) = room.as_mut().poll(cx)
            {
                slot.room = None;
                match permit {
                    Ok(permit) => {
                        if let Some(line) = slot.backlog.pop_front() {
                            permit.send(line);
                        }
                        slot.fill_chat_queue();
                    }
                    Err(_) => {
                        tracing::warn!(peer = %id.peer, "{} chat lines not sent: the channel closed", slot.backlog.len());
                        slot.backlog.clear();
                    }
                }
                if slot.backlog.is_empty() {
                    return Poll::Ready(LinkItem::Drained);
                }
            }
            let paused = echo && !slot.backlog.is_empty();
            if !paused && !slot.events_done {
                match slot.events.poll_recv(cx) {
                    Poll::Ready(Some((_, event))) => return Poll::Ready(LinkItem::Event(id.clone(), event)),
                    Poll::Ready(None) => slot.events_done = true,
                    Poll::Pending => {}
                }
            }
            if let Some(closed) = slot.closed.as_mut()
                && Pin::new(closed).poll(cx).is_ready()
            {
                // The close waited for the link's tasks: what they queued is all there is.
                if let Ok((_, event)) = slot.events.try_recv() {
                    return Poll::Ready(LinkItem::Event(id.clone(), event));
                }
                self.slots.remove(id);
                return Poll::Ready(LinkItem::Ended(id.clone()));
            }
        }
        Poll::Pending
    }
}

impl Shell<'_> {
    /// Hands `input` to the rules and carries out what they decide. `Some` once they stop.
    async fn apply(&mut self, input: Input) -> Option<Outcome> {
        let mut inputs = VecDeque::from([input]);
        let mut stop = None;
        while let Some(input) = inputs.pop_front() {
            for command in self.rules.handle(input) {
                match command {
                    Command::Emit(event) => (self.emit)(event),
                    Command::OpenLink { link, polite, offer, ice_servers } => {
                        if let Err(message) = self.open_link(link.clone(), polite, offer, ice_servers).await {
                            (self.emit)(Event::Error { message });
                            inputs.push_back(Input::LinkEnded(link));
                        }
                    }
                    Command::Deliver { link, signal } => {
                        if let Some(link) = self.links.slots.get(&link).and_then(|s| s.link.as_ref()) {
                            link.handle_signal(signal);
                        }
                    }
                    Command::Relay { from, to, signal } => {
                        self.signaling.signal(from.as_str(), to.as_str(), signal)
                    }
                    Command::SendChat { link, text } => self.send_chat(&link, text),
                    Command::SendFiles { link } => self.send_files(&link),
                    Command::CloseLink { link } => self.close_link(&link),
                    Command::Stop { outcome, interrupted } => {
                        self.interrupted = interrupted;
                        stop = Some(outcome);
                    }
                }
            }
        }
        stop
    }

    async fn open_link(
        &mut self,
        id: LinkId,
        polite: bool,
        offer: bool,
        ice_servers: Vec<protocol::IceServer>,
    ) -> Result<(), String> {
        let options = LinkOptions {
            bind: self.options.connections.bind.clone(),
            ice_tick: self.options.connections.ice_tick,
            ice_servers,
            relay_only: self.options.connections.relay_only,
            // A fresh inbox per link: its slots are this remote's.
            inbox: self.options.files.receive.clone().map(|r| Inbox::new(r, self.file_tx.clone())),
            media: self.media.clone(),
        };
        let (events_tx, events) = mpsc::channel(LINK_EVENT_QUEUE);
        match Link::new(id.peer.clone(), polite, &options, events_tx).await {
            Ok(link) => {
                if offer {
                    link.offer();
                }
                let slot = Slot {
                    link: Some(link),
                    events,
                    events_done: false,
                    closed: None,
                    backlog: VecDeque::new(),
                    room: None,
                };
                self.links.slots.insert(id, slot);
                Ok(())
            }
            Err(e) => {
                tracing::error!(peer = %id.peer, "{e}");
                Err(format!("cannot connect to {}: {e}", id.peer))
            }
        }
    }

    fn send_chat(&mut self, id: &LinkId, text: String) {
        let Some(slot) = self.links.slots.get_mut(id) else { return };
        if slot.link.is_none() {
            return;
        }
        slot.backlog.push_back(text);
        slot.fill_chat_queue();
    }

    fn send_files(&mut self, id: &LinkId) {
        let Some(link) = self.links.slots.get(id).and_then(|s| s.link.as_ref()) else { return };
        for file in &self.options.files.send {
            let opener = link.channel_opener();
            let (file, corrupt) = (file.clone(), self.options.files.corrupt);
            self.sends.spawn(files::send(id.peer.clone(), opener, file, corrupt, self.file_tx.clone()));
        }
    }

    /// Closes a link in a task of its own; [`Links::next_item`] reports its end.
    fn close_link(&mut self, id: &LinkId) {
        let Some(slot) = self.links.slots.get_mut(id) else { return };
        let Some(link) = slot.link.take() else { return };
        slot.backlog.clear();
        slot.room = None;
        let (done, closed) = oneshot::channel();
        slot.closed = Some(closed);
        self.closes.spawn(async move {
            link.close(None).await;
            let _ = done.send(());
        });
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
                Some(event) = self.file_rx.recv() => { self.apply(Input::File(event)).await; }
                _ = &mut deadline => {
                    tracing::warn!("files still being sent after {FILE_FLUSH_DEADLINE:?}; exiting anyway");
                    break;
                }
            }
        }
        // Outcomes reported just before the last send ended.
        while let Ok(event) = self.file_rx.try_recv() {
            self.apply(Input::File(event)).await;
        }
    }

    /// Delivers what was sent on every link (backlogs first), closes them, and leaves.
    async fn finish(&mut self) {
        self.finish_sends().await;
        let mut links = Vec::new();
        for (_, mut slot) in self.links.slots.drain() {
            if let Some(link) = slot.link.take() {
                links.push((link, std::mem::take(&mut slot.backlog)));
            }
        }
        let deadline = tokio::time::Instant::now() + FLUSH_DEADLINE;
        futures_util::future::join_all(links.into_iter().map(|(link, backlog)| async move {
            if let Some(tx) = link.chat_sender() {
                for line in backlog {
                    if tokio::time::timeout_at(deadline, tx.send(line)).await.is_err() {
                        tracing::warn!(peer = %link.remote(), "chat lines still waiting at exit; dropping them");
                        break;
                    }
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            link.close(Some(left)).await;
        }))
        .await;
        self.closes.close();
        self.closes.wait().await;
        // Every recording is complete before exit, also those whose task did not get to it.
        if let Some(media) = self.media.clone() {
            media.finish().await;
        }
        while let Ok(event) = self.media_rx.try_recv() {
            self.apply(Input::Media(event)).await;
        }
        tracing::debug!("links closed; leaving");
        self.signaling.leave(LEAVE_DEADLINE).await;
        tracing::debug!("left");
    }
}

impl Slot {
    /// Moves backlog lines into the link's chat queue while it has room; when it is full,
    /// arms [`Slot::room`] to continue.
    fn fill_chat_queue(&mut self) {
        if self.room.is_some() {
            return;
        }
        let Some(tx) = self.link.as_ref().and_then(Link::chat_sender) else {
            if !self.backlog.is_empty() {
                let peer = self.link.as_ref().map(|l| l.remote().to_string()).unwrap_or_default();
                tracing::warn!(peer = %peer, "{} chat lines not sent: the chat channel is not open", self.backlog.len());
                self.backlog.clear();
            }
            return;
        };
        while let Some(line) = self.backlog.pop_front() {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(line)) => {
                    self.backlog.push_front(line);
                    self.room = Some(Box::pin(tx.reserve_owned()));
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    tracing::warn!("{} chat lines not sent: the chat channel closed", self.backlog.len() + 1);
                    self.backlog.clear();
                    return;
                }
            }
        }
    }
}
