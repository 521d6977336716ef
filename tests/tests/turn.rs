//! TURN end to end: peers that have no direct path connect through the real coturn, with the
//! credentials the server mints (INTERFACES.md, "TURN").
//!
//! Every test builds a [`SplitNetwork`] inside its own namespace: sides A and B, each linked
//! only to T, which runs the server and coturn on 198.18.0.1 and does not forward. coturn runs
//! the repository's `deploy/coturn/turnserver.conf` and also refuses to relay to A's and B's
//! subnets, so the only candidate pair that can work between A and B is relay ↔ relay.
//! `without_turn_the_sides_cannot_connect` shows that premise holds.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::browser::{Browser, BrowserKind, web_dir};
use tests::coturn::Coturn;
use tests::proxy::CuttingProxy;
use tests::{Peer, SERVICE_ADDR, Scratch, Server, SplitNetwork, in_each_browser, isolated};

const SECRET: &str = "turn-test-secret";
/// `--timeout` of the peers that must not connect: bounds the test, and is what ends them.
const GIVE_UP: &str = "20s";
/// Longer than [`GIVE_UP`] plus a peer's exit: "never happens", not a performance bound.
const EXIT_DEADLINE: Duration = Duration::from_secs(40);

/// T's network, coturn and the server with the given TURN flags (`--turn-url` is added).
struct Relay {
    net: SplitNetwork,
    coturn: Coturn,
    server: Server,
}

impl Relay {
    async fn start(server_secret: &str, extra_server_args: &[&str]) -> Relay {
        let net = SplitNetwork::build().await;
        let coturn = Coturn::start(SERVICE_ADDR, SECRET, &[net.a.subnet, net.b.subnet]).await;
        let url = coturn.url();
        let web = web_dir();
        let mut args = vec!["--web-dir", web.to_str().unwrap_or("web"), "--turn-url", &url];
        args.extend(["--turn-secret", server_secret]);
        args.extend_from_slice(extra_server_args);
        let server = Server::start_on(&format!("{SERVICE_ADDR}:0"), &args).await;
        Relay { net, coturn, server }
    }

    async fn peer_in_a(&self, args: &[&str]) -> Peer {
        Peer::spawn_via(&self.net.a.launcher(), &self.server.ws_url(), args).await
    }

    async fn peer_in_b(&self, args: &[&str]) -> Peer {
        Peer::spawn_via(&self.net.b.launcher(), &self.server.ws_url(), args).await
    }
}

/// Writes `size` random bytes to `path`; returns their SHA-256 (hex).
fn write_random(path: &str, size: u64) -> String {
    let mut bytes = Vec::new();
    std::fs::File::open("/dev/urandom")
        .and_then(|f| f.take(size).read_to_end(&mut bytes))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    hex::encode(Sha256::digest(&bytes))
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

/// Waits for the `ice_selected` event about `remote` and checks that both ends of the pair are
/// TURN relays.
async fn assert_relayed(peer: &mut Peer, remote: &str) {
    let selected = peer.wait_for("ice_selected", |e| is(e, "ice_selected") && e["peer"] == remote).await;
    assert_eq!(
        (selected["local"].as_str(), selected["remote"].as_str()),
        (Some("relay"), Some("relay")),
        "{selected}"
    );
}

/// Rust in A ↔ Rust in B: chat both ways and a file, relay ↔ relay. Ana uses the default
/// policy (ICE finds that only the relay works), Bob `--relay-only`. Cy, in B next to Bob,
/// could reach Bob directly, yet their pair is relay ↔ relay too: that is `--relay-only`.
#[test]
fn rust_peers_on_two_sides_chat_and_send_a_file_through_coturn() {
    isolated(|| async {
        let relay = Relay::start(SECRET, &[]).await;
        let scratch = Scratch::new("turn", "r2r");
        let source = scratch.join_str("report.bin");
        let sha = write_random(&source, 1024 * 1024 + 7);
        let inbox = scratch.join_str("inbox");

        let mut ana = relay
            .peer_in_a(&["--room", "r", "--name", "ana", "--send", "hello from A", "--send-file", &source])
            .await;
        let ana_id = ana.joined().await;
        let mut bob = relay
            .peer_in_b(&[
                "--room",
                "r",
                "--name",
                "bob",
                "--relay-only",
                "--send",
                "hello from B",
                "--receive-dir",
                &inbox,
            ])
            .await;
        let bob_id = bob.joined().await;
        // Ana's file reaches Cy too: into the scratch dir, not the working directory.
        let cy_inbox = scratch.join_str("cy");
        let mut cy = relay
            .peer_in_b(&[
                "--room",
                "r",
                "--name",
                "cy",
                "--send",
                "hello from cy",
                "--receive-dir",
                &cy_inbox,
            ])
            .await;
        let cy_id = cy.joined().await;

        ana.wait_message(&bob_id, "hello from B").await;
        bob.wait_message(&cy_id, "hello from cy").await;
        cy.wait_message(&bob_id, "hello from B").await;
        bob.wait_message(&ana_id, "hello from A").await;
        let received = bob.wait_event("file_received").await;
        assert_eq!(received["sha256"], sha.as_str(), "{received}");
        assert_eq!(sha256_of(Path::new(received["path"].as_str().unwrap_or_default())), sha);
        let sent = ana.wait_event("file_sent").await;
        assert_eq!(sent["ok"], true, "{sent}");

        assert_relayed(&mut ana, &bob_id).await;
        assert_relayed(&mut bob, &ana_id).await;
        assert_relayed(&mut bob, &cy_id).await;
        assert_relayed(&mut cy, &bob_id).await;
        ana.assert_none("error", |e| is(e, "error"));
        bob.assert_none("error", |e| is(e, "error"));
        assert!(relay.coturn.log().contains("success"), "coturn logged no successful allocation");
    });
}

in_each_browser!(the_page_on_one_side_and_a_rust_peer_on_the_other_connect_through_coturn);
/// The page in A (`relay=1`) ↔ a Rust peer in B: chat both ways and a file to the page; the
/// page's per-peer stats show the relay path and the peer's `ice_selected` says relay. A Rust
/// peer in A next to the page could reach it directly, yet their pair is relay ↔ relay too:
/// that is `relay=1`.
async fn the_page_on_one_side_and_a_rust_peer_on_the_other_connect_through_coturn(kind: BrowserKind) {
    let relay = Relay::start(SECRET, &[]).await;
    let scratch = Scratch::new("turn", "p2r");
    let source = scratch.join_str("notes.bin");
    let sha = write_random(&source, 512 * 1024 + 3);

    let page = Browser::start_kind_in(kind, "pat", &relay.net.a).await;
    page.open(&format!("{}/?room=r&name=pat&relay=1", relay.server.http_url())).await;
    let pat_id = page.self_id().await;
    let mut rusty = relay
        .peer_in_b(&["--room", "r", "--name", "rusty", "--send", "hi page", "--send-file", &source])
        .await;
    let rusty_id = rusty.joined().await;

    page.wait_connected(&rusty_id).await;
    page.wait_line(&rusty_id, "hi page").await;
    page.send_line("hi rust").await;
    rusty.wait_message(&pat_id, "hi rust").await;
    let row = page
        .wait_until(
            "notes.bin received and verified",
            r#"const row = [...document.querySelectorAll('[data-file-name="notes.bin"]')]
                 .find(e => e.dataset.fileDirection === 'in' && e.dataset.fileState === 'done');
               return row ? row.dataset.fileSha256 : null;"#,
        )
        .await;
    assert_eq!(row.as_str(), Some(sha.as_str()), "the page's data-file-sha256");
    assert_eq!(rusty.wait_event("file_sent").await["ok"], true);

    assert_relayed(&mut rusty, &pat_id).await;
    // Rusty's file reaches Near too: into the scratch dir, not the working directory.
    let near_inbox = scratch.join_str("near");
    let mut near = relay
        .peer_in_a(&["--room", "r", "--name", "near", "--send", "hi neighbour", "--receive-dir", &near_inbox])
        .await;
    let near_id = near.joined().await;
    page.wait_line(&near_id, "hi neighbour").await;
    assert_relayed(&mut near, &pat_id).await;
    for id in [&rusty_id, &near_id] {
        let path = page
            .wait_until(
                &format!("the relay path in the stats of {id}"),
                &format!(
                    r#"const e = document.querySelector('[data-peer-id="{id}"] [data-stat="path"]');
                       return e && e.textContent.startsWith('relay ↔ relay') ? e.textContent : null;"#
                ),
            )
            .await;
        assert!(path.as_str().is_some_and(|p| p.starts_with("relay ↔ relay")), "{path}");
    }
    page.close().await;
}

/// A resumed `welcome` carries a fresh credential, and a connection made after it uses that one:
/// with `--turn-ttl 4s`, Ana's first credential has expired when Bob arrives, but she resumed
/// in between (her signaling was cut), so she and Bob connect through the relay.
#[test]
fn a_connection_after_a_resume_uses_the_fresh_credential() {
    isolated(|| async {
        let relay = Relay::start(SECRET, &["--turn-ttl", "4s"]).await;
        let proxy = CuttingProxy::start_on(&format!("{SERVICE_ADDR}:0"), relay.server.addr()).await;
        let url = format!("{}/ws", proxy.http_url().replacen("http://", "ws://", 1));
        let mut ana = Peer::spawn_via(
            &relay.net.a.launcher(),
            &url,
            &["--room", "r", "--name", "ana", "--relay-only", "--send", "hi bob"],
        )
        .await;
        ana.joined().await;
        // Past the first credential's expiry (whole seconds after the welcome).
        tokio::time::sleep(Duration::from_millis(5500)).await;
        proxy.cut();
        proxy.restore();
        let resumed = ana.wait_for("the resumed welcome", |e| is(e, "welcome") && e["resumed"] == true).await;
        let ana_id = resumed["id"].as_str().unwrap_or_default().to_string();
        let mut bob = relay.peer_in_b(&["--room", "r", "--name", "bob", "--relay-only"]).await;
        let bob_id = bob.joined().await;
        bob.wait_message(&ana_id, "hi bob").await;
        assert_relayed(&mut ana, &bob_id).await;
        ana.assert_none("error", |e| is(e, "error"));
    });
}

/// Both peers stop at `--timeout` without a channel, each having said why.
async fn assert_never_connect(ana: &mut Peer, bob: &mut Peer) {
    for peer in [&mut *ana, &mut *bob] {
        let status = peer.wait_exit_within(EXIT_DEADLINE).await;
        assert_eq!(status.code(), Some(1), "gave up at --timeout");
        peer.assert_none("channel_open", |e| is(e, "channel_open"));
    }
}

/// `--turn-ttl 1s`: Ana's credential has expired by the time Bob joins, so she gets no relay:
/// she says that the credential expired, nothing connects, and both peers end at `--timeout`.
#[test]
fn an_expired_turn_credential_fails_with_a_clear_error() {
    isolated(|| async {
        let relay = Relay::start(SECRET, &["--turn-ttl", "1s"]).await;
        let mut ana =
            relay.peer_in_a(&["--room", "r", "--name", "ana", "--relay-only", "--timeout", GIVE_UP]).await;
        ana.joined().await;
        // The expiry is whole seconds after the welcome: 2.5 s is past it whatever the rounding.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut bob =
            relay.peer_in_b(&["--room", "r", "--name", "bob", "--relay-only", "--timeout", GIVE_UP]).await;
        let bob_id = bob.joined().await;

        let error = ana
            .wait_for("an error about the TURN credential", |e| {
                is(e, "error") && e["message"].as_str().is_some_and(|m| m.contains("TURN credential expired"))
            })
            .await;
        assert!(
            error["message"].as_str().unwrap_or_default().starts_with(&bob_id),
            "names the peer: {error}"
        );
        assert_never_connect(&mut ana, &mut bob).await;
    });
}

in_each_browser!(a_wrong_turn_secret_fails_with_a_clear_error);
/// A server whose `--turn-secret` is not coturn's: every credential is refused; both peers say
/// so, nothing connects, both end at `--timeout`. A page (`relay=1`) in A says so too, and its
/// peer entries never connect.
async fn a_wrong_turn_secret_fails_with_a_clear_error(kind: BrowserKind) {
    let relay = Relay::start("not-the-coturn-secret", &[]).await;
    let mut ana =
        relay.peer_in_a(&["--room", "r", "--name", "ana", "--relay-only", "--timeout", GIVE_UP]).await;
    ana.joined().await;
    let mut bob =
        relay.peer_in_b(&["--room", "r", "--name", "bob", "--relay-only", "--timeout", GIVE_UP]).await;
    bob.joined().await;
    let page = Browser::start_kind_in(kind, "pat", &relay.net.a).await;
    page.open(&format!("{}/?room=r&name=pat&relay=1", relay.server.http_url())).await;
    page.self_id().await;
    for peer in [&mut ana, &mut bob] {
        peer.wait_for("an error saying the TURN server refused the credential", |e| {
            is(e, "error")
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("refused the credential") && m.contains("--turn-secret"))
        })
        .await;
    }
    page.wait_until(
        "a notice that the TURN relay refused the credential",
        r#"return [...document.querySelectorAll('.notice.error')]
             .some(e => e.textContent.includes('TURN relay') && e.textContent.includes('refused the credential'));"#,
    )
    .await;
    assert_never_connect(&mut ana, &mut bob).await;
    let connected =
        page.eval("return document.querySelectorAll('[data-connection=\"connected\"]').length;").await;
    assert_eq!(connected, 0, "the page connected to nobody");
    page.close().await;
}

/// The premise of the tests above: without a TURN server, A and B have no path.
#[test]
fn without_turn_the_sides_cannot_connect() {
    isolated(|| async {
        let net = SplitNetwork::build().await;
        let server = Server::start_on(&format!("{SERVICE_ADDR}:0"), &[]).await;
        let mut ana =
            Peer::spawn_via(&net.a.launcher(), &server.ws_url(), &["--room", "r", "--timeout", GIVE_UP])
                .await;
        ana.joined().await;
        let mut bob =
            Peer::spawn_via(&net.b.launcher(), &server.ws_url(), &["--room", "r", "--timeout", GIVE_UP])
                .await;
        let welcome = bob.wait_event("welcome").await;
        assert_eq!(welcome["peers"].as_array().map(Vec::len), Some(1), "both reach the server: {welcome}");
        assert_never_connect(&mut ana, &mut bob).await;
    });
}
