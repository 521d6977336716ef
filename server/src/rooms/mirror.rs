//! Members held in Redis (several instances, `crate::cluster`), as this instance serves them.
//!
//! With `--redis`, Redis decides membership, numbers every message and keeps it (a stream per
//! member); `Rooms` only keeps, for each member connected here, a *mirror*: its connection and a
//! [`Journal`] that starts at the number Redis says comes next and takes the messages Redis hands
//! this instance in number order. So the writer, the byte accounting and the not-reading rule
//! are the same code in both modes, and the rules that decide (room full, who is in the room,
//! the numbers) are never taken twice: a mirror never notifies anyone and never ends a member.
//! It is dropped quietly when its connection goes (Redis then holds the member in grace), when
//! the member moves to another connection, or when it ends.

use super::*;

/// A member joined or resumed through Redis, ready to be served on a connection.
#[derive(Debug)]
pub struct Attach {
    pub id: PeerId,
    pub room: RoomName,
    pub peers: Vec<PeerInfo>,
    pub resume_token: String,
    pub resumed: bool,
    /// The `welcome.seq`: the first message to come carries this + 1.
    pub welcome_seq: u64,
    /// Every message after `welcome_seq` that Redis already holds, in order.
    pub backlog: Vec<Frame>,
    /// The member's rate budget as it was left on its last connection (a resume), if Redis has it.
    pub budget: Option<SharedBudget>,
}

/// What became of a message from Redis.
#[derive(Debug)]
pub enum Remote {
    /// Queued for the member's writer.
    Taken,
    /// Already queued (a number below the next expected): dropped.
    Stale,
    /// Messages before it have not arrived: fetch from `next` on (the message is dropped; the
    /// fetch brings it again).
    Gap { next: u64 },
    /// The member is not served here (any more).
    Absent,
    /// The member got signals numbered here while Redis was unreachable: Redis' numbers from
    /// the first of those on are given again when they are written back (dropped now; the
    /// write-back renumbers them after the local ones and the stream brings them).
    Held,
    /// The member's client does not read: its connection is closed (1008) and the mirror
    /// dropped; Redis must hold the member in grace.
    Overflow(Detached),
}

/// A mirror dropped because its connection went away: Redis should hold the member in grace,
/// knowing which numbers were surely written.
#[derive(Debug, Clone)]
pub struct Detached {
    pub id: PeerId,
    pub room: RoomName,
    pub conn: ConnId,
    /// The latest seq the connection's writer surely wrote (for a resume without `last_seq`).
    pub written: u64,
    /// What was left of the member's rate budget, for its next connection wherever it is.
    pub budget: Option<Tokens>,
    /// The connection's count against the caps of its client: a member in grace still counts
    /// (PROTOCOL.md), so this instance keeps it until Redis says the member resumed or ended.
    pub ticket: Option<Ticket>,
}

/// Signals relayed on this instance while Redis was unreachable, by recipient. Redis numbers a
/// member's messages; cut off from it, the instance numbers them itself, going on from the last
/// number Redis gave it (`first`), and keeps them here until they are written back to the
/// member's stream. Whatever Redis numbered meanwhile for that member from `first` on has not
/// been delivered (see [`Remote::Held`]); the write-back puts it after the local ones.
pub type LocalLogs = FastMap<PeerId, LocalLog>;

#[derive(Debug)]
pub struct LocalLog {
    room: RoomName,
    /// The connection the member was on when the first was relayed (its `session` in Redis).
    conn: ConnId,
    /// The seq of `frames[0]`; the rest follow one by one.
    first: u64,
    frames: Vec<Frame>,
    bytes: usize,
    /// Being written back: no more may be added (a retried write-back must send the same).
    sealed: bool,
}

/// A member's local log on its way to Redis.
#[derive(Debug, Clone)]
pub struct WriteBack {
    pub id: PeerId,
    pub room: RoomName,
    pub conn: ConnId,
    pub first: u64,
    pub frames: Vec<Frame>,
}

/// A member served here, as Redis should know it.
#[derive(Debug, Clone)]
pub struct Mirrored {
    pub id: PeerId,
    pub room: RoomName,
    pub conn: ConnId,
}

impl Rooms {
    /// True when a member for `room` would take this instance past `--max-rooms`.
    pub fn room_cap_reached(&self, room: &RoomName) -> bool {
        !self.rooms.contains_key(room)
            && self.wide.rooms.load(std::sync::atomic::Ordering::Relaxed) >= self.config.max_rooms
    }

    /// Serves the member on `conn`: `welcome` first, then the backlog, then whatever
    /// [`Self::push_remote`] brings. Returns false (changing nothing) if the connection is gone
    /// or has joined meanwhile; the caller then hands the member back to Redis' grace.
    pub fn attach(&mut self, conn: ConnId, attach: Attach) -> bool {
        if !self.conns.get(&conn).is_some_and(|c| c.member.is_none() && c.close.is_none()) {
            return false;
        }
        // Resumed here while its old connection (also here) is still open: that one is replaced.
        self.replace_connection(&attach.id);
        self.forget(&attach.id);
        let Attach { id, room, peers, resume_token, resumed, welcome_seq, backlog, budget } = attach;
        let mut journal = Journal::starting_at(welcome_seq + 1);
        let retention = self.config.retention();
        let mut overflowed = false;
        for frame in backlog {
            if journal.push_numbered(frame, retention, &mut self.queued).is_err() {
                overflowed = true;
                break;
            }
        }
        if !self.rooms.contains_key(&room) {
            // Counted against --max-rooms (checked before Redis was asked; a race may pass it by
            // a room or two, never more than the joins in flight).
            self.wide.open_room(usize::MAX);
        }
        self.rooms.entry(room.clone()).or_default().members.push(id.clone());
        self.members.insert(
            id.clone(),
            Box::new(Member {
                name: Box::default(),
                room: room.clone(),
                // Redis keeps a mirrored member's token; this one is in no index.
                resume_token: ResumeToken::fresh(),
                link: Link::Connected(conn),
                held: Held { ticket: None, budget },
                journal,
                trim_due: false,
            }),
        );
        let welcome = self.welcome(&id, &room, peers, resume_token, resumed, welcome_seq);
        self.link_connection(conn, &id, welcome);
        if overflowed {
            tracing::warn!(peer = %id, "more to replay than a journal may hold; closing (1008)");
            self.close(conn, CloseRequest::new(close_code::POLICY, "too much to replay"));
        }
        true
    }

    /// A message Redis numbered `seq` for the member `id`.
    pub fn push_remote(&mut self, id: &str, seq: u64, frame: Frame) -> Remote {
        if self.local_logs.contains_key(id) {
            return Remote::Held;
        }
        let Some(member) = self.members.get_mut(id) else { return Remote::Absent };
        let Link::Connected(conn) = member.link else { return Remote::Absent };
        let next = member.journal.next_seq();
        if seq < next {
            return Remote::Stale;
        }
        if seq > next {
            return Remote::Gap { next };
        }
        match member.journal.push_numbered(frame, self.config.outbox, &mut self.queued) {
            Ok(()) => {
                member.journal.trim(0, self.config.retention(), &mut self.queued);
                if let Some(connection) = self.conns.get(&conn) {
                    connection.wake.notify_one();
                }
                Remote::Taken
            }
            Err(_) => {
                let id = id.to_owned();
                tracing::warn!(peer = %id, %conn, "client is not reading its socket: closing it (1008)");
                self.close(conn, CloseRequest::immediate(close_code::POLICY, "not reading"));
                match self.detach(conn, None) {
                    Some(detached) => Remote::Overflow(detached),
                    None => Remote::Absent,
                }
            }
        }
    }

    /// A signal between two members served here while Redis is unreachable: numbered with the
    /// recipient's next seq, queued for it and logged for the write-back. Anything else needs
    /// Redis (`server_busy`). `Ok(Some(_))`: the recipient does not read its socket; it was
    /// closed (1008) and must be held in grace (the signal is logged, so a resume replays it).
    pub fn relay_locally(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        to: &str,
        frame: OpenFrame,
    ) -> Result<Option<Detached>, Refusal> {
        let refuse = |code, text: &str| Err(Refusal::new(code, text).about_signal_to(Some(to)));
        if self.conns.get(&conn).and_then(|c| c.member.as_ref()) != Some(from) {
            return refuse(ErrorCode::NotJoined, "this connection no longer holds its membership");
        }
        if to == from.as_str() {
            return refuse(ErrorCode::UnknownPeer, "you cannot signal yourself");
        }
        let busy = "the service cannot reach its shared state (Redis) right now and that peer is not \
                    connected to this server; try again shortly";
        let sender_room = self.members.get(from).map(|m| m.room.clone());
        let Some((id, member)) = self.members.get_key_value(to) else {
            return refuse(ErrorCode::ServerBusy, busy);
        };
        let Link::Connected(target_conn) = member.link else { return refuse(ErrorCode::ServerBusy, busy) };
        if Some(&member.room) != sender_room.as_ref() {
            return refuse(ErrorCode::ServerBusy, busy);
        }
        let (id, room, next) = (id.clone(), member.room.clone(), member.journal.next_seq());
        let retention = self.config.retention();
        let log = self.local_logs.entry(id.clone()).or_insert_with(|| LocalLog {
            room,
            conn: target_conn,
            first: next,
            frames: Vec::new(),
            bytes: 0,
            sealed: false,
        });
        let frame = frame.stamp(log.first + log.frames.len() as u64);
        let size = cost(&frame);
        if log.sealed
            || log.frames.len() >= retention.frames
            || log.bytes + size > retention.bytes
            || self.queued.bytes() + 2 * size > self.queued.limit()
        {
            return refuse(
                ErrorCode::ServerBusy,
                "the service cannot reach its shared state (Redis) right now and holds as many \
                 signals as it may for it; try again shortly",
            );
        }
        debug_assert_eq!(log.first + log.frames.len() as u64, next, "the log follows the journal");
        log.frames.push(frame.clone());
        log.bytes += size;
        self.signals_relayed += 1;
        let Some(member) = self.members.get_mut(&id) else { return Ok(None) };
        match member.journal.push_numbered(frame, self.config.outbox, &mut self.queued) {
            Ok(()) => {
                member.journal.trim(0, retention, &mut self.queued);
                if let Some(connection) = self.conns.get(&target_conn) {
                    connection.wake.notify_one();
                }
                Ok(None)
            }
            Err(_) => {
                tracing::warn!(peer = %id, "client is not reading its socket: closing it (1008)");
                self.close(target_conn, CloseRequest::immediate(close_code::POLICY, "not reading"));
                Ok(self.detach(target_conn, None))
            }
        }
    }

    /// Every local log, sealed: what must be written back to Redis before this instance serves
    /// as part of the service again.
    pub fn seal_local_logs(&mut self) -> Vec<WriteBack> {
        self.local_logs
            .iter_mut()
            .map(|(id, log)| {
                log.sealed = true;
                WriteBack {
                    id: id.clone(),
                    room: log.room.clone(),
                    conn: log.conn,
                    first: log.first,
                    frames: log.frames.clone(),
                }
            })
            .collect()
    }

    /// Redis has the member's local log (or no longer has the member): it is dropped, and
    /// Redis' numbers reach the mirror again.
    pub fn written_back(&mut self, id: &PeerId) {
        self.local_logs.remove(id);
    }

    /// The connection's socket is gone (or given up): its mirror is dropped. Returns what Redis
    /// needs to hold the member in grace, if the connection still served one.
    pub fn detach(&mut self, conn: ConnId, unwritten_from: Option<u64>) -> Option<Detached> {
        let connection = self.conns.get_mut(&conn)?;
        let id = connection.served.take()?;
        connection.member = None;
        let member = self.members.get_mut(&id)?;
        if !matches!(member.link, Link::Connected(linked) if linked == conn) {
            return None;
        }
        if let Some(position) = unwritten_from {
            member.journal.rewind(position);
        }
        let detached = Detached {
            id: id.clone(),
            room: member.room.clone(),
            conn,
            written: member.journal.written_seq(),
            budget: member.held.budget.as_ref().and_then(|b| b.tokens(crate::clock::now())),
            ticket: self.conns.get(&conn).and_then(|c| c.ticket.clone()),
        };
        self.forget(&id);
        Some(detached)
    }

    /// The connection is gone: its mirror (if any) is dropped, then the connection itself.
    pub fn disconnect_mirrored(&mut self, conn: ConnId, unwritten_from: Option<u64>) -> Option<Detached> {
        let detached = self.detach(conn, unwritten_from);
        self.disconnect(conn, crate::clock::now(), None);
        detached
    }

    /// The member moved to another connection (Redis says so): if it is still on a connection
    /// here that `is_old` recognises, that one is closed with 4000 and the mirror dropped.
    pub fn kick(&mut self, id: &str, is_old: impl Fn(ConnId) -> bool) {
        let Some((id, member)) = self.members.get_key_value(id) else { return };
        if !matches!(member.link, Link::Connected(conn) if is_old(conn)) {
            return;
        }
        let id = id.clone();
        self.replace_connection(&id);
        self.forget(&id);
    }

    /// The member is no longer this instance's to serve (Redis lost it or ended it): its
    /// connection closes with `close` and the mirror is dropped.
    pub fn drop_mirrored(&mut self, id: &str, close: CloseRequest) {
        let Some((id, member)) = self.members.get_key_value(id) else { return };
        let Link::Connected(conn) = member.link else { return };
        let id = id.clone();
        self.close(conn, close);
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection.member = None;
            connection.served = None;
        }
        self.forget(&id);
    }

    /// Every member served here.
    pub fn mirrored(&self) -> Vec<Mirrored> {
        self.members
            .iter()
            .filter_map(|(id, member)| match member.link {
                Link::Connected(conn) => Some(Mirrored { id: id.clone(), room: member.room.clone(), conn }),
                Link::Suspended { .. } => None,
            })
            .collect()
    }

    /// True if a member of `room` is served here.
    pub fn serves_room(&self, room: &RoomName) -> bool {
        self.rooms.contains_key(room)
    }

    /// The seq the member's next message must carry, if it is served here.
    pub fn mirror_of(&self, id: &str) -> Option<u64> {
        Some(self.members.get(id)?.journal.next_seq())
    }

    /// Drops a mirror without telling anyone: Redis owns the member.
    fn forget(&mut self, id: &PeerId) {
        let Some(mut member) = self.members.remove(id) else { return };
        member.journal.clear(&mut self.queued);
        if let Link::Connected(conn) = member.link
            && let Some(connection) = self.conns.get_mut(&conn)
            && connection.member.as_ref() == Some(id)
        {
            connection.member = None;
        }
        if let Some(room) = self.rooms.get_mut(&member.room) {
            room.members.retain(|m| m != id);
            if room.members.is_empty() {
                self.rooms.remove(&member.room);
                self.wide.close_room();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach_new(rooms: &mut Rooms, id: &str, welcome_seq: u64, backlog: &[u64]) -> ConnId {
        let conn = rooms.connect(Arc::new(Notify::new()));
        let attach = Attach {
            id: PeerId::made_elsewhere(id),
            room: RoomName::parse("r").expect("valid"),
            peers: Vec::new(),
            resume_token: "t".into(),
            resumed: welcome_seq > 0,
            welcome_seq,
            backlog: backlog.iter().map(|seq| frame(*seq)).collect(),
            budget: None,
        };
        assert!(rooms.attach(conn, attach));
        conn
    }

    fn frame(seq: u64) -> Frame {
        format!(r#"{{"type":"peer_left","id":"x","seq":{seq}}}"#).into()
    }

    /// The seqs of the numbered messages written to `conn` so far (the welcome's own first).
    fn written(rooms: &mut Rooms, conn: ConnId) -> Vec<u64> {
        let outbound = rooms.take_outbound(conn, crate::clock::now());
        outbound
            .frames
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(f).expect("JSON")["seq"].as_u64().expect("seq")
            })
            .collect()
    }

    #[test]
    fn a_mirror_takes_numbers_in_order_once_and_asks_for_what_it_missed() {
        let mut rooms = Rooms::new(RoomsConfig::default());
        let conn = attach_new(&mut rooms, "m-1", 3, &[4, 5]);
        assert_eq!(written(&mut rooms, conn), [3, 4, 5], "welcome (seq 3), then the backlog");
        assert!(matches!(rooms.push_remote("m-1", 5, frame(5)), Remote::Stale));
        assert!(matches!(rooms.push_remote("m-1", 7, frame(7)), Remote::Gap { next: 6 }));
        assert!(matches!(rooms.push_remote("m-1", 6, frame(6)), Remote::Taken));
        assert!(matches!(rooms.push_remote("m-1", 7, frame(7)), Remote::Taken));
        assert!(matches!(rooms.push_remote("nobody", 1, frame(1)), Remote::Absent));
        assert_eq!(written(&mut rooms, conn), [6, 7]);
        let stats = rooms.stats();
        assert_eq!((stats.rooms, stats.members), (1, 1));
    }

    #[test]
    fn a_mirror_goes_quietly_and_reports_what_was_surely_written() {
        let mut rooms = Rooms::new(RoomsConfig::default());
        let conn = attach_new(&mut rooms, "m-1", 0, &[]);
        let other = attach_new(&mut rooms, "m-2", 0, &[]);
        written(&mut rooms, other);
        for seq in 1..=3 {
            assert!(matches!(rooms.push_remote("m-1", seq, frame(seq)), Remote::Taken));
        }
        // The writer took 1..3 (and the welcome) but its write failed from seq 2 on.
        let outbound = rooms.take_outbound(conn, crate::clock::now());
        let failed_from = outbound.journal_from.map(|first| first + 1);
        let detached = rooms.disconnect_mirrored(conn, failed_from).expect("it served m-1");
        assert_eq!((detached.id.as_str(), detached.written), ("m-1", 1));
        // Nobody else heard of it: Redis decides who left.
        assert!(written(&mut rooms, other).is_empty());
        assert!(matches!(rooms.push_remote("m-1", 4, frame(4)), Remote::Absent));
        assert_eq!(rooms.stats().members, 1);
    }

    #[test]
    fn a_member_resumed_elsewhere_is_closed_here_with_4000_only_on_its_old_connection() {
        let mut rooms = Rooms::new(RoomsConfig::default());
        let conn = attach_new(&mut rooms, "m-1", 0, &[]);
        rooms.kick("m-1", |c| c != conn);
        assert!(rooms.close_requested(conn).is_none(), "another connection's kick changes nothing");
        rooms.kick("m-1", |c| c == conn);
        assert_eq!(rooms.close_requested(conn).map(|c| c.code), Some(close_code::REPLACED));
        assert_eq!(rooms.stats().members, 0);
        assert!(rooms.disconnect_mirrored(conn, None).is_none(), "Redis already moved it");
    }

    fn open_signal(from: &str) -> OpenFrame {
        OpenFrame::from_object(format!(r#"{{"type":"signal","from":"{from}","signal":{{}}}}"#))
    }

    #[test]
    fn cut_off_from_redis_members_here_are_numbered_on_and_redis_numbers_wait_for_the_write_back() {
        let mut rooms = Rooms::new(RoomsConfig::default());
        let ana = attach_new(&mut rooms, "m-1", 0, &[]);
        let bob = attach_new(&mut rooms, "m-2", 0, &[]);
        written(&mut rooms, ana);
        written(&mut rooms, bob);
        assert!(matches!(rooms.push_remote("m-2", 1, frame(1)), Remote::Taken));
        let (ana_id, bob_id) = (PeerId::made_elsewhere("m-1"), PeerId::made_elsewhere("m-2"));
        for _ in 0..3 {
            assert!(rooms.relay_locally(ana, &ana_id, "m-2", open_signal("m-1")).expect("relayed").is_none());
        }
        assert_eq!(written(&mut rooms, bob), [1, 2, 3, 4], "numbered on from Redis' last (1)");
        // Redis' own numbers for bob from 2 on never reached him: they wait for the write-back.
        assert!(matches!(rooms.push_remote("m-2", 2, frame(2)), Remote::Held));
        let refused = rooms.relay_locally(ana, &ana_id, "m-9", open_signal("m-1")).expect_err("elsewhere");
        assert_eq!(refused.code, ErrorCode::ServerBusy);
        let refused = rooms.relay_locally(ana, &ana_id, "m-1", open_signal("m-1")).expect_err("self");
        assert_eq!(refused.code, ErrorCode::UnknownPeer);
        let logs = rooms.seal_local_logs();
        assert_eq!(logs.len(), 1);
        assert_eq!((logs[0].id.as_str(), logs[0].first, logs[0].frames.len()), ("m-2", 2, 3));
        let sealed = rooms.relay_locally(ana, &ana_id, "m-2", open_signal("m-1")).expect_err("sealed");
        assert_eq!(sealed.code, ErrorCode::ServerBusy, "nothing is added to a log being written back");
        rooms.written_back(&bob_id);
        assert!(matches!(rooms.push_remote("m-2", 5, frame(5)), Remote::Taken));
        assert_eq!(written(&mut rooms, bob), [5]);
    }
}
