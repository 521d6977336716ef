//! Membership, relay and resume rules: plain synchronous code with no I/O.
//!
//! A [`Rooms`] is the single owner of every member, every room and every connection's outbound
//! queue of one shard (`shards.rs`: a room, its members and their connections live in one shard).
//! The WebSocket tasks only parse frames, call in here under the shard's lock, and write out what
//! [`Rooms::take_outbound`] hands them. Because every delivery happens under that lock, "in the
//! order sent, exactly once" holds by construction: every message for a member is numbered and
//! appended to the member's [`Journal`], which outlives the member's sockets; a connection's
//! writer takes what is pending, a resume moves the journal's cursor (to `last_seq + 1`), and
//! written messages are retained for a grace period so that a socket that died with them
//! unread loses nothing (PROTOCOL.md, "Sequence numbers").
//!
//! Every queued byte is counted in [`QueuedBytes`] (one server-wide total shared by the shards);
//! a signal that would take it past `--max-queued-bytes` is refused with `server_busy`.

mod graces;
mod journal;
mod mirror;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use protocol::{DisplayName, ErrorCode, IceServer, PeerInfo, RoomName, ServerMessage, Welcome, close_code};
use tokio::sync::Notify;

use self::graces::Graces;
pub use self::journal::Journal;
pub use self::mirror::{Attach, Detached, LocalLogs, Mirrored, Remote};
use crate::admission::Ticket;
use crate::budget::{SharedBudget, Tokens};
use crate::ids::{IdSource, PeerId, ResumeToken};
use crate::outbox::{Bound, FRAME_OVERHEAD, Frame, OpenFrame, Outbox, Overflow, QueuedBytes, cost};
use crate::refusal::Refusal;
use crate::turn::TurnConfig;

/// A member with more than this waiting to be written is suspended or not reading: what is
/// queued for it may fill only half of `--max-queued-bytes`.
const BACKLOG_BYTES: usize = 64 * 1024;

/// For maps keyed by ids only the server makes (see [`Rooms`]'s fields).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the room rules need to know; everything else about the server lives elsewhere.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// Members per room.
    pub room_size: usize,
    /// Rooms per server; a join that would create one more gets `server_busy`.
    pub max_rooms: usize,
    /// How long a member whose socket went away without `leave` keeps its place.
    pub resume_grace: Duration,
    /// A connected client's pending messages. Full means the client is not reading: it is
    /// closed with 1008 and its member is suspended. A suspended member's pending messages, and
    /// a member's whole journal (pending and retained), may hold twice this ([`Self::retention`]).
    pub outbox: Bound,
    /// Every outbound, resume and retention queue together (`--max-queued-bytes`).
    pub max_queued_bytes: usize,
    /// Handed to every client in `welcome`.
    pub ice_servers: Vec<IceServer>,
    /// When set, every `welcome` also carries a TURN entry with a credential for that member.
    pub turn: Option<TurnConfig>,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            room_size: 16,
            max_rooms: 10_000,
            resume_grace: Duration::from_secs(20),
            // 4,096 frames: well above one member's allowed burst (1,200 signals), so that a
            // client that reads is not closed because a peer used its burst while the writer
            // waited for a core (seen on a loaded 2-core machine with 1,024). The memory bound
            // is the 1 MiB.
            outbox: Bound { frames: 4096, bytes: 1024 * 1024 },
            max_queued_bytes: 256 * 1024 * 1024,
            ice_servers: Vec::new(),
            turn: None,
        }
    }
}

impl RoomsConfig {
    /// The bound on a member's journal, pending and written messages together; also the bound
    /// on what waits for a suspended member.
    pub fn retention(&self) -> Bound {
        self.outbox.scaled(2)
    }
}

/// One WebSocket connection, joined or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A close the connection's writer should send once it has written the frames before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
    /// Close without waiting for writes in progress: the connection was replaced, or its client
    /// stopped reading (its queue already moved to the member's resume queue).
    pub immediate: bool,
}

impl CloseRequest {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason, immediate: false }
    }

    const fn immediate(code: u16, reason: &'static str) -> Self {
        Self { code, reason, immediate: true }
    }
}

/// What a connection's writer should do next.
#[derive(Debug, Default)]
pub struct Outbound {
    pub frames: Vec<Frame>,
    pub close: Option<CloseRequest>,
    /// The journal position of the first member message in `frames`. If the write fails, the
    /// writer hands it to [`Rooms::disconnect`] and those messages are pending again.
    pub journal_from: Option<u64>,
}

/// A validated `join`.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: RoomName,
    pub name: Option<DisplayName>,
    pub resume: Option<String>,
    /// With `resume`: the highest `seq` the client handled (v1.1).
    pub last_seq: Option<u64>,
}

/// A successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub id: PeerId,
    pub room: RoomName,
    pub resumed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub connections: usize,
    pub rooms: usize,
    pub members: usize,
    pub suspended_members: usize,
    pub signals_relayed: u64,
    /// Bytes held in every queue (`switchboard_queued_bytes`).
    pub queued_bytes: usize,
}

#[derive(Debug)]
struct Conn {
    /// The `welcome`, and errors from before the join.
    outbox: Outbox,
    /// Wakes the connection's writer when there is something to take.
    wake: Arc<Notify>,
    member: Option<PeerId>,
    /// The member this connection served last, kept when it is unlinked for not reading, so
    /// that a batch its writer could not write is handed out again.
    served: Option<PeerId>,
    close: Option<CloseRequest>,
    /// The connection's count against the caps; its member takes it over when suspended.
    ticket: Option<Ticket>,
    /// Cost of the batch the writer took last: it sits in the socket's write buffer (a copy)
    /// until the writer comes back for more.
    in_flight: usize,
}

#[derive(Debug)]
struct Member {
    /// A `Box<str>`, not a `String`: 8 bytes less make the record 192 bytes, not 208.
    name: Box<str>,
    room: RoomName,
    resume_token: ResumeToken,
    link: Link,
    /// Limits that outlive a connection (see [`Rooms::hold_ticket`], [`Rooms::share_budget`]).
    held: Held,
    journal: Journal,
    /// True while a retention trim is scheduled for this member (at most one at a time).
    trim_due: bool,
}

/// What a member keeps across connections, opaque to the rules: while suspended, the count
/// against the caps of the client that joined it (so dropping and rejoining cannot hold more
/// rooms than the caps allow); always, its rate budget (so a resume does not start a fresh one).
#[derive(Debug, Default)]
struct Held {
    ticket: Option<Ticket>,
    budget: Option<SharedBudget>,
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Connected(ConnId),
    /// The socket went away without `leave`: the place is kept until `until`, and the journal
    /// keeps what the member would have been sent. `from` is the connection it was on.
    Suspended {
        until: Instant,
        from: ConnId,
    },
}

/// Written messages of `member` up to journal position `written_until` may be dropped at `due`
/// (a grace period after they were written).
#[derive(Debug)]
struct Trim {
    due: Instant,
    member: PeerId,
    written_until: u64,
}

#[derive(Debug, Default)]
struct Room {
    /// Oldest first.
    members: Vec<PeerId>,
}

/// What every shard of the rooms shares, all of it lock-free: the sequences ids come from and
/// the count behind the server-wide room cap. (The queued-bytes bound is shared the same way,
/// through [`QueuedBytes`].)
#[derive(Debug, Clone)]
struct ServerWide {
    ids: IdSource,
    next_conn: Arc<AtomicU64>,
    rooms: Arc<AtomicUsize>,
}

impl ServerWide {
    fn new() -> Self {
        Self {
            ids: IdSource::new(),
            next_conn: Arc::new(AtomicU64::new(0)),
            rooms: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts one more room unless that would pass `max`.
    fn open_room(&self, max: usize) -> bool {
        self.rooms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }

    fn close_room(&self) {
        self.rooms.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's record on its way from one shard to another (see [`Rooms::release_conn`]).
#[derive(Debug)]
pub struct MovingConn(Box<Conn>);

/// Why [`Rooms::try_relay`] did not relay a signal.
#[derive(Debug)]
pub enum NotRelayed {
    /// Refused by the rules (not joined, no such peer).
    Refused(Refusal),
    /// The server-wide bound is reached even with this shard's retained messages evicted.
    Full(Full),
}

/// A signal that did not fit under the server-wide bound, handed back unnumbered.
#[derive(Debug)]
pub struct Full {
    pub frame: OpenFrame,
    /// What it would add to the queued bytes.
    pub size: usize,
    /// The part of the bound it may use (half of it for a backlog).
    pub room_left: usize,
}

impl NotRelayed {
    /// The answer to the sender of a signal to `to`.
    pub fn into_refusal(self, to: &str) -> Refusal {
        match self {
            NotRelayed::Refused(refusal) => refusal,
            NotRelayed::Full(_) => Refusal::new(
                ErrorCode::ServerBusy,
                "the server holds as many queued messages as it may; this signal was not relayed, try again later",
            )
            .about_signal_to(Some(to)),
        }
    }
}

/// The rules for the rooms of one shard (or of the whole server, when it is the only one).
/// Shards made with [`Rooms::sibling`] share ids, the room cap and the queued-bytes bound, and
/// nothing else: a room, its members and their connections live in exactly one shard.
#[derive(Debug)]
pub struct Rooms {
    config: RoomsConfig,
    wide: ServerWide,
    /// Keyed by ids only the server makes, so a fast hash is safe here: a client cannot choose
    /// keys that collide. (Every signal looks up both maps several times; SipHash was ~5 % of
    /// the relay's instructions.) Room names and resume tokens, which clients send, keep
    /// std's DoS-resistant SipHash.
    ///
    /// The records are boxed: a table holds only keys and pointers, so its unused slots (a
    /// quarter to a half of them) and the tables left behind each time one doubles cost 16 to
    /// 24 bytes a slot instead of 128 to 224 (docs/benchmarks.md, idle connections).
    conns: FastMap<ConnId, Box<Conn>>,
    members: FastMap<PeerId, Box<Member>>,
    rooms: HashMap<RoomName, Room>,
    /// Live resume tokens; each is removed when used, so it works once.
    resume_tokens: HashMap<ResumeToken, PeerId>,
    /// Members whose end was decided while delivering; ended by `settle`, so that ending one
    /// (which notifies others) never recurses.
    ending: Vec<PeerId>,
    signals_relayed: u64,
    /// Every queued byte, against `max_queued_bytes`.
    queued: QueuedBytes,
    /// Retention trims, oldest first (every one is scheduled a grace period ahead, so the
    /// queue is in time order and the sweep looks at its front only).
    trims: VecDeque<Trim>,
    /// Suspended members by the end of their grace, and their count.
    graces: Graces,
    /// With `--redis`: signals relayed here while Redis was unreachable (`mirror.rs`).
    local_logs: LocalLogs,
}

impl Rooms {
    pub fn new(config: RoomsConfig) -> Self {
        let queued = QueuedBytes::new(config.max_queued_bytes);
        Self {
            config,
            wide: ServerWide::new(),
            conns: FastMap::default(),
            members: FastMap::default(),
            rooms: HashMap::new(),
            resume_tokens: HashMap::new(),
            ending: Vec::new(),
            signals_relayed: 0,
            queued,
            trims: VecDeque::new(),
            graces: Graces::default(),
            local_logs: LocalLogs::default(),
        }
    }

    /// Another shard of the same server: empty, sharing ids, the room cap and the
    /// queued-bytes bound with this one.
    pub fn sibling(&self) -> Self {
        Self {
            config: self.config.clone(),
            wide: self.wide.clone(),
            conns: FastMap::default(),
            members: FastMap::default(),
            rooms: HashMap::new(),
            resume_tokens: HashMap::new(),
            ending: Vec::new(),
            signals_relayed: 0,
            queued: self.queued.share(),
            trims: VecDeque::new(),
            graces: Graces::default(),
            local_logs: LocalLogs::default(),
        }
    }

    /// Registers a new connection; `wake` is notified whenever it has something to write.
    pub fn connect(&mut self, wake: Arc<Notify>) -> ConnId {
        let id = ConnId(self.wide.next_conn.fetch_add(1, Ordering::Relaxed) + 1);
        self.conns.insert(
            id,
            Box::new(Conn {
                outbox: Outbox::default(),
                wake,
                member: None,
                served: None,
                close: None,
                ticket: None,
                in_flight: 0,
            }),
        );
        id
    }

    /// Gives the connection its count against the caps, to be kept by its member in grace.
    pub fn hold_ticket(&mut self, conn: ConnId, ticket: Ticket) {
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection.ticket = Some(ticket);
        }
    }

    /// The budget the member `id` spends from now on: its own if it has one (it resumed), else
    /// `budget` (the connection's, which a fresh member goes on spending).
    pub fn share_budget(&mut self, id: &PeerId, budget: SharedBudget) -> SharedBudget {
        match self.members.get_mut(id) {
            Some(member) => member.held.budget.get_or_insert(budget).clone(),
            None => budget,
        }
    }

    pub fn join(&mut self, conn: ConnId, request: JoinRequest, now: Instant) -> Result<Joined, Refusal> {
        let Some(connection) = self.conns.get(&conn) else {
            return Err(Refusal::new(ErrorCode::NotJoined, "connection is closing"));
        };
        if connection.member.is_some() {
            return Err(Refusal::new(ErrorCode::AlreadyJoined, "this connection has already joined a room"));
        }
        if let Some(id) = self.resumable(&request) {
            match self.resume(conn, &id, request.last_seq) {
                Some(joined) => return Ok(joined),
                None => {
                    // The client needs messages that are no longer retained: it cannot go on
                    // where it was, so it starts over as a newcomer (PROTOCOL.md), and the old
                    // member ends as if its grace had run out.
                    tracing::info!(peer = %id, last_seq = ?request.last_seq, "resume refused: messages after last_seq no longer held");
                    self.replace_connection(&id);
                    self.end_member(&id, now);
                    self.settle(now);
                }
            }
        }
        self.join_fresh(conn, request, now)
    }

    /// The member a `resume` token refers to, if it is live and for the requested room. An
    /// unknown or expired token is not an error: the join proceeds as a fresh one.
    fn resumable(&self, request: &JoinRequest) -> Option<PeerId> {
        let id = self.resume_tokens.get(&ResumeToken::parse(request.resume.as_deref()?)?)?;
        let member = self.members.get(id)?;
        (member.room == request.room).then(|| id.clone())
    }

    fn join_fresh(&mut self, conn: ConnId, request: JoinRequest, now: Instant) -> Result<Joined, Refusal> {
        match self.rooms.get(&request.room) {
            Some(room) if room.members.len() >= self.config.room_size => {
                return Err(Refusal::new(
                    ErrorCode::RoomFull,
                    format!("room {} is full ({} members)", request.room, self.config.room_size),
                ));
            }
            None if !self.wide.open_room(self.config.max_rooms) => {
                return Err(Refusal::new(
                    ErrorCode::ServerBusy,
                    "the server is at its room limit; try again later or join an existing room",
                ));
            }
            _ => {}
        }
        let id = self.wide.ids.next_id();
        let name = request.name.map_or_else(|| id.to_string(), |name| name.as_str().to_owned());
        let token = ResumeToken::fresh();
        let others = self.rooms.get(&request.room).map(|r| r.members.clone()).unwrap_or_default();
        let peers = self.peer_list(&others);
        let announcement = OpenFrame::from_object(
            ServerMessage::PeerJoined {
                peer: PeerInfo { id: id.to_string(), name: name.clone() },
                seq: None,
            }
            .to_json(),
        );
        self.rooms.entry(request.room.clone()).or_default().members.push(id.clone());
        self.resume_tokens.insert(token, id.clone());
        self.members.insert(
            id.clone(),
            Box::new(Member {
                name: name.into_boxed_str(),
                room: request.room.clone(),
                resume_token: token,
                link: Link::Connected(conn),
                held: Held::default(),
                journal: Journal::default(),
                trim_due: false,
            }),
        );
        let welcome = self.welcome(&id, &request.room, peers, token.to_string(), false, 0);
        self.link_connection(conn, &id, welcome);
        for other in &others {
            self.deliver(other, Outgoing::Numbered(announcement.clone()), now);
        }
        self.settle(now);
        Ok(Joined { id, room: request.room, resumed: false })
    }

    /// Moves the member `id` onto `conn`, or `None` (changing nothing) when the messages after
    /// `last_seq` are no longer retained.
    fn resume(&mut self, conn: ConnId, id: &PeerId, last_seq: Option<u64>) -> Option<Joined> {
        let member = self.members.get_mut(id)?;
        let welcome_seq = member.journal.resume(last_seq).ok()?;
        let token = ResumeToken::fresh();
        self.resume_tokens.remove(&member.resume_token);
        member.resume_token = token;
        // The new connection counts against the caps now.
        member.held.ticket = None;
        let room = member.room.clone();
        self.replace_connection(id);
        if let Some(member) = self.members.get_mut(id) {
            if matches!(member.link, Link::Suspended { .. }) {
                self.graces.leave();
            }
            member.link = Link::Connected(conn);
        }
        self.resume_tokens.insert(token, id.clone());
        let others: Vec<PeerId> = self
            .rooms
            .get(&room)
            .map(|r| r.members.iter().filter(|m| *m != id).cloned().collect())
            .unwrap_or_default();
        let peers = self.peer_list(&others);
        let welcome = self.welcome(id, &room, peers, token.to_string(), true, welcome_seq);
        // The welcome goes first (the connection's own queue is written before the journal),
        // then every pending message, in order.
        self.link_connection(conn, id, welcome);
        Some(Joined { id: id.clone(), room, resumed: true })
    }

    /// A resume from elsewhere: the connection the member is still on (if its death has not
    /// been noticed yet) is closed with 4000 at once.
    fn replace_connection(&mut self, id: &PeerId) {
        let Some(Link::Connected(old)) = self.members.get(id).map(|m| m.link) else { return };
        if let Some(old_conn) = self.conns.get_mut(&old) {
            old_conn.member = None;
            old_conn.close = Some(CloseRequest::immediate(close_code::REPLACED, "replaced"));
            old_conn.wake.notify_one();
        }
    }

    /// `conn` now serves member `id`; `welcome` is the first thing it writes.
    fn link_connection(&mut self, conn: ConnId, id: &PeerId, welcome: Frame) {
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection.member = Some(id.clone());
            connection.served = Some(id.clone());
            let unbounded = Bound { frames: usize::MAX, bytes: usize::MAX };
            let _ = connection.outbox.push(welcome, unbounded, &mut self.queued);
            connection.wake.notify_one();
        }
    }

    fn peer_list(&self, ids: &[PeerId]) -> Vec<PeerInfo> {
        ids.iter()
            .filter_map(|id| {
                let member = self.members.get(id)?;
                Some(PeerInfo { id: id.to_string(), name: member.name.to_string() })
            })
            .collect()
    }

    /// The `--ice-server` entries, then a fresh TURN credential for `id`. The credential's
    /// expiry counts on the wall clock (coturn compares it with its own), not on `now`.
    fn ice_servers_for(&self, id: &PeerId) -> Vec<IceServer> {
        let mut servers = self.config.ice_servers.clone();
        if let Some(turn) = &self.config.turn {
            servers.push(turn.credential(id.as_str(), SystemTime::now()));
        }
        servers
    }

    fn welcome(
        &self,
        id: &PeerId,
        room: &RoomName,
        peers: Vec<PeerInfo>,
        token: String,
        resumed: bool,
        seq: u64,
    ) -> Frame {
        ServerMessage::Welcome(Welcome {
            id: id.to_string(),
            room: room.to_string(),
            peers,
            ice_servers: self.ice_servers_for(id),
            resume_token: token,
            resumed,
            seq: Some(seq),
        })
        .to_json()
        .into()
    }

    /// Relays an already-built `signal` frame, open for its number, from the member on `conn`
    /// to the member `to`. `from` is the id the frame names as sender; it must be the one this
    /// connection holds. Refused with `server_busy` if queuing it would take the server's queued
    /// bytes over `--max-queued-bytes`.
    pub fn relay(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        to: &str,
        frame: OpenFrame,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.try_relay(conn, from, to, frame, now).map_err(|not| not.into_refusal(to))
    }

    /// [`Self::relay`], except that a signal refused only because the server-wide bound is
    /// reached comes back ([`NotRelayed::Full`]), so that the caller can have the other shards
    /// give up retained messages and try again ([`crate::shards::Shards::relay`]).
    pub fn try_relay(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        to: &str,
        frame: OpenFrame,
        now: Instant,
    ) -> Result<(), NotRelayed> {
        let sender = self.conns.get(&conn).and_then(|c| c.member.as_ref());
        if sender != Some(from) {
            return Err(NotRelayed::Refused(
                Refusal::new(ErrorCode::NotJoined, "join a room before sending signals")
                    .about_signal_to(Some(to)),
            ));
        }
        let sender_room = self.members.get(from).map(|m| &m.room);
        // One lookup of the target for its id, number and backlog (this runs for every signal).
        let (target, seq, backlog) = match self.members.get_key_value(to) {
            Some((id, member)) if Some(&member.room) == sender_room && id != from => {
                // A backlog (a member suspended, or not reading) may fill only half of the bound,
                // so that members who read their sockets always have room, whoever fills the rest.
                let backlog = matches!(member.link, Link::Suspended { .. })
                    || member.journal.pending_bytes() > BACKLOG_BYTES;
                (id.clone(), member.journal.next_seq(), backlog)
            }
            _ => {
                return Err(NotRelayed::Refused(
                    Refusal::new(ErrorCode::UnknownPeer, format!("no peer {to:?} in your room"))
                        .about_signal_to(Some(to)),
                ));
            }
        };
        let room_left = if backlog { self.queued.limit() / 2 } else { self.queued.limit() };
        let size = frame.stamped_len(seq) + FRAME_OVERHEAD;
        if !self.make_room(size, room_left) {
            return Err(NotRelayed::Full(Full { frame, size, room_left }));
        }
        let frame = frame.stamp(seq);
        self.deliver(&target, Outgoing::Stamped(frame), now);
        self.signals_relayed += 1;
        self.settle(now);
        Ok(())
    }

    /// `leave`: the member is gone at once, and the connection closes with 1000 after what it
    /// still has to write.
    pub fn leave(&mut self, conn: ConnId, now: Instant) -> Result<(), Refusal> {
        let Some(id) = self.conns.get(&conn).and_then(|c| c.member.clone()) else {
            return Err(Refusal::new(ErrorCode::NotJoined, "not in a room"));
        };
        self.end_member(&id, now);
        self.settle(now);
        self.close(conn, CloseRequest::new(close_code::NORMAL, "left"));
        Ok(())
    }

    /// Queues an `error` for the connection itself.
    pub fn refuse(&mut self, conn: ConnId, refusal: &Refusal, now: Instant) {
        self.send_to_conn(conn, refusal.frame(), now);
        self.settle(now);
    }

    /// Asks the connection's writer to close with `request` after the frames queued before it.
    pub fn close(&mut self, conn: ConnId, request: CloseRequest) {
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection.close.get_or_insert(request);
            connection.wake.notify_one();
        }
    }

    /// Everything the connection's writer should write now, and whether to close after it.
    /// Calling it again means the previous batch has been written (or given up).
    pub fn take_outbound(&mut self, conn: ConnId, now: Instant) -> Outbound {
        let Some(connection) = self.conns.get_mut(&conn) else {
            return Outbound {
                frames: Vec::new(),
                close: Some(CloseRequest::immediate(close_code::INTERNAL_ERROR, "gone")),
                journal_from: None,
            };
        };
        self.queued.sub(std::mem::take(&mut connection.in_flight));
        let mut frames = Vec::new();
        let mut in_flight = connection.outbox.take_all(&mut frames, &mut self.queued);
        let mut journal_from = None;
        if let Some(id) = &connection.member
            && let Some(member) = self.members.get_mut(id)
            && let Some((from, taken)) = member.journal.take(&mut frames)
        {
            journal_from = Some(from);
            in_flight += taken;
            if !member.trim_due {
                member.trim_due = true;
                let written_until = member.journal.written_until();
                self.trims.push_back(Trim {
                    due: now + self.config.resume_grace,
                    member: id.clone(),
                    written_until,
                });
            }
        }
        connection.in_flight = in_flight;
        self.queued.add(in_flight);
        Outbound { frames, close: connection.close, journal_from }
    }

    /// Wakes every connection's writer (shutdown: each looks at the server's state).
    pub fn wake_all(&self) {
        for connection in self.conns.values() {
            connection.wake.notify_one();
        }
    }

    /// The connection's socket is gone. A member on it without `leave` is suspended for the
    /// grace period; its journal keeps everything. `unwritten_from`: the writer's last batch
    /// did not surely get out (its write failed), so from that journal position on the
    /// messages are pending again.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant, unwritten_from: Option<u64>) {
        let Some(mut connection) = self.conns.remove(&conn) else { return };
        self.queued.sub(connection.in_flight);
        connection.outbox.clear(&mut self.queued);
        let Some(id) = connection.served else { return };
        let Some(member) = self.members.get_mut(&id) else { return };
        match member.link {
            Link::Connected(linked) if linked == conn => {
                let until = now + self.config.resume_grace;
                member.link = Link::Suspended { until, from: conn };
                member.held.ticket = connection.ticket;
                self.graces.suspend(id, until);
            }
            Link::Suspended { from, .. } if from == conn => {}
            // Resumed elsewhere meanwhile: the new connection has its own cursor.
            _ => return,
        }
        if let Some(position) = unwritten_from {
            member.journal.rewind(position);
        }
    }

    /// Ends every suspended member whose grace ran out by `now`, and drops written messages
    /// retained for longer than a grace period.
    pub fn expire(&mut self, now: Instant) {
        self.trim_retained(now);
        while let Some((due, id)) = self.graces.next_due(now) {
            // Skip what resumed, ended, or was suspended again (with a later end) meanwhile.
            if matches!(self.members.get(&id).map(|m| m.link), Some(Link::Suspended { until, .. }) if until == due)
            {
                self.ending.push(id);
            }
        }
        self.settle(now);
    }

    /// Whether `size` more bytes fit under `room_left`, after evicting this shard's retained
    /// messages if that is what it takes.
    pub fn make_room(&mut self, size: usize, room_left: usize) -> bool {
        if self.queued.bytes() + size > room_left {
            self.evict_retained(size, room_left);
        }
        self.queued.bytes() + size <= room_left
    }

    /// Under pressure, written messages kept only for a resume with `last_seq` give way to
    /// messages not delivered yet: whole members' retention is dropped, oldest scheduled first,
    /// until `size` more bytes fit under `room_left`. (A client that then needs them gets a
    /// refused resume, as after a long outage; nothing is lost silently.)
    fn evict_retained(&mut self, size: usize, room_left: usize) {
        while self.queued.bytes() + size > room_left {
            let Some(trim) = self.trims.pop_front() else { return };
            if let Some(member) = self.members.get_mut(&trim.member) {
                member.journal.trim(u64::MAX, self.config.retention(), &mut self.queued);
                member.trim_due = false;
            }
        }
    }

    /// Written messages are retained at least a grace period and at most two (a member has one
    /// trim scheduled at a time; what it wrote after scheduling waits for the next).
    fn trim_retained(&mut self, now: Instant) {
        let bound = self.config.retention();
        while self.trims.front().is_some_and(|trim| trim.due <= now) {
            let Some(trim) = self.trims.pop_front() else { break };
            let Some(member) = self.members.get_mut(&trim.member) else { continue };
            member.journal.trim(trim.written_until, bound, &mut self.queued);
            if member.journal.retains_written() {
                let written_until = member.journal.written_until();
                self.trims.push_back(Trim {
                    due: now + self.config.resume_grace,
                    member: trim.member,
                    written_until,
                });
            } else {
                member.trim_due = false;
            }
        }
    }

    /// Checks that the indexes agree with each other. For tests and fuzzing: the rules above
    /// keep these true, and this says which one broke if they ever do not.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_rooms = 0;
        for (name, room) in &self.rooms {
            if room.members.is_empty() {
                return Err(format!("room {name} exists with no members"));
            }
            for id in &room.members {
                in_rooms += 1;
                match self.members.get(id) {
                    Some(member) if member.room == *name => {}
                    _ => return Err(format!("room {name} lists {id}, who is not a member of it")),
                }
            }
        }
        if in_rooms != self.members.len() {
            return Err(format!("{} members but {in_rooms} places in rooms", self.members.len()));
        }
        for (id, member) in &self.members {
            if self.resume_tokens.get(&member.resume_token) != Some(id) {
                return Err(format!("{id}'s resume token does not lead back to it"));
            }
            if let Link::Connected(conn) = member.link
                && self.conns.get(&conn).and_then(|c| c.member.as_ref()) != Some(id)
            {
                return Err(format!("{id} is linked to {conn}, which does not know it"));
            }
        }
        for (conn, connection) in &self.conns {
            if let Some(id) = &connection.member
                && !matches!(self.members.get(id).map(|m| &m.link), Some(Link::Connected(c)) if c == conn)
            {
                return Err(format!("{conn} claims {id}, who is not linked to it"));
            }
        }
        if self.resume_tokens.len() != self.members.len() {
            return Err("a resume token outlived its member".into());
        }
        if !self.ending.is_empty() {
            return Err("members left half-ended".into());
        }
        let mut suspended = 0;
        for (id, member) in &self.members {
            if let Link::Suspended { until, .. } = member.link {
                suspended += 1;
                if !self.graces.holds(id, until) {
                    return Err(format!("{id} is suspended but not due to expire"));
                }
            }
        }
        if suspended != self.graces.count() {
            return Err(format!("{suspended} members suspended, {} counted", self.graces.count()));
        }
        let counted: usize = self.members.values().map(|m| m.journal.bytes()).sum::<usize>()
            + self.conns.values().map(|c| c.outbox.bytes() + c.in_flight).sum::<usize>();
        if counted != self.queued.own() {
            return Err(format!("{} queued bytes counted, {counted} held", self.queued.own()));
        }
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            members: self.members.len(),
            suspended_members: self.graces.count(),
            signals_relayed: self.signals_relayed,
            queued_bytes: self.queued.bytes(),
        }
    }

    /// The close requested for the connection, if any.
    pub fn close_requested(&self, conn: ConnId) -> Option<CloseRequest> {
        self.conns.get(&conn)?.close
    }

    /// True when `request` carries a live resume token for its room and the messages after its
    /// `last_seq` are still held.
    pub fn can_resume(&self, request: &JoinRequest) -> bool {
        self.resumable(request)
            .and_then(|id| self.members.get(&id))
            .is_some_and(|member| member.journal.can_resume(request.last_seq))
    }

    /// Takes a connection that has not joined out of this shard, to be placed in another with
    /// [`Self::adopt_conn`] (it joins a room that lives there). `None` if it is not here, or has
    /// joined (a joined connection stays with its member's room).
    pub fn release_conn(&mut self, conn: ConnId, to: &mut Rooms) -> Option<MovingConn> {
        if self.conns.get(&conn)?.member.is_some() {
            return None;
        }
        let connection = self.conns.remove(&conn)?;
        self.queued.hand_over(connection.outbox.bytes() + connection.in_flight, &mut to.queued);
        Some(MovingConn(connection))
    }

    /// Places a connection released by another shard (whose queued bytes were handed to this
    /// one's count).
    pub fn adopt_conn(&mut self, conn: ConnId, moving: MovingConn) {
        self.conns.insert(conn, moving.0);
    }

    fn send_to_conn(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(connection) = self.conns.get_mut(&conn) else { return };
        match connection.member.clone() {
            Some(id) => self.deliver(&id, Outgoing::Error(frame), now),
            None => {
                if connection.outbox.push(frame, self.config.outbox, &mut self.queued).is_ok() {
                    connection.wake.notify_one();
                } else {
                    tracing::warn!(%conn, "outbound queue full before joining; closing");
                    self.close(conn, CloseRequest::immediate(close_code::POLICY, "not reading"));
                }
            }
        }
    }

    /// Appends a message to the member's journal. A connection too far behind is closed and
    /// the member suspended (its journal keeps everything); a suspended member whose pending
    /// messages overflow ends, as if its grace had run out.
    fn deliver(&mut self, to: &PeerId, outgoing: Outgoing, now: Instant) {
        let Some(member) = self.members.get_mut(to) else { return };
        let retention = self.config.retention();
        let (mut frame, numbered) = match outgoing {
            Outgoing::Numbered(open) => (open.stamp(member.journal.next_seq()), true),
            Outgoing::Stamped(frame) => (frame, true),
            Outgoing::Error(frame) => (frame, false),
        };
        let push = |journal: &mut Journal, frame: Frame, bound: Bound, usage: &mut QueuedBytes| {
            let pushed = if numbered {
                journal.push_numbered(frame, bound, usage)
            } else {
                journal.push_error(frame, bound, usage)
            };
            // Retention never takes the journal past its bound: written messages go first.
            journal.trim(0, retention, usage);
            pushed
        };
        if let Link::Connected(conn_id) = member.link {
            let Some(conn) = self.conns.get_mut(&conn_id) else { return };
            let Err(Overflow(back)) = push(&mut member.journal, frame, self.config.outbox, &mut self.queued)
            else {
                conn.wake.notify_one();
                return;
            };
            tracing::warn!(peer = %to, conn = %conn_id, queued = member.journal.pending_frames(),
                "client is not reading its socket: closing it (1008), keeping its place for the grace period");
            conn.close.get_or_insert(CloseRequest::immediate(close_code::POLICY, "not reading"));
            conn.member = None;
            conn.wake.notify_one();
            member.held.ticket.clone_from(&conn.ticket);
            let until = now + self.config.resume_grace;
            member.link = Link::Suspended { until, from: conn_id };
            self.graces.suspend(to.clone(), until);
            frame = back;
        }
        if push(&mut member.journal, frame, retention, &mut self.queued).is_err() {
            tracing::info!(peer = %to, "resume queue overflowed: ending the suspended member");
            self.ending.push(to.clone());
        }
    }

    fn settle(&mut self, now: Instant) {
        while let Some(id) = self.ending.pop() {
            self.end_member(&id, now);
        }
    }

    /// Removes the member everywhere and tells the rest of its room.
    fn end_member(&mut self, id: &PeerId, now: Instant) {
        let Some(mut member) = self.members.remove(id) else { return };
        if matches!(member.link, Link::Suspended { .. }) {
            self.graces.leave();
        }
        member.journal.clear(&mut self.queued);
        self.resume_tokens.remove(&member.resume_token);
        if let Link::Connected(conn) = member.link
            && let Some(connection) = self.conns.get_mut(&conn)
        {
            connection.member = None;
        }
        let Some(room) = self.rooms.get_mut(&member.room) else { return };
        room.members.retain(|m| m != id);
        if room.members.is_empty() {
            self.rooms.remove(&member.room);
            self.wide.close_room();
            return;
        }
        let remaining = room.members.clone();
        let farewell =
            OpenFrame::from_object(ServerMessage::PeerLeft { id: id.to_string(), seq: None }.to_json());
        for other in &remaining {
            self.deliver(other, Outgoing::Numbered(farewell.clone()), now);
        }
    }
}

/// A message on its way into a member's journal.
enum Outgoing {
    /// Numbered when queued (`peer_joined`, `peer_left`).
    Numbered(OpenFrame),
    /// Already numbered with the member's next seq (a relayed signal, checked against the
    /// server's bound first).
    Stamped(Frame),
    /// An `error` for the member's current connection.
    Error(Frame),
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod exercise;
#[cfg(test)]
mod tests;
