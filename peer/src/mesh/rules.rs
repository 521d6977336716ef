//! The mesh's rules, with no I/O: what this peer does when the server, a link, a file transfer,
//! the media or the user says something. [`Rules::handle`] takes one [`Input`] and returns the
//! [`Command`]s it decided; the async shell in `mesh.rs` carries them out and never decides
//! anything itself. So every ordering rule below is a unit test without sockets (`tests.rs`).
//!
//! A remote peer may have had several links (one failed, it offered again): each link has a
//! [`LinkId`], the remote's id and a generation, and what an old link reports is told apart
//! from the current one's.
//!
//! Ordering rules:
//! - `channel_open` is followed by exactly one `channel_closed` for that peer, whoever ends it
//!   first (the link, the server's `peer_left`, a failure, our exit).
//! - A peer's `peer_left` comes after every line its links handed over before they closed: the
//!   server's `peer_left` and the link's last lines travel separately (a peer that sends and
//!   exits at once is common), so `peer_left` waits until the shell says the link it closed has
//!   ended ([`Input::LinkEnded`], which the shell sends after everything the link queued).
//! - A line from a link that has since closed still counts: it was received and acknowledged,
//!   and its sender took it as delivered.
//! - A `welcome` that removes peers (a resume that finds some gone, or a refused resume) takes
//!   effect after their `peer_left`s; server messages that arrive meanwhile wait behind it.

use std::collections::{HashMap, HashSet, VecDeque};

use protocol::{ErrorCode, IceServer, MAX_CHAT_LINE_BYTES, PeerId, Signal, Welcome};

use crate::files::FileEvent;
use crate::link::LinkEvent;
use crate::media::MediaEvent;
use crate::output::Event;
use crate::signaling::SignalingEvent;

/// One link: the remote's id and which of the links to that remote it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkId {
    pub peer: PeerId,
    pub generation: u64,
}

/// Why the mesh stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `--expect` reached, end of stdin, or a shutdown signal: exit 0.
    Done,
    /// Signaling ended for good, or `--timeout`: exit 1.
    Failed(String),
}

/// Something that happened, for [`Rules::handle`].
#[derive(Debug)]
pub enum Input {
    Server(SignalingEvent),
    Link(LinkId, LinkEvent),
    /// A link the rules closed (or that could not be built) is gone, and every event it queued
    /// was handed in before this.
    LinkEnded(LinkId),
    File(FileEvent),
    Media(MediaEvent),
    /// A line typed by the user.
    Line(String),
    /// End of stdin.
    EndOfInput,
    /// Ctrl-C or SIGTERM.
    Shutdown,
    /// `--timeout` reached.
    Timeout,
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Tell the user.
    Emit(Event),
    /// Build a link; with `offer`, create the `chat` channel and offer (we are the newcomer).
    OpenLink { link: LinkId, polite: bool, offer: bool, ice_servers: Vec<IceServer> },
    /// Hand a signal from the remote to its link.
    Deliver { link: LinkId, signal: Signal },
    /// Relay a link's signal to the remote through the server.
    Relay { from: PeerId, to: PeerId, signal: Signal },
    /// Queue a chat line on the link's `chat` channel (never waiting on it).
    SendChat { link: LinkId, text: String },
    /// Start sending every `--send-file` on the link.
    SendFiles { link: LinkId },
    /// Close the link; [`Input::LinkEnded`] follows once it has handed over what it queued.
    CloseLink { link: LinkId },
    /// Stop: deliver what was sent, close every link, leave. `interrupted` (Ctrl-C) abandons
    /// files still being sent.
    Stop { outcome: Outcome, interrupted: bool },
}

/// The command line's part in the rules.
#[derive(Debug, Clone, Default)]
pub struct RulesOptions {
    /// `--send`: lines for every `chat` channel once it opens.
    pub send: Vec<String>,
    /// `--echo`.
    pub echo: bool,
    /// `--expect`.
    pub expect_lines: Option<usize>,
    /// `--expect-files`.
    pub expect_files: Option<usize>,
    /// `--expect-frames` was given (media says when it is reached).
    pub expect_frames: bool,
    /// `--send-file` was given.
    pub send_files: bool,
}

/// The room as this peer sees it.
#[derive(Debug, Default)]
pub struct Rules {
    options: RulesOptions,
    self_id: Option<PeerId>,
    ice_servers: Vec<IceServer>,
    /// Members of the room besides us: id → name.
    members: HashMap<PeerId, String>,
    /// The current link to each remote.
    links: HashMap<PeerId, u64>,
    /// Links closed and not yet ended.
    closing: HashSet<LinkId>,
    /// Peers the server said left, whose `peer_left` waits for their closing links to end.
    leaving: HashSet<PeerId>,
    /// Peers whose `channel_open` was reported and whose `channel_closed` was not yet.
    open: HashSet<PeerId>,
    next_generation: u64,
    /// A `welcome` waiting for the `peer_left`s it caused, and the server messages behind it.
    held_welcome: Option<Welcome>,
    held: VecDeque<SignalingEvent>,
    lines_received: usize,
    files_received: usize,
    frames_reached: bool,
    stopped: bool,
    out: Vec<Command>,
}

impl Rules {
    pub fn new(options: RulesOptions) -> Rules {
        Rules { options, ..Rules::default() }
    }

    /// Our own id, once welcomed.
    pub fn self_id(&self) -> Option<&PeerId> {
        self.self_id.as_ref()
    }

    /// Decides what `input` means; returns the commands in the order they are to be carried out.
    pub fn handle(&mut self, input: Input) -> Vec<Command> {
        match input {
            Input::Server(event) => self.server(event),
            Input::Link(link, event) => self.link_event(link, event),
            Input::LinkEnded(link) => self.link_ended(link),
            Input::File(event) => self.file(event),
            Input::Media(event) => self.media(event),
            Input::Line(line) => self.line(line),
            Input::EndOfInput => {
                let o = &self.options;
                if o.expect_lines.is_none() && o.expect_files.is_none() && !o.expect_frames {
                    self.stop(Outcome::Done, false);
                }
            }
            Input::Shutdown => self.stop(Outcome::Done, true),
            Input::Timeout => self.stop(Outcome::Failed("timed out".into()), false),
        }
        std::mem::take(&mut self.out)
    }

    fn emit(&mut self, event: Event) {
        self.out.push(Command::Emit(event));
    }

    fn stop(&mut self, outcome: Outcome, interrupted: bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Outcome::Failed(reason) = &outcome {
            self.emit(Event::Error { message: reason.clone() });
        }
        self.out.push(Command::Stop { outcome, interrupted });
    }

    fn current(&self, link: &LinkId) -> bool {
        self.links.get(&link.peer) == Some(&link.generation)
    }

    fn current_link(&self, peer: &PeerId) -> Option<LinkId> {
        self.links.get(peer).map(|&generation| LinkId { peer: peer.clone(), generation })
    }

    fn server(&mut self, event: SignalingEvent) {
        if self.held_welcome.is_some() {
            self.held.push_back(event);
            return;
        }
        match event {
            SignalingEvent::Welcome(welcome) => self.welcome(welcome),
            SignalingEvent::PeerJoined(peer) => {
                let id = PeerId::from(peer.id);
                self.members.insert(id.clone(), peer.name.clone());
                self.emit(Event::PeerJoined { id: id.clone(), name: peer.name });
                // Impolite toward a peer announced by `peer_joined`; it will offer.
                self.open_link(&id, false, false);
            }
            SignalingEvent::PeerLeft(id) => self.remove_peer(&id),
            SignalingEvent::Signal { from, signal } => {
                if !self.links.contains_key(&from) {
                    // A member whose link failed and was closed offers again: a fresh link.
                    let reoffer = matches!(signal, Signal::Offer { .. })
                        && self.members.contains_key(&from)
                        && !self.leaving.contains(&from);
                    if !reoffer {
                        tracing::debug!(peer = %from, "ignoring a signal from a peer without a link");
                        return;
                    }
                    self.open_link(&from, false, false);
                }
                if let Some(link) = self.current_link(&from) {
                    self.out.push(Command::Deliver { link, signal });
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
            SignalingEvent::Reconnecting { reason } => self.emit(Event::Reconnecting { reason }),
            SignalingEvent::Fatal(reason) => self.stop(Outcome::Failed(reason), false),
        }
    }

    fn welcome(&mut self, welcome: Welcome) {
        let resumed = welcome.resumed && self.self_id.as_ref().is_some_and(|me| *me == *welcome.id);
        let gone: Vec<PeerId> = if resumed {
            // Keep every connection; drop only peers that left while we were away.
            self.members.keys().filter(|id| !welcome.peers.iter().any(|p| **id == *p.id)).cloned().collect()
        } else if self.self_id.is_some() {
            // Refused resume (a server restart, or grace ran out): every old id is gone.
            tracing::info!("resume refused; rebuilding the mesh as a newcomer");
            self.members.keys().cloned().collect()
        } else {
            Vec::new()
        };
        let mut gone = gone;
        gone.sort();
        for id in &gone {
            self.remove_peer(id);
        }
        if gone.iter().any(|id| self.leaving.contains(id)) {
            self.held_welcome = Some(welcome);
        } else {
            self.take_welcome(welcome, resumed);
        }
    }

    /// The part of a `welcome` after its removals.
    fn take_welcome(&mut self, welcome: Welcome, resumed: bool) {
        self.ice_servers = welcome.ice_servers.clone();
        self.self_id = Some(PeerId::from(welcome.id.as_str()));
        for p in &welcome.peers {
            self.members.insert(PeerId::from(p.id.as_str()), p.name.clone());
        }
        self.emit(Event::Welcome {
            id: PeerId::from(welcome.id.as_str()),
            room: welcome.room.clone(),
            peers: welcome.peers.clone(),
            resumed,
        });
        if !resumed {
            // The newcomer offers, and is polite, toward everyone already there.
            for peer in &welcome.peers {
                self.open_link(&PeerId::from(peer.id.as_str()), true, true);
            }
        }
    }

    fn open_link(&mut self, peer: &PeerId, polite: bool, offer: bool) {
        if let Some(old) = self.current_link(peer) {
            self.close_link(old);
        }
        self.next_generation += 1;
        let link = LinkId { peer: peer.clone(), generation: self.next_generation };
        self.links.insert(peer.clone(), link.generation);
        let ice_servers = self.ice_servers.clone();
        self.out.push(Command::OpenLink { link, polite, offer, ice_servers });
    }

    /// Closes a link that is no longer wanted; its peer's channel counts as closed now.
    fn close_link(&mut self, link: LinkId) {
        if self.current(&link) {
            self.links.remove(&link.peer);
        }
        self.report_closed(&link.peer);
        self.closing.insert(link.clone());
        self.out.push(Command::CloseLink { link });
    }

    /// The server says `id` left: close its link, and report `peer_left` once every link of
    /// its has ended (see the module docs).
    fn remove_peer(&mut self, id: &PeerId) {
        if self.leaving.contains(id) {
            return;
        }
        if let Some(link) = self.current_link(id) {
            // Not `close_link`: `channel_closed` waits for the link's last lines too.
            self.links.remove(id);
            self.closing.insert(link.clone());
            self.out.push(Command::CloseLink { link });
        }
        if self.closing.iter().any(|l| l.peer == *id) {
            self.leaving.insert(id.clone());
        } else {
            self.peer_gone(id);
        }
    }

    fn peer_gone(&mut self, id: &PeerId) {
        self.report_closed(id);
        if self.members.remove(id).is_some() {
            self.emit(Event::PeerLeft { id: id.clone() });
        }
    }

    /// `channel_closed`, once per reported `channel_open`.
    fn report_closed(&mut self, peer: &PeerId) {
        if self.open.remove(peer) {
            self.emit(Event::ChannelClosed { peer: peer.clone() });
        }
    }

    fn link_ended(&mut self, link: LinkId) {
        if self.current(&link) {
            // Ended without being closed by us: it could not be built.
            self.links.remove(&link.peer);
            self.report_closed(&link.peer);
        }
        self.closing.remove(&link);
        let peer = link.peer;
        if self.leaving.contains(&peer) && !self.closing.iter().any(|l| l.peer == peer) {
            self.leaving.remove(&peer);
            self.peer_gone(&peer);
        }
        if self.leaving.is_empty()
            && let Some(welcome) = self.held_welcome.take()
        {
            let resumed = welcome.resumed && self.self_id.as_ref().is_some_and(|me| *me == *welcome.id);
            self.take_welcome(welcome, resumed);
            while self.held_welcome.is_none()
                && let Some(event) = self.held.pop_front()
            {
                self.server(event);
            }
        }
    }

    fn link_event(&mut self, link: LinkId, event: LinkEvent) {
        let current = self.current(&link);
        match event {
            // A line counts even when its link has closed since (see the module docs).
            LinkEvent::Message(text) => {
                self.lines_received += 1;
                self.emit(Event::Message { from: link.peer.clone(), text: text.clone() });
                if self.options.echo
                    && let Some(to) = self.current_link(&link.peer)
                {
                    self.out.push(Command::SendChat { link: to, text });
                }
                self.check_expectations();
            }
            // Anything else from a link no longer current (closed, replaced) is of no interest.
            _ if !current => {}
            // The remote closed the connection; a `peer_left` usually follows.
            LinkEvent::ChannelClosed => self.close_link(link),
            LinkEvent::Failed(reason) => {
                tracing::warn!(peer = %link.peer, "{reason}; closing the connection");
                self.close_link(link);
            }
            LinkEvent::Signal(signal) => {
                let from = self.self_id.clone().unwrap_or_default();
                self.out.push(Command::Relay { from, to: link.peer.clone(), signal });
            }
            LinkEvent::ChannelOpen => {
                self.open.insert(link.peer.clone());
                self.emit(Event::ChannelOpen { peer: link.peer.clone() });
                for text in self.options.send.clone() {
                    self.out.push(Command::SendChat { link: link.clone(), text });
                }
                if self.options.send_files {
                    self.out.push(Command::SendFiles { link });
                }
            }
            LinkEvent::IceSelected { local, remote } => {
                self.emit(Event::IceSelected { peer: link.peer, local, remote });
            }
            LinkEvent::TurnFailed(why) => {
                self.emit(Event::Error { message: format!("{}: {why}", link.peer) });
            }
        }
    }

    fn file(&mut self, event: FileEvent) {
        let received = matches!(event, FileEvent::Received { .. });
        self.emit(Event::File(event));
        if received {
            self.files_received += 1;
            self.check_expectations();
        }
    }

    fn media(&mut self, event: MediaEvent) {
        if event == MediaEvent::FramesExpected {
            self.frames_reached = true;
            self.check_expectations();
        } else {
            self.emit(Event::Media(event));
        }
    }

    fn line(&mut self, line: String) {
        if line.len() > MAX_CHAT_LINE_BYTES {
            let message = format!(
                "line not sent: it is {} bytes, and a chat line is at most {MAX_CHAT_LINE_BYTES} bytes",
                line.len()
            );
            tracing::warn!("{message}");
            self.emit(Event::Error { message });
            return;
        }
        let mut open: Vec<LinkId> = self.open.iter().filter_map(|peer| self.current_link(peer)).collect();
        open.sort_by_key(|l| l.generation);
        if open.is_empty() {
            tracing::warn!("line not sent: no open chat channel yet");
        }
        for link in open {
            self.out.push(Command::SendChat { link, text: line.clone() });
        }
    }

    /// `--expect`, `--expect-files` and `--expect-frames`: done once every one given is reached.
    fn check_expectations(&mut self) {
        let o = &self.options;
        let any = o.expect_lines.is_some() || o.expect_files.is_some() || o.expect_frames;
        let met = any
            && o.expect_lines.is_none_or(|n| self.lines_received >= n)
            && o.expect_files.is_none_or(|n| self.files_received >= n)
            && (!o.expect_frames || self.frames_reached);
        if met {
            self.stop(Outcome::Done, false);
        }
    }
}

#[cfg(test)]
mod tests;
