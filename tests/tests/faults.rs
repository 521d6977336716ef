//! Faults, end to end: peers that die mid-negotiation leave nothing behind on the server.

use std::time::Duration;

use tests::{Peer, Server, isolated};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One value from the server's `/metrics`.
async fn metric(server: &Server, name: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.expect("server accepts TCP");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr());
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("response read");
    response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{response}"))
}

/// Waits until `/metrics` shows `name` at `value`, failing with what it showed last.
async fn wait_for_metric(server: &Server, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = metric(server, name).await;
        if now == value {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {now}, expected {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn peers_killed_mid_offer_leave_no_state_after_grace() {
    isolated(|| async {
        let server = Server::start(&["--resume-grace", "1s"]).await;
        let mut ana = Peer::spawn(&server, &["--name", "ana"]).await;
        ana.joined().await;
        // Bob joins and, as the newcomer, starts offering to ana at once; he dies mid-way.
        let mut bob = Peer::spawn(&server, &["--name", "bob"]).await;
        let bob_id = bob.joined().await;
        bob.kill().await;
        ana.wait_for("bob's peer_left after his grace", |e| e["event"] == "peer_left" && e["id"] == bob_id)
            .await;
        // And a third one killed before it even got its welcome.
        let mut cy = Peer::spawn(&server, &["--name", "cy"]).await;
        cy.kill().await;
        ana.terminate();
        assert_eq!(ana.wait_exit().await, Some(0), "ana leaves cleanly");
        wait_for_metric(&server, "switchboard_connections", 0.0).await;
        wait_for_metric(&server, "switchboard_members", 0.0).await;
        wait_for_metric(&server, "switchboard_rooms", 0.0).await;
    });
}
