//! The attacks of issue 13 ("Hardening 2") on the server, run against the real binary (two whose
//! point is a timer run in-process on tokio's paused clock):
//! what used to work, shown not to work any more, while a polite client from another loopback
//! address is served. Attackers bind 127.0.0.2 and up; polite clients 127.0.0.1 (loopback holds
//! all of 127.0.0.0/8).

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

use testkit::{InProcess, Launch, ServerProcess, within_real_time};

const WAIT: Duration = support::WAIT;

/// The binary under attack: this build's, or `SWITCHBOARD_EDGE_SERVER` (to run the attacks against
/// another build, e.g. an older one, and watch them work).
fn server_binary() -> std::ffi::OsString {
    std::env::var_os("SWITCHBOARD_EDGE_SERVER").unwrap_or_else(|| env!("CARGO_BIN_EXE_server").into())
}

/// The server binary, optionally under `prlimit`, with its stderr kept for the test to read.
struct Server {
    process: ServerProcess,
    addr: String,
    stderr: std::path::PathBuf,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_with(None, args, "warn")
    }

    /// `nofile`: the open-file limit (soft, hard) to start the server with.
    fn start_with(nofile: Option<(u64, u64)>, args: &[&str], log: &str) -> Self {
        let stderr = std::env::temp_dir().join(format!(
            "switchboard-edge-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        let mut launch = Launch::new(server_binary()).args(args).env("RUST_LOG", log).stderr_to(&stderr);
        if let Some((soft, hard)) = nofile {
            // prlimit (util-linux, always present on Debian) sets the limit, then execs.
            launch = launch.nofile(soft, hard);
        }
        let process = launch.start().unwrap_or_else(|e| panic!("the server starts: {e}"));
        Self { addr: process.addr.clone(), process, stderr }
    }

    fn socket_addr(&self) -> SocketAddr {
        self.addr.parse().expect("addr")
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Resident memory, from /proc.
    fn rss_kib(&self) -> u64 {
        self.process.rss_bytes().expect("/proc status") / 1024
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn get(&self, from: [u8; 4], path: &str) -> (u16, String) {
        let host = self.addr.clone();
        request(
            self.socket_addr(),
            from,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await
    }

    async fn metric(&self, name: &str) -> f64 {
        // From an address of its own, so that the test's polite clients (127.0.0.1) and
        // attackers (127.0.0.2 and up) do not take its place under a cap.
        let (status, body) = self.get([127, 0, 0, 254], "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{body}"))
    }

    /// Polls `switchboard_counted_connections` (its own request included) until it is `n`,
    /// for at most ten seconds; a request refused while the caps are still full is retried.
    async fn until_counted_connections_are(&self, n: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            let (status, body) = self.get([127, 0, 0, 254], "/metrics").await;
            let counted = body
                .lines()
                .find_map(|line| line.strip_prefix("switchboard_counted_connections ")?.parse::<f64>().ok());
            if status == 200 && counted == Some(f64::from(n)) {
                return;
            }
            last = format!("status {status}, counted {counted:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server still counts other connections after 10 s ({last})");
    }

    async fn polite_clients_are_served(&self, room: &str) {
        polite_clients_are_served(&self.addr, room).await;
    }

    fn terminate(&self) {
        self.process.signal("TERM");
    }

    /// The exit code, if the process ends within `within`.
    fn exit_within(&mut self, within: Duration) -> Option<Option<i32>> {
        self.process.wait_exit(within)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// A polite client from 127.0.0.1 joins `room` and relays a signal to a second polite client
/// (from 127.0.0.100).
async fn polite_clients_are_served(addr: &str, room: &str) {
    let mut ana = ws_from([127, 0, 0, 1], addr).await.expect("the polite client gets in");
    send(&mut ana, json!({"type": "join", "room": room, "name": "ana"})).await;
    let welcome = next_json(&mut ana).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let mut bob = ws_from([127, 0, 0, 100], addr).await.expect("the polite client gets in");
    send(&mut bob, json!({"type": "join", "room": room, "name": "bob"})).await;
    assert_eq!(next_json(&mut bob).await["type"], "welcome");
    assert_eq!(next_json(&mut ana).await["type"], "peer_joined");
    send(&mut bob, support::signal_to(&welcome["id"], 1)).await;
    let relayed = next_json(&mut ana).await;
    assert_eq!(relayed["type"], "signal", "{relayed}");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn tcp_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket from `from`; the error is what the client saw (an HTTP status on refusal).
async fn ws_from(from: [u8; 4], addr: &str) -> Result<Ws, tungstenite::Error> {
    let tcp = tcp_from(from, addr.parse().expect("addr")).await?;
    let (ws, _) = client_async(format!("ws://{addr}/ws"), tcp).await?;
    Ok(ws)
}

fn refused_status(error: &tungstenite::Error) -> Option<u16> {
    match error {
        tungstenite::Error::Http(response) => Some(response.status().as_u16()),
        _ => None,
    }
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.expect("sent");
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = within_real_time(WAIT, ws.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("JSON"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Writes `raw` from `from` and reads the whole answer: (status, everything after the head).
async fn request(to: SocketAddr, from: [u8; 4], raw: &str) -> (u16, String) {
    let mut tcp = tcp_from(from, to).await.expect("connect");
    tcp.write_all(raw.as_bytes()).await.expect("written");
    let mut response = Vec::new();
    let _ = within_real_time(WAIT, tcp.read_to_end(&mut response)).await.expect("answered in time");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

/// Reads until the server closes the connection (EOF or reset); false if it stays open `within`.
async fn closed_by_server(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    within_real_time(within, read).await.is_some()
}

// ---------------------------------------------------------------------------------------------
// Caps from TCP accept

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_cannot_exhaust_descriptors_under_a_low_fd_limit() {
    // Before: under `ulimit -n 1024`, 1,100 idle TCP connections made the server fail accept
    // with "Too many open files" and /healthz fail for as long as they were held.
    rlimit::increase_nofile_limit(4096).expect("the test raises its own open-file limit");
    let server = Server::start_with(Some((1024, 1024)), &["--header-timeout", "3s"], "warn");
    let target = server.socket_addr();
    let mut attackers = Vec::new();
    for _ in 0..1100 {
        attackers.push(tcp_from([127, 0, 0, 2], target).await.expect("the kernel accepts the connection"));
    }
    // While they are held, /healthz answers a polite client: past its cap (256) the attacker's
    // connections were refused, so the server never ran out of descriptors.
    let (status, body) = server.get([127, 0, 0, 1], "/healthz").await;
    assert_eq!((status, body.ends_with("ok")), (200, true), "{body}");
    server.polite_clients_are_served("during-idle-flood").await;
    // The idle ones that were let in are closed at the header timeout.
    let mut still_open = 0;
    for tcp in &mut attackers {
        if !closed_by_server(tcp, Duration::from_secs(6)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "every idle connection is closed by the header timeout");
    let (status, body) = server.get([127, 0, 0, 1], "/healthz").await;
    assert_eq!((status, body.ends_with("ok")), (200, true), "{body}");
    server.polite_clients_are_served("after-idle-flood").await;
    let log = server.log();
    assert!(!log.contains("Too many open files"), "the server ran out of descriptors:\n{log}");
    // The total cap was lowered to fit the descriptors rather than left at 20,000, so that many
    // attacker addresses together meet 503s, not a server that cannot accept.
    assert!(log.contains("lowering the connection cap"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let server = Server::start_with(Some((1024, 4096)), &[], "warn");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("/proc limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a line for open files");
    let numbers: Vec<&str> = line.split_whitespace().filter(|w| w.parse::<u64>().is_ok()).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_count_against_the_caps_before_any_upgrade() {
    let server = Server::start(&["--max-connections-per-ip", "3", "--max-connections", "6"]);
    let target = server.socket_addr();
    // Three idle TCP connections (no request at all) from one address fill its cap.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_from([127, 0, 0, 2], target).await.expect("connect"));
    }
    // Let the server accept them before the next request races them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = server.get([127, 0, 0, 2], "/healthz").await;
    assert_eq!(status, 429, "a fourth connection from the same address");
    let refused = ws_from([127, 0, 0, 2], &server.addr).await.expect_err("no upgrade over the cap");
    assert_eq!(refused_status(&refused), Some(429), "{refused}");
    // Another address is served; the total cap counts HTTP connections too.
    let (status, _) = server.get([127, 0, 0, 3], "/healthz").await;
    assert_eq!(status, 200);
    let mut more = Vec::new();
    for i in 0..3 {
        more.push(tcp_from([127, 0, 0, 10 + i], target).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = ws_from([127, 0, 0, 20], &server.addr).await.expect_err("no upgrade over the total");
    assert_eq!(refused_status(&refused), Some(503), "{refused}");
    drop(held);
    drop(more);
    // The places free up once the server reads each close, which a loaded machine can delay
    // past any fixed sleep: wait (bounded) until only the metrics request itself is counted.
    server.until_counted_connections_are(1).await;
    server.polite_clients_are_served("after-caps").await;
    assert!(server.metric("switchboard_refused_total{reason=\"per_ip\"}").await >= 2.0);
    assert!(server.metric("switchboard_refused_total{reason=\"total\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_squatting_by_join_and_abort_is_held_to_the_per_ip_cap() {
    // Before: 10,050 rounds of upgrade, join room N, read the welcome, abort (200 at a time) took
    // 2.8 s and left 10,000 rooms of members in grace; a new client's join got server_busy.
    // A grace longer than the attack, so that every squatted member is still held at the end.
    let server = Server::start(&["--resume-grace", "120s"]);
    let addr = server.addr.clone();
    let rounds = 10_050u32;
    let joined = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut next = 0u32;
    while next < rounds {
        let batch: Vec<u32> = (next..(next + 200).min(rounds)).collect();
        next += batch.len() as u32;
        let mut tasks = tokio::task::JoinSet::new();
        for n in batch {
            let (addr, joined, refused) = (addr.clone(), joined.clone(), refused.clone());
            tasks.spawn(async move {
                match ws_from([127, 0, 0, 2], &addr).await {
                    Ok(mut ws) => {
                        send(&mut ws, json!({"type": "join", "room": format!("squat-{n}")})).await;
                        if next_json(&mut ws).await["type"] == "welcome" {
                            joined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Abort: a reset, no close frame, no leave.
                        let tcp = ws.into_inner();
                        let _ = tcp.set_zero_linger();
                        drop(tcp);
                    }
                    Err(error) => {
                        // 429, or closed unanswered when many refusals come at once.
                        assert!(matches!(refused_status(&error), Some(429) | None), "{error}");
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("an attacker task");
        }
    }
    let joined = joined.load(std::sync::atomic::Ordering::Relaxed);
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "squatting: {joined} joined, {refused} refused; rooms {}, suspended {}, counted {}",
        server.metric("switchboard_rooms").await,
        server.metric("switchboard_suspended_members").await,
        server.metric("switchboard_counted_connections").await
    );
    assert_eq!(joined + refused, rounds);
    assert!(joined <= 256, "{joined} rooms squatted from one address");
    assert!(server.metric("switchboard_rooms").await <= 256.0);
    assert!(server.metric("switchboard_suspended_members").await <= 256.0);
    // Everyone else can still open a room.
    server.polite_clients_are_served("not-squatted").await;
}

/// In-process on the paused clock: the grace period runs out exactly, in no time.
#[tokio::test(start_paused = true)]
async fn a_member_in_grace_counts_against_its_clients_cap_until_grace_ends() {
    let server = InProcess::start(&["--max-connections-per-ip", "2", "--resume-grace", "2s"]).await;
    let mut tokens = Vec::new();
    for room in ["a", "b"] {
        let mut ws = ws_from([127, 0, 0, 2], &server.addr).await.expect("in");
        send(&mut ws, json!({"type": "join", "room": room})).await;
        tokens.push(next_json(&mut ws).await["resume_token"].clone());
        let tcp = ws.into_inner();
        let _ = tcp.set_zero_linger();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.metric("switchboard_connections").await, 0.0);
    let refused = ws_from([127, 0, 0, 2], &server.addr).await.expect_err("both places are held in grace");
    assert_eq!(refused_status(&refused), Some(429), "{refused}");
    polite_clients_are_served(&server.addr, "other-address").await;
    // Once grace ends, the places are free again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.metric("switchboard_suspended_members").await, 0.0);
    let mut back = ws_from([127, 0, 0, 2], &server.addr).await.expect("room again after grace");
    send(&mut back, json!({"type": "join", "room": "c"})).await;
    assert_eq!(next_json(&mut back).await["type"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    let server = Server::start(&["--trusted-proxy", "127.0.0.2/32", "--max-connections-per-ip", "2"]);
    let target = server.socket_addr();
    let upgrade = |forwarded: &'static str| {
        format!(
            "GET /ws?room=x HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Forwarded-For: {forwarded}\r\n\r\n"
        )
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = tcp_from([127, 0, 0, 2], target).await.expect("connect");
        tcp.write_all(upgrade("6.6.6.6, 203.0.113.5").as_bytes()).await.expect("written");
        assert_eq!(status_line(&mut tcp).await, 101, "the query string is ignored on /ws");
        held.push(tcp);
    }
    // A third from the same forwarded client is over its cap, though the proxy has room.
    let mut tcp = tcp_from([127, 0, 0, 2], target).await.expect("connect");
    tcp.write_all(upgrade("203.0.113.5").as_bytes()).await.expect("written");
    assert_eq!(status_line(&mut tcp).await, 429);
    // Another client through the same proxy is not.
    let mut tcp = tcp_from([127, 0, 0, 2], target).await.expect("connect");
    tcp.write_all(upgrade("203.0.113.6").as_bytes()).await.expect("written");
    assert_eq!(status_line(&mut tcp).await, 101);
    held.push(tcp);
    // From an address that is not a trusted proxy, X-Forwarded-For means nothing.
    for expected in [101, 101, 429] {
        let mut tcp = tcp_from([127, 0, 0, 3], target).await.expect("connect");
        tcp.write_all(upgrade("198.51.100.1").as_bytes()).await.expect("written");
        assert_eq!(status_line(&mut tcp).await, expected);
        held.push(tcp);
    }
}

async fn status_line(tcp: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
    };
    within_real_time(WAIT, read).await.expect("an answer in time");
    let head = String::from_utf8_lossy(&head);
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP before the upgrade

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_is_cut_at_16_kib_and_costs_no_memory() {
    // Before: 400 sockets sending ~395 KB of header lines without the final blank line took the
    // server's RSS from 18 to 235 MB.
    let server = Server::start(&[]);
    let target = server.socket_addr();
    server.polite_clients_are_served("warm-up").await;
    let before = server.rss_kib();
    let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let line = line.clone();
        // Two attacker addresses, each under the per-IP cap, so that the head limit is what is
        // tested.
        let from = [127, 0, 0, 2 + (i % 2) as u8];
        tasks.spawn(async move {
            let mut tcp = tcp_from(from, target).await.expect("connect");
            let mut sent = 0usize;
            let mut written = tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.is_ok();
            while written && sent < 395_000 {
                written = tcp.write_all(line.as_bytes()).await.is_ok();
                sent += line.len();
            }
            let mut answer = Vec::new();
            let _ = within_real_time(WAIT, tcp.read_to_end(&mut answer)).await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            (written, answer)
        });
    }
    let mut answered_431 = 0;
    while let Some(done) = tasks.join_next().await {
        let (all_written, answer) = done.expect("attacker task");
        if answer.starts_with("HTTP/1.1 431") {
            answered_431 += 1;
        } else {
            assert!(answer.is_empty() || !all_written, "a head over 16 KiB was accepted: {answer:.80}");
        }
    }
    let after = server.rss_kib();
    eprintln!("header flood: RSS {before} KiB -> {after} KiB, {answered_431} of 400 answered 431");
    assert!(answered_431 > 0, "over-long heads get 431");
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");
    server.polite_clients_are_served("after-header-flood").await;
}

/// In-process on the paused clock: the header timeout runs out in no time, and not early.
#[tokio::test(start_paused = true)]
async fn a_connection_without_a_complete_head_is_closed_at_the_header_timeout() {
    let server = InProcess::start(&["--header-timeout", "1s"]).await;
    let target = server.socket_addr();
    let opened = tokio::time::Instant::now();
    let mut silent = tcp_from([127, 0, 0, 2], target).await.expect("connect");
    let mut partial = tcp_from([127, 0, 0, 2], target).await.expect("connect");
    partial.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.expect("written");
    // A kept-alive connection: one answered request, then silence.
    let mut kept = tcp_from([127, 0, 0, 2], target).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("written");
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.expect("an answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    for (what, tcp) in [("silent", &mut silent), ("partial head", &mut partial), ("kept alive", &mut kept)] {
        // Real seconds: the paused clock jumps to the server's timer, and the FIN may take a
        // moment to cross a busy kernel.
        assert!(closed_by_server(tcp, Duration::from_secs(5)).await, "{what} connection still open");
        let closed_after = opened.elapsed();
        assert!(
            closed_after >= Duration::from_secs(1),
            "{what} connection closed early, after {closed_after:?}"
        );
    }
    polite_clients_are_served(&server.addr, "after-timeouts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_not_spoken() {
    let server = Server::start(&[]);
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut tcp = tcp_from([127, 0, 0, 2], server.socket_addr()).await.expect("connect");
    tcp.write_all(preface.as_bytes()).await.expect("written");
    // An empty SETTINGS frame, as an h2c client sends after the preface.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("written");
    let mut answer = Vec::new();
    let _ = within_real_time(WAIT, tcp.read_to_end(&mut answer)).await.expect("closed in time");
    // An HTTP/2 server answers with its own SETTINGS frame (type 4 in the fourth byte).
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 "), "answered {answer:?}");
    server.polite_clients_are_served("after-h2c").await;
}

#[test]
fn sigterm_ends_the_process_within_5_s_whatever_clients_do() {
    // Before: with one unfinished `GET / HTTP/1.1` open, the server still ran 12 s after SIGTERM.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut server = Server::start(&[]);
    let target = server.socket_addr();
    let addr = server.addr.clone();
    let _held = runtime.block_on(async {
        let mut unfinished = tcp_from([127, 0, 0, 2], target).await.expect("connect");
        unfinished.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.expect("written");
        // A WebSocket client that never reads, with a full queue the server cannot write.
        let mut deaf = ws_from([127, 0, 0, 3], &addr).await.expect("in");
        send(&mut deaf, json!({"type": "join", "room": "deaf"})).await;
        let mut talker = ws_from([127, 0, 0, 4], &addr).await.expect("in");
        send(&mut talker, json!({"type": "join", "room": "deaf"})).await;
        let welcome = next_json(&mut talker).await;
        let to = welcome["peers"][0]["id"].clone();
        for n in 0..300 {
            let big = json!({"type": "signal", "to": to, "signal": {"type": "offer", "sdp": format!("{n}{}", "v".repeat(30_000))}});
            if talker.send(Message::text(big.to_string())).await.is_err() {
                break;
            }
        }
        (unfinished, deaf, talker)
    });
    server.terminate();
    assert_eq!(server.exit_within(Duration::from_secs(5)), Some(Some(0)), "exit 0 within 5 s of SIGTERM");
}

#[test]
fn sigterm_ends_a_tls_server_during_a_handshake_that_never_ends() {
    let dir = tls_files();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut server = Launch::new(server_binary())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .quiet()
        .start()
        .unwrap_or_else(|e| panic!("the TLS server starts: {e}"));
    assert!(server.http_url().starts_with("https://"), "{}", server.http_url());
    let addr = server.socket_addr();
    let _stalled = runtime.block_on(async {
        let mut tcp = tcp_from([127, 0, 0, 2], addr).await.expect("connect");
        // The first bytes of a ClientHello, and then nothing.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("written");
        tcp
    });
    std::thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    let code = server.wait_exit(Duration::from_secs(5)).expect("the TLS server ends within 5 s of SIGTERM");
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh directory holding `cert.pem` and `key.pem`, a self-signed certificate for localhost.
fn tls_files() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("switchboard-edge-tls-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    testkit::self_signed_localhost(&dir);
    dir
}

#[test]
fn unreadable_or_unparsable_tls_files_exit_2_with_nothing_on_stdout() {
    let dir = tls_files();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("written");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let missing = dir.join("missing.pem");
    for (cert, key) in
        [(&missing, &key), (&cert, &missing), (&garbage, &key), (&cert, &garbage), (&key, &cert)]
    {
        let mut child = Command::new(server_binary())
            .args(["--addr", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("the server kept running with cert {cert:?} and key {key:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        child.stdout.take().expect("piped").read_to_string(&mut stdout).expect("read");
        child.stderr.take().expect("piped").read_to_string(&mut stderr).expect("read");
        assert_eq!(status.code(), Some(2), "cert {cert:?} key {key:?}: {stderr}");
        assert_eq!(stdout, "", "nothing on stdout");
        assert!(stderr.contains(".pem"), "the message names the file: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Origin, Host, page headers, refusals counted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_must_be_the_servers_own_scheme_and_host_must_be_a_loopback_name() {
    let server = Server::start_with(None, &["--allowed-host", "chat.example"], "info");
    let target = server.socket_addr();
    let port = target.port();
    let upgrade = |host: &str, origin: Option<String>| {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
        )
    };
    let own = format!("127.0.0.1:{port}");
    let evil = format!("evil.example:{port}");
    let cases = [
        // Before: an https Origin was accepted by the plain-http server.
        (upgrade(&own, Some(format!("https://{own}"))), 403),
        // Before: a foreign Host with a matching Origin was accepted (DNS rebinding).
        (upgrade(&evil, Some(format!("http://{evil}"))), 403),
        (upgrade(&evil, None), 403),
        (upgrade(&own, Some(format!("http://{own}"))), 101),
        (upgrade(&format!("localhost:{port}"), Some(format!("http://localhost:{port}"))), 101),
        (upgrade(&format!("chat.example:{port}"), None), 101),
        (upgrade(&own, None), 101),
    ];
    for (raw, expected) in cases {
        let mut tcp = tcp_from([127, 0, 0, 2], target).await.expect("connect");
        tcp.write_all(raw.as_bytes()).await.expect("written");
        assert_eq!(status_line(&mut tcp).await, expected, "{raw}");
    }
    // A foreign Host gets 403 on every path; no Host at all gets 400.
    for path in ["/", "/healthz", "/metrics", "/app.js"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n");
        assert_eq!(request(target, [127, 0, 0, 2], &raw).await.0, 403, "{path}");
    }
    let (status, _) = request(target, [127, 0, 0, 2], "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(server.metric("switchboard_refused_total{reason=\"origin\"}").await, 1.0);
    assert_eq!(server.metric("switchboard_refused_total{reason=\"host\"}").await, 7.0);
    server.polite_clients_are_served("after-origin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_csp_nosniff_and_no_referrer() {
    let server = Server::start(&[]);
    for path in ["/", "/app.js", "/style.css"] {
        let (status, response) = server.get([127, 0, 0, 1], path).await;
        assert_eq!(status, 200, "{path}");
        let head = response.split("\r\n\r\n").next().expect("a head").to_ascii_lowercase();
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("{path} has no CSP:\n{head}"));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(head.contains("\r\nx-content-type-options: nosniff"), "{head}");
        assert!(head.contains("\r\nreferrer-policy: no-referrer"), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_are_counted_and_summarised_not_logged_one_line_each() {
    // Before: every refused upgrade was one info log line, so cheap 429s flooded the log.
    let server = Server::start_with(None, &["--max-connections-per-ip", "1"], "info");
    let _held = ws_from([127, 0, 0, 2], &server.addr).await.expect("the one allowed");
    // Let the server count it before the refusals race it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..500 {
        let error = ws_from([127, 0, 0, 2], &server.addr).await.expect_err("refused");
        assert_eq!(refused_status(&error), Some(429));
    }
    assert_eq!(server.metric("switchboard_refused_total{reason=\"per_ip\"}").await, 500.0);
    server.polite_clients_are_served("after-refusals").await;
    // The summary comes within one interval; a second one would need more refusals.
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while !server.log().contains("refused requests") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = server.log();
    let lines = log.lines().filter(|l| l.contains("refused")).count();
    assert_eq!(lines, 1, "one summary line, not one per refusal:\n{log}");
    assert!(log.contains("per_ip=500"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Every frame costs

/// Sends `frames` copies of `frame` as fast as the socket takes them while reading every answer;
/// returns the answers read and how the connection ended (the close code, if any).
async fn flood(ws: Ws, frame: Message, frames: usize) -> (usize, Option<u16>) {
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for _ in 0..frames {
            if sink.send(frame.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut answers = 0;
    let mut code = None;
    let read = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Close(close) => {
                    code = close.map(|c| u16::from(c.code));
                    break;
                }
                Message::Text(_) | Message::Pong(_) | Message::Binary(_) => answers += 1,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the flood ends in time");
    writer.abort();
    (answers, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_free_frames_end_with_1008_after_at_most_10000_answers() {
    // Before: 20,000 leaves before join got 20,000 not_joined and no close; 100,000 binary frames
    // got 100,000 binary_unsupported and no close.
    let server = Server::start(&[]);
    let floods = [
        ("leave before join", Message::text(r#"{"type":"leave"}"#), 20_000),
        ("binary", Message::binary(vec![0u8]), 100_000),
        ("ping", Message::Ping(vec![1u8].into()), 100_000),
        ("malformed", Message::text("{"), 20_000),
    ];
    for (i, (what, frame, frames)) in floods.into_iter().enumerate() {
        let ws = ws_from([127, 0, 0, 2 + i as u8], &server.addr).await.expect("in");
        let polite = tokio::spawn({
            let server_addr = server.addr.clone();
            async move {
                let mut ws = ws_from([127, 0, 0, 1], &server_addr).await.expect("polite client in");
                send(&mut ws, json!({"type": "join", "room": format!("polite-{i}")})).await;
                next_json(&mut ws).await
            }
        });
        let (answers, code) = flood(ws, frame, frames).await;
        eprintln!("{what}: {answers} answers, close {code:?}");
        assert_eq!(code, Some(1008), "{what}: the flood is closed with 1008");
        assert!(answers <= 10_000, "{what}: {answers} answers");
        assert_eq!(polite.await.expect("polite task")["type"], "welcome", "{what}");
    }
    server.polite_clients_are_served("after-floods").await;
}

/// The next message, or how the connection ended.
async fn next_or_end(ws: &mut Ws) -> Result<Value, Option<u16>> {
    loop {
        let frame = within_real_time(WAIT, ws.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("JSON")),
            Some(Ok(Message::Close(close))) => return Err(close.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_continues_the_members_byte_budget() {
    // Before: a member that had spent most of its byte budget (16 MiB) aborted and resumed to get
    // a fresh one: 567 MiB were queued for members in grace in 5.4 s, RSS 30 -> 657 MB with no
    // connection open. Here: three rounds of ~15 MiB of 60 KB offers to 15 members in grace,
    // each followed by an abort and a resume. With a fresh budget per resume nothing is ever
    // refused; with the member's budget going on, the second round is refused and closed.
    let server = Server::start(&["--resume-grace", "30s"]);
    let before = server.rss_kib();
    let mut targets = Vec::new();
    for n in 0..15 {
        let mut ws = ws_from([127, 0, 0, 2], &server.addr).await.expect("in");
        send(&mut ws, json!({"type": "join", "room": "hoard", "name": format!("t{n}")})).await;
        targets.push(next_json(&mut ws).await["id"].clone());
        let tcp = ws.into_inner();
        let _ = tcp.set_zero_linger();
    }
    let mut sender = ws_from([127, 0, 0, 3], &server.addr).await.expect("in");
    send(&mut sender, json!({"type": "join", "room": "hoard", "name": "hoarder"})).await;
    let mut token = next_json(&mut sender).await["resume_token"].clone();
    let (mut sent, mut rate_limited, mut closed_for_abuse) = (0usize, 0, false);
    for round in 0..3 {
        let mut round_bytes = 0;
        while round_bytes < 15 * 1024 * 1024 {
            let text = json!({"type": "signal", "to": targets[sent % targets.len()],
                "signal": {"type": "offer", "sdp": format!("{sent}{}", "o".repeat(60_000))}})
            .to_string();
            sent += 1;
            round_bytes += text.len();
            if sender.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        // A frame that is always answered, with an error that carries no "to": once it is
        // answered, every offer before it has been.
        let _ = sender.send(Message::text(r#"{"type":"join","room":"hoard"}"#)).await;
        loop {
            match next_or_end(&mut sender).await {
                Ok(message) if message["type"] == "error" && message.get("to").is_none() => break,
                Ok(message) => rate_limited += usize::from(message["code"] == "rate_limited"),
                Err(code) => {
                    closed_for_abuse = code == Some(1008);
                    break;
                }
            }
        }
        eprintln!(
            "round {round}: {sent} offers sent, {rate_limited} rate_limited, closed: {closed_for_abuse}"
        );
        if closed_for_abuse {
            break;
        }
        let tcp = sender.into_inner();
        let _ = tcp.set_zero_linger();
        drop(tcp);
        sender = ws_from([127, 0, 0, 3], &server.addr).await.expect("in");
        send(&mut sender, json!({"type": "join", "room": "hoard", "resume": token})).await;
        let welcome = next_json(&mut sender).await;
        assert_eq!(welcome["resumed"], true, "round {round}: {welcome}");
        token = welcome["resume_token"].clone();
    }
    let after = server.rss_kib();
    let relayed = server.metric("switchboard_signals_relayed_total").await;
    eprintln!("abort-and-resume hoarding: {relayed} offers relayed, RSS {before} KiB -> {after} KiB");
    assert!(rate_limited > 0 || closed_for_abuse, "every resume gave a fresh byte budget");
    server.polite_clients_are_served("after-hoarding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_names_with_bidi_overrides_are_refused() {
    let server = Server::start(&[]);
    let mut ws = ws_from([127, 0, 0, 2], &server.addr).await.expect("in");
    for name in ["\u{202E}ecila", "bob\u{2066}", "\u{200F}x"] {
        send(&mut ws, json!({"type": "join", "room": "names", "name": name})).await;
        let answer = next_json(&mut ws).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("bad_name")),
            "{name:?}"
        );
    }
    send(&mut ws, json!({"type": "join", "room": "names", "name": "عليّ"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
}
