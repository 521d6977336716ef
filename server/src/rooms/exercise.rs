//! Drives [`Rooms`] with an arbitrary sequence of operations decoded from bytes, checking its
//! invariants after every step and its delivery guarantees at the end. Shared by the property
//! test (CI) and the cargo-fuzz target (`fuzz/`), so both explore the same state machine.
//!
//! Sequence numbers: the harness handles every frame it takes, resumes with `last_seq` (exact,
//! lagging, or absent as a v1 client), and checks that every member sees 1, 2, 3, ... with no
//! gap, duplicate or reordering across all of that.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{DisplayName, RoomName};
use tokio::sync::Notify;

use super::{Bound, ConnId, JoinRequest, Rooms, RoomsConfig};
use crate::ids::PeerId;
use crate::outbox::OpenFrame;

const ROOM_NAMES: [&str; 3] = ["a", "b", "c"];

/// One step, decoded from bytes.
/// What a resuming join says it handled.
#[derive(Debug, Clone, Copy)]
enum LastSeq {
    /// A v1 client: no `last_seq`.
    Absent,
    /// Exactly what it handled.
    Handled,
    /// Less than it handled (it asks for some messages again).
    Behind(u64),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Connect,
    Join { conn: u8, room: u8, resume: Option<u8>, last_seq: LastSeq },
    Relay { conn: u8, to: u8 },
    Leave { conn: u8 },
    Disconnect { conn: u8 },
    Drain { conn: u8 },
    Advance { millis: u16 },
}

fn decode(bytes: &[u8]) -> Vec<Op> {
    bytes
        .chunks(3)
        .map(|chunk| {
            let [kind, a, b] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            match kind % 8 {
                0 | 1 => Op::Connect,
                2 => Op::Join {
                    conn: a,
                    room: b % 4,
                    resume: (b >= 128).then_some(b),
                    last_seq: match (kind / 8) % 4 {
                        0 => LastSeq::Absent,
                        1 => LastSeq::Handled,
                        n => LastSeq::Behind(u64::from(n) * 2 - 3),
                    },
                },
                3 | 4 => Op::Relay { conn: a, to: b },
                5 => Op::Leave { conn: a },
                6 => Op::Disconnect { conn: a },
                _ if a % 2 == 0 => Op::Drain { conn: b },
                _ => Op::Advance { millis: u16::from(b) * 8 },
            }
        })
        .collect()
}

/// What the harness remembers, to check what `Rooms` delivers.
struct World {
    rooms: Rooms,
    now: Instant,
    conns: Vec<ConnId>,
    /// Every member id seen, and its latest resume token.
    members: Vec<(PeerId, String)>,
    /// The member each connection joined as.
    joined: HashMap<ConnId, PeerId>,
    /// For each (sender, receiver): the sequence number of the last signal the receiver got.
    last_seen: HashMap<(String, String), u64>,
    next_sequence: u64,
    /// For each member: the highest `seq` handled.
    handled: HashMap<PeerId, u64>,
    /// The `last_seq` each connection's resume asked with (the welcome is checked against it).
    asked: HashMap<ConnId, Option<u64>>,
    /// Every numbered message each member was sent, by number.
    numbered: HashMap<(PeerId, u64), String>,
}

impl World {
    fn conn(&self, index: u8) -> Option<ConnId> {
        (!self.conns.is_empty()).then(|| self.conns[index as usize % self.conns.len()])
    }

    fn take(&mut self, conn: ConnId) -> Result<(), String> {
        let Some(receiver) = self.joined.get(&conn).cloned() else {
            self.rooms.take_outbound(conn, self.now);
            return Ok(());
        };
        for frame in self.rooms.take_outbound(conn, self.now).frames {
            let message: serde_json::Value =
                serde_json::from_str(frame.as_str()).map_err(|e| format!("a frame is not JSON: {e}"))?;
            if let Some(welcome_token) = message["resume_token"].as_str() {
                self.remember_token(&receiver, welcome_token);
                self.check_welcome(conn, &receiver, &message)?;
            }
            if let Some(seq) = message["seq"].as_u64()
                && message["type"] != "welcome"
            {
                let handled = self.handled.entry(receiver.clone()).or_insert(0);
                if seq != *handled + 1 {
                    return Err(format!("{receiver} got seq {seq} after handling {handled}: {message}"));
                }
                *handled = seq;
                // A number is never reused: a message asked for again (a lagging last_seq) is
                // the very message first delivered under it.
                match self.numbered.entry((receiver.clone(), seq)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        if first.get() != frame.as_str() {
                            return Err(format!(
                                "seq {seq} of {receiver} was {} and now {frame}",
                                first.get()
                            ));
                        }
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(frame.as_str().to_owned());
                    }
                }
            }
            if message["type"] != "signal" {
                continue;
            }
            let from = message["from"].as_str().unwrap_or_default().to_owned();
            let sequence = message["signal"]["n"].as_u64().ok_or("a signal without its number")?;
            let last = self.last_seen.entry((from.clone(), receiver.to_string())).or_insert(0);
            if sequence <= *last {
                return Err(format!(
                    "{receiver} got {sequence} from {from} after {last}: reordered or duplicated"
                ));
            }
            *last = sequence;
        }
        Ok(())
    }

    /// A fresh welcome starts at 0; a resumed one at exactly what the resume said it handled
    /// (or, for a v1 resume, at what it really handled: nothing taken was lost).
    fn check_welcome(
        &mut self,
        conn: ConnId,
        id: &PeerId,
        welcome: &serde_json::Value,
    ) -> Result<(), String> {
        let seq = welcome["seq"].as_u64().ok_or("a welcome without seq")?;
        let asked = self.asked.remove(&conn).flatten();
        let expected = match welcome["resumed"].as_bool() {
            Some(true) => asked.unwrap_or_else(|| self.handled.get(id).copied().unwrap_or(0)),
            _ => 0,
        };
        if seq != expected {
            return Err(format!("{id}'s welcome has seq {seq}, expected {expected}: {welcome}"));
        }
        self.handled.insert(id.clone(), seq);
        Ok(())
    }

    fn remember_token(&mut self, id: &PeerId, token: &str) {
        match self.members.iter_mut().find(|(known, _)| known == id) {
            Some(entry) => entry.1 = token.to_owned(),
            None => self.members.push((id.clone(), token.to_owned())),
        }
    }

    fn step(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Connect if self.conns.len() < 32 => {
                self.conns.push(self.rooms.connect(Arc::new(Notify::new())))
            }
            Op::Connect => {}
            Op::Join { conn, room, resume, last_seq } => {
                let Some(conn) = self.conn(conn) else { return Ok(()) };
                let resumed_member = resume.and_then(|i| {
                    (!self.members.is_empty()).then(|| self.members[i as usize % self.members.len()].clone())
                });
                let last_seq = resumed_member.as_ref().and_then(|(id, _)| {
                    let handled = self.handled.get(id).copied().unwrap_or(0);
                    match last_seq {
                        LastSeq::Absent => None,
                        LastSeq::Handled => Some(handled),
                        LastSeq::Behind(lag) => Some(handled.saturating_sub(lag)),
                    }
                });
                let resume = resumed_member.map(|(_, token)| token);
                let room = ROOM_NAMES.get(room as usize).copied().unwrap_or("a");
                let request = JoinRequest {
                    room: RoomName::parse(room).map_err(|e| e.to_string())?,
                    name: DisplayName::parse("x").ok(),
                    resume,
                    last_seq,
                };
                if let Ok(joined) = self.rooms.join(conn, request, self.now) {
                    self.asked.insert(conn, last_seq);
                    self.joined.insert(conn, joined.id.clone());
                    // The welcome (with the new token) is read on the next drain.
                    self.take(conn)?;
                }
            }
            Op::Relay { conn, to } => {
                let Some(conn) = self.conn(conn) else { return Ok(()) };
                let Some(from) = self.joined.get(&conn).cloned() else { return Ok(()) };
                if self.members.is_empty() {
                    return Ok(());
                }
                let to = self.members[to as usize % self.members.len()].0.clone();
                self.next_sequence += 1;
                let frame = OpenFrame::from_object(format!(
                    r#"{{"type":"signal","from":"{from}","signal":{{"n":{}}}}}"#,
                    self.next_sequence
                ));
                let _ = self.rooms.relay(conn, &from, to.as_str(), frame, self.now);
            }
            Op::Leave { conn } => {
                if let Some(conn) = self.conn(conn) {
                    let _ = self.rooms.leave(conn, self.now);
                }
            }
            Op::Disconnect { conn } => {
                if let Some(conn) = self.conn(conn) {
                    self.rooms.disconnect(conn, self.now, None);
                    self.conns.retain(|c| *c != conn);
                    self.joined.remove(&conn);
                }
            }
            Op::Drain { conn } => {
                if let Some(conn) = self.conn(conn) {
                    self.take(conn)?;
                }
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(millis));
                self.rooms.expire(self.now);
            }
        }
        self.rooms.check_invariants()
    }
}

/// Runs the operations `bytes` decode to. `Err` says which guarantee broke.
pub fn run(bytes: &[u8]) -> Result<(), String> {
    let config = RoomsConfig {
        room_size: 4,
        max_rooms: 2,
        resume_grace: Duration::from_millis(500),
        outbox: Bound { frames: 6, bytes: 4096 },
        ..RoomsConfig::default()
    };
    let mut world = World {
        rooms: Rooms::new(config),
        now: Instant::now(),
        conns: Vec::new(),
        members: Vec::new(),
        joined: HashMap::new(),
        last_seen: HashMap::new(),
        next_sequence: 0,
        handled: HashMap::new(),
        asked: HashMap::new(),
        numbered: HashMap::new(),
    };
    for op in decode(bytes) {
        world.step(op)?;
    }
    // Everyone goes away and every grace runs out: nothing may be left behind.
    for conn in std::mem::take(&mut world.conns) {
        world.take(conn)?;
        world.rooms.disconnect(conn, world.now, None);
    }
    world.rooms.expire(world.now + Duration::from_secs(3600));
    world.rooms.check_invariants()?;
    let stats = world.rooms.stats();
    if stats.members != 0 || stats.rooms != 0 || stats.connections != 0 || stats.queued_bytes != 0 {
        return Err(format!("left behind after everyone went away: {stats:?}"));
    }
    Ok(())
}
