//! Lossless delivery (PROTOCOL.md "Sequence numbers", issue 14), end to end: a connection that
//! dies with messages written to it but unread loses nothing, because the client resumes with
//! the last seq it handled and the server replays the rest.
//!
//! The test-owned proxy makes the crossing deterministic: it holds back the server's bytes until
//! a given message has been written into the connection, then resets it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::browser::{Browser, BrowserKind, start_server_with_page};
use tests::proxy::CuttingProxy;
use tests::{Peer, Server, in_each_browser, isolated};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const HELD_DEADLINE: Duration = Duration::from_secs(20);

/// The crossing of issue 14: `peer_joined` for cy is written into ana's connection (and maybe
/// cy's offer and candidates too), then the connection resets. Before sequence numbers, ana
/// resumed without them and never connected to cy. Now she resumes with `last_seq`, gets
/// `peer_joined` before any signal from cy, and connects.
#[test]
fn a_peer_joined_written_into_a_dying_connection_still_arrives_first_and_the_peers_connect() {
    isolated(|| async {
        let server = Server::start(&["--resume-grace", "20s"]).await;
        let proxy = CuttingProxy::start(server.addr()).await;
        let mut ana = Peer::spawn_with_url(&proxy.ws_url(), &["--name", "ana", "--room", "x"]).await;
        let ana_id = ana.joined().await;

        proxy.hold();
        let mut cy = Peer::spawn(&server, &["--name", "cy", "--room", "x", "--send", "hi ana"]).await;
        let cy_id = cy.joined().await;
        assert!(proxy.wait_held("peer_joined", HELD_DEADLINE).await, "the server wrote peer_joined to ana");
        proxy.cut();
        proxy.restore();

        let welcome =
            ana.wait_for("the resumed welcome", |e| e["event"] == "welcome" && e["resumed"] == true).await;
        assert_eq!(welcome["id"], ana_id.as_str(), "same id: a resume");
        ana.wait_message(&cy_id, "hi ana").await;
        cy.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;
        let events = ana.events();
        let position = |what: &str| {
            events
                .iter()
                .position(|e| {
                    e["event"] == what && (e["id"] == cy_id.as_str() || e["peer"] == cy_id.as_str())
                })
                .unwrap_or_else(|| panic!("ana has no {what} for cy: {events:?}"))
        };
        assert!(position("peer_joined") < position("channel_open"), "peer_joined first: {events:?}");
        assert_eq!(events.iter().filter(|e| e["event"] == "peer_joined").count(), 1, "once: {events:?}");
    });
}

in_each_browser!(the_page_resumes_with_last_seq_after_its_socket_is_cut_with_messages_in_flight);
/// The page's socket is reset after the server wrote bob's `peer_joined` and offer into it. The
/// page resumes with `last_seq`, gets both again, answers, and connects to bob. (A page that
/// resumed without `last_seq` would never hear of bob's offer: it was "delivered".)
async fn the_page_resumes_with_last_seq_after_its_socket_is_cut_with_messages_in_flight(kind: BrowserKind) {
    let server = start_server_with_page(&["--resume-grace", "20s"]).await;
    let proxy = CuttingProxy::start(server.addr()).await;
    let ana = Browser::start_kind(kind, "ana").await;
    // The page's WebSocket goes to its own origin's /ws: through the proxy too.
    ana.open(&format!("{}/?room=flight&name=ana", proxy.http_url())).await;
    let ana_id = ana.self_id().await;

    proxy.hold();
    let mut bob =
        Peer::spawn(&server, &["--room", "flight", "--name", "bob", "--send", "through the crossing"]).await;
    let bob_id = bob.joined().await;
    assert!(
        proxy.wait_held(r#""type":"offer""#, HELD_DEADLINE).await,
        "bob's offer was written into the page's connection"
    );
    proxy.cut();
    proxy.restore();

    ana.wait_until(
        "the joined state after the resume",
        r#"return document.querySelector('#status').dataset.state === 'joined';"#,
    )
    .await;
    assert_eq!(ana.self_id().await, ana_id, "the page resumed, not rejoined");
    ana.wait_connected(&bob_id).await;
    ana.wait_line(&bob_id, "through the crossing").await;
    bob.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;
    ana.close().await;
}

/// A raw v1.1 client: joins (or resumes with `last_seq`), hands every numbered message to the
/// test, and reconnects whenever its connection dies.
struct Receiver {
    url: String,
    resume_token: Option<String>,
    last_seq: u64,
    id: Option<String>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Receiver {
    /// Connects and joins, retrying while the proxy refuses; returns the socket after `welcome`.
    async fn connect(&mut self) -> Ws {
        for _ in 0..400 {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(self.url.as_str()).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let mut join = json!({"type": "join", "room": "soak", "name": "receiver"});
            if let Some(token) = &self.resume_token {
                join["resume"] = json!(token);
                join["last_seq"] = json!(self.last_seq);
            }
            if ws.send(Message::text(join.to_string())).await.is_err() {
                continue;
            }
            let Some(Ok(Message::Text(text))) = ws.next().await else { continue };
            let welcome: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            if self.resume_token.is_some() {
                assert_eq!(welcome["resumed"], true, "every resume is accepted: {welcome}");
                assert_eq!(welcome["seq"], self.last_seq, "{welcome}");
            }
            self.id = welcome["id"].as_str().map(str::to_owned);
            self.resume_token = welcome["resume_token"].as_str().map(str::to_owned);
            return ws;
        }
        panic!("the receiver could not reconnect");
    }
}

/// The last few things the soak test saw, oldest first.
#[derive(Default)]
struct Recent(std::collections::VecDeque<String>);

impl Recent {
    fn note(&mut self, event: String) {
        if self.0.len() == 40 {
            self.0.pop_front();
        }
        self.0.push_back(event);
    }
}

impl std::fmt::Display for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|event| writeln!(f, "  {event}"))
    }
}

/// 10,000 signals to a receiver whose connection is reset every few hundred messages, each time
/// with messages written into it and unread (the proxy holds them back first). The receiver
/// handles every signal exactly once, in order: nothing lost, duplicated or reordered.
#[test]
fn ten_thousand_signals_through_random_cuts_arrive_once_in_order() {
    isolated(|| async {
        const TOTAL: u64 = 10_000;
        let server = Server::start(&["--no-rate-limit", "--resume-grace", "20s"]).await;
        let proxy = CuttingProxy::start(server.addr()).await;
        let mut receiver = Receiver { url: proxy.ws_url(), resume_token: None, last_seq: 0, id: None };
        let mut ws = receiver.connect().await;
        let receiver_id = receiver.id.clone().expect("an id");

        let (mut sender, _) =
            tokio_tungstenite::connect_async(server.ws_url()).await.expect("sender connects");
        sender
            .send(Message::text(json!({"type": "join", "room": "soak", "name": "sender"}).to_string()))
            .await
            .expect("join");
        let sender_task = tokio::spawn(async move {
            for n in 1..=TOTAL {
                let signal = json!({"type": "signal", "to": receiver_id, "signal": {"type": "candidate",
                    "candidate": {"candidate": format!("candidate:{n} 1 udp 1 127.0.0.1 9 typ host"), "sdpMid": "0"}}});
                sender.send(Message::text(signal.to_string())).await.expect("sent");
                if n % 10 == 0 {
                    // ~1,000 signals/s: a run of ~10 s, with cuts all along it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            sender
        });

        // A deterministic pseudo-random cut schedule, printed so that a failure can be rerun
        // (LOSSLESS_SEED=N reruns it).
        let seed =
            std::env::var("LOSSLESS_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }) | 1;
        eprintln!("cut schedule seed {seed}");
        let mut state = seed;
        let mut next_cut = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            200 + state % 600
        };
        let mut cut_at = next_cut();
        let mut handled: u64 = 0;
        let mut cuts = 0;
        let mut cuts_with_messages_in_flight = 0;
        // The last events seen, for a failure's message: what came around a gap or repeat.
        let mut recent = Recent::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while handled < TOTAL {
            assert!(tokio::time::Instant::now() < deadline, "only {handled} of {TOTAL} signals after 120 s");
            if handled >= cut_at {
                cut_at = handled + next_cut();
                proxy.hold();
                // Near the end the sender may be done: then the cut has nothing in flight.
                let in_flight = proxy.wait_held("\"signal\"", Duration::from_secs(2)).await;
                if in_flight {
                    cuts_with_messages_in_flight += 1;
                }
                proxy.cut();
                proxy.restore();
                cuts += 1;
                recent.note(format!(
                    "cut {cuts} after seq {} (messages in flight: {in_flight})",
                    receiver.last_seq
                ));
            }
            let frame =
                tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame within 10 s");
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                ended @ (Some(Err(_)) | None) => {
                    recent.note(format!(
                        "socket ended ({ended:?}); resuming with last_seq {}",
                        receiver.last_seq
                    ));
                    ws = receiver.connect().await;
                    recent.note(format!("resumed: welcome.seq {}", receiver.last_seq));
                    continue;
                }
            };
            let message: Value = serde_json::from_str(&text).expect("JSON");
            // Every numbered message (the sender's peer_joined too) follows the one before.
            if let Some(seq) = message["seq"].as_u64() {
                recent.note(format!("seq {seq} ({})", message["type"]));
                assert_eq!(
                    seq,
                    receiver.last_seq + 1,
                    "no gap, no repeat: {message}; seed {seed}; lately:\n{recent}"
                );
                receiver.last_seq = seq;
            }
            if message["type"] != "signal" {
                continue;
            }
            let candidate = message["signal"]["candidate"]["candidate"].as_str().expect("candidate");
            let n: u64 =
                candidate["candidate:".len()..].split(' ').next().and_then(|n| n.parse().ok()).expect("n");
            assert_eq!(n, handled + 1, "in the order sent, each once; seed {seed}; lately:\n{recent}");
            handled = n;
        }
        sender_task.await.expect("the sender finished");
        eprintln!(
            "{TOTAL} signals handled in order through {cuts} cuts, {cuts_with_messages_in_flight} with messages in flight"
        );
        assert!(
            cuts_with_messages_in_flight >= 10,
            "only {cuts_with_messages_in_flight} cuts with messages in flight"
        );
    });
}

/// The proxy's own promise, which the soak test above relies on: after a cut, nothing the
/// server wrote after the held bytes reaches the client. The cut ends holding at once, but the
/// connection's task notices the cut only when it next runs; it used to forward what it read
/// meanwhile, so the client got seq n+2 right after n (n+1 died in the held bytes): a gap the
/// server never made, the soak test's rare "no gap, no repeat" failure. Here the server writes
/// far more than the sockets buffer, so the proxy is still reading when the cut lands; one round
/// caught the old proxy about half the time, so there are 20 (docs/reliability.md).
#[test]
fn after_a_cut_nothing_written_behind_the_held_bytes_reaches_the_client() {
    isolated(|| async {
        const BURST: usize = 8 << 20;
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = CuttingProxy::start(upstream.local_addr().expect("address")).await;
        for round in 1..=20 {
            let client = tokio::net::TcpStream::connect(proxy.addr()).await.expect("connect");
            let (mut server, _) = upstream.accept().await.expect("the proxy connects upstream");
            // Reads from the start, so that bytes forwarded just before the reset are counted.
            let reader = tokio::spawn(async move {
                let mut client = client;
                let mut buffer = vec![0u8; 64 * 1024];
                let mut received = 0;
                while let Ok(read @ 1..) = client.read(&mut buffer).await {
                    received += read;
                }
                received
            });
            proxy.hold();
            let writer = tokio::spawn(async move {
                // Fails when the cut resets the connection: that is the point.
                let _ = server.write_all(&vec![b'x'; BURST]).await;
            });
            assert!(proxy.wait_held("x", Duration::from_secs(10)).await, "round {round}: nothing held");
            proxy.cut();
            proxy.restore();
            let received = tokio::time::timeout(Duration::from_secs(20), reader)
                .await
                .expect("the cut ends the client's connection")
                .expect("the reader ran");
            writer.abort();
            assert_eq!(received, 0, "round {round}: bytes written after the hold reached the client");
        }
    });
}
