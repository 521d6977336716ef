//! End-to-end: the real `server` and real `peer` binaries, each test in its own loopback-only
//! network namespace (see `tests::isolated`).

use serde_json::Value;
use tests::{Peer, Server, isolated};

const MAX_LINE: usize = protocol::MAX_CHAT_LINE_BYTES;

fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

/// Spawns a peer and waits for its `welcome`; returns it with its id.
async fn join(server: &Server, name: &str, extra: &[&str]) -> (Peer, String) {
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    let mut peer = Peer::spawn(server, &args).await;
    let id = peer.joined().await;
    (peer, id)
}

async fn wait_open(peer: &mut Peer, remote: &str) {
    peer.wait_for(&format!("channel_open to {remote}"), |e| is(e, "channel_open") && e["peer"] == remote)
        .await;
}

#[test]
fn two_peers_exchange_lines_both_ways_and_exit_when_expected() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) = join(&server, "ana", &["--send", "hello from ana", "--expect", "1"]).await;
        let (mut bob, bob_id) = join(&server, "bob", &["--send", "hello from bob", "--expect", "1"]).await;

        let welcome = bob.events()[0].clone();
        assert_eq!(
            welcome["peers"],
            serde_json::json!([{"id": ana_id, "name": "ana"}]),
            "bob's welcome lists ana"
        );
        ana.wait_for("peer_joined bob", |e| is(e, "peer_joined") && e["id"] == bob_id && e["name"] == "bob")
            .await;

        ana.wait_message(&bob_id, "hello from bob").await;
        bob.wait_message(&ana_id, "hello from ana").await;
        assert_eq!(ana.wait_exit().await, Some(0), "ana exits 0 once --expect is reached");
        assert_eq!(bob.wait_exit().await, Some(0), "bob exits 0 once --expect is reached");
    });
}

#[test]
fn peers_with_a_slower_ice_tick_still_connect_and_chat() {
    // `--ice-tick` is the check interval while connecting; peers with different ticks must
    // still find each other (the slower one answers checks whenever they come).
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) =
            join(&server, "ana", &["--ice-tick", "50ms", "--send", "slow hello", "--expect", "1"]).await;
        let (mut bob, bob_id) = join(&server, "bob", &["--send", "fast hello", "--expect", "1"]).await;
        ana.wait_message(&bob_id, "fast hello").await;
        bob.wait_message(&ana_id, "slow hello").await;
        assert_eq!(ana.wait_exit().await, Some(0));
        assert_eq!(bob.wait_exit().await, Some(0));
    });
}

#[test]
fn three_peers_form_a_full_mesh() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let mut peers = Vec::new();
        for name in ["ana", "bob", "cid"] {
            let text = format!("line from {name}");
            peers.push(join(&server, name, &["--send", &text, "--expect", "2"]).await);
        }
        let ids: Vec<(String, String)> =
            peers.iter().zip(["ana", "bob", "cid"]).map(|((_, id), n)| (id.clone(), n.to_string())).collect();
        for (peer, own) in peers.iter_mut() {
            for (id, name) in &ids {
                if id != own {
                    peer.wait_message(id, &format!("line from {name}")).await;
                }
            }
        }
        for (peer, _) in peers.iter_mut() {
            assert_eq!(peer.wait_exit().await, Some(0));
        }
    });
}

#[test]
fn a_late_joiner_connects_to_everyone_already_there() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        let (mut dan, dan_id) = join(&server, "dan", &["--send", "dan is here"]).await;
        let welcome = dan.events()[0].clone();
        let listed: Vec<&str> =
            welcome["peers"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str()).collect();
        assert_eq!(listed, vec![ana_id.as_str(), bob_id.as_str()], "welcome lists the members oldest first");
        wait_open(&mut dan, &ana_id).await;
        wait_open(&mut dan, &bob_id).await;
        ana.wait_message(&dan_id, "dan is here").await;
        bob.wait_message(&dan_id, "dan is here").await;
    });
}

#[test]
fn lines_typed_on_stdin_reach_every_peer() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        let (mut cid, cid_id) = join(&server, "cid", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut ana, &cid_id).await;
        wait_open(&mut bob, &ana_id).await;
        wait_open(&mut cid, &ana_id).await;

        ana.send_line("typed by ana: héllo ✓").await;
        bob.wait_message(&ana_id, "typed by ana: héllo ✓").await;
        cid.wait_message(&ana_id, "typed by ana: héllo ✓").await;
    });
}

#[test]
fn a_killed_peer_is_seen_leaving_after_the_grace_period() {
    isolated(|| async {
        let server = Server::start(&["--resume-grace", "2s"]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        bob.kill().await;
        ana.wait_for("peer_left bob", |e| is(e, "peer_left") && e["id"] == bob_id).await;
        ana.wait_for("channel_closed bob", |e| is(e, "channel_closed") && e["peer"] == bob_id).await;

        // Ana still works: a newcomer connects to her.
        let (mut cid, _) = join(&server, "cid", &["--send", "still there?"]).await;
        wait_open(&mut cid, &ana_id).await;
        ana.wait_for("message from cid", |e| is(e, "message") && e["text"] == "still there?").await;
    });
}

#[test]
fn a_peer_that_exits_normally_is_seen_leaving_at_once() {
    isolated(|| async {
        // A grace period far beyond the wait deadline: peer_left within the deadline can only
        // come from the `leave` the peer sends on its way out.
        let server = Server::start(&["--resume-grace", "10m"]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        bob.terminate();
        assert_eq!(bob.wait_exit().await, Some(0), "SIGTERM is a normal exit");
        ana.wait_for("peer_left bob", |e| is(e, "peer_left") && e["id"] == bob_id).await;
    });
}

#[test]
fn no_line_is_lost_when_a_peer_exits_right_after_sending() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        // End of stdin (no --expect) ends the peer: the lines before it must still arrive.
        for i in 0..200 {
            ana.send_line(&format!("parting line {i}")).await;
        }
        ana.close_stdin();
        assert_eq!(ana.wait_exit().await, Some(0));
        let got =
            bob.wait_for_count("200 parting lines", 200, |e| is(e, "message") && e["from"] == ana_id).await;
        let texts: Vec<&str> = got.iter().filter_map(|e| e["text"].as_str()).collect();
        let want: Vec<String> = (0..200).map(|i| format!("parting line {i}")).collect();
        assert_eq!(texts, want);
        bob.wait_for("peer_left ana", |e| is(e, "peer_left") && e["id"] == ana_id).await;
    });
}

#[test]
fn the_data_channel_keeps_working_while_the_server_is_down_and_the_mesh_comes_back() {
    isolated(|| async {
        let mut server = Server::start(&["--resume-grace", "5s"]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        server.kill().await;
        ana.wait_event("reconnecting").await;
        ana.send_line("during the outage").await;
        bob.wait_message(&ana_id, "during the outage").await;
        bob.send_line("reply during the outage").await;
        ana.wait_message(&bob_id, "reply during the outage").await;

        server.restart().await;
        // The new server knows no resume token: both join afresh and rebuild the mesh.
        let ana_new = ana.joined().await;
        let bob_new = bob.joined().await;
        assert_ne!(ana_new, ana_id, "a restarted server gives new ids");
        ana.wait_for("old bob gone", |e| is(e, "peer_left") && e["id"] == bob_id).await;
        wait_open(&mut ana, &bob_new).await;
        wait_open(&mut bob, &ana_new).await;
        ana.send_line("after the restart").await;
        bob.wait_message(&ana_new, "after the restart").await;
    });
}

#[test]
fn a_16_kib_line_arrives_intact_and_a_longer_one_is_refused_locally() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &[]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        // Multi-byte characters, so that a cut anywhere would show.
        let mut full = "é".repeat(MAX_LINE / 2 - 1);
        full.push_str("ok");
        assert_eq!(full.len(), MAX_LINE);
        let too_long = "x".repeat(MAX_LINE + 1);
        ana.send_line(&too_long).await;
        ana.wait_for("a local error about the long line", |e| is(e, "error")).await;
        ana.send_line(&full).await;
        ana.send_line("marker").await;

        let got = bob.wait_for_count("two lines", 2, |e| is(e, "message")).await;
        assert_eq!(got[0]["text"].as_str().map(str::len), Some(MAX_LINE));
        assert_eq!(got[0]["text"], full.as_str(), "the 16 KiB line arrives intact");
        assert_eq!(got[1]["text"], "marker", "the over-long line was not sent");
    });
}

#[test]
fn ten_thousand_lines_in_a_burst_arrive_all_in_order() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut ana, ana_id) = join(&server, "ana", &[]).await;
        let (mut bob, bob_id) = join(&server, "bob", &["--expect", "10000"]).await;
        wait_open(&mut ana, &bob_id).await;
        wait_open(&mut bob, &ana_id).await;

        for i in 0..10_000 {
            ana.send_line(&format!("burst {i:05}")).await;
        }
        let got = bob.wait_for_count("10,000 lines", 10_000, |e| is(e, "message")).await;
        let out_of_place = got
            .iter()
            .enumerate()
            .find(|(i, e)| e["text"] != format!("burst {i:05}").as_str() || e["from"] != ana_id.as_str());
        assert!(out_of_place.is_none(), "line out of place: {out_of_place:?}");
        assert_eq!(bob.wait_exit().await, Some(0));
    });
}

#[test]
fn echo_sends_every_line_back_to_its_sender() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (_echo, echo_id) = join(&server, "echo", &["--echo"]).await;
        let (mut ana, _) =
            join(&server, "ana", &["--send", "ping 1", "--send", "ping 2", "--expect", "2"]).await;
        ana.wait_message(&echo_id, "ping 1").await;
        ana.wait_message(&echo_id, "ping 2").await;
        assert_eq!(ana.wait_exit().await, Some(0));
    });
}

/// A burst of the longest lines against `--echo`: both peers' chat queues and SCTP windows fill
/// at once, in both directions. Every line must come back, in order. Issue 19 suspected a cycle
/// here (the mesh waiting for room in a link's chat queue while the link's channel task waits
/// for room in the mesh's event queue, on both sides); the mesh now never waits on a link, so
/// none can form. The old mesh passed this too (also with 16,000 lines): its `select!` took
/// echoes often enough between typed lines that both sides never blocked at once.
#[test]
fn a_burst_of_long_lines_against_echo_all_come_back() {
    const LINES: usize = 4000;
    isolated(|| async {
        let server = Server::start(&[]).await;
        let (mut echo, echo_id) = join(&server, "echo", &["--echo"]).await;
        let (mut ana, _) = join(&server, "ana", &["--expect", &LINES.to_string()]).await;
        wait_open(&mut ana, &echo_id).await;
        // The echo's events are read too: a peer whose stdout is not read stops.
        let echo_reader = tokio::spawn(async move {
            echo.wait_for_count_within(std::time::Duration::from_secs(120), "lines to echo", LINES, |e| {
                is(e, "message")
            })
            .await;
            echo
        });
        let mut stdin = ana.take_stdin();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for i in 0..LINES {
                let mut line = format!("{i:05} ").into_bytes();
                line.resize(MAX_LINE, b'x');
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() {
                    break;
                }
            }
            stdin
        });
        let echoed = ana
            .wait_for_count_within(std::time::Duration::from_secs(120), "echoed lines", LINES, |e| {
                is(e, "message") && e["from"] == echo_id
            })
            .await;
        for (i, event) in echoed.iter().enumerate() {
            let text = event["text"].as_str().unwrap_or_default();
            assert!(
                text.starts_with(&format!("{i:05} ")) && text.len() == MAX_LINE,
                "line {i} out of order or cut"
            );
        }
        drop(writer.await);
        assert_eq!(ana.wait_exit().await, Some(0));
        drop(echo_reader.await);
    });
}

#[test]
fn timeout_bad_flags_and_a_refused_join_exit_non_zero() {
    isolated(|| async {
        let server = Server::start(&["--room-size", "1"]).await;
        let (mut alone, _) = join(&server, "alone", &["--expect", "1", "--timeout", "1s"]).await;
        alone.wait_event("error").await;
        assert_eq!(alone.wait_exit().await, Some(1), "--timeout reached: exit 1");

        let (_first, _) = join(&server, "first", &[]).await;
        let mut refused = Peer::spawn(&server, &["--name", "second"]).await;
        assert_eq!(refused.wait_exit().await, Some(1), "a join refused with room_full: exit 1");

        let mut bad = Peer::spawn(&server, &["--room", "no spaces allowed"]).await;
        assert_eq!(bad.wait_exit().await, Some(2), "bad flags: exit 2");
    });
}
