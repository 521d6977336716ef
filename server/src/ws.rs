//! One WebSocket connection: a read loop that parses, budgets and hands requests to [`Rooms`],
//! and a write loop that writes what [`Rooms`] queued for it. Neither holds any protocol state
//! beyond what a single connection needs; the rules live in `rooms.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use std::future::poll_fn;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use protocol::{ErrorCode, RoomName, close_code};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::sync::Notify;
use tokio::time::{Duration, timeout};
use tracing::Instrument;

use crate::admission::Ticket;
use crate::budget::{SharedBudget, Verdict};
use crate::grant;
use crate::ids::PeerId;
use crate::inbound::{self, Request};
use crate::outbox::OpenFrame;
use crate::refusal::Refusal;
use crate::rooms::{CloseRequest, JoinRequest, Outbound, Rooms};
use crate::shards::Placement;
use crate::socket::Socket;
use crate::state::Shared;

/// A relayed signal: these around the sender's id, then the signal's text, then its number.
const SIGNAL_FROM: &str = r#"{"type":"signal","from":""#;
const SIGNAL_BODY: &str = r#"","signal":"#;
const SIGNAL_HEAD_LEN: usize = SIGNAL_FROM.len() + SIGNAL_BODY.len();

/// Writes `{"type":"signal","from":"<id>","signal":` for the sender `from`. Ids are made of
/// letters, digits and '-' (ids.rs) and go into the JSON as they are; one read back from shared
/// state that is not (only if that state was tampered with) is escaped.
fn push_signal_head(mut push: impl FnMut(&str), from: &PeerId) {
    let id = from.as_str();
    if id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        push(SIGNAL_FROM);
        push(id);
        push(SIGNAL_BODY);
    } else {
        push(r#"{"type":"signal","from":"#);
        push(&serde_json::to_string(id).unwrap_or_default());
        push(r#","signal":"#);
    }
}

/// How long the writer may take to deliver a close frame before the socket is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves one upgraded connection until it ends, whichever side ends it.
///
/// An idle connection holds this future for its whole life, so its size is most of what an idle
/// connection costs (docs/benchmarks.md, "What an idle joined connection holds"). Hence: not an
/// `async fn` but an `async move` block, whose captures are used in place (an `async fn` keeps
/// each argument twice, as the argument and as the local it is moved into); the reader and the
/// writer borrow what they share (the socket included: [`SharedSocket`]); and the states few
/// connections reach (closing, `--redis` requests) are boxed while they last.
pub fn serve(socket: Socket, shared: Arc<Shared>, ticket: Ticket) -> impl Future<Output = ()> + Send {
    let wake = Arc::new(Notify::new());
    let place = shared.rooms.connect(Arc::clone(&wake));
    shared.rooms.lock(&place).hold_ticket(place.conn(), ticket);
    let span = tracing::info_span!("conn", conn = %place.conn());
    let socket = SharedSocket(Mutex::new(socket));
    let connection = Connection {
        shared,
        place,
        wake,
        unconfirmed: AtomicU64::new(Connection::NONE),
        ping_due: AtomicBool::new(false),
    };
    async move {
        let (connection, socket) = (&connection, &socket);
        // Whatever path ends this function, the connection's membership is suspended (or
        // dropped, if it never joined) exactly once.
        let _membership = DisconnectOnDrop(connection);
        let ended = {
            let mut reader = Reader::new(connection);
            let reader = reader.run(socket);
            let writer = write_loop(socket, connection);
            tokio::pin!(reader, writer);
            tokio::select! {
                end = &mut reader => match end {
                    ReadEnd::Gone => WriteEnd::Dropped,
                    // The reader asked for a close: let the writer finish what is queued and
                    // send the close frame.
                    ReadEnd::Closing => Box::pin(timeout(CLOSE_WRITE_TIMEOUT * 2, &mut writer))
                        .await
                        .unwrap_or(WriteEnd::Dropped),
                },
                end = &mut writer => end,
            }
        };
        if ended == WriteEnd::CloseSent {
            // Closing handshake: read on until the client's close, so that unread input does
            // not make the kernel reset the connection before the client reads our close frame.
            let _ = timeout(CLOSE_WRITE_TIMEOUT, async {
                while let Some(Ok(message)) = poll_fn(|cx| socket.poll_next(cx)).await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        tracing::debug!("connection ended");
    }
    .instrument(span)
}

/// What the reader and the writer of one connection share; owned by the connection's task.
#[derive(Debug)]
struct Connection {
    shared: Arc<Shared>,
    place: Placement,
    /// Notified whenever the rooms queue something for this connection, a ping is due, or the
    /// server shuts down.
    wake: Arc<Notify>,
    /// The journal position of the batch the writer is writing, until its flush succeeds. If
    /// the connection ends first, however it ends, that batch did not surely get out.
    unconfirmed: AtomicU64,
    /// Set by the reader's timer (one timer serves the idle deadline and the pings): the writer
    /// sends a ping with its next batch.
    ping_due: AtomicBool,
}

impl Connection {
    const NONE: u64 = u64::MAX;

    fn set_unconfirmed(&self, position: Option<u64>) {
        self.unconfirmed.store(position.unwrap_or(Self::NONE), Ordering::Relaxed);
    }

    fn unconfirmed(&self) -> Option<u64> {
        Some(self.unconfirmed.load(Ordering::Relaxed)).filter(|p| *p != Self::NONE)
    }
}

fn is_leave(message: &Message) -> bool {
    matches!(message, Message::Text(text) if matches!(inbound::parse(text), Ok(Request::Leave)))
}

/// Suspends the connection's member (or drops the connection, if it never joined) when the
/// connection's task ends, however it ends. The writer's last batch, if its flush did not
/// succeed, is pending again on the member's next connection.
struct DisconnectOnDrop<'a>(&'a Connection);

impl Drop for DisconnectOnDrop<'_> {
    fn drop(&mut self) {
        let Connection { shared, place, .. } = self.0;
        let unwritten_from = self.0.unconfirmed();
        if let Some(cluster) = &shared.cluster {
            return cluster.disconnect(shared, place, unwritten_from);
        }
        shared.rooms.lock(place).disconnect(place.conn(), crate::clock::now(), unwritten_from);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum WriteEnd {
    CloseSent,
    /// The socket failed, or was abandoned because its client does not read.
    Dropped,
}

#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The client went away.
    Gone,
    /// A close was requested; the writer sends it.
    Closing,
}

struct Reader<'a> {
    connection: &'a Connection,
    /// Every frame the client sends is charged here: the connection's own budget before it
    /// joins, its member's after (a resume goes on with the member's).
    budget: SharedBudget,
    /// Set once joined: the member id.
    member: Option<PeerId>,
    /// The member's room (with `--redis`, every signal names it to Redis).
    room: Option<RoomName>,
    joined_by: Instant,
    heard_at: Instant,
    /// When the writer is to send the next ping: the reader's timer serves it too, so that a
    /// connection keeps one timer, not two.
    ping_at: Instant,
}

impl<'a> Reader<'a> {
    fn new(connection: &'a Connection) -> Self {
        let shared = &connection.shared;
        let now = crate::clock::now();
        Self {
            connection,
            budget: SharedBudget::new(shared.config.rate_limit, now),
            member: None,
            room: None,
            joined_by: now + shared.config.join_timeout,
            heard_at: now,
            ping_at: now + shared.config.ping_interval,
        }
    }

    fn shared(&self) -> &'a Shared {
        &self.connection.shared
    }

    fn place(&self) -> &'a Placement {
        &self.connection.place
    }

    /// When the timer should fire next: the deadline, or the next ping if that is sooner.
    fn next_alarm(&self) -> Instant {
        self.deadline().min(self.ping_at)
    }

    /// When the connection times out if nothing more is heard.
    fn deadline(&self) -> Instant {
        let idle_deadline = self.heard_at + self.shared().config.idle_timeout;
        match self.member {
            Some(_) => idle_deadline,
            None => idle_deadline.min(self.joined_by),
        }
    }

    async fn run(&mut self, socket: &SharedSocket) -> ReadEnd {
        // One timer for the connection, moved only when it fires early: re-arming it for every
        // frame cost a timer-wheel insert and removal per signal.
        let timer = tokio::time::sleep_until(self.next_alarm().into());
        tokio::pin!(timer);
        // The clock is read once per wake-up, not once per frame: the frames read without
        // waiting in between (a busy connection's batch, at most tokio's cooperative budget of
        // them) share one reading. Reset whenever the stream has to wait, or the reader awaits
        // anything else. (A clock read was ~2 % of a relayed signal's CPU.)
        let mut woke_at: Option<Instant> = None;
        loop {
            let message = tokio::select! {
                biased;
                message = poll_fn(|cx| {
                    let polled = socket.poll_next(cx);
                    if polled.is_pending() {
                        woke_at = None;
                    }
                    polled
                }) => message,
                () = &mut timer => {
                    let now = crate::clock::now();
                    if now >= self.ping_at {
                        // As `MissedTickBehavior::Delay`: a late ping moves the next one.
                        self.ping_at = now + self.shared().config.ping_interval;
                        self.connection.ping_due.store(true, Ordering::Relaxed);
                        self.connection.wake.notify_one();
                    }
                    if now < self.deadline() {
                        timer.as_mut().reset(self.next_alarm().into());
                        continue;
                    }
                    if self.member.is_none() && now >= self.joined_by {
                        tracing::info!("closing: no join within the join timeout");
                        return self.close(close_code::POLICY, "join timeout");
                    }
                    tracing::info!("closing: idle timeout");
                    return self.close(close_code::GOING_AWAY, "idle timeout");
                }
            };
            let message = match message {
                None => return ReadEnd::Gone,
                Some(Err(error)) => return self.on_socket_error(error),
                Some(Ok(message)) => message,
            };
            let now = *woke_at.get_or_insert_with(crate::clock::now);
            self.heard_at = now;
            let size = match &message {
                Message::Text(text) => text.len(),
                Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
                Message::Close(_) => return ReadEnd::Gone,
                // Raw frames are only ever written, never read (tungstenite); skipped as axum did.
                Message::Frame(_) => continue,
            };
            // Every frame costs: whatever its kind (a `leave` or a ping included) and whatever
            // the answer, so no kind of frame can be sent for free without end.
            match self.budget.charge(size, now) {
                Verdict::Allowed => {}
                // A member's `leave` is honoured even over budget: it ends the connection, so it
                // cannot be repeated, and refusing it would keep the member in grace.
                Verdict::Refused if self.member.is_some() && is_leave(&message) => {}
                Verdict::Refused => {
                    let to = match &message {
                        Message::Text(text) => match inbound::parse(text) {
                            Ok(Request::Signal { to, .. }) => Some(to.into_owned()),
                            _ => None,
                        },
                        _ => None,
                    };
                    // Not kept across the wait below: the future would hold a message's room.
                    drop(message);
                    if let (Some(cluster), Some(id), Some(room)) =
                        (&self.shared().cluster, &self.member, &self.room)
                    {
                        // Before the refusal is sent: a resume elsewhere finds the spent budget.
                        let tokens = self.budget.tokens(now);
                        Box::pin(cluster.store_budget(self.place().conn(), room, id, tokens)).await;
                        woke_at = None;
                    }
                    self.refuse(
                        Refusal::new(ErrorCode::RateLimited, "over the message budget; slow down")
                            .about_signal_to(to.as_deref()),
                    );
                    continue;
                }
                Verdict::Abusive => {
                    tracing::info!("closing: kept sending over the rate limit");
                    return self.close(close_code::POLICY, "rate limit");
                }
            }
            match message {
                Message::Text(text) => {
                    let end = if self.shared().cluster.is_some() {
                        // Boxed: the Redis round trips' state would otherwise sit in every
                        // connection's future, with or without --redis (docs/benchmarks.md, idle).
                        let end = Box::pin(self.on_text_cluster(text)).await;
                        woke_at = None;
                        end
                    } else {
                        self.on_text(&text, now)
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
                Message::Binary(_) => self.refuse(Refusal::new(
                    ErrorCode::BinaryUnsupported,
                    "binary frames are not part of the protocol; send JSON in text frames",
                )),
                // Answered by the WebSocket layer (ping) or nothing to do (pong).
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Handles one text frame; `Some` ends the read loop.
    fn on_text(&mut self, text: &str, now: Instant) -> Option<ReadEnd> {
        match inbound::parse(text) {
            Err(refusal) => self.refuse(refusal),
            Ok(Request::Join { room, name, resume, token, last_seq }) => {
                return self.join(JoinRequest { room, name, resume, last_seq }, token, now);
            }
            Ok(Request::Signal { to, signal }) => self.relay(&to, signal, now),
            Ok(Request::Leave) => {
                // Bound first: a guard in the match scrutinee would live through the arms, and
                // `refuse` takes the lock again.
                let left = self.rooms().leave(self.place().conn(), now);
                return match left {
                    Ok(()) => Some(ReadEnd::Closing),
                    Err(refusal) => {
                        self.refuse(refusal);
                        None
                    }
                };
            }
        }
        None
    }

    /// [`Self::on_text`] with `--redis`: Redis decides (crate::cluster).
    async fn on_text_cluster(&mut self, text: Utf8Bytes) -> Option<ReadEnd> {
        match inbound::parse(&text) {
            Err(refusal) => self.refuse(refusal),
            Ok(Request::Join { room, name, resume, token, last_seq }) => {
                return self.join_cluster(JoinRequest { room, name, resume, last_seq }, token).await;
            }
            Ok(Request::Signal { to, signal }) => self.relay_cluster(&to, signal).await,
            Ok(Request::Leave) => {
                if let (Some(cluster), Some(id), Some(room)) =
                    (&self.shared().cluster, &self.member, &self.room)
                {
                    cluster.leave(self.shared(), self.place(), room, id).await;
                    return Some(ReadEnd::Closing);
                }
                self.refuse(Refusal::new(ErrorCode::NotJoined, "not in a room"));
            }
        }
        None
    }

    fn join(&mut self, request: JoinRequest, token: Option<String>, now: Instant) -> Option<ReadEnd> {
        if self.member.is_some() {
            self.refuse(Refusal::new(ErrorCode::AlreadyJoined, "this connection has already joined a room"));
            return None;
        }
        let grant = match &self.shared().config.token_secret {
            None => Ok(()),
            Some(secret) => {
                let (room, name) = (&request.room, request.name.as_ref());
                grant::verify(secret, token.as_deref(), room, name, std::time::SystemTime::now())
            }
        };
        // The room's shard; the connection moves there to join.
        let mut rooms = self.shared().rooms.lock_for_room(self.place(), &request.room);
        // A resume within grace needs no room token: the resume token already proves membership.
        if let Err(reason) = grant
            && !rooms.can_resume(&request)
        {
            drop(rooms);
            tracing::info!(%reason, "join refused: unauthorized");
            self.refuse(Refusal::new(ErrorCode::Unauthorized, reason));
            return Some(self.close(close_code::POLICY, "unauthorized"));
        }
        match rooms.join(self.place().conn(), request, now) {
            Ok(joined) => {
                self.budget = rooms.share_budget(&joined.id, self.budget.clone());
                drop(rooms);
                tracing::info!(peer = %joined.id, room = %joined.room, resumed = joined.resumed, "joined");
                self.member = Some(joined.id);
            }
            Err(refusal) => {
                drop(rooms);
                self.refuse(refusal);
            }
        }
        None
    }

    /// `join` with `--redis`: Redis decides (crate::cluster); the reader only keeps the result.
    async fn join_cluster(&mut self, request: JoinRequest, token: Option<String>) -> Option<ReadEnd> {
        let Some(cluster) = &self.shared().cluster else { return None };
        if self.member.is_some() {
            self.refuse(Refusal::new(ErrorCode::AlreadyJoined, "this connection has already joined a room"));
            return None;
        }
        let authorized = match &self.shared().config.token_secret {
            None => Ok(()),
            Some(secret) => {
                let (room, name) = (&request.room, request.name.as_ref());
                grant::verify(secret, token.as_deref(), room, name, std::time::SystemTime::now())
            }
        };
        if let Err(reason) = &authorized {
            tracing::info!(%reason, "join without a valid room token: only a resume may proceed");
        }
        match cluster.join(self.shared(), self.place(), request, authorized.is_ok()).await {
            Ok(joined) => {
                self.budget = self.rooms().share_budget(&joined.id, self.budget.clone());
                tracing::info!(peer = %joined.id, room = %joined.room, resumed = joined.resumed, "joined");
                self.member = Some(joined.id);
                self.room = Some(joined.room);
                None
            }
            Err(refusal) if refusal.code == ErrorCode::Unauthorized => {
                self.refuse(refusal);
                Some(self.close(close_code::POLICY, "unauthorized"))
            }
            Err(refusal) => {
                self.refuse(refusal);
                None
            }
        }
    }

    /// A signal with `--redis`: numbered and kept by Redis, delivered by the recipient's instance.
    async fn relay_cluster(&mut self, to: &str, signal: &str) {
        let (Some(cluster), Some(from), Some(room)) = (&self.shared().cluster, &self.member, &self.room)
        else {
            self.refuse(
                Refusal::new(ErrorCode::NotJoined, "join a room before sending signals")
                    .about_signal_to(Some(to)),
            );
            return;
        };
        let mut open = String::with_capacity(SIGNAL_HEAD_LEN + from.as_str().len() + signal.len());
        push_signal_head(|text| open.push_str(text), from);
        open.push_str(signal);
        if let Err(refusal) = cluster.relay(self.shared(), self.place().conn(), room, from, to, open).await {
            self.refuse(refusal);
        }
    }

    fn relay(&mut self, to: &str, signal: &str, now: Instant) {
        let Some(from) = &self.member else {
            self.refuse(
                Refusal::new(ErrorCode::NotJoined, "join a room before sending signals")
                    .about_signal_to(Some(to)),
            );
            return;
        };
        // The sender's id, then its signal's text; the number is stamped under the shard's lock,
        // where the recipient's next seq is known.
        let mut frame = OpenFrame::with_capacity(SIGNAL_HEAD_LEN + from.as_str().len() + signal.len());
        push_signal_head(|text| frame.push_str(text), from);
        frame.push_str(signal);
        let result = self.shared().rooms.relay(self.place(), from, to, frame, now);
        if let Err(refusal) = result {
            self.refuse(refusal);
        }
    }

    fn refuse(&self, refusal: Refusal) {
        tracing::debug!(code = %refusal.code, message = %refusal.message, "refused");
        self.rooms().refuse(self.place().conn(), &refusal, crate::clock::now());
    }

    /// The shard this connection is in, locked. Never across an `.await`.
    fn rooms(&self) -> std::sync::MutexGuard<'a, Rooms> {
        self.shared().rooms.lock(self.place())
    }

    fn close(&self, code: u16, reason: &'static str) -> ReadEnd {
        self.rooms().close(self.place().conn(), CloseRequest::new(code, reason));
        ReadEnd::Closing
    }

    /// RFC 6455 failures: tell the client why, where the socket still allows it.
    fn on_socket_error(&self, error: tungstenite::Error) -> ReadEnd {
        use tungstenite::error::{CapacityError, ProtocolError};
        match &error {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                tracing::info!(size, max_size, "closing: frame too large");
                self.refuse(Refusal::new(
                    ErrorCode::TooLarge,
                    format!("message of {size} bytes is over the limit of {max_size} bytes"),
                ));
                self.close(close_code::TOO_BIG, "message too large")
            }
            tungstenite::Error::Utf8(_) => {
                tracing::info!("closing: invalid UTF-8 in a text frame");
                self.close(close_code::INVALID_PAYLOAD, "invalid UTF-8")
            }
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadEnd::Gone,
            tungstenite::Error::Protocol(violation) => {
                tracing::info!(%violation, "closing: WebSocket protocol violation");
                self.close(close_code::PROTOCOL_ERROR, "protocol violation")
            }
            other => {
                tracing::debug!(error = %other, "socket error");
                ReadEnd::Gone
            }
        }
    }
}

/// Writes what [`Rooms`](crate::rooms::Rooms) queues for this connection, pings it, and sends the
/// close frame when one is requested or the server shuts down.
async fn write_loop(socket: &SharedSocket, connection: &Connection) -> WriteEnd {
    let Connection { shared, place, wake, .. } = connection;
    // After a write, look again before sleeping: wake-ups that came during it were consumed.
    let mut just_wrote = false;
    loop {
        // Looked at before and after waiting: at shutdown every writer is woken (lib.rs), and
        // one that starts after that sees it here.
        if !just_wrote {
            if shared.shutdown.is_cancelled() {
                return Box::pin(send_close(socket, SHUTTING_DOWN)).await;
            }
            wake.notified().await;
        }
        if shared.shutdown.is_cancelled() {
            return Box::pin(send_close(socket, SHUTTING_DOWN)).await;
        }
        let ping = connection.ping_due.swap(false, Ordering::Relaxed);
        let Outbound { frames, close, journal_from } =
            shared.rooms.lock(place).take_outbound(place.conn(), crate::clock::now());
        just_wrote = ping || !frames.is_empty();
        if just_wrote {
            connection.set_unconfirmed(journal_from);
            // Several frames queued at once go out in one flush: one syscall, not one each.
            let (mut ping, mut frames) = (ping, frames.into_iter());
            let write = poll_fn(|cx| socket.poll_write_batch(cx, &mut ping, &mut frames));
            let written = tokio::select! {
                result = write => result.is_ok(),
                () = abandoned(connection) => false,
            };
            if !written {
                return WriteEnd::Dropped;
            }
            connection.set_unconfirmed(None);
        }
        if let Some(close) = close {
            // Boxed: once per connection, and not in every idle connection's future.
            return Box::pin(send_close(socket, close)).await;
        }
    }
}

const SHUTTING_DOWN: CloseRequest = CloseRequest::new(close_code::GOING_AWAY, "server shutting down");

/// Resolves when the connection is closed for not reading (or replaced) while its writer is
/// stuck, or the server shuts down: a close frame could not get through anyway, so the socket is
/// dropped.
async fn abandoned(connection: &Connection) {
    let Connection { shared, place, wake, .. } = connection;
    loop {
        wake.notified().await;
        if shared.shutdown.is_cancelled()
            || shared.rooms.lock(place).close_requested(place.conn()).is_some_and(|close| close.immediate)
        {
            return;
        }
    }
}

async fn send_close(socket: &SharedSocket, close: CloseRequest) -> WriteEnd {
    let frame = CloseFrame { code: close.code.into(), reason: Utf8Bytes::from_static(close.reason) };
    let mut close = Some(Message::Close(Some(frame)));
    let send = poll_fn(|cx| {
        let mut socket = socket.lock();
        if close.is_some() {
            ready!(socket.poll_ready(cx))?;
            if let Some(message) = close.take() {
                socket.start_send(message)?;
            }
        }
        socket.poll_flush(cx)
    });
    match timeout(CLOSE_WRITE_TIMEOUT, send).await {
        Ok(Ok(())) => WriteEnd::CloseSent,
        _ => WriteEnd::Dropped,
    }
}

/// The connection's WebSocket, shared by its reader and its writer.
///
/// Both run in the connection's one task and never at the same time, and neither holds the lock
/// across an `.await` (only within one poll), so it is never contended: it is there because the
/// task must be `Send`. Before, the socket was `split()` into halves behind a `BiLock`, which the
/// writer took (and `SplitSink` moved each message through its slot) for every frame; here the
/// writer takes the lock once per poll of a whole batch (docs/benchmarks.md, issue 20).
struct SharedSocket(Mutex<Socket>);

impl SharedSocket {
    fn lock(&self) -> MutexGuard<'_, Socket> {
        // A panic while it was held ended this connection's task, which owns the lock.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        self.lock().poll_next(cx)
    }

    /// Queues the ping (if `ping`) and every frame of `frames`, then flushes: one `write(2)` for
    /// the batch (or more if the socket takes less). Taken from `ping` and `frames` only once
    /// accepted, so a `Pending` resumes where it stopped.
    fn poll_write_batch(
        &self,
        cx: &mut Context<'_>,
        ping: &mut bool,
        frames: &mut std::vec::IntoIter<crate::outbox::Frame>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        let mut socket = self.lock();
        if *ping {
            ready!(socket.poll_ready(cx))?;
            *ping = false;
            socket.start_send(Message::Ping(Default::default()))?;
        }
        socket.poll_send_texts(cx, frames)
    }
}
