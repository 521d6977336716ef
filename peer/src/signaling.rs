//! The signaling client: one task that owns the WebSocket to the server.
//!
//! It joins, hands every server message to the owner as a [`SignalingEvent`], and sends the
//! owner's signals. When the connection is lost without a final close code it reconnects with
//! backoff and joins again with the latest `resume_token` and the highest `seq` it handed to the
//! owner (`last_seq`, PROTOCOL.md v1.1), so that messages the server wrote into a connection
//! that died unread are delivered again, and nothing is handed over twice. Signals produced
//! while there is no connection wait in a bounded outbox: sent after a resumed `welcome`,
//! dropped after a fresh one (they were addressed to peers of a session that no longer exists).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::close_code;
use protocol::{ClientMessage, ErrorMessage, Join, PeerId, PeerInfo, ServerMessage, Signal, Welcome};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::task::TaskTracker;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Signals kept while disconnected; beyond this the oldest is dropped (with a log line).
const OUTBOX_LIMIT: usize = 4096;
/// How long a connect + join may take before it counts as a lost connection.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// First reconnect delay ceiling; doubles per failed try up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// `ws://host:port/ws`
    pub url: String,
    pub room: String,
    pub name: Option<String>,
    /// A room token, for servers that require one.
    pub token: Option<String>,
    /// TLS settings for a `wss://` URL (see [`crate::tls`]); `None` uses tungstenite's own
    /// (the system's roots only).
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// What the server told us, or what happened to the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingEvent {
    Welcome(Welcome),
    PeerJoined(PeerInfo),
    PeerLeft(PeerId),
    Signal {
        from: PeerId,
        signal: Signal,
    },
    /// A refused request; the connection stays open.
    Error(ErrorMessage),
    /// The connection was lost; reconnecting (the peer connections are unaffected).
    Reconnecting {
        reason: String,
    },
    /// The end: a final close code, a refused join, or no server at all on the first try.
    Fatal(String),
}

enum Command {
    Signal { from_id: String, to: String, signal: Signal },
    Leave(oneshot::Sender<()>),
}

/// The owner's handle on the signaling task.
#[derive(Debug, Clone)]
pub struct Signaling {
    /// Unbounded, so that the mesh never waits here while this task waits for the mesh to
    /// take an event (a cycle). What goes in is our own signals, a few per connection.
    commands: mpsc::UnboundedSender<Command>,
}

impl Signaling {
    /// Starts the signaling task on `tasks`; its events arrive on `events`.
    pub fn start(params: JoinParams, events: mpsc::Sender<SignalingEvent>, tasks: &TaskTracker) -> Signaling {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(run(params, rx, events));
        Signaling { commands: tx }
    }

    /// Relays `signal` to `to`. `from_id` is our id when the signal was produced: a signal of an
    /// earlier session (before a refused resume gave us a new id) is dropped, not misdelivered.
    pub fn signal(&self, from_id: &str, to: &str, signal: Signal) {
        let command = Command::Signal { from_id: from_id.to_string(), to: to.to_string(), signal };
        let _ = self.commands.send(command);
    }

    /// Sends `leave` and closes, waiting at most `deadline`.
    pub async fn leave(&self, deadline: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(deadline, rx).await;
        }
    }
}

/// Why a connection ended.
enum Ended {
    /// Reconnect and resume.
    Lost(String),
    /// Stop: tell the owner.
    Final(String),
    /// We left (or the owner is gone).
    Left,
}

struct Outbox {
    queue: VecDeque<(String, String, Signal)>,
}

impl Outbox {
    fn push(&mut self, from_id: String, to: String, signal: Signal) {
        if self.queue.len() == OUTBOX_LIMIT {
            tracing::warn!("signaling outbox full ({OUTBOX_LIMIT}); dropping its oldest signal");
            self.queue.pop_front();
        }
        self.queue.push_back((from_id, to, signal));
    }

    /// Handles an owner's command while there is no connection: signals wait here; `leave` (or
    /// the owner going away) ends the task — there is no membership to end but the one in
    /// grace, which the server ends on its own. Returns false when the task should end.
    fn keep_while_disconnected(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Signal { from_id, to, signal }) => {
                self.push(from_id, to, signal);
                true
            }
            Some(Command::Leave(done)) => {
                let _ = done.send(());
                false
            }
            None => false,
        }
    }
}

async fn run(
    params: JoinParams,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<SignalingEvent>,
) {
    let mut resume: Option<String> = None;
    // The highest seq handed to the owner; `None` until a v1.1 server numbers its messages.
    let mut handled: Option<u64> = None;
    let mut my_id: Option<String> = None;
    let mut outbox = Outbox { queue: VecDeque::new() };
    let mut failures: u32 = 0;
    let mut ever_joined = false;

    loop {
        // Connect and join, keeping whatever the owner sends meanwhile.
        let attempt = tokio::time::timeout(JOIN_DEADLINE, connect_and_join(&params, resume.clone(), handled));
        tokio::pin!(attempt);
        let joined = loop {
            tokio::select! {
                result = &mut attempt => break result.unwrap_or_else(|_| Err(Ended::Lost("join timed out".into()))),
                command = commands.recv() => if !outbox.keep_while_disconnected(command) {
                    return;
                },
            }
        };

        let ended = match joined {
            Ok((mut ws, welcome)) => {
                ever_joined = true;
                failures = 0;
                resume = Some(welcome.resume_token.clone());
                let resumed = welcome.resumed && my_id.as_deref() == Some(welcome.id.as_str());
                if !resumed && !outbox.queue.is_empty() {
                    tracing::info!("fresh session: dropping {} signals of the old one", outbox.queue.len());
                    outbox.queue.clear();
                }
                if !resumed {
                    // A new session numbers from its welcome on.
                    handled = welcome.seq;
                }
                my_id = Some(welcome.id.clone());
                if events.send(SignalingEvent::Welcome(welcome)).await.is_err() {
                    return;
                }
                let id = my_id.clone().unwrap_or_default();
                match flush_outbox(&mut ws, &mut outbox, &id).await {
                    Err(e) => Ended::Lost(e),
                    Ok(()) => serve(&mut ws, &id, &mut commands, &events, &mut outbox, &mut handled).await,
                }
            }
            Err(ended) => ended,
        };

        match ended {
            Ended::Left => return,
            Ended::Final(reason) => {
                let _ = events.send(SignalingEvent::Fatal(reason)).await;
                return;
            }
            Ended::Lost(reason) if !ever_joined => {
                let _ = events
                    .send(SignalingEvent::Fatal(format!("cannot join at {}: {reason}", params.url)))
                    .await;
                return;
            }
            Ended::Lost(reason) => {
                tracing::warn!("signaling lost ({reason}); reconnecting");
                if events.send(SignalingEvent::Reconnecting { reason }).await.is_err() {
                    return;
                }
            }
        }

        // Back off, still keeping the owner's signals.
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                command = commands.recv() => if !outbox.keep_while_disconnected(command) {
                    return;
                },
            }
        }
    }
}

/// The delay before reconnect try `failures` (0-based): up to 0.5 s, then doubling to 2 s, each
/// drawn from the upper half of its range so that peers cut off together don't retry in step.
pub fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_FIRST.saturating_mul(1u32 << failures.min(8)).min(BACKOFF_MAX);
    let half = ceiling / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

async fn connect_and_join(
    params: &JoinParams,
    resume: Option<String>,
    handled: Option<u64>,
) -> Result<(Ws, Welcome), Ended> {
    // The connector is used for `wss://` only; a `ws://` URL connects in plain text.
    let connector = params.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(params.url.as_str(), None, false, connector)
            .await
            .map_err(|e| Ended::Lost(connect_error(&e)))?;
    let join = ClientMessage::Join(Join {
        room: params.room.clone(),
        name: params.name.clone(),
        last_seq: resume.as_ref().and(handled),
        resume,
        token: params.token.clone(),
    });
    ws.send(Message::text(join.to_json()))
        .await
        .map_err(|e| Ended::Lost(format!("cannot send join: {e}")))?;
    loop {
        match read(&mut ws).await? {
            ServerMessage::Welcome(welcome) => return Ok((ws, welcome)),
            ServerMessage::Error(e) => {
                return Err(Ended::Final(format!("join refused: {} ({})", e.message, e.code)));
            }
            other => tracing::debug!("ignoring {other:?} before welcome"),
        }
    }
}

/// Why a connect failed, with the way out when it is the server's certificate.
fn connect_error(error: &tokio_tungstenite::tungstenite::Error) -> String {
    let text = error.to_string();
    if text.contains("certificate") {
        format!(
            "cannot connect: {text} (to trust a server's own certificate, give its CA with --ca-cert PEM)"
        )
    } else {
        format!("cannot connect: {text}")
    }
}

/// The next server message; pings are answered by tungstenite as we read.
async fn read(ws: &mut Ws) -> Result<ServerMessage, Ended> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(text.as_str()) {
                Ok(message) => return Ok(message),
                Err(e) => tracing::warn!("ignoring a server message I cannot parse ({e}): {}", text.as_str()),
            },
            Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Ended::Lost(format!("connection error: {e}"))),
            None => return Err(Ended::Lost("connection closed without a close frame".into())),
        }
    }
}

fn closed(frame: Option<CloseFrame>) -> Ended {
    let code = frame.as_ref().map(|f| u16::from(f.code));
    let reason = frame.as_ref().map(|f| f.reason.as_str().to_string()).unwrap_or_default();
    let text = match code {
        Some(code) => format!("server closed the connection with code {code} {reason:?}"),
        None => "server closed the connection without a code".to_string(),
    };
    if close_code::should_resume(code) { Ended::Lost(text) } else { Ended::Final(text) }
}

async fn flush_outbox(ws: &mut Ws, outbox: &mut Outbox, id: &str) -> Result<(), String> {
    while let Some((from_id, to, signal)) = outbox.queue.pop_front() {
        if from_id != id {
            continue;
        }
        let message = ClientMessage::Signal { to: to.clone(), signal: signal.clone() };
        if let Err(e) = ws.send(Message::text(message.to_json())).await {
            outbox.queue.push_front((from_id, to, signal));
            return Err(format!("cannot send: {e}"));
        }
    }
    Ok(())
}

/// A joined connection: relay both ways until it ends.
async fn serve(
    ws: &mut Ws,
    id: &str,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::Sender<SignalingEvent>,
    outbox: &mut Outbox,
    handled: &mut Option<u64>,
) -> Ended {
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Signal { from_id, to, signal }) => {
                    if from_id != id {
                        tracing::debug!("dropping a signal of an earlier session to {to}");
                        continue;
                    }
                    let message = ClientMessage::Signal { to: to.clone(), signal: signal.clone() };
                    if let Err(e) = ws.send(Message::text(message.to_json())).await {
                        outbox.push(from_id, to, signal);
                        return Ended::Lost(format!("cannot send: {e}"));
                    }
                }
                Some(Command::Leave(done)) => {
                    leave(ws).await;
                    let _ = done.send(());
                    return Ended::Left;
                }
                None => {
                    leave(ws).await;
                    return Ended::Left;
                }
            },
            message = read(ws) => {
                let seq = message.as_ref().ok().and_then(ServerMessage::seq);
                if let (Some(seq), Some(last)) = (seq, *handled) {
                    if seq <= last {
                        // Defensive: the server sends nothing at or below last_seq again.
                        tracing::debug!(seq, last, "ignoring a message already handled");
                        continue;
                    }
                    if seq > last + 1 {
                        tracing::warn!(seq, last, "signaling messages {}..{} never arrived", last + 1, seq - 1);
                    }
                }
                let event = match message {
                    Ok(ServerMessage::PeerJoined { peer, .. }) => SignalingEvent::PeerJoined(peer),
                    Ok(ServerMessage::PeerLeft { id, .. }) => SignalingEvent::PeerLeft(id.into()),
                    Ok(ServerMessage::Signal { from, signal, .. }) => {
                        SignalingEvent::Signal { from: from.into(), signal }
                    }
                    Ok(ServerMessage::Error(e)) => SignalingEvent::Error(e),
                    Ok(ServerMessage::Welcome(_)) => {
                        tracing::warn!("ignoring an unexpected second welcome");
                        continue;
                    }
                    Err(ended) => return ended,
                };
                if events.send(event).await.is_err() {
                    leave(ws).await;
                    return Ended::Left;
                }
                // Handed to the owner, which handles events in order: handled.
                if seq.is_some() {
                    *handled = seq;
                }
            }
        }
    }
}

/// `leave`, then wait briefly for the server's close so that it has surely read the `leave`.
async fn leave(ws: &mut Ws) {
    if ws.send(Message::text(ClientMessage::Leave.to_json())).await.is_err() {
        return;
    }
    let drain = async {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_under_half_a_second_and_stays_under_two() {
        for _ in 0..100 {
            let first = backoff(0);
            assert!(first >= Duration::from_millis(250) && first <= BACKOFF_FIRST, "{first:?}");
            let later = backoff(10);
            assert!(later >= Duration::from_secs(1) && later <= BACKOFF_MAX, "{later:?}");
        }
        assert!(backoff(1) <= Duration::from_secs(1));
    }
}
