//! Several instances as one service (`--redis URL`): Redis holds rooms, members, numbers and
//! every member's messages; each instance serves the members connected to it.
//!
//! - Rules that must be decided once (room full, join order, the next seq of a member, who holds
//!   a member) are Lua scripts (`scripts.rs`, `lua/`), atomic in Redis.
//! - Every message for a member is numbered and appended to its stream in Redis by the script
//!   that produced it, then published to the instance the member is connected to, which puts it
//!   in the member's mirror journal (`rooms/mirror.rs`) in number order. A number that arrives
//!   early (a publish was missed) makes the instance read the stream from the number it expects.
//! - A resume on any instance reads the stream after `last_seq`, in the same script that moves
//!   the member there, so nothing is missed or sent twice.
//! - Liveness: every instance beats (a key with a TTL) and sweeps: a dead instance's members go
//!   into grace, expired graces end members (`background.rs`).
//!
//! Without `--redis` none of this exists and nothing goes through Redis.

mod background;
mod pipeline;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::{ErrorCode, PeerInfo, RoomName, ServerMessage, close_code};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc, oneshot};

pub use self::background::start;
use self::scripts::{Scripts, list, number, pairs, text};
use crate::admission::Ticket;
use crate::budget::{RateLimit, SharedBudget, Tokens};
use crate::ids::{IdSource, PeerId, ResumeToken};
use crate::outbox::{Frame, OpenFrame};
use crate::refusal::Refusal;
use crate::rooms::{Attach, CloseRequest, ConnId, Detached, JoinRequest, Joined};
use crate::shards::Placement;
use crate::state::Shared;

/// How long an instance counts as alive after its last heartbeat; it beats every
/// [`BEAT_INTERVAL`], and every live instance sweeps as often, so a dead one is noticed within
/// `HEARTBEAT_TTL + BEAT_INTERVAL` (3.5 s; INTERFACES.md allows 5).
const HEARTBEAT_TTL: Duration = Duration::from_millis(3000);
const BEAT_INTERVAL: Duration = Duration::from_millis(500);

/// One instance's link to the shared state.
pub struct Cluster {
    /// This process's name in Redis, random per start.
    instance: String,
    client: redis::Client,
    redis: ConnectionManager,
    scripts: Scripts,
    ids: IdSource,
    /// The last heartbeat reached Redis (`/healthz`, `switchboard_redis_up`).
    up: AtomicBool,
    relayed: AtomicU64,
    room_size: usize,
    grace: Duration,
    /// Members whose stream must be read from the number they expect (a publish was missed).
    catch_up: Mutex<CatchUp>,
    catch_up_wake: Notify,
    /// Signals on their way into a pipeline (`pipeline.rs`); the receiver goes to its task.
    relays: mpsc::Sender<pipeline::RelayJob>,
    relay_queue: Mutex<Option<mpsc::Receiver<pipeline::RelayJob>>>,
    /// Members whose connection ended here and that Redis holds in grace: they still count
    /// against their client's connection caps here and in `switchboard_rooms`, until Redis says
    /// they resumed or ended (a `k` on the channel) or their grace (and the detection margin)
    /// has surely run out.
    graced: Mutex<HashMap<PeerId, Graced>>,
}

#[derive(Debug)]
struct Graced {
    room: RoomName,
    /// Held only for its count; dropping it releases the place.
    _ticket: Option<Ticket>,
    until: std::time::Instant,
}

#[derive(Default)]
struct CatchUp {
    members: HashMap<PeerId, RoomName>,
    /// Every member served here (after reconnecting to Redis).
    all: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// A budget's tokens as Redis keeps them (read back by [`carried_budget`]).
fn budget_text(tokens: Tokens) -> String {
    format!("{},{},{}", tokens[0], tokens[1], tokens[2])
}

/// A member's budget as the suspend script stored it (`"messages,bytes,refusals"`, the tokens
/// left) and how long ago; `None` if there is none or it does not read as one.
fn carried_budget(stored: &str, age_ms: u64) -> Option<(Tokens, Duration)> {
    let mut tokens = [0.0; 3];
    let mut parts = stored.split(',');
    for slot in &mut tokens {
        *slot = parts.next()?.parse::<f64>().ok().filter(|t| t.is_finite())?;
    }
    parts.next().is_none().then_some((tokens, Duration::from_millis(age_ms)))
}

/// A Redis failure, as a client sees it.
fn busy(error: &dyn std::fmt::Display) -> Refusal {
    tracing::warn!(%error, "Redis call failed");
    Refusal::new(
        ErrorCode::ServerBusy,
        "the service cannot reach its shared state (Redis) right now; try again shortly",
    )
}

impl Cluster {
    /// Connects lazily: the server starts even while Redis is down (and says so on `/healthz`).
    pub fn new(url: &str, room_size: usize, grace: Duration) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let ids = IdSource::with_random_part(12);
        let (relays, relay_queue) = pipeline::channel();
        let instance = ids.next_id().as_str().trim_end_matches("-1").to_owned();
        Ok(Arc::new(Self {
            instance,
            client,
            redis,
            scripts: Scripts::new(),
            ids,
            up: AtomicBool::new(false),
            relayed: AtomicU64::new(0),
            room_size,
            grace,
            catch_up: Mutex::new(CatchUp::default()),
            catch_up_wake: Notify::new(),
            relays,
            relay_queue: Mutex::new(Some(relay_queue)),
            graced: Mutex::new(HashMap::new()),
        }))
    }

    pub fn redis_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn signals_relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Names a connection of this instance in Redis (the `session` of the member on it).
    fn session(&self, conn: ConnId) -> String {
        format!("{}:{conn}", self.instance)
    }

    fn grace_ms(&self) -> u64 {
        u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX)
    }

    /// `join`, fresh or resuming. `authorized`: the room token checked out (or none is needed);
    /// without it only a resume may proceed. Redis is asked from a task of its own, so that a
    /// member Redis took in is always served here or, if the reader stopped waiting (its socket
    /// died), handed back to grace at once.
    pub async fn join(
        self: &Arc<Self>,
        shared: &Shared,
        place: &Placement,
        request: JoinRequest,
        authorized: bool,
    ) -> Result<Joined, Refusal> {
        let conn = place.conn();
        let cap_reached = shared.rooms.lock_for_room(place, &request.room).room_cap_reached(&request.room);
        let (placed_tx, placed) = oneshot::channel();
        let cluster = Arc::clone(self);
        let rate_limit = shared.config.rate_limit;
        shared.tasks.spawn(async move {
            let outcome = cluster.place(conn, request, authorized, cap_reached, rate_limit).await;
            if let Err(Ok(attach)) = placed_tx.send(outcome) {
                let (id, room, written) = (attach.id, attach.room, attach.welcome_seq);
                cluster.suspend(Detached { id, room, conn, written, budget: None, ticket: None }).await;
            }
        });
        let attach = placed.await.unwrap_or_else(|_| Err(busy(&"join interrupted")))?;
        let joined = Joined { id: attach.id.clone(), room: attach.room.clone(), resumed: attach.resumed };
        // No `.await` from here on: the member is served or handed back, whatever the reader does.
        let (id, room, written) = (attach.id.clone(), attach.room.clone(), attach.welcome_seq);
        self.release_graced(id.as_str());
        if shared.rooms.lock_for_room(place, &room).attach(conn, attach) {
            // Messages published before the mirror existed were dropped: read them back.
            self.request_catch_up(&id, &room);
        } else {
            let cluster = Arc::clone(self);
            let detached = Detached { id, room, conn, written, budget: None, ticket: None };
            shared.tasks.spawn(async move { cluster.suspend(detached).await });
        }
        Ok(joined)
    }

    /// Places the member in Redis: resumed if the token is live, else fresh.
    async fn place(
        &self,
        conn: ConnId,
        request: JoinRequest,
        authorized: bool,
        cap_reached: bool,
        rate_limit: Option<RateLimit>,
    ) -> Result<Attach, Refusal> {
        let session = self.session(conn);
        if let Some(token) = &request.resume
            && let Some(attach) =
                self.resume(&request, token, &session, rate_limit).await.map_err(|e| busy(&e))?
        {
            return Ok(attach);
        }
        if !authorized {
            return Err(Refusal::new(ErrorCode::Unauthorized, "a valid room token is required to join"));
        }
        if cap_reached {
            return Err(Refusal::new(
                ErrorCode::ServerBusy,
                "the server is at its room limit; try again later or join an existing room",
            ));
        }
        let id = self.ids.next_id();
        let name = request.name.as_ref().map_or_else(|| id.to_string(), |name| name.as_str().to_owned());
        let token = ResumeToken::fresh().to_string();
        let mut announcement = ServerMessage::PeerJoined {
            peer: PeerInfo { id: id.to_string(), name: name.clone() },
            seq: None,
        }
        .to_json();
        announcement.pop();
        let reply: redis::Value = self
            .scripts
            .join
            .arg(request.room.as_str())
            .arg(id.as_str())
            .arg(&name)
            .arg(&token)
            .arg(&self.instance)
            .arg(&session)
            .arg(self.room_size)
            .arg(announcement)
            .arg(self.grace_ms())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(|e| busy(&e))?;
        let items = list(&reply).map_err(|e| busy(&e))?;
        match items.first().map(text).transpose().map_err(|e| busy(&e))?.as_deref() {
            Some("ok") => {}
            Some("full") => {
                return Err(Refusal::new(
                    ErrorCode::RoomFull,
                    format!("room {} is full ({} members)", request.room, self.room_size),
                ));
            }
            _ => return Err(busy(&"unexpected join reply")),
        }
        let peers = items.get(1).map(pairs).transpose().map_err(|e| busy(&e))?.unwrap_or_default();
        Ok(Attach {
            id,
            room: request.room,
            peers: peers.into_iter().map(|(id, name)| PeerInfo { id, name }).collect(),
            resume_token: token,
            resumed: false,
            welcome_seq: 0,
            backlog: Vec::new(),
            budget: None,
        })
    }

    /// Moves a member to this connection if the token is live, with every message after
    /// `last_seq`. `None`: join fresh (unknown token, or the messages are no longer held, in
    /// which case the old member has ended).
    async fn resume(
        &self,
        request: &JoinRequest,
        token: &str,
        session: &str,
        rate_limit: Option<RateLimit>,
    ) -> anyhow::Result<Option<Attach>> {
        let new_token = ResumeToken::fresh().to_string();
        let reply: redis::Value = self
            .scripts
            .resume
            .arg(request.room.as_str())
            .arg(token)
            .arg(request.last_seq.map(|n| n.to_string()).unwrap_or_default())
            .arg(&self.instance)
            .arg(session)
            .arg(&new_token)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let items = list(&reply)?;
        match items.first().map(text).transpose()?.as_deref() {
            Some("ok") => {}
            Some("trimmed") => {
                tracing::info!(last_seq = ?request.last_seq, "resume refused: messages after last_seq no longer held");
                return Ok(None);
            }
            _ => return Ok(None),
        }
        let field = |n: usize| items.get(n).ok_or_else(|| anyhow::anyhow!("short resume reply"));
        let id = PeerId::made_elsewhere(&text(field(1)?)?);
        let welcome_seq = number(field(3)?)?;
        let peers = pairs(field(4)?)?.into_iter().map(|(id, name)| PeerInfo { id, name }).collect();
        let backlog = list(field(5)?)?.iter().map(|v| text(v).map(Frame::from)).collect::<Result<_, _>>()?;
        let budget = carried_budget(&text(field(6)?)?, number(field(7)?)?)
            .map(|(tokens, age)| SharedBudget::resumed(rate_limit, tokens, age, crate::clock::now()));
        Ok(Some(Attach {
            id,
            room: request.room.clone(),
            peers,
            resume_token: new_token,
            resumed: true,
            welcome_seq,
            backlog,
            budget,
        }))
    }

    /// Relays a signal frame (`open`: the JSON object without its closing brace, no seq) from the
    /// member on `conn` to `to`.
    ///
    /// While Redis is unreachable, a signal between two members connected here is relayed here
    /// (`Rooms::relay_locally`) and written back to Redis when it returns (`background.rs`).
    pub async fn relay(
        self: &Arc<Self>,
        shared: &Shared,
        conn: ConnId,
        room: &RoomName,
        from: &PeerId,
        to: &str,
        open: String,
    ) -> Result<(), Refusal> {
        if !self.redis_up() {
            let mut frame = OpenFrame::with_capacity(open.len());
            frame.push_str(&open);
            let detached = shared.rooms.lock_room(room).relay_locally(conn, from, to, frame)?;
            if let Some(detached) = detached {
                let cluster = Arc::clone(self);
                shared.tasks.spawn(async move { cluster.suspend(detached).await });
            }
            return Ok(());
        }
        let (answer, answered) = oneshot::channel();
        let args =
            [room.as_str().to_owned(), from.as_str().to_owned(), self.session(conn), to.to_owned(), open];
        let result = match self.relays.try_send(pipeline::RelayJob { args, answer }) {
            Ok(()) => answered.await.unwrap_or_else(|_| Err("relay pipeline stopped".into())),
            Err(_) => Err(format!("more than {} signals waiting for Redis", pipeline::QUEUE)),
        };
        match result {
            Ok(seq) if seq > 0 => {
                self.relayed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(-1) => {
                Err(Refusal::new(ErrorCode::NotJoined, "this connection no longer holds its membership")
                    .about_signal_to(Some(to)))
            }
            Ok(_) => Err(Refusal::new(ErrorCode::UnknownPeer, format!("no peer {to:?} in your room"))
                .about_signal_to(Some(to))),
            Err(error) => Err(busy(&error).about_signal_to(Some(to))),
        }
    }

    /// `leave`: the member ends in Redis (the others get `peer_left`) and its connection closes
    /// with 1000. If Redis cannot be told now, the member is dropped here and Redis ends it
    /// after grace (the reconciliation after the outage puts it there).
    pub async fn leave(&self, shared: &Shared, place: &Placement, room: &RoomName, id: &PeerId) {
        let conn = place.conn();
        let result: Result<i64, _> = self
            .scripts
            .leave
            .arg(room.as_str())
            .arg(id.as_str())
            .arg(self.session(conn))
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, peer = %id, "leave not recorded in Redis; the member ends after grace");
        }
        let mut rooms = shared.rooms.lock(place);
        rooms.detach(conn, None);
        rooms.close(conn, CloseRequest::new(close_code::NORMAL, "left"));
    }

    /// The connection is gone (its drop guard): the mirror goes, Redis holds the member in grace.
    pub fn disconnect(self: &Arc<Self>, shared: &Shared, place: &Placement, unwritten_from: Option<u64>) {
        let detached = shared.rooms.lock(place).disconnect_mirrored(place.conn(), unwritten_from);
        if let Some(detached) = detached {
            let cluster = Arc::clone(self);
            shared.tasks.spawn(async move { cluster.suspend(detached).await });
        }
    }

    /// Stores what is left of a member's rate budget, so that a resume on any instance goes on
    /// with it (PROTOCOL.md: a resume continues the member's budget). Called when the member
    /// goes over budget; its connection's end stores it too (`suspend`).
    pub async fn store_budget(&self, conn: ConnId, room: &RoomName, id: &PeerId, tokens: Option<Tokens>) {
        let Some(tokens) = tokens.filter(|_| self.redis_up()) else { return };
        let result: Result<i64, _> = self
            .scripts
            .budget
            .arg(room.as_str())
            .arg(id.as_str())
            .arg(self.session(conn))
            .arg(budget_text(tokens))
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, peer = %id, "could not store the member's rate budget in Redis");
        }
    }

    /// Tells Redis that a member's connection ended without `leave`.
    async fn suspend(&self, mut detached: Detached) {
        // Kept before Redis is told, so that the `k` of a resume elsewhere always finds it.
        let until = crate::clock::now() + self.grace + HEARTBEAT_TTL + BEAT_INTERVAL;
        let graced = Graced { room: detached.room.clone(), _ticket: detached.ticket.take(), until };
        self.graced.lock().unwrap_or_else(PoisonError::into_inner).insert(detached.id.clone(), graced);
        let result: Result<i64, _> = self
            .scripts
            .suspend
            .arg(detached.room.as_str())
            .arg(detached.id.as_str())
            .arg(self.session(detached.conn))
            .arg(detached.written)
            .arg(self.grace_ms())
            .arg(detached.budget.map(budget_text).unwrap_or_default())
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(error) = result {
            // The reconciliation after the outage puts it in grace.
            tracing::warn!(%error, peer = %detached.id, "could not put the member in grace in Redis");
        }
    }

    /// The member resumed or ended (Redis says so): it no longer counts here.
    fn release_graced(&self, id: &str) {
        self.graced.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    /// Drops what surely ended without word from Redis (a lost `k`, Redis restarted).
    fn expire_graced(&self) {
        let now = crate::clock::now();
        self.graced.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, g| g.until > now);
    }

    /// Rooms this instance counts only because a member that left it is in grace (for
    /// `switchboard_rooms`: a room with a member connected to or in grace on this instance).
    pub fn rooms_in_grace_only(&self, shared: &Shared) -> usize {
        let rooms: std::collections::HashSet<RoomName> = self
            .graced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|g| g.room.clone())
            .collect();
        rooms.into_iter().filter(|room| !shared.rooms.lock_room(room).serves_room(room)).count()
    }

    fn request_catch_up(&self, id: &PeerId, room: &RoomName) {
        self.catch_up.lock().unwrap_or_else(PoisonError::into_inner).members.insert(id.clone(), room.clone());
        self.catch_up_wake.notify_one();
    }

    fn request_catch_up_all(&self) {
        self.catch_up.lock().unwrap_or_else(PoisonError::into_inner).all = true;
        self.catch_up_wake.notify_one();
    }
}
