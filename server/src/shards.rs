//! The rooms, split into shards so that rooms on different shards never wait for each other.
//!
//! A room lives in one shard, chosen by a keyed hash of its name, with its members, their
//! journals and their connections: everything a signal touches (the sender's connection, the
//! target member, its connection) is in the sender's room, so a relay takes exactly one shard's
//! lock. What must hold for the whole server is shared without a lock: ids come from shared
//! counters, and the room cap and the queued-bytes bound are atomics ([`Rooms::sibling`]).
//!
//! A connection starts in a shard of its own (round robin) and moves, still unjoined, to its
//! room's shard when it sends `join` ([`Shards::lock_for_room`]); once joined it stays there. Its
//! [`Placement`] says where it is: written only while both shards' locks are held, read before
//! taking a lock and checked again once it is held, so a writer that raced with the move simply
//! looks again.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use protocol::RoomName;
use tokio::sync::Notify;

use crate::ids::PeerId;
use crate::outbox::OpenFrame;
use crate::refusal::Refusal;
use crate::rooms::{ConnId, NotRelayed, Rooms, RoomsConfig, Stats};

#[derive(Debug)]
pub struct Shards {
    shards: Box<[Mutex<Rooms>]>,
    /// Room names are chosen by clients; a keyed hash keeps them from steering rooms into one
    /// shard on purpose.
    hasher: std::collections::hash_map::RandomState,
    /// Where the next connection starts.
    next: AtomicUsize,
}

/// Where one connection's record lives. Owned by the connection's task.
#[derive(Debug)]
pub struct Placement {
    conn: ConnId,
    shard: AtomicUsize,
}

impl Placement {
    pub fn conn(&self) -> ConnId {
        self.conn
    }
}

impl Shards {
    /// `count` shards (at least one).
    pub fn new(config: RoomsConfig, count: usize) -> Self {
        let first = Rooms::new(config);
        let mut shards = Vec::with_capacity(count.max(1));
        for _ in 1..count.max(1) {
            shards.push(Mutex::new(first.sibling()));
        }
        shards.insert(0, Mutex::new(first));
        Self {
            shards: shards.into_boxed_slice(),
            hasher: std::collections::hash_map::RandomState::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Enough shards that the cores rarely meet on one: four per core.
    pub fn for_this_machine(config: RoomsConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(config, (cores * 4).next_power_of_two().min(256))
    }

    /// Registers a new connection in a shard of its own; `wake` is notified whenever it has
    /// something to write.
    pub fn connect(&self, wake: Arc<Notify>) -> Placement {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let conn = self.lock_index(shard).connect(wake);
        Placement { conn, shard: AtomicUsize::new(shard) }
    }

    /// The shard `placement`'s connection is in, locked. Never hold it across an `.await`.
    pub fn lock(&self, placement: &Placement) -> MutexGuard<'_, Rooms> {
        loop {
            let shard = placement.shard.load(Ordering::Acquire);
            let rooms = self.lock_index(shard);
            // Moved while we waited for the lock: look again.
            if placement.shard.load(Ordering::Acquire) == shard {
                return rooms;
            }
        }
    }

    /// The shard of `room`, locked, with `placement`'s connection moved into it if it has not
    /// joined yet (a joined connection stays where it is, and the rules there refuse the join).
    pub fn lock_for_room(&self, placement: &Placement, room: &RoomName) -> MutexGuard<'_, Rooms> {
        let target = self.shard_of(room);
        loop {
            let current = placement.shard.load(Ordering::Acquire);
            if current == target {
                let rooms = self.lock_index(target);
                if placement.shard.load(Ordering::Acquire) == target {
                    return rooms;
                }
                continue;
            }
            // Two locks: always the lower index first, so two moves cannot deadlock.
            let (mut from, mut to) = if current < target {
                let from = self.lock_index(current);
                (from, self.lock_index(target))
            } else {
                let to = self.lock_index(target);
                (self.lock_index(current), to)
            };
            if placement.shard.load(Ordering::Acquire) != current {
                continue;
            }
            let Some(moving) = from.release_conn(placement.conn, &mut to) else {
                drop(to);
                return from;
            };
            to.adopt_conn(placement.conn, moving);
            placement.shard.store(target, Ordering::Release);
            drop(from);
            return to;
        }
    }

    /// Relays a signal from `placement`'s member (see [`Rooms::relay`]). When the server-wide
    /// queue bound is all that stops it, the other shards give up retained messages (written,
    /// kept only for a resume with `last_seq`) for it, one shard at a time and never two locks at
    /// once, before it is refused with `server_busy`: retained messages anywhere give way to
    /// undelivered ones, as with one lock for all rooms.
    pub fn relay(
        &self,
        placement: &Placement,
        from: &PeerId,
        to: &str,
        frame: OpenFrame,
        now: Instant,
    ) -> Result<(), Refusal> {
        let tried = self.lock(placement).try_relay(placement.conn(), from, to, frame, now);
        let full = match tried {
            Ok(()) => return Ok(()),
            Err(NotRelayed::Full(full)) => full,
            Err(refused) => return Err(refused.into_refusal(to)),
        };
        let here = placement.shard.load(Ordering::Acquire);
        for shard in (0..self.shards.len()).filter(|&shard| shard != here) {
            if self.lock_index(shard).make_room(full.size, full.room_left) {
                break;
            }
        }
        // Numbered now, under the lock again: the target may have been sent more meanwhile.
        self.lock(placement).relay(placement.conn(), from, to, full.frame, now)
    }

    /// The shard of `room`, locked (with `--redis`, to reach a member served here by its room).
    pub fn lock_room(&self, room: &RoomName) -> MutexGuard<'_, Rooms> {
        self.lock_index(self.shard_of(room))
    }

    /// Runs `visit` on every shard in turn, each locked while it runs.
    pub fn for_each(&self, mut visit: impl FnMut(&mut Rooms)) {
        for shard in 0..self.shards.len() {
            visit(&mut self.lock_index(shard));
        }
    }

    /// Wakes every connection's writer, one shard at a time: at shutdown, so that each sees it
    /// and sends its close.
    pub fn wake_all(&self) {
        for shard in 0..self.shards.len() {
            self.lock_index(shard).wake_all();
        }
    }

    /// Ends expired members and trims retention, one shard at a time.
    pub fn expire(&self, now: Instant) {
        for shard in 0..self.shards.len() {
            self.lock_index(shard).expire(now);
        }
    }

    /// The whole server's figures, one shard at a time (no moment holds every lock).
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for shard in 0..self.shards.len() {
            let stats = self.lock_index(shard).stats();
            total.connections += stats.connections;
            total.rooms += stats.rooms;
            total.members += stats.members;
            total.suspended_members += stats.suspended_members;
            total.signals_relayed += stats.signals_relayed;
            // Already server-wide (one atomic); the latest reading.
            total.queued_bytes = stats.queued_bytes;
        }
        total
    }

    fn shard_of(&self, room: &RoomName) -> usize {
        (self.hasher.hash_one(room.as_str()) % self.shards.len() as u64) as usize
    }

    fn lock_index(&self, shard: usize) -> MutexGuard<'_, Rooms> {
        // The rules never leave Rooms half-updated on panic paths we know of; keep serving.
        self.shards[shard].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::JoinRequest;
    use protocol::ErrorCode;

    fn join_request(room: &str) -> JoinRequest {
        JoinRequest { room: RoomName::parse(room).expect("valid"), name: None, resume: None, last_seq: None }
    }

    fn texts(shards: &Shards, placement: &Placement) -> Vec<String> {
        let outbound = shards.lock(placement).take_outbound(placement.conn(), crate::clock::now());
        outbound.frames.iter().map(|f| f.as_str().to_owned()).collect()
    }

    /// Room names that land in different shards.
    fn rooms_on_two_shards(shards: &Shards) -> (RoomName, RoomName) {
        let first = RoomName::parse("r0").expect("valid");
        let other = (1..1000)
            .map(|n| RoomName::parse(&format!("r{n}")).expect("valid"))
            .find(|room| shards.shard_of(room) != shards.shard_of(&first))
            .expect("some name hashes elsewhere");
        (first, other)
    }

    #[test]
    fn a_connection_moves_to_its_rooms_shard_on_join_and_relays_there() {
        let shards = Shards::new(RoomsConfig::default(), 8);
        let now = crate::clock::now();
        let (room, _) = rooms_on_two_shards(&shards);
        let mut joined = Vec::new();
        for _ in 0..2 {
            let placement = shards.connect(Arc::new(Notify::new()));
            // Errors before the join are queued where the connection starts, and move with it.
            let refusal = crate::refusal::Refusal::new(ErrorCode::NotJoined, "join first");
            shards.lock(&placement).refuse(placement.conn(), &refusal, now);
            let id = shards
                .lock_for_room(&placement, &room)
                .join(placement.conn(), join_request(room.as_str()), now)
                .expect("joins")
                .id;
            assert_eq!(placement.shard.load(Ordering::Relaxed), shards.shard_of(&room));
            let written = texts(&shards, &placement);
            assert!(written[0].contains("not_joined") && written[1].contains("welcome"), "{written:?}");
            joined.push((placement, id));
        }
        let [(ana, ana_id), (bob, _)] = &joined[..] else { unreachable!() };
        let mut frame = OpenFrame::with_capacity(64);
        frame.push_str(r#"{"type":"signal","from":"ana","signal":{}"#);
        let bob_id = joined[1].1.clone();
        shards.lock(ana).relay(ana.conn(), ana_id, bob_id.as_str(), frame, now).expect("relayed");
        let written = texts(&shards, bob);
        assert!(written.iter().any(|t| t.contains(r#""signal":{},"seq":1"#)), "{written:?}");
        assert_eq!(shards.stats().signals_relayed, 1);
        for shard in shards.shards.iter() {
            shard.lock().expect("lock").check_invariants().expect("consistent");
        }
    }

    #[test]
    fn the_room_cap_and_the_queue_bound_hold_across_shards() {
        let config = RoomsConfig { max_rooms: 1, ..RoomsConfig::default() };
        let shards = Shards::new(config, 8);
        let now = crate::clock::now();
        let (first, other) = rooms_on_two_shards(&shards);
        let a = shards.connect(Arc::new(Notify::new()));
        shards.lock_for_room(&a, &first).join(a.conn(), join_request(first.as_str()), now).expect("joins");
        let b = shards.connect(Arc::new(Notify::new()));
        let refused = shards.lock_for_room(&b, &other).join(b.conn(), join_request(other.as_str()), now);
        assert_eq!(refused.map(|_| ()).expect_err("over the cap").code, ErrorCode::ServerBusy);
        let stats = shards.stats();
        assert_eq!((stats.rooms, stats.members, stats.connections), (1, 1, 2));
        // The welcome queued in one shard counts in the total every shard reads.
        assert!(stats.queued_bytes > 0);
        assert_eq!(shards.lock(&a).stats().queued_bytes, shards.lock(&b).stats().queued_bytes);
        // Leaving frees the room for a join on another shard.
        shards.lock(&a).leave(a.conn(), now).expect("left");
        shards.lock_for_room(&b, &other).join(b.conn(), join_request(other.as_str()), now).expect("joins");
    }

    /// A signal of about `len` bytes (before its number).
    fn signal_of(len: usize) -> OpenFrame {
        let mut frame = OpenFrame::with_capacity(len + 64);
        frame.push_str(r#"{"type":"signal","from":"x","signal":{"sdp":""#);
        frame.push_str(&"s".repeat(len));
        frame.push_str(r#""}"#);
        frame
    }

    #[test]
    fn retained_messages_in_other_shards_give_way_to_a_reader_at_the_queue_bound() {
        const BOUND: usize = 64 * 1024;
        let shards = Shards::new(RoomsConfig { max_queued_bytes: BOUND, ..RoomsConfig::default() }, 8);
        let now = crate::clock::now();
        let (busy, quiet) = rooms_on_two_shards(&shards);
        let join = |room: &RoomName| {
            let placement = shards.connect(Arc::new(Notify::new()));
            let id = shards
                .lock_for_room(&placement, room)
                .join(placement.conn(), join_request(room.as_str()), now)
                .expect("joins")
                .id;
            (placement, id)
        };
        // In one shard, bob reads every offer ana sends him: written, and retained for a resume
        // with `last_seq`, until the retained bytes nearly fill the server-wide bound.
        let (ana, ana_id) = join(&busy);
        let (bob, bob_id) = join(&busy);
        while shards.stats().queued_bytes < BOUND - 2048 {
            shards.relay(&ana, &ana_id, bob_id.as_str(), signal_of(1000), now).expect("room for it");
            texts(&shards, &bob);
            texts(&shards, &bob); // the previous batch is written: nothing in flight any more
        }
        texts(&shards, &ana);
        let retained = shards.stats().queued_bytes;
        // In another shard, dan reads his socket; cy sends him 4 KiB, which does not fit.
        let (cy, cy_id) = join(&quiet);
        let (dan, dan_id) = join(&quiet);
        texts(&shards, &cy);
        texts(&shards, &dan);
        // That shard alone has nothing of its own to give up: it would refuse.
        let alone = shards.lock(&cy).relay(cy.conn(), &cy_id, dan_id.as_str(), signal_of(4096), now);
        assert_eq!(alone.expect_err("over the bound").code, ErrorCode::ServerBusy);
        // The server as a whole has bob's retained messages to give up, and does.
        shards.relay(&cy, &cy_id, dan_id.as_str(), signal_of(4096), now).expect("relayed");
        let written = texts(&shards, &dan);
        assert!(written.iter().any(|t| t.contains(r#""type":"signal""#)), "{written:?}");
        let stats = shards.stats();
        assert!(stats.queued_bytes <= BOUND, "{} queued, bound {BOUND}", stats.queued_bytes);
        assert!(stats.queued_bytes < retained, "bob's retained messages were evicted");
        for shard in shards.shards.iter() {
            shard.lock().expect("lock").check_invariants().expect("consistent");
        }
    }
}
