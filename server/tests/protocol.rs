//! PROTOCOL.md, clause by clause, against the server in-process (port 0, tokio's paused clock, so
//! idle, join and grace timers run exactly and at once) and a real WebSocket client; shutdown on
//! SIGTERM against the real binary.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::{Ended, InProcess, sequence_of, signal_to};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(start_paused = true)]
async fn join_gets_a_welcome_with_the_documented_fields() {
    let server = InProcess::start(&["--ice-server", "stun:stun.example.org:3478"]).await;
    let (_ana, welcome) = server.join("lobby", "ana").await;
    assert_eq!(welcome["room"], "lobby");
    assert_eq!(welcome["peers"], json!([]));
    assert_eq!(welcome["ice_servers"], json!([{"urls": ["stun:stun.example.org:3478"]}]));
    assert_eq!(welcome["resumed"], false);
    let token = welcome["resume_token"].as_str().expect("a resume token");
    assert!(token.len() >= 32, "at least 128 random bits: {token}");
    assert!(welcome["id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn peers_are_listed_oldest_first_and_announced() {
    let server = InProcess::start(&[]).await;
    let (mut ana, a) = server.join("lobby", "ana").await;
    let (mut bob, b) = server.join("lobby", "bob").await;
    let (_cy, c) = server.join("lobby", "cy").await;
    assert_eq!(c["peers"], json!([{"id": a["id"], "name": "ana"}, {"id": b["id"], "name": "bob"}]));
    assert_eq!(ana.expect_type("peer_joined").await["peer"], json!({"id": b["id"], "name": "bob"}));
    assert_eq!(ana.expect_type("peer_joined").await["peer"]["id"], c["id"]);
    assert_eq!(bob.expect_type("peer_joined").await["peer"]["id"], c["id"]);
}

#[tokio::test(start_paused = true)]
async fn a_signal_is_relayed_with_from_set_by_the_server() {
    let server = InProcess::start(&[]).await;
    let (mut ana, a) = server.join("lobby", "ana").await;
    let (mut bob, b) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "x-extra": [1, 2]});
    bob.send(json!({"type": "signal", "to": a["id"], "from": "someone-else", "signal": offer})).await;
    let relayed = ana.expect_type("signal").await;
    assert_eq!(relayed["from"], b["id"], "forged from is ignored");
    assert_eq!(relayed["signal"], offer, "the signal arrives unchanged, unknown fields included");
}

/// The attack the `frame` fuzz target found: an offer with a lone surrogate escape (JSON, but no
/// text) was relayed, and a Rust peer, which cannot parse it, dropped it. Now the sender gets
/// `bad_message` and the peer hears nothing; the same offer with a proper pair is relayed.
#[tokio::test(start_paused = true)]
async fn a_signal_with_a_lone_surrogate_escape_is_refused_not_relayed() {
    let server = InProcess::start(&[]).await;
    let (mut ana, a) = server.join("lobby", "ana").await;
    let (mut bob, _) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
    let to = a["id"].as_str().expect("an id");
    let offer = |escape: &str| {
        format!(
            r#"{{"type":"signal","to":"{to}","signal":{{"type":"offer","sdp":"v=0\r\na=x:{escape}\r\n"}}}}"#
        )
    };
    bob.send_text(&offer(r"\udddd")).await;
    assert_eq!(bob.expect_error("bad_message").await["to"], a["id"]);
    ana.expect_silence(Duration::from_millis(200)).await;
    bob.send_text(&offer(r"\ud83d\ude00")).await;
    assert_eq!(ana.expect_type("signal").await["signal"]["sdp"], "v=0\r\na=x:\u{1f600}\r\n");
}

#[tokio::test(start_paused = true)]
async fn rooms_are_isolated() {
    let server = InProcess::start(&[]).await;
    let (mut ana, _) = server.join("one", "ana").await;
    let (mut eve, e) = server.join("two", "eve").await;
    ana.send(signal_to(&e["id"], 1)).await;
    let refusal = ana.expect_error("unknown_peer").await;
    assert_eq!(refusal["to"], e["id"]);
    eve.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(start_paused = true)]
async fn every_error_code_in_its_situation() {
    let server = InProcess::start(&["--room-size", "2", "--max-rooms", "2"]).await;
    let mut client = server.connect().await;
    client.send_text("{not json").await;
    client.expect_error("bad_json").await;
    for bad in [
        json!([1]),
        json!("join"),
        json!({"type": "dance"}),
        json!({"room": "x"}),
        json!({"type": "join"}),
        json!({"type": "join", "room": 7}),
    ] {
        client.send(bad).await;
        client.expect_error("bad_message").await;
    }
    client.send(signal_to(&json!("p-1"), 1)).await;
    assert_eq!(client.expect_error("not_joined").await["to"], "p-1");
    client.send(json!({"type": "leave"})).await;
    client.expect_error("not_joined").await;
    client.send(json!({"type": "join", "room": "no spaces"})).await;
    client.expect_error("bad_room").await;
    client.send(json!({"type": "join", "room": &"x".repeat(65)})).await;
    client.expect_error("bad_room").await;
    client.send(json!({"type": "join", "room": "ok", "name": "bell\u{7}"})).await;
    client.expect_error("bad_name").await;
    client.send(json!({"type": "join", "room": "ok", "name": "x".repeat(33)})).await;
    client.expect_error("bad_name").await;
    client.ws.send(Message::binary(vec![1, 2, 3])).await.expect("sent");
    client.expect_error("binary_unsupported").await;

    // Two members fill the room; a third is refused and can still join elsewhere.
    let (_a, a) = server.join("ok", "a").await;
    let (_b, _) = server.join("ok", "b").await;
    client.send(json!({"type": "join", "room": "ok"})).await;
    client.expect_error("room_full").await;
    client.send(json!({"type": "join", "room": "second"})).await;
    let welcome = client.expect_type("welcome").await;
    // The server's room cap (2) is reached: a third room is refused, the connection stays.
    let mut third = server.connect().await;
    third.send(json!({"type": "join", "room": "third"})).await;
    third.expect_error("server_busy").await;
    third.send(json!({"type": "join", "room": "second"})).await;
    third.expect_type("welcome").await;
    client.expect_type("peer_joined").await;

    client.send(json!({"type": "join", "room": "again"})).await;
    client.expect_error("already_joined").await;
    for to in [a["id"].clone(), welcome["id"].clone(), json!("nobody")] {
        client.send(signal_to(&to, 1)).await;
        assert_eq!(client.expect_error("unknown_peer").await["to"], to);
    }
    client.send(json!({"type": "signal", "to": "x", "signal": {"type": "offer"}})).await;
    assert_eq!(client.expect_error("bad_message").await["to"], "x");
    client.send(json!({"type": "signal", "to": 5, "signal": {"type": "offer", "sdp": ""}})).await;
    client.expect_error("bad_message").await;
}

#[tokio::test(start_paused = true)]
async fn a_frame_over_the_limit_gets_too_large_and_a_1009_close() {
    let server = InProcess::start(&["--max-frame-bytes", "1024"]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    let big = json!({"type": "signal", "to": "x", "signal": {"type": "offer", "sdp": "a".repeat(2000)}});
    ana.send(big).await;
    let (messages, ended) = ana.until_closed().await;
    assert_eq!(messages.first().map(|m| m["code"].clone()), Some(json!("too_large")), "{messages:?}");
    assert_eq!(ended, Ended::Closed(Some(1009)));
}

#[tokio::test(start_paused = true)]
async fn leave_announces_at_once_and_closes_with_1000() {
    let server = InProcess::start(&[]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    let (mut bob, b) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
    bob.send(json!({"type": "leave"})).await;
    assert_eq!(ana.expect_type("peer_left").await["id"], b["id"]);
    assert_eq!(bob.until_closed().await.1, Ended::Closed(Some(1000)));
}

#[tokio::test(start_paused = true)]
async fn ids_are_unique_and_not_reused() {
    let server = InProcess::start(&[]).await;
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let (mut client, welcome) = server.join("lobby", "x").await;
        assert!(seen.insert(welcome["id"].as_str().expect("id").to_owned()), "id reused");
        client.send(json!({"type": "leave"})).await;
        client.until_closed().await;
    }
    // A restarted server gives different ids too.
    let restarted = InProcess::start(&[]).await;
    let (_client, welcome) = restarted.join("lobby", "x").await;
    assert!(!seen.contains(welcome["id"].as_str().expect("id")));
}

#[tokio::test(start_paused = true)]
async fn resume_within_grace_keeps_the_id_and_delivers_what_was_queued_once_in_order() {
    let server = InProcess::start(&["--resume-grace", "10s"]).await;
    let (mut ana, a) = server.join("lobby", "ana").await;
    let (bob, b) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
    drop(bob); // the socket goes away without leave
    server.wait_for_metric("switchboard_connections", 1.0).await;
    for n in 0..20 {
        ana.send(signal_to(&b["id"], n)).await;
    }
    // Only once the 20 are queued for bob does cy join, so bob's queue holds them first.
    server.wait_for_metric("switchboard_signals_relayed_total", 20.0).await;
    let (mut cy, c) = server.join("lobby", "cy").await;
    ana.expect_type("peer_joined").await;
    ana.expect_silence(Duration::from_millis(200)).await; // no peer_left during grace

    let mut back = server.connect().await;
    back.send(json!({"type": "join", "room": "lobby", "resume": b["resume_token"]})).await;
    let welcome = back.expect_type("welcome").await;
    assert_eq!(welcome["id"], b["id"]);
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["peers"], json!([{"id": a["id"], "name": "ana"}, {"id": c["id"], "name": "cy"}]));
    assert_ne!(welcome["resume_token"], b["resume_token"]);
    for n in 0..20 {
        let relayed = back.expect_type("signal").await;
        assert_eq!((sequence_of(&relayed), &relayed["from"]), (n, &a["id"]));
    }
    assert_eq!(back.expect_type("peer_joined").await["peer"]["id"], c["id"]);
    back.expect_silence(Duration::from_millis(200)).await;
    // And the resumed member is reachable as before.
    cy.send(signal_to(&b["id"], 99)).await;
    assert_eq!(sequence_of(&back.expect_type("signal").await), 99);
}

#[tokio::test(start_paused = true)]
async fn after_grace_others_see_peer_left_and_the_token_is_dead() {
    let server = InProcess::start(&["--resume-grace", "500ms"]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    let (bob, b) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
    drop(bob);
    assert_eq!(ana.expect_type("peer_left").await["id"], b["id"]);
    let mut late = server.connect().await;
    late.send(json!({"type": "join", "room": "lobby", "resume": b["resume_token"]})).await;
    let welcome = late.expect_type("welcome").await;
    assert_eq!(welcome["resumed"], false);
    assert_ne!(welcome["id"], b["id"]);
}

#[tokio::test(start_paused = true)]
async fn a_resume_token_works_once_and_replaces_an_open_connection_with_4000() {
    let server = InProcess::start(&[]).await;
    let (mut first, a) = server.join("lobby", "ana").await;
    let mut second = server.connect().await;
    second.send(json!({"type": "join", "room": "lobby", "resume": a["resume_token"]})).await;
    let welcome = second.expect_type("welcome").await;
    assert_eq!((welcome["id"].clone(), welcome["resumed"].clone()), (a["id"].clone(), json!(true)));
    assert_eq!(first.until_closed().await.1, Ended::Closed(Some(4000)));
    let mut third = server.connect().await;
    third.send(json!({"type": "join", "room": "lobby", "resume": a["resume_token"]})).await;
    let fresh = third.expect_type("welcome").await;
    assert_eq!(fresh["resumed"], false, "a used token joins fresh");
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_1000_signals_arrives_in_order() {
    let server = InProcess::start(&[]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    let (mut bob, b) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
    let frames: Vec<Message> = (0..1000).map(|n| Message::text(signal_to(&b["id"], n).to_string())).collect();
    for frame in frames {
        ana.ws.feed(frame).await.expect("queued");
    }
    ana.ws.flush().await.expect("sent");
    for n in 0..1000 {
        assert_eq!(sequence_of(&bob.expect_type("signal").await), n);
    }
    ana.expect_silence(Duration::from_millis(100)).await; // not one refused
}

#[tokio::test(start_paused = true)]
async fn fifty_clients_in_ten_rooms_each_get_every_signal_once_in_order() {
    let server = InProcess::start(&[]).await;
    const ROOMS: usize = 10;
    const PER_ROOM: usize = 5;
    const SIGNALS: u64 = 40;
    let mut tasks = Vec::new();
    for room in 0..ROOMS {
        let mut members = Vec::new();
        for i in 0..PER_ROOM {
            members.push(server.join(&format!("room-{room}"), &format!("m{i}")).await);
        }
        let ids: Vec<Value> = members.iter().map(|(_, w)| w["id"].clone()).collect();
        for (i, (mut client, welcome)) in members.into_iter().enumerate() {
            let ids = ids.clone();
            tasks.push(tokio::spawn(async move {
                // Everyone sends SIGNALS numbered signals to each other member, then counts.
                for _ in i + 1..PER_ROOM {
                    client.expect_type("peer_joined").await;
                }
                for n in 0..SIGNALS {
                    for to in ids.iter().filter(|id| **id != welcome["id"]) {
                        client.send(signal_to(to, n)).await;
                    }
                }
                let mut next: HashMap<String, u64> = HashMap::new();
                for _ in 0..SIGNALS * (PER_ROOM as u64 - 1) {
                    let message = client.expect_type("signal").await;
                    let from = message["from"].as_str().expect("from").to_owned();
                    assert!(ids.contains(&json!(from)), "a signal from outside the room");
                    let expected = next.entry(from).or_default();
                    assert_eq!(sequence_of(&message), *expected, "in order, exactly once");
                    *expected += 1;
                }
                client.expect_silence(Duration::from_millis(200)).await;
            }));
        }
    }
    for task in tasks {
        task.await.expect("client task succeeds");
    }
    assert_eq!(
        server.metric("switchboard_signals_relayed_total").await,
        (ROOMS * PER_ROOM * (PER_ROOM - 1)) as f64 * SIGNALS as f64
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = InProcess::start(&["--idle-timeout", "500ms", "--ping-interval", "10s"]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    let (_, ended) = ana.until_closed().await;
    assert_eq!(ended, Ended::Closed(Some(1001)));
}

#[tokio::test(start_paused = true)]
async fn pongs_keep_a_connection_alive() {
    let server = InProcess::start(&["--idle-timeout", "600ms", "--ping-interval", "100ms"]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    // Reading lets the client answer the server's pings; that alone keeps it open.
    ana.expect_silence(Duration::from_millis(1500)).await;
    let (_bob, _) = server.join("lobby", "bob").await;
    ana.expect_type("peer_joined").await;
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_does_not_join_in_time_is_closed_with_1008() {
    let server = InProcess::start(&["--join-timeout", "300ms"]).await;
    let mut idle = server.connect().await;
    idle.send(json!({"type": "join", "room": "bad room"})).await; // a refused join does not count
    let (messages, ended) = idle.until_closed().await;
    assert_eq!(messages[0]["code"], "bad_room");
    assert_eq!(ended, Ended::Closed(Some(1008)));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_closed_and_nobody_else_notices() {
    let server = InProcess::start(&["--no-rate-limit", "--resume-grace", "1s"]).await;
    let (mut ana, _) = server.join("lobby", "ana").await;
    let (_sleepy, s) = server.join("lobby", "sleepy").await; // never reads again
    let (mut cy, c) = server.join("lobby", "cy").await;
    ana.expect_type("peer_joined").await;
    ana.expect_type("peer_joined").await;
    let sdp = "a".repeat(30_000);
    for _ in 0..400 {
        ana.send(json!({"type": "signal", "to": s["id"], "signal": {"type": "offer", "sdp": sdp}})).await;
    }
    // The sleepy client's queue fills: it is dropped, then its grace runs out.
    assert_eq!(ana.expect_type("peer_left").await["id"], s["id"]);
    server.wait_for_metric("switchboard_connections", 2.0).await;
    // Everyone else is served as before, in order.
    for n in 0..100 {
        ana.send(signal_to(&c["id"], n)).await;
    }
    let mut next = 0;
    while next < 100 {
        let message = cy.recv().await;
        if message["type"] == "signal" {
            assert_eq!(sequence_of(&message), next);
            next += 1;
        }
    }
    // Signals sent to the sleepy client after it was gone are refused, and nothing else is.
    while let Some(message) = ana.try_recv(Duration::from_millis(200)).await {
        assert_eq!((&message["code"], &message["to"]), (&json!("unknown_peer"), &s["id"]), "{message}");
    }
}

#[tokio::test]
async fn shutdown_closes_every_websocket_with_1001_and_exits_0() {
    let mut server = support::binary(&[]);
    let (mut ana, _) = server.join("lobby", "ana").await;
    let mut unjoined = server.connect().await;
    server.signal("TERM");
    assert_eq!(ana.until_closed().await.1, Ended::Closed(Some(1001)));
    assert_eq!(unjoined.until_closed().await.1, Ended::Closed(Some(1001)));
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(Some(0)));
}

#[tokio::test(start_paused = true)]
async fn health_metrics_and_the_page_are_served() {
    let server = InProcess::start(&[]).await;
    assert_eq!(server.http_get("/healthz").await, (200, "ok".to_owned()));
    let (status, page) = server.http_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Switchboard"), "the page names the project");
    let (_ana, _) = server.join("lobby", "ana").await;
    assert_eq!(server.metric("switchboard_connections").await, 1.0);
    assert_eq!(server.metric("switchboard_rooms").await, 1.0);
    assert_eq!(server.metric("switchboard_signals_relayed_total").await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_flood_is_rate_limited_then_closed_while_a_polite_client_is_served() {
    let server = InProcess::start(&[]).await;
    let (mut flood, _) = server.join("lobby", "flood").await;
    let (mut polite, p) = server.join("lobby", "polite").await;
    let (mut target, t) = server.join("lobby", "target").await;
    flood.expect_type("peer_joined").await;
    flood.expect_type("peer_joined").await;
    polite.expect_type("peer_joined").await;
    let frames: Vec<Message> =
        (0..20_000).map(|n| Message::text(signal_to(&t["id"], n).to_string())).collect();
    // The target reads throughout, as a real client does: this test is about the flooder, not
    // about a target that stops reading (its outbox bound is tested elsewhere).
    let polite_id = p["id"].clone();
    let receiver = tokio::spawn(async move {
        let (mut relayed_from_flood, mut polite_arrived) = (0, false);
        while let Some(message) = target.try_recv(Duration::from_secs(2)).await {
            if message["type"] != "signal" {
                continue;
            }
            if message["from"] == polite_id {
                polite_arrived = true;
            } else {
                relayed_from_flood += 1;
            }
        }
        (relayed_from_flood, polite_arrived)
    });
    let sender = tokio::spawn(async move {
        for frame in frames {
            if flood.ws.feed(frame).await.is_err() {
                break;
            }
        }
        let _ = flood.ws.flush().await;
        flood.until_closed().await
    });
    polite.send(signal_to(&t["id"], 1_000_000)).await;
    let (replies, ended) = sender.await.expect("flood task");
    assert!(replies.iter().any(|m| m["code"] == "rate_limited" && m["to"] == t["id"]), "refusals carry to");
    assert_eq!(ended, Ended::Closed(Some(1008)));
    let (relayed_from_flood, polite_arrived) = receiver.await.expect("target task");
    assert!(polite_arrived, "the polite client's signal got through");
    assert!(relayed_from_flood <= 10_000, "{relayed_from_flood} of 20,000 relayed");
    assert!(relayed_from_flood >= 1000, "a burst of 1,000 is allowed");
}
