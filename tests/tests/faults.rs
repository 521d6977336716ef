//! Faults, end to end: peers that die mid-negotiation leave nothing behind on the server.

use tests::{Peer, Server, isolated};

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
        server.wait_for_metric("switchboard_connections", 0.0).await;
        server.wait_for_metric("switchboard_members", 0.0).await;
        server.wait_for_metric("switchboard_rooms", 0.0).await;
    });
}
