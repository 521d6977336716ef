//! One benchmark client: a WebSocket that has joined (a room, where the server has rooms).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::proto::Proto;

pub type Ws = WebSocketStream<TcpStream>;

/// How long a connect + join may take before the benchmark counts it as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Member {
    pub ws: Ws,
    /// The id the server gave (or, for PeerJS, the one the client chose).
    pub id: String,
    /// The server's answer to the join (welcome, IdAssigned, OPEN), as received.
    pub welcome: String,
    /// Frames that arrived before the join was answered (Switchboard never sends any).
    pub early: Vec<String>,
}

/// Times of one connect + join, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct JoinTiming {
    /// From the TCP connect to the message that makes the client a member (welcome, IdAssigned,
    /// OPEN), WebSocket upgrade included.
    pub connect_us: u64,
    /// From sending `join` to `welcome` (only for protocols with a join message).
    pub join_us: Option<u64>,
}

pub async fn join(
    proto: Proto,
    addr: SocketAddr,
    room: &str,
    client_id: &str,
) -> anyhow::Result<(Member, JoinTiming)> {
    tokio::time::timeout(JOIN_TIMEOUT, join_inner(proto, addr, room, client_id))
        .await
        .with_context(|| format!("{} did not answer a join within {JOIN_TIMEOUT:?}", proto.label()))?
}

async fn join_inner(
    proto: Proto,
    addr: SocketAddr,
    room: &str,
    client_id: &str,
) -> anyhow::Result<(Member, JoinTiming)> {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (mut ws, _response) = tokio_tungstenite::client_async(proto.url(addr, room, client_id), tcp)
        .await
        .context("WebSocket upgrade failed")?;
    let mut join_sent = None;
    if let Some(frame) = proto.join_frame(room) {
        join_sent = Some(Instant::now());
        ws.send(Message::text(frame)).await?;
    }
    let mut early = Vec::new();
    loop {
        let message = ws.next().await.context("closed before the join was answered")??;
        let Message::Text(text) = message else { continue };
        if let Some(id) = proto.joined(&text, client_id) {
            let now = Instant::now();
            let timing = JoinTiming {
                connect_us: micros(now - started),
                join_us: join_sent.map(|sent| micros(now - sent)),
            };
            return Ok((Member { ws, id, welcome: text.to_string(), early }, timing));
        }
        if proto.is_error(text.as_bytes()) {
            bail!("join refused: {text}");
        }
        if early.len() < 16 {
            early.push(text.to_string());
        }
    }
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
