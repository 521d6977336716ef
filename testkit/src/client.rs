//! The client side of a server under test: WebSocket clients, bare HTTP, `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::within_real_time;

/// How long a test waits for something it expects before failing with a message: real time, on
/// a paused clock too (see [`within_real_time`]). Windows that mean something in the protocol
/// (`try_recv(within)`, `expect_silence`) stay on tokio's clock.
pub const WAIT: Duration = Duration::from_secs(10);

/// Where a server under test listens, and what a client does there.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `127.0.0.1:PORT`
    pub addr: String,
    socket_addr: SocketAddr,
    scheme: &'static str,
}

impl Endpoint {
    pub(crate) fn new(socket_addr: SocketAddr, scheme: &'static str) -> Self {
        Self { addr: socket_addr.to_string(), socket_addr, scheme }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.socket_addr
    }

    pub fn port(&self) -> u16 {
        self.socket_addr.port()
    }

    /// `http://127.0.0.1:PORT` (`https` when it serves TLS).
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connects and joins `room` as `name`, returning the client and its welcome.
    pub async fn join(&self, room: &str, name: &str) -> (Client, Value) {
        let mut client = self.connect().await;
        client.send(json!({"type": "join", "room": room, "name": name})).await;
        let welcome = client.expect_type("welcome").await;
        (client, welcome)
    }

    /// `GET path`: the status and the body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path, &[]).await
    }

    /// A metric's current value from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        let body = loop {
            // A server at a connection cap answers 503 or 429 until a place frees up.
            let (status, body) = self.http_get("/metrics").await;
            if status == 200 || tokio::time::Instant::now() >= deadline {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{body}"))
    }

    /// Waits (at most [`WAIT`]) until `/metrics` shows `name` at `value`.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        self.wait_for_metric_within(name, value, WAIT).await;
    }

    /// Waits (at most `within`) until `/metrics` shows `name` at `value`, failing with what it
    /// showed last.
    pub async fn wait_for_metric_within(&self, name: &str, value: f64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {now}, expected {value}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A bare HTTP/1.1 GET, so that tests see status codes exactly as a client would: the status and
/// everything after the head.
pub async fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("GET {path}: {addr} refuses TCP: {e}"));
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("request written");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A protocol client over a WebSocket.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(Option<u16>),
    Dropped,
}

impl Client {
    /// Connects with Nagle's algorithm off, as a browser does: on loopback Nagle holds a small
    /// frame back until the previous one is acknowledged (a delayed ACK, 40 ms of real time),
    /// and a test on a paused clock would wait out its deadline in virtual time meanwhile.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = connect_async_with_config(url, None, true).await.expect("WebSocket upgrade succeeds");
        Self { ws }
    }

    /// A client over a TCP stream the test opened (from another source address, say); Nagle's
    /// algorithm is turned off on it as in [`Client::connect`].
    pub async fn over(stream: TcpStream, url: &str) -> Self {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("WebSocket upgrade succeeds");
        Self { ws }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("frame sent");
    }

    /// The next protocol message; fails the test on close or after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let Some(frame) = within_real_time(WAIT, self.ws.next()).await else {
                panic!("no message within {WAIT:?}");
            };
            if let Some(message) = Self::protocol_message(frame) {
                return message;
            }
        }
    }

    /// The next protocol message, or `None` if nothing came within `within`.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            if let Some(message) = Self::protocol_message(frame) {
                return Some(message);
            }
        }
    }

    /// A text frame's JSON; `None` for a ping or pong; fails the test on a close or an error.
    fn protocol_message(
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Value> {
        match frame {
            Some(Ok(Message::Text(text))) => Some(serde_json::from_str(&text).expect("server sends JSON")),
            Some(Ok(Message::Close(close))) => panic!("closed unexpectedly: {close:?}"),
            Some(Ok(_)) => None,
            Some(Err(e)) => panic!("connection failed: {e}"),
            None => panic!("connection ended"),
        }
    }

    /// The next message, which must be of type `kind`.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }

    /// The next message, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let message = self.expect_type("error").await;
        assert_eq!(message["code"], code, "{message}");
        assert!(message["message"].as_str().is_some_and(|m| !m.is_empty()), "errors explain themselves");
        message
    }

    /// Reads until the connection ends, returning the close code; messages before it are
    /// returned too.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Ended) {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(frame) = within_real_time(left, self.ws.next()).await else {
                panic!("connection still open after {WAIT:?}; saw {seen:?}");
            };
            match frame {
                Some(Ok(Message::Text(text))) => seen.push(serde_json::from_str(&text).expect("JSON")),
                Some(Ok(Message::Close(close))) => {
                    return (seen, Ended::Closed(close.map(|c| c.code.into())));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (seen, Ended::Dropped),
            }
        }
    }

    /// Asserts nothing arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(message) = self.try_recv(within).await {
            panic!("expected nothing, got {message}");
        }
    }
}

/// A candidate signal to `to` carrying the sequence number `n` (read back by [`sequence_of`]).
pub fn signal_to(to: &Value, n: u64) -> Value {
    json!({"type": "signal", "to": to, "signal": {"type": "candidate", "candidate": {
        "candidate": format!("candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host", 10000 + n % 50000),
        "sdpMid": "0", "sdpMLineIndex": 0}}})
}

/// The sequence number [`signal_to`] put in a relayed signal.
pub fn sequence_of(message: &Value) -> u64 {
    let candidate = message["signal"]["candidate"]["candidate"].as_str().expect("a candidate signal");
    candidate.trim_start_matches("candidate:").split(' ').next().and_then(|n| n.parse().ok()).expect("number")
}
