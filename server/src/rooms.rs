//! Membership, relay and resume rules: plain synchronous code with no I/O.
//!
//! [`Rooms`] is the single owner of every connection's outbound queue, every member and every
//! room. The WebSocket tasks only parse frames, call in here under one lock, and write out what
//! [`Rooms::take_outbound`] hands them. Because every delivery happens under that lock, "in the
//! order sent, exactly once" holds by construction: a frame is in exactly one queue at a time
//! (a connection's outbox, or a suspended member's resume queue) and queues only ever move
//! whole, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::{DisplayName, ErrorCode, IceServer, PeerInfo, RoomName, ServerMessage, Welcome, close_code};
use tokio::sync::Notify;

use crate::admission::Ticket;
use crate::budget::SharedBudget;
use crate::ids::{IdSource, PeerId, resume_token};
use crate::outbox::{Bound, Frame, Outbox, Overflow};
use crate::refusal::Refusal;
use crate::turn::TurnConfig;

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
    /// A connected client's outbound queue. Full means the client is not reading: it is closed
    /// with 1008 and its member is suspended. A suspended member's queue may hold twice this.
    pub outbox: Bound,
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
            ice_servers: Vec::new(),
            turn: None,
        }
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
    pub fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason, immediate: false }
    }

    fn immediate(code: u16, reason: &'static str) -> Self {
        Self { code, reason, immediate: true }
    }
}

/// What a connection's writer should do next.
#[derive(Debug, Default)]
pub struct Outbound {
    pub frames: Vec<Frame>,
    pub close: Option<CloseRequest>,
}

/// A validated `join`.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: RoomName,
    pub name: Option<DisplayName>,
    pub resume: Option<String>,
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
}

#[derive(Debug)]
struct Conn {
    outbox: Outbox,
    /// Wakes the connection's writer when there is something to take.
    wake: Arc<Notify>,
    member: Option<PeerId>,
    close: Option<CloseRequest>,
    /// The connection's count against the caps; its member takes it over when suspended.
    ticket: Option<Ticket>,
}

#[derive(Debug)]
struct Member {
    name: String,
    room: RoomName,
    resume_token: String,
    link: Link,
    /// Limits that outlive a connection (see [`Rooms::hold_ticket`], [`Rooms::share_budget`]).
    held: Held,
}

/// What a member keeps across connections, opaque to the rules: while suspended, the count
/// against the caps of the client that joined it (so dropping and rejoining cannot hold more
/// rooms than the caps allow); always, its rate budget (so a resume does not start a fresh one).
#[derive(Debug, Default)]
struct Held {
    ticket: Option<Ticket>,
    budget: Option<SharedBudget>,
}

#[derive(Debug)]
enum Link {
    Connected(ConnId),
    /// The socket went away without `leave`: the place is kept until `until`, and what the
    /// member would have been sent waits in `queue`.
    Suspended {
        until: Instant,
        queue: Outbox,
    },
}

#[derive(Debug, Default)]
struct Room {
    /// Oldest first.
    members: Vec<PeerId>,
}

#[derive(Debug)]
pub struct Rooms {
    config: RoomsConfig,
    ids: IdSource,
    next_conn: u64,
    /// Keyed by ids only the server makes, so a fast hash is safe here: a client cannot choose
    /// keys that collide. (Every signal looks up both maps several times; SipHash was ~5 % of
    /// the relay's instructions.) Room names and resume tokens, which clients send, keep
    /// std's DoS-resistant SipHash.
    conns: FastMap<ConnId, Conn>,
    members: FastMap<PeerId, Member>,
    rooms: HashMap<RoomName, Room>,
    /// Live resume tokens; each is removed when used, so it works once.
    resume_tokens: HashMap<String, PeerId>,
    /// Members whose end was decided while delivering; ended by `settle`, so that ending one
    /// (which notifies others) never recurses.
    ending: Vec<PeerId>,
    signals_relayed: u64,
}

impl Rooms {
    pub fn new(config: RoomsConfig) -> Self {
        Self {
            config,
            ids: IdSource::new(),
            next_conn: 0,
            conns: FastMap::default(),
            members: FastMap::default(),
            rooms: HashMap::new(),
            resume_tokens: HashMap::new(),
            ending: Vec::new(),
            signals_relayed: 0,
        }
    }

    pub fn config(&self) -> &RoomsConfig {
        &self.config
    }

    /// Registers a new connection; `wake` is notified whenever it has something to write.
    pub fn connect(&mut self, wake: Arc<Notify>) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns
            .insert(id, Conn { outbox: Outbox::default(), wake, member: None, close: None, ticket: None });
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
        if let Some(joined) = self.resumable(&request).and_then(|id| self.resume(conn, id)) {
            return Ok(joined);
        }
        self.join_fresh(conn, request, now)
    }

    /// The member a `resume` token refers to, if it is live and for the requested room. An
    /// unknown or expired token is not an error: the join proceeds as a fresh one.
    fn resumable(&self, request: &JoinRequest) -> Option<PeerId> {
        let id = self.resume_tokens.get(request.resume.as_deref()?)?;
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
            None if self.rooms.len() >= self.config.max_rooms => {
                return Err(Refusal::new(
                    ErrorCode::ServerBusy,
                    "the server is at its room limit; try again later or join an existing room",
                ));
            }
            _ => {}
        }
        let id = self.ids.next_id();
        let name = request.name.map_or_else(|| id.to_string(), |name| name.as_str().to_owned());
        let token = resume_token();
        let others = self.rooms.get(&request.room).map(|r| r.members.clone()).unwrap_or_default();
        let peers = self.peer_list(&others);
        let announcement: Frame =
            ServerMessage::PeerJoined { peer: PeerInfo { id: id.to_string(), name: name.clone() } }
                .to_json()
                .into();
        self.rooms.entry(request.room.clone()).or_default().members.push(id.clone());
        self.resume_tokens.insert(token.clone(), id.clone());
        self.members.insert(
            id.clone(),
            Member {
                name,
                room: request.room.clone(),
                resume_token: token.clone(),
                link: Link::Connected(conn),
                held: Held::default(),
            },
        );
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection.member = Some(id.clone());
        }
        self.send_to_conn(conn, self.welcome(&id, &request.room, peers, token, false), now);
        for other in &others {
            self.deliver(other, announcement.clone(), now);
        }
        self.settle(now);
        Ok(Joined { id, room: request.room, resumed: false })
    }

    fn resume(&mut self, conn: ConnId, id: PeerId) -> Option<Joined> {
        let token = resume_token();
        let member = self.members.get_mut(&id)?;
        self.resume_tokens.remove(&member.resume_token);
        member.resume_token = token.clone();
        // The new connection counts against the caps now.
        member.held.ticket = None;
        let backlog = match std::mem::replace(&mut member.link, Link::Connected(conn)) {
            Link::Suspended { queue, .. } => queue,
            Link::Connected(old) => match self.conns.get_mut(&old) {
                // The client came back before its old socket was seen to die: that socket is
                // replaced, and whatever it had not written yet goes to the new one.
                Some(old_conn) => {
                    old_conn.member = None;
                    old_conn.close = Some(CloseRequest::immediate(close_code::REPLACED, "replaced"));
                    old_conn.wake.notify_one();
                    std::mem::take(&mut old_conn.outbox)
                }
                None => Outbox::default(),
            },
        };
        let room = member.room.clone();
        self.resume_tokens.insert(token.clone(), id.clone());
        let others: Vec<PeerId> = self
            .rooms
            .get(&room)
            .map(|r| r.members.iter().filter(|m| **m != id).cloned().collect())
            .unwrap_or_default();
        let peers = self.peer_list(&others);
        let welcome = self.welcome(&id, &room, peers, token, true);
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection.member = Some(id.clone());
            // The welcome goes first, then everything that waited, in order. The connection's
            // own queue held at most a few errors from before the join.
            let mut queue = std::mem::take(&mut connection.outbox);
            let _ = queue.push(welcome, Bound { frames: usize::MAX, bytes: usize::MAX });
            queue.append(backlog);
            connection.outbox = queue;
            connection.wake.notify_one();
        }
        Some(Joined { id, room, resumed: true })
    }

    fn peer_list(&self, ids: &[PeerId]) -> Vec<PeerInfo> {
        ids.iter()
            .filter_map(|id| {
                let member = self.members.get(id)?;
                Some(PeerInfo { id: id.to_string(), name: member.name.clone() })
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
    ) -> Frame {
        ServerMessage::Welcome(Welcome {
            id: id.to_string(),
            room: room.to_string(),
            peers,
            ice_servers: self.ice_servers_for(id),
            resume_token: token,
            resumed,
        })
        .to_json()
        .into()
    }

    /// Relays an already-built `signal` frame from the member on `conn` to the member `to`.
    /// `from` is the id the frame names as sender; it must be the one this connection holds.
    pub fn relay(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        to: &str,
        frame: Frame,
        now: Instant,
    ) -> Result<(), Refusal> {
        let sender = self.conns.get(&conn).and_then(|c| c.member.as_ref());
        if sender != Some(from) {
            return Err(Refusal::new(ErrorCode::NotJoined, "join a room before sending signals")
                .about_signal_to(Some(to)));
        }
        let sender_room = self.members.get(from).map(|m| &m.room);
        let target = match self.members.get_key_value(to) {
            Some((id, member)) if Some(&member.room) == sender_room && id != from => id.clone(),
            _ => {
                return Err(Refusal::new(ErrorCode::UnknownPeer, format!("no peer {to:?} in your room"))
                    .about_signal_to(Some(to)));
            }
        };
        self.deliver(&target, frame, now);
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
    pub fn take_outbound(&mut self, conn: ConnId) -> Outbound {
        match self.conns.get_mut(&conn) {
            Some(connection) => Outbound { frames: connection.outbox.take_all(), close: connection.close },
            None => Outbound {
                frames: Vec::new(),
                close: Some(CloseRequest::immediate(close_code::INTERNAL_ERROR, "gone")),
            },
        }
    }

    /// The connection's socket is gone. A member on it without `leave` is suspended for the
    /// grace period, keeping what it had not been written yet.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant) {
        let Some(connection) = self.conns.remove(&conn) else { return };
        let Some(id) = connection.member else { return };
        if let Some(member) = self.members.get_mut(&id) {
            member.link = Link::Suspended { until: now + self.config.resume_grace, queue: connection.outbox };
            member.held.ticket = connection.ticket;
        }
    }

    /// Ends every suspended member whose grace ran out by `now`.
    pub fn expire(&mut self, now: Instant) {
        let expired = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m.link, Link::Suspended { until, .. } if until <= now))
            .map(|(id, _)| id.clone());
        self.ending.extend(expired);
        self.settle(now);
    }

    /// Checks that the indexes agree with each other. For tests and fuzzing: the rules above
    /// keep these true, and this says which one broke if they ever do not.
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
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            members: self.members.len(),
            suspended_members: self
                .members
                .values()
                .filter(|m| matches!(m.link, Link::Suspended { .. }))
                .count(),
            signals_relayed: self.signals_relayed,
        }
    }

    /// The close requested for the connection, if any.
    pub fn close_requested(&self, conn: ConnId) -> Option<CloseRequest> {
        self.conns.get(&conn)?.close
    }

    /// True when `request` carries a live resume token for its room.
    pub fn can_resume(&self, request: &JoinRequest) -> bool {
        self.resumable(request).is_some()
    }

    /// The member a connection has joined as, if any.
    pub fn member_of(&self, conn: ConnId) -> Option<&PeerId> {
        self.conns.get(&conn)?.member.as_ref()
    }

    fn send_to_conn(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(connection) = self.conns.get_mut(&conn) else { return };
        match connection.member.clone() {
            Some(id) => self.deliver(&id, frame, now),
            None => {
                if connection.outbox.push(frame, self.config.outbox).is_ok() {
                    connection.wake.notify_one();
                } else {
                    tracing::warn!(%conn, "outbound queue full before joining; closing");
                    self.close(conn, CloseRequest::immediate(close_code::POLICY, "not reading"));
                }
            }
        }
    }

    /// Puts `frame` in the member's queue: its connection's outbox, or its resume queue while
    /// suspended. A connection too far behind is closed and the member suspended with its queue;
    /// a resume queue that overflows ends the member, as if its grace had run out.
    fn deliver(&mut self, to: &PeerId, frame: Frame, now: Instant) {
        let Some(member) = self.members.get_mut(to) else { return };
        let grace_bound = self.config.outbox.scaled(2);
        match &mut member.link {
            Link::Connected(conn_id) => {
                let conn_id = *conn_id;
                let Some(conn) = self.conns.get_mut(&conn_id) else { return };
                let Err(Overflow(frame)) = conn.outbox.push(frame, self.config.outbox) else {
                    conn.wake.notify_one();
                    return;
                };
                tracing::warn!(peer = %to, conn = %conn_id, queued = conn.outbox.len(),
                    "client is not reading its socket: closing it (1008), keeping its place for the grace period");
                conn.close.get_or_insert(CloseRequest::immediate(close_code::POLICY, "not reading"));
                conn.member = None;
                conn.wake.notify_one();
                member.held.ticket.clone_from(&conn.ticket);
                let mut queue = std::mem::take(&mut conn.outbox);
                if queue.push(frame, grace_bound).is_err() {
                    self.ending.push(to.clone());
                }
                member.link = Link::Suspended { until: now + self.config.resume_grace, queue };
            }
            Link::Suspended { queue, .. } => {
                if queue.push(frame, grace_bound).is_err() {
                    tracing::info!(peer = %to, "resume queue overflowed: ending the suspended member");
                    self.ending.push(to.clone());
                }
            }
        }
    }

    fn settle(&mut self, now: Instant) {
        while let Some(id) = self.ending.pop() {
            self.end_member(&id, now);
        }
    }

    /// Removes the member everywhere and tells the rest of its room.
    fn end_member(&mut self, id: &PeerId, now: Instant) {
        let Some(member) = self.members.remove(id) else { return };
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
            return;
        }
        let remaining = room.members.clone();
        let farewell: Frame = ServerMessage::PeerLeft { id: id.to_string() }.to_json().into();
        for other in &remaining {
            self.deliver(other, farewell.clone(), now);
        }
    }
}

pub mod exercise;
#[cfg(test)]
mod tests;
