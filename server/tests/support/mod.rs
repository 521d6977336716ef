//! A real `server` process on a free loopback port, and a WebSocket client that speaks to it.

#![allow(dead_code)] // each test file uses a different part of the support code

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long a test waits for something it expects before failing with a message.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct ServerProcess {
    child: Child,
    pub addr: String,
}

impl ServerProcess {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_scheme(args, "http")
    }

    /// Starts the server and checks that it announces `scheme` (`https` when serving TLS).
    pub fn start_with_scheme(args: &[&str], scheme: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("server prints its address");
        let addr = line
            .trim()
            .strip_prefix(&format!("listening on {scheme}://"))
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("addr has a port")
    }

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

    /// Waits until `/metrics` shows `name` at `value`.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {now}, expected {value}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill runs");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET, so the tests see status codes exactly as a client would.
pub async fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("server accepts TCP");
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
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.expect("WebSocket upgrade succeeds");
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
        match self.try_recv(WAIT).await {
            Some(message) => message,
            None => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next protocol message, or `None` if nothing came within `within`.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"));
                }
                Some(Ok(Message::Close(close))) => panic!("closed unexpectedly: {close:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
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
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let Ok(frame) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
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
