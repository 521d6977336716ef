//! Room tokens end to end: the `server token` command mints one, a peer with `--token` gets in
//! and connects, a peer without one is refused and exits 1.

use std::process::Command;

use tests::{Peer, Server, bin_path, isolated};

fn mint(secret: &str, room: &str) -> String {
    let output = Command::new(bin_path("server"))
        .args(["token", "--room", room, "--ttl", "1h", "--token-secret", secret])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `server token`: {e}"));
    assert!(output.status.success(), "server token failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or_default().to_owned()
}

#[test]
fn peers_with_a_room_token_connect_and_a_peer_without_is_refused() {
    isolated(|| async {
        let server = Server::start(&["--token-secret", "e2e-secret"]).await;
        let token = mint("e2e-secret", "vip");
        let mut ana =
            Peer::spawn(&server, &["--room", "vip", "--name", "ana", "--token", &token, "--expect", "1"])
                .await;
        ana.joined().await;
        let mut bob = Peer::spawn(
            &server,
            &["--room", "vip", "--name", "bob", "--token", &token, "--send", "behind the velvet rope"],
        )
        .await;
        bob.joined().await;
        let bob_id = bob.id().to_owned();
        ana.wait_message(&bob_id, "behind the velvet rope").await;
        assert_eq!(ana.wait_exit().await, Some(0));

        let mut stranger = Peer::spawn(&server, &["--room", "vip", "--name", "eve"]).await;
        assert_eq!(stranger.wait_exit().await, Some(1), "a refused join is final");
        stranger
            .wait_for("an error event naming the refusal", |e| {
                e["event"] == "error" && e["message"].as_str().is_some_and(|m| m.contains("token"))
            })
            .await;
        let forged = format!("{token}x");
        let mut forger = Peer::spawn(&server, &["--room", "vip", "--token", &forged]).await;
        assert_eq!(forger.wait_exit().await, Some(1));
    });
}
