//! Several instances as one service (issue 15, INTERFACES.md "Several instances"): two real
//! `server` processes on one real Redis (Debian's `redis-server`, started by each test), with
//! members spread over both. Each test runs in its own loopback-only network namespace.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::redis::Redis;
use tests::{Server, isolated};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long a test waits for a message it expects.
const WAIT: Duration = Duration::from_secs(10);

/// A protocol client on one instance.
struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as its client saw it.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed(Option<u16>),
    Dropped,
}

impl Client {
    async fn connect(server: &Server) -> Client {
        let (ws, _) = connect_async(server.ws_url()).await.expect("WebSocket upgrade succeeds");
        Client { ws }
    }

    async fn send(&mut self, message: Value) {
        self.ws.send(Message::text(message.to_string())).await.expect("frame sent");
    }

    /// Joins `room` as `name` on `server`: the client and its welcome.
    async fn join(server: &Server, room: &str, name: &str) -> (Client, Value) {
        let mut client = Client::connect(server).await;
        client.send(json!({"type": "join", "room": room, "name": name})).await;
        let welcome = client.expect("welcome").await;
        (client, welcome)
    }

    /// Resumes with `welcome`'s token on `server`, saying it handled up to `last_seq`.
    async fn resume(server: &Server, room: &str, welcome: &Value, last_seq: u64) -> (Client, Value) {
        let mut client = Client::connect(server).await;
        client
            .send(json!({"type": "join", "room": room, "resume": welcome["resume_token"], "last_seq": last_seq}))
            .await;
        let welcome = client.expect("welcome").await;
        (client, welcome)
    }

    async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await.ok()? {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).expect("JSON")),
                Some(Ok(Message::Close(close))) => panic!("closed unexpectedly: {close:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.unwrap_or_else(|| panic!("no message within {WAIT:?}"))
    }

    /// The next message, which must be of type `kind`.
    async fn expect(&mut self, kind: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }

    async fn expect_error(&mut self, code: &str) -> Value {
        let message = self.expect("error").await;
        assert_eq!(message["code"], code, "{message}");
        message
    }

    async fn expect_silence(&mut self, within: Duration) {
        if let Some(message) = self.try_recv(within).await {
            panic!("expected nothing, got {message}");
        }
    }

    /// Reads until the connection ends (at most `within`); the close code if it sent one.
    async fn ended(&mut self, within: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the connection did not end within {within:?}"),
                Ok(Some(Ok(Message::Close(close)))) => {
                    return Ended::Closed(close.map(|c| u16::from(c.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return Ended::Dropped,
            }
        }
    }
}

fn signal_to(to: &Value, n: u64) -> Value {
    json!({"type": "signal", "to": to, "signal": {"type": "candidate", "candidate": {"candidate": format!("n{n}"), "sdpMid": "0"}}})
}

/// The `n` a [`signal_to`] carried.
fn number_of(message: &Value) -> u64 {
    message["signal"]["candidate"]["candidate"]
        .as_str()
        .and_then(|c| c.strip_prefix('n'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered signal: {message}"))
}

/// Two instances on one Redis, with `extra` flags each.
async fn two_instances(redis: &Redis, extra: &[&str]) -> (Server, Server) {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    let a = Server::start(&args).await;
    let b = Server::start(&args).await;
    for server in [&a, &b] {
        server.wait_for_metric("switchboard_redis_up", 1.0).await;
    }
    (a, b)
}

#[test]
fn a_room_spans_two_instances_with_every_guarantee() {
    isolated(|| async {
        let redis = Redis::start().await;
        let (a, b) = two_instances(&redis, &["--room-size", "3"]).await;

        let (mut ana, ana_welcome) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&b, "x", "bob").await;
        assert_eq!(bob_welcome["peers"], json!([{"id": ana_welcome["id"], "name": "ana"}]), "bob sees ana");
        assert_ne!(ana_welcome["id"], bob_welcome["id"]);
        let joined = ana.expect("peer_joined").await;
        assert_eq!(
            (joined["peer"]["id"].clone(), joined["seq"].clone()),
            (bob_welcome["id"].clone(), json!(1))
        );

        // Signals cross instances in order, once each, numbered per recipient.
        for n in 1..=50 {
            bob.send(signal_to(&ana_welcome["id"], n)).await;
        }
        for n in 1..=50 {
            let signal = ana.expect("signal").await;
            assert_eq!(signal["from"], bob_welcome["id"]);
            assert_eq!((number_of(&signal), signal["seq"].as_u64()), (n, Some(n + 1)));
        }
        ana.send(signal_to(&bob_welcome["id"], 7)).await;
        let signal = bob.expect("signal").await;
        assert_eq!((signal["from"].clone(), signal["seq"].clone()), (ana_welcome["id"].clone(), json!(1)));

        // A third member on A: both others hear of it, and it lists them oldest first.
        let (mut cy, cy_welcome) = Client::join(&a, "x", "cy").await;
        let names: Vec<&Value> =
            cy_welcome["peers"].as_array().expect("peers").iter().map(|p| &p["name"]).collect();
        assert_eq!(names, [&json!("ana"), &json!("bob")], "oldest first");
        assert_eq!(ana.expect("peer_joined").await["peer"]["name"], "cy");
        assert_eq!(bob.expect("peer_joined").await["peer"]["name"], "cy");

        // room_full counts members on both instances.
        let mut dan = Client::connect(&b).await;
        dan.send(json!({"type": "join", "room": "x", "name": "dan"})).await;
        dan.expect_error("room_full").await;

        // Only members of the room can be reached.
        bob.send(signal_to(&json!("nobody"), 1)).await;
        assert_eq!(bob.expect_error("unknown_peer").await["to"], "nobody");
        bob.send(signal_to(&bob_welcome["id"], 1)).await;
        bob.expect_error("unknown_peer").await;

        // leave on B: the members on A see peer_left, and the place is free for dan.
        bob.send(json!({"type": "leave"})).await;
        assert_eq!(bob.ended(WAIT).await, Ended::Closed(Some(1000)));
        assert_eq!(ana.expect("peer_left").await["id"], bob_welcome["id"]);
        assert_eq!(cy.expect("peer_left").await["id"], bob_welcome["id"]);
        dan.send(json!({"type": "join", "room": "x", "name": "dan"})).await;
        let dan_welcome = dan.expect("welcome").await;
        assert_eq!(dan_welcome["peers"].as_array().map(Vec::len), Some(2));
        assert_eq!(cy_welcome["seq"], 0);
    });
}

#[test]
fn a_resume_on_the_other_instance_replays_exactly_the_unhandled_messages_once_in_order() {
    isolated(|| async {
        let redis = Redis::start().await;
        let (a, b) = two_instances(&redis, &["--resume-grace", "20s"]).await;
        let (mut ana, _) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&b, "x", "bob").await;
        ana.expect("peer_joined").await;
        for n in 1..=8 {
            ana.send(signal_to(&bob_welcome["id"], n)).await;
        }
        // Bob's socket delivered all eight; his client handled three before it died.
        for n in 1..=8 {
            assert_eq!(bob.expect("signal").await["seq"], n);
        }
        drop(bob);
        let (mut back, welcome) = Client::resume(&a, "x", &bob_welcome, 3).await;
        assert_eq!(
            (welcome["resumed"].clone(), welcome["id"].clone()),
            (json!(true), bob_welcome["id"].clone())
        );
        assert_eq!(welcome["seq"], 3, "the next message carries 4");
        let mut replayed = Vec::new();
        for _ in 0..5 {
            let message = back.expect("signal").await;
            replayed.push((message["seq"].as_u64().expect("seq"), number_of(&message)));
        }
        assert_eq!(replayed, [(4, 4), (5, 5), (6, 6), (7, 7), (8, 8)], "in order, each once");
        back.expect_silence(Duration::from_millis(500)).await;
        ana.send(signal_to(&bob_welcome["id"], 9)).await;
        let next = back.expect("signal").await;
        assert_eq!((next["seq"].as_u64(), number_of(&next)), (Some(9), 9), "the counter continues");
        ana.expect_silence(Duration::from_millis(300)).await;
    });
}

#[test]
fn a_resume_on_one_instance_closes_the_old_connection_on_the_other_with_4000() {
    isolated(|| async {
        let redis = Redis::start().await;
        let (a, b) = two_instances(&redis, &[]).await;
        let (mut ana, _) = Client::join(&a, "x", "ana").await;
        let (mut old, bob_welcome) = Client::join(&b, "x", "bob").await;
        ana.expect("peer_joined").await;
        let (mut new, welcome) = Client::resume(&a, "x", &bob_welcome, 0).await;
        assert_eq!(welcome["resumed"], true);
        assert_eq!(old.ended(WAIT).await, Ended::Closed(Some(4000)));
        ana.send(signal_to(&bob_welcome["id"], 1)).await;
        assert_eq!(number_of(&new.expect("signal").await), 1, "the new connection gets what follows");
        ana.expect_silence(Duration::from_millis(300)).await;
    });
}

/// Instance B is killed (SIGKILL) while ana (on A) keeps signalling bob and cy (on B). Bob
/// resumes on A within grace and gets every signal, once, in order; cy never comes back, and
/// ana sees her leave after grace (after B's death is noticed, within 5 s), never bob's.
#[test]
fn when_an_instance_is_killed_those_who_resume_elsewhere_lose_nothing_and_the_rest_leave_after_grace() {
    isolated(|| async {
        let redis = Redis::start().await;
        let (a, mut b) = two_instances(&redis, &["--resume-grace", "4s"]).await;
        let (mut ana, _) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&b, "x", "bob").await;
        let (mut cy, cy_welcome) = Client::join(&b, "x", "cy").await;
        assert_eq!(ana.expect("peer_joined").await["peer"]["name"], "bob");
        assert_eq!(ana.expect("peer_joined").await["peer"]["name"], "cy");
        assert_eq!(bob.expect("peer_joined").await["peer"]["name"], "cy");
        let mut handled = 1;
        for n in 1..=20 {
            ana.send(signal_to(&bob_welcome["id"], n)).await;
        }
        // Bob handles the first ten; the rest may or may not have reached his socket.
        for n in 1..=10 {
            let signal = bob.expect("signal").await;
            assert_eq!(number_of(&signal), n);
            handled = signal["seq"].as_u64().expect("seq");
        }
        b.kill().await;
        assert_eq!(bob.ended(WAIT).await, Ended::Dropped);
        assert_eq!(cy.ended(WAIT).await, Ended::Dropped);
        for n in 21..=30 {
            ana.send(signal_to(&bob_welcome["id"], n)).await;
        }
        let (mut back, welcome) = Client::resume(&a, "x", &bob_welcome, handled).await;
        assert_eq!(
            (welcome["resumed"].clone(), welcome["id"].clone()),
            (json!(true), bob_welcome["id"].clone())
        );
        for n in 11..=30 {
            let signal = back.expect("signal").await;
            assert_eq!(number_of(&signal), n, "every signal once, in order: {signal}");
        }
        let killed_at = tokio::time::Instant::now();
        let left = ana.try_recv(Duration::from_secs(4 + 5 + 3)).await.expect("peer_left for cy after grace");
        assert_eq!(
            (left["type"].clone(), left["id"].clone()),
            (json!("peer_left"), cy_welcome["id"].clone())
        );
        assert!(killed_at.elapsed() >= Duration::from_secs(3), "not before grace: {:?}", killed_at.elapsed());
        assert_eq!(back.expect("peer_left").await["id"], cy_welcome["id"]);
        ana.expect_silence(Duration::from_secs(1)).await;
    });
}

/// Redis is killed and started again (empty). Meanwhile the instance keeps its connections,
/// says 503 on /healthz and `switchboard_redis_up 0`, relays among its own members and answers
/// what needs Redis with `server_busy`; once Redis is back it closes the members Redis lost with 1012 and serves
/// joins again, by itself.
#[test]
fn an_instance_survives_redis_stopping_and_recovers_when_it_returns() {
    isolated(|| async {
        let mut redis = Redis::start().await;
        let (a, _b) = two_instances(&redis, &[]).await;
        let (mut ana, _) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&a, "x", "bob").await;
        ana.expect("peer_joined").await;
        assert!(a.http_get("/healthz").await.starts_with("HTTP/1.1 200"));

        redis.kill().await;
        a.wait_for_metric("switchboard_redis_up", 0.0).await;
        assert!(a.http_get("/healthz").await.starts_with("HTTP/1.1 503"), "healthz says it");
        // Both on this instance: relayed here, numbered on.
        ana.send(signal_to(&bob_welcome["id"], 1)).await;
        let signal = bob.expect("signal").await;
        assert_eq!((number_of(&signal), signal["seq"].as_u64()), (1, Some(1)));
        ana.send(signal_to(&json!("elsewhere-1"), 1)).await;
        assert_eq!(ana.expect_error("server_busy").await["to"], "elsewhere-1", "only Redis knows");
        let mut eve = Client::connect(&a).await;
        eve.send(json!({"type": "join", "room": "y", "name": "eve"})).await;
        eve.expect_error("server_busy").await;

        redis.restart().await;
        a.wait_for_metric("switchboard_redis_up", 1.0).await;
        assert!(a.http_get("/healthz").await.starts_with("HTTP/1.1 200"));
        // Redis came back empty: ana's membership is gone, so her connection is closed (1012)
        // and she joins again.
        assert_eq!(ana.ended(WAIT).await, Ended::Closed(Some(1012)));
        assert_eq!(bob.ended(WAIT).await, Ended::Closed(Some(1012)));
        eve.send(json!({"type": "join", "room": "y", "name": "eve"})).await;
        assert_eq!(eve.expect("welcome").await["resumed"], false);
        let (mut ana, again) = Client::join(&a, "x", "ana").await;
        assert_eq!(again["resumed"], false);
        // Signals flow again (the restarted Redis had to be given the scripts again).
        let (mut bob, bob_again) = Client::join(&a, "x", "bob").await;
        ana.expect("peer_joined").await;
        bob.send(signal_to(&again["id"], 2)).await;
        let signal = ana.expect("signal").await;
        assert_eq!((signal["from"].clone(), number_of(&signal)), (bob_again["id"].clone(), 2));
    });
}

#[test]
fn without_redis_reachable_at_start_the_server_still_starts_and_says_so() {
    isolated(|| async {
        let port = tests::redis::free_port().to_string();
        let url = format!("redis://127.0.0.1:{port}/");
        let a = Server::start(&["--redis", &url]).await;
        assert!(a.http_get("/healthz").await.starts_with("HTTP/1.1 503"));
        assert_eq!(a.metric("switchboard_redis_up").await, 0.0);
    });
}

/// Instance A loses Redis (a proxy between them is cut) while B keeps it. Ana and bob, both on
/// A, go on signalling each other: every signal arrives once, in order, numbered on from where
/// Redis left off; a signal to cy (on B) gets `server_busy`. Meanwhile cy signals bob through
/// Redis (numbers Redis gives while A cannot hear it). When A reaches Redis again it writes its
/// signals back: cy's arrive after them with the next numbers, and a resume of bob on B with a
/// `last_seq` in the middle replays the rest exactly once, in order.
#[test]
fn members_of_an_instance_cut_off_from_redis_chat_locally_and_nothing_is_lost_when_it_returns() {
    isolated(|| async {
        let redis = Redis::start().await;
        let cut = tests::proxy::CuttingProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
        let via_cut = format!("redis://{}/", cut.http_url().trim_start_matches("http://"));
        let a = Server::start(&["--redis", &via_cut, "--resume-grace", "30s"]).await;
        let b = Server::start(&["--redis", &redis.url(), "--resume-grace", "30s"]).await;
        for server in [&a, &b] {
            server.wait_for_metric("switchboard_redis_up", 1.0).await;
        }
        let (mut ana, ana_welcome) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&a, "x", "bob").await;
        let (mut cy, cy_welcome) = Client::join(&b, "x", "cy").await;
        let (ana_id, bob_id, cy_id) = (&ana_welcome["id"], &bob_welcome["id"], &cy_welcome["id"]);
        assert_eq!(ana.expect("peer_joined").await["seq"], 1);
        assert_eq!(ana.expect("peer_joined").await["seq"], 2);
        assert_eq!(bob.expect("peer_joined").await["seq"], 1);
        ana.send(signal_to(bob_id, 1)).await;
        let first = bob.expect("signal").await;
        assert_eq!((number_of(&first), first["seq"].as_u64()), (1, Some(2)));

        cut.cut();
        a.wait_for_metric("switchboard_redis_up", 0.0).await;
        assert!(a.http_get("/healthz").await.starts_with("HTTP/1.1 503"));
        for n in 2..=11 {
            ana.send(signal_to(bob_id, n)).await;
        }
        for n in 1..=5 {
            bob.send(signal_to(ana_id, 100 + n)).await;
        }
        for n in 2..=11 {
            let signal = bob.expect("signal").await;
            assert_eq!(signal["from"], *ana_id);
            assert_eq!((number_of(&signal), signal["seq"].as_u64()), (n, Some(n + 1)), "{signal}");
        }
        for n in 1..=5 {
            let signal = ana.expect("signal").await;
            assert_eq!((number_of(&signal), signal["seq"].as_u64()), (100 + n, Some(2 + n)), "{signal}");
        }
        ana.send(signal_to(cy_id, 1)).await;
        assert_eq!(ana.expect_error("server_busy").await["to"], *cy_id, "cy is on the other instance");
        // Redis numbers these for bob while A cannot hear it.
        cy.send(signal_to(bob_id, 200)).await;
        cy.send(signal_to(bob_id, 201)).await;
        bob.expect_silence(Duration::from_millis(500)).await;

        cut.restore();
        a.wait_for_metric("switchboard_redis_up", 1.0).await;
        for (n, seq) in [(200, 13), (201, 14)] {
            let signal = bob.expect("signal").await;
            assert_eq!(signal["from"], *cy_id);
            assert_eq!((number_of(&signal), signal["seq"].as_u64()), (n, Some(seq)), "after the local ones");
        }
        ana.send(signal_to(bob_id, 12)).await;
        assert_eq!(bob.expect("signal").await["seq"], 15);
        cy.send(signal_to(bob_id, 202)).await;
        assert_eq!(bob.expect("signal").await["seq"], 16);
        ana.send(signal_to(cy_id, 2)).await;
        let to_cy = cy.expect("signal").await;
        assert_eq!((number_of(&to_cy), to_cy["from"].clone()), (2, ana_id.clone()));

        // Bob's client handled up to seq 7 (signal 6) when its socket died; it resumes on B.
        drop(bob);
        let (mut back, welcome) = Client::resume(&b, "x", &bob_welcome, 7).await;
        assert_eq!((welcome["resumed"].clone(), welcome["seq"].clone()), (json!(true), json!(7)));
        let mut replayed = Vec::new();
        for _ in 8..=16 {
            let signal = back.expect("signal").await;
            replayed.push((signal["seq"].as_u64().expect("seq"), number_of(&signal)));
        }
        let expected: Vec<(u64, u64)> = (8..=16).zip([7, 8, 9, 10, 11, 200, 201, 12, 202]).collect();
        assert_eq!(replayed, expected, "every message after last_seq, once, in order");
        back.expect_silence(Duration::from_millis(500)).await;
        ana.expect_silence(Duration::from_millis(100)).await;
    });
}

/// PROTOCOL.md: a resume continues the member's rate budget. Bob spends his on B (no refill:
/// `--rate-per-sec 0`), drops and resumes on A at once: his signals there are still refused.
#[test]
fn a_member_s_spent_rate_budget_follows_it_to_the_other_instance() {
    isolated(|| async {
        let redis = Redis::start().await;
        let (a, b) = two_instances(&redis, &["--rate-burst", "20", "--rate-per-sec", "0"]).await;
        let (mut ana, ana_welcome) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&b, "x", "bob").await;
        ana.expect("peer_joined").await;
        for n in 1..=25 {
            bob.send(signal_to(&ana_welcome["id"], n)).await;
        }
        let (mut relayed, mut refused) = (0, 0);
        while refused == 0 {
            match bob.try_recv(WAIT).await {
                Some(message) if message["code"] == "rate_limited" => refused += 1,
                Some(message) => panic!("unexpected {message}"),
                None => panic!("never rate_limited"),
            }
        }
        while ana.try_recv(Duration::from_millis(500)).await.is_some() {
            relayed += 1;
        }
        assert_eq!(relayed, 19, "the burst less the join");
        drop(bob);
        let (mut back, welcome) = Client::resume(&a, "x", &bob_welcome, 0).await;
        assert_eq!(welcome["resumed"], true);
        for n in 100..103 {
            back.send(signal_to(&ana_welcome["id"], n)).await;
            assert_eq!(back.expect_error("rate_limited").await["to"], ana_welcome["id"], "no fresh budget");
        }
        ana.expect_silence(Duration::from_millis(300)).await;
    });
}

/// A WebSocket to `server` from the loopback address `ip` (for per-IP caps; `/metrics` stays on
/// 127.0.0.1).
async fn connect_from(
    server: &Server,
    ip: [u8; 4],
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((ip, 0).into()).expect("bind to a loopback address");
    let stream = socket.connect(server.addr()).await.expect("TCP connect");
    let (ws, _) = tokio_tungstenite::client_async(server.ws_url(), MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// Joins `room` as `name` on `server` from the loopback address `ip`.
async fn join_from(server: &Server, ip: [u8; 4], room: &str, name: &str) -> (Client, Value) {
    let mut client = Client { ws: connect_from(server, ip).await.expect("WebSocket upgrade succeeds") };
    client.send(json!({"type": "join", "room": room, "name": name})).await;
    let welcome = client.expect("welcome").await;
    (client, welcome)
}

/// The status of a WebSocket upgrade to `server` from `ip` that is expected to be refused.
async fn refused_upgrade(server: &Server, ip: [u8; 4]) -> u16 {
    match connect_from(server, ip).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("refused without an HTTP answer: {e}"),
    }
}

/// PROTOCOL.md: a member in grace counts against the connection cap of the client IP that
/// joined it; INTERFACES.md: `switchboard_rooms` counts rooms with a member connected to or in
/// grace on the instance. Two members drop from B (cap 2 per IP): B refuses a third connection
/// from that IP and still counts their room; once one resumes on A, B has a place again; once
/// the other's grace ends, B counts no room.
#[test]
fn members_in_grace_count_against_their_ip_and_their_room_on_the_instance_they_left() {
    const CLIENT_IP: [u8; 4] = [127, 0, 0, 2];
    isolated(|| async {
        let redis = Redis::start().await;
        let url = redis.url();
        let a = Server::start(&["--redis", &url, "--resume-grace", "3s"]).await;
        let b =
            Server::start(&["--redis", &url, "--resume-grace", "3s", "--max-connections-per-ip", "2"]).await;
        for server in [&a, &b] {
            server.wait_for_metric("switchboard_redis_up", 1.0).await;
        }
        let (mut ana, _) = Client::join(&a, "x", "ana").await;
        let (bob, bob_welcome) = join_from(&b, CLIENT_IP, "x", "bob").await;
        let (cy, cy_welcome) = join_from(&b, CLIENT_IP, "x", "cy").await;
        assert_eq!(ana.expect("peer_joined").await["peer"]["name"], "bob");
        assert_eq!(ana.expect("peer_joined").await["peer"]["name"], "cy");
        drop((bob, cy));
        b.wait_for_metric("switchboard_members", 0.0).await;
        assert_eq!(b.metric("switchboard_rooms").await, 1.0, "their room, in grace here");
        assert_eq!(refused_upgrade(&b, CLIENT_IP).await, 429, "both places are held in grace");

        let (mut back, welcome) = Client::resume(&a, "x", &bob_welcome, 0).await;
        assert_eq!(welcome["resumed"], true);
        let mut third = None;
        for _ in 0..50 {
            if let Ok(ws) = connect_from(&b, CLIENT_IP).await {
                third = Some(ws);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(third.is_some(), "bob's place on B is free once he resumed on A");
        let left = ana.try_recv(Duration::from_secs(3 + 5 + 3)).await.expect("cy leaves after grace");
        assert_eq!(
            (left["type"].clone(), left["id"].clone()),
            (json!("peer_left"), cy_welcome["id"].clone())
        );
        assert_eq!(back.expect("peer_joined").await["peer"]["id"], cy_welcome["id"], "replayed from 0");
        assert_eq!(back.expect("peer_left").await["id"], cy_welcome["id"]);
        b.wait_for_metric("switchboard_rooms", 0.0).await;
    });
}

/// The mirror's two inputs race: pub/sub delivers numbered messages while a catch-up reads the
/// stream after a gap. Here Redis drops both instances' pub/sub connections every 20 ms (each
/// drop loses publishes and starts a catch-up of every member) while four pairs split over the
/// instances exchange 300 signals each way: every signal arrives once, in order, numbered one
/// after another.
#[test]
fn no_signal_is_lost_or_doubled_while_pub_sub_drops_race_the_catch_up() {
    isolated(|| async {
        const PAIRS: usize = 4;
        const SIGNALS: u64 = 300;
        let redis = Redis::start().await;
        let (a, b) = two_instances(&redis, &["--no-rate-limit"]).await;
        let mut clients = Vec::new();
        for pair in 0..PAIRS {
            let room = format!("s{pair}");
            let (mut first, first_welcome) = Client::join(&a, &room, "a").await;
            let (second, second_welcome) = Client::join(&b, &room, "b").await;
            first.expect("peer_joined").await;
            clients.push((first, second_welcome["id"].clone(), 1));
            clients.push((second, first_welcome["id"].clone(), 0));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killer = {
            let stop = std::sync::Arc::clone(&stop);
            let port = redis.port();
            tokio::spawn(async move {
                let mut kills = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && kills < 1500 {
                    let mut redis = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("Redis");
                    tokio::io::AsyncWriteExt::write_all(&mut redis, b"CLIENT KILL TYPE pubsub\r\n")
                        .await
                        .expect("sent");
                    let mut answer = [0u8; 64];
                    let _ = tokio::io::AsyncReadExt::read(&mut redis, &mut answer).await;
                    kills += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                kills
            })
        };
        let runs = clients.into_iter().map(|(mut client, to, seq_before)| async move {
            for n in 1..=SIGNALS {
                client.send(signal_to(&to, n)).await;
            }
            for n in 1..=SIGNALS {
                let signal = client.expect("signal").await;
                assert_eq!(
                    (number_of(&signal), signal["seq"].as_u64()),
                    (n, Some(seq_before + n)),
                    "{signal}"
                );
            }
            client.expect_silence(Duration::from_millis(300)).await;
        });
        futures_util::future::join_all(runs).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let kills = killer.await.expect("killer");
        assert!(kills > 1, "the pub/sub connections were dropped while the signals flowed");
    });
}

/// What Redis keeps of a member's messages is bounded by time as well as by count: messages
/// numbered more than a grace period before the latest mark are trimmed (one to two grace
/// periods while messages keep coming), and what a resume needs, the last grace period, stays.
#[test]
fn redis_keeps_a_member_s_messages_for_one_to_two_grace_periods() {
    isolated(|| async {
        let redis = Redis::start().await;
        let (a, b) = two_instances(&redis, &["--resume-grace", "1s"]).await;
        let (mut ana, _) = Client::join(&a, "x", "ana").await;
        let (mut bob, bob_welcome) = Client::join(&b, "x", "bob").await;
        ana.expect("peer_joined").await;
        let bob_id = bob_welcome["id"].as_str().expect("id").to_owned();
        let stream_len = || async { redis.command(&format!("XLEN sb:{{x}}:q:{bob_id}")).await };
        for n in 1..=5 {
            ana.send(signal_to(&bob_welcome["id"], n)).await;
            assert_eq!(number_of(&bob.expect("signal").await), n);
        }
        assert_eq!(stream_len().await, ":5");
        // Two grace periods pass, with a message after each.
        for n in 6..=7 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            ana.send(signal_to(&bob_welcome["id"], n)).await;
            assert_eq!(number_of(&bob.expect("signal").await), n);
        }
        assert_eq!(stream_len().await, ":2", "1 to 5 are more than a grace period old: trimmed");
        drop(bob);
        let (mut back, welcome) = Client::resume(&a, "x", &bob_welcome, 5).await;
        assert_eq!(welcome["resumed"], true, "the last grace period is kept");
        assert_eq!(number_of(&back.expect("signal").await), 6);
        assert_eq!(number_of(&back.expect("signal").await), 7);
        back.expect_silence(Duration::from_millis(300)).await;
    });
}
