//! The page in real headless browsers, Chromium and Firefox ESR, talking to other browsers and
//! to the Rust `peer` through the real server, each test inside its own loopback-only network
//! namespace.
//!
//! Every test runs once per browser (`NAME::chromium`, `NAME::firefox`), or once per ordered
//! pair where two browsers meet (`NAME::firefox_chromium`: Ana in Firefox, Bo in Chromium).
//! Everything is asserted through the page's DOM contract (INTERFACES.md, "Page") and the
//! peer's `--json` events. These tests need Debian's `chromium`, `chromium-driver` and
//! `firefox-esr`, and geckodriver (scripts/test.sh installs them); without them they fail and
//! say so.

use std::path::Path;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tests::browser::{BROWSER_DEADLINE, Browser, BrowserKind, start_server_with_page};
use tests::proxy::CuttingProxy;
use tests::{Peer, in_each_browser, in_each_browser_pair};
use tokio_tungstenite::tungstenite::Message;

in_each_browser!(browser_then_rust_peer_exchange_lines);
/// Browser first, Rust peer second: the Rust peer is the newcomer and makes the offer.
async fn browser_then_rust_peer_exchange_lines(kind: BrowserKind) {
    let server = start_server_with_page(&[]).await;
    let ana = Browser::start_kind(kind, "ana").await;
    let ana_id = ana.join(&server, "r1", "ana").await;

    let mut rusty =
        Peer::spawn(&server, &["--room", "r1", "--name", "rusty", "--send", "hello from rust"]).await;
    let rusty_id = rusty.joined().await;
    rusty.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;
    ana.wait_connected(&rusty_id).await;

    ana.wait_line(&rusty_id, "hello from rust").await;
    ana.send_line("hello from the browser").await;
    rusty.wait_message(&ana_id, "hello from the browser").await;
    // The page shows its own line too, under its own id.
    ana.wait_line(&ana_id, "hello from the browser").await;
    ana.close().await;
}

in_each_browser!(rust_peer_then_browser_exchange_lines);
/// Rust peer first, browser second: the page is the newcomer and makes the offer.
async fn rust_peer_then_browser_exchange_lines(kind: BrowserKind) {
    let server = start_server_with_page(&[]).await;
    let mut rusty = Peer::spawn(&server, &["--room", "r2", "--name", "rusty", "--send", "hi browser"]).await;
    let rusty_id = rusty.joined().await;

    let ana = Browser::start_kind(kind, "ana").await;
    let started = Instant::now();
    let ana_id = ana.join(&server, "r2", "ana").await;
    let welcomed = started.elapsed();
    ana.wait_connected(&rusty_id).await;
    // Figures for the report, not thresholds (each includes up to 50 ms of polling).
    eprintln!(
        "measured: page open -> welcome {welcomed:?}, welcome -> chat open with a Rust peer {:?}",
        started.elapsed() - welcomed
    );
    rusty.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;

    ana.wait_line(&rusty_id, "hi browser").await;
    ana.send_line_with_enter("hi rust, sent with Enter").await;
    rusty.wait_message(&ana_id, "hi rust, sent with Enter").await;
    ana.close().await;
}

in_each_browser_pair!(two_browsers_exchange_lines);
/// Two browsers: one joins through the URL, the other through the form.
async fn two_browsers_exchange_lines(first: BrowserKind, second: BrowserKind) {
    let server = start_server_with_page(&[]).await;
    let ana = Browser::start_kind(first, "ana").await;
    let bo = Browser::start_kind(second, "bo").await;
    let ana_id = ana.join(&server, "r3", "ana").await;
    let bo_id = bo.join_with_form(&server, "r3", "bo").await;
    assert_ne!(ana_id, bo_id);

    ana.wait_connected(&bo_id).await;
    bo.wait_connected(&ana_id).await;

    ana.send_line("hi bo").await;
    bo.wait_line(&ana_id, "hi bo").await;
    bo.send_line_with_enter("hi ana — ünïcödé ok").await;
    ana.wait_line(&bo_id, "hi ana — ünïcödé ok").await;

    // Each side shows both lines, in the order they happened.
    let expected =
        vec![(ana_id.clone(), "hi bo".to_string()), (bo_id.clone(), "hi ana — ünïcödé ok".to_string())];
    for browser in [&ana, &bo] {
        let lines: Vec<(String, String)> =
            browser.chat_lines().await.into_iter().map(|l| (l.from, l.text)).collect();
        assert_eq!(lines, expected);
    }
    ana.close().await;
    bo.close().await;
}

in_each_browser!(three_way_mesh_of_two_browsers_and_a_rust_peer);
/// Two browsers, one of each kind, and a Rust peer: everyone gets the other two's lines. `kind`
/// is Ana's browser, Bo runs the other. Also takes the screenshots of Ana's page; the Chromium
/// one is what the README shows (see `screenshot_targets`).
async fn three_way_mesh_of_two_browsers_and_a_rust_peer(kind: BrowserKind) {
    let server = start_server_with_page(&[]).await;
    let ana = Browser::start_kind(kind, "ana").await;
    let ana_id = ana.join(&server, "mesh", "Ana").await;
    let mut rusty =
        Peer::spawn(&server, &["--room", "mesh", "--name", "rusty", "--send", "Hello from the Rust peer 🦀"])
            .await;
    let rusty_id = rusty.joined().await;
    let bo = Browser::start_kind(other(kind), "bo").await;
    let bo_id = bo.join(&server, "mesh", "Bo").await;

    ana.wait_connected(&rusty_id).await;
    ana.wait_connected(&bo_id).await;
    bo.wait_connected(&ana_id).await;
    bo.wait_connected(&rusty_id).await;
    for id in [&ana_id, &bo_id] {
        rusty.wait_for("channel_open", |e| e["event"] == "channel_open" && e["peer"] == **id).await;
    }

    ana.send_line("Hi both! This line went browser → browser and browser → Rust.").await;
    bo.send_line("Hello Ana, hello rusty. Stats on the left are live.").await;

    // Every participant gets the other two's lines.
    ana.wait_line(&rusty_id, "Hello from the Rust peer 🦀").await;
    ana.wait_line(&bo_id, "Hello Ana, hello rusty. Stats on the left are live.").await;
    bo.wait_line(&rusty_id, "Hello from the Rust peer 🦀").await;
    bo.wait_line(&ana_id, "Hi both! This line went browser → browser and browser → Rust.").await;
    rusty.wait_message(&ana_id, "Hi both! This line went browser → browser and browser → Rust.").await;
    rusty.wait_message(&bo_id, "Hello Ana, hello rusty. Stats on the left are live.").await;

    rusty.send_line("typed on the Rust peer's stdin").await;
    ana.wait_line(&rusty_id, "typed on the Rust peer's stdin").await;
    bo.wait_line(&rusty_id, "typed on the Rust peer's stdin").await;

    // Wait for live stats (a round-trip time) for both peers before the screenshot.
    ana.wait_until(
        "round-trip times in the peer list",
        r#"const rtts = [...document.querySelectorAll('[data-peer-id] [data-stat="rtt"]')];
           return rtts.length === 2 && rtts.every(e => e.textContent.endsWith('ms'));"#,
    )
    .await;
    let (desktop, phone) = screenshot_targets(kind);
    ana.set_window_size(1280, 900).await;
    ana.screenshot(&desktop).await;
    ana.set_window_size(390, 844).await;
    ana.screenshot(&phone).await;
    eprintln!("screenshots: {} and {}", desktop.display(), phone.display());

    bo.close().await;
    ana.close().await;
}

in_each_browser!(a_browser_that_leaves_disappears_from_the_others);
/// Leaving (the Leave button, or closing the tab) removes you from everyone's list at once,
/// not after the resume grace period, which is long here so that only `leave` can explain it.
async fn a_browser_that_leaves_disappears_from_the_others(kind: BrowserKind) {
    let server = start_server_with_page(&["--resume-grace", "5m"]).await;
    let ana = Browser::start_kind(kind, "ana").await;
    let ana_id = ana.join(&server, "bye", "ana").await;
    let bo = Browser::start_kind(kind, "bo").await;
    let bo_id = bo.join(&server, "bye", "bo").await;
    let mut rusty = Peer::spawn(&server, &["--room", "bye", "--name", "rusty"]).await;
    let rusty_id = rusty.joined().await;
    ana.wait_connected(&bo_id).await;
    ana.wait_connected(&rusty_id).await;
    bo.wait_connected(&rusty_id).await;

    // Bo clicks Leave: gone from Ana's list and from the Rust peer's view.
    bo.click("#leave").await;
    ana.wait_peer_gone(&bo_id).await;
    rusty.wait_for("peer_left for bo", |e| e["event"] == "peer_left" && e["id"] == bo_id).await;
    // Bo is back at the form, with the room filled in.
    bo.wait_for_css("the join form", "#join-view:not([hidden]) #room").await;
    assert!(bo.peers().await.is_empty(), "bo still lists peers after leaving");

    // Ana closes the tab (navigates away): the Rust peer sees her leave.
    ana.open("about:blank").await;
    rusty.wait_for("peer_left for ana", |e| e["event"] == "peer_left" && e["id"] == ana_id).await;

    ana.close().await;
    bo.close().await;
}

in_each_browser!(html_in_lines_and_names_is_shown_literally);
/// Markup in chat lines and names is shown as text, never interpreted.
async fn html_in_lines_and_names_is_shown_literally(kind: BrowserKind) {
    let server = start_server_with_page(&[]).await;
    let ana = Browser::start_kind(kind, "ana").await;
    let ana_id = ana.join(&server, "xss", "ana").await;
    // At most 32 characters, the protocol's limit for names.
    let evil_name = "<img src=x onerror=pwned=1>";
    let bo = Browser::start_kind(kind, "bo").await;
    let bo_id = bo.join(&server, "xss", "%3Cimg%20src%3Dx%20onerror%3Dpwned%3D1%3E").await;
    ana.wait_connected(&bo_id).await;

    let line = "<script>pwned=2</script><b>not bold</b> & &amp;";
    bo.send_line(line).await;
    ana.wait_line(&bo_id, line).await;

    let check = ana
        .eval(
            r#"return {
                 pwned: window.pwned ?? null,
                 markup: document.querySelectorAll('#log script, #log b, #peers img').length,
                 names: [...document.querySelectorAll('[data-peer-id] .peer-name')].map(e => e.textContent),
               };"#,
        )
        .await;
    assert_eq!(check["pwned"], serde_json::Value::Null, "a line or name ran as script: {check}");
    assert_eq!(check["markup"], 0, "markup from a peer became elements: {check}");
    assert!(
        check["names"].as_array().is_some_and(|n| n.iter().any(|n| n == evil_name)),
        "the name is not shown literally: {check}"
    );
    assert_eq!(ana_id, ana.self_id().await);
    ana.close().await;
    bo.close().await;
}

/// The other browser of the two.
fn other(kind: BrowserKind) -> BrowserKind {
    match kind {
        BrowserKind::Chromium => BrowserKind::Firefox,
        BrowserKind::Firefox => BrowserKind::Chromium,
    }
}

/// Where the mesh test writes its screenshots: `target/screenshots/mesh-<browser>.png`, and
/// with `SWITCHBOARD_UPDATE_SCREENSHOT=1` Chromium's go to the README's `docs/screenshot.png`
/// instead (so that an ordinary test run leaves the tree clean).
fn screenshot_targets(kind: BrowserKind) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if kind == BrowserKind::Chromium && std::env::var_os("SWITCHBOARD_UPDATE_SCREENSHOT").is_some() {
        (root.join("docs/screenshot.png"), root.join("docs/screenshot-phone.png"))
    } else {
        let dir = root.join("target/screenshots");
        (dir.join(format!("mesh-{kind}.png")), dir.join(format!("mesh-{kind}-phone.png")))
    }
}

in_each_browser!(the_page_rides_out_a_server_restart);
/// The server dies and comes back: the page says it is reconnecting, its open data channel keeps
/// carrying lines meanwhile, and after the restart (which cannot resume the old session) it
/// rejoins with a new id and connects to everyone again.
async fn the_page_rides_out_a_server_restart(kind: BrowserKind) {
    let mut server = start_server_with_page(&[]).await;
    let mut rusty = Peer::spawn(&server, &["--room", "phoenix", "--name", "rusty"]).await;
    let rusty_id = rusty.joined().await;
    let ana = Browser::start_kind(kind, "ana").await;
    let ana_id = ana.join(&server, "phoenix", "ana").await;
    ana.wait_connected(&rusty_id).await;

    server.kill().await;
    ana.wait_until(
        "the reconnecting banner",
        r#"const b = document.querySelector('#banner');
           return !b.hidden && b.textContent.includes('Reconnecting')
             && document.querySelector('#status').textContent.includes('reconnecting');"#,
    )
    .await;
    // The peer-to-peer channel does not need the server.
    ana.send_line("sent while the server is down").await;
    rusty.wait_message(&ana_id, "sent while the server is down").await;

    server.restart().await;
    let rusty_new = rusty.joined().await;
    let script = format!(
        "const e = document.querySelector('[data-self-id]'); return e && e.dataset.selfId !== {};",
        serde_json::json!(ana_id)
    );
    ana.wait_until("a new own id after the restart", &script).await;
    let ana_new = ana.self_id().await;
    ana.wait_peer_gone(&rusty_id).await;
    ana.wait_connected(&rusty_new).await;
    ana.wait_until("the banner gone", "return document.querySelector('#banner').hidden;").await;
    ana.send_line("back after the restart").await;
    rusty.wait_message(&ana_new, "back after the restart").await;
    ana.close().await;
}

in_each_browser!(the_page_resumes_after_its_connection_drops_without_losing_a_signal);
/// The page loses only its own connection to the server (a proxy in between drops it and
/// refuses reconnects for a while) and resumes, which a user notices as nothing lost:
/// - while cut off, the page says so (`#status` `data-state="reconnecting"`, the banner), and
///   chat over its open data channel keeps flowing both ways;
/// - a peer that joins during the outage is queued for the page by the server (its
///   `peer_joined` and offer) and gets connected once the page is back;
/// - the page keeps its id (`data-self-id`) and its connection to the Rust peer, which never sees
///   it leave (no `peer_left`, no `channel_closed`, no second `channel_open`).
///
/// The outage is as long as bob's join and one chat line take (about a second); the server's
/// resume grace stays at its default 20 s. It fails when the page does not send its resume
/// token (a fresh join gets a new id, and rusty sees ana leave after the grace).
async fn the_page_resumes_after_its_connection_drops_without_losing_a_signal(kind: BrowserKind) {
    let server = start_server_with_page(&["--resume-grace", "20s"]).await;
    let proxy = CuttingProxy::start(server.addr()).await;
    let mut rusty = Peer::spawn(&server, &["--room", "tunnel", "--name", "rusty"]).await;
    let rusty_id = rusty.joined().await;
    let ana = Browser::start_kind(kind, "ana").await;
    // The page's WebSocket goes to its own origin's /ws: through the proxy too.
    ana.open(&format!("{}/?room=tunnel&name=ana", proxy.http_url())).await;
    let ana_id = ana.self_id().await;
    ana.wait_connected(&rusty_id).await;
    rusty.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;

    proxy.cut();
    ana.wait_until(
        "the reconnecting state",
        r#"const b = document.querySelector('#banner');
           return document.querySelector('#status').dataset.state === 'reconnecting'
             && !b.hidden && b.textContent.includes('Reconnecting');"#,
    )
    .await;
    // The server has seen the connection end and keeps ana as a suspended member: from now
    // on, what it would send her goes to her resume queue.
    server.wait_for_metric("switchboard_suspended_members", 1.0).await;

    let mut bob =
        Peer::spawn(&server, &["--room", "tunnel", "--name", "bob", "--send", "hello from bob"]).await;
    let welcome = bob.wait_event("welcome").await;
    let bob_id = welcome["id"].as_str().unwrap_or_default().to_string();
    let listed = welcome["peers"].as_array().is_some_and(|peers| peers.iter().any(|p| p["id"] == ana_id));
    assert!(listed, "bob's welcome lists the suspended ana: {welcome}");
    // The data channel does not need the server, in either direction.
    rusty.send_line("sent during the outage").await;
    ana.wait_line(&rusty_id, "sent during the outage").await;
    ana.send_line("typed during the outage").await;
    rusty.wait_message(&ana_id, "typed during the outage").await;
    // Still cut off: bob's offer is waiting in ana's queue, not at the page.
    assert_eq!(server.metric("switchboard_suspended_members").await, 1.0, "ana stayed suspended");

    proxy.restore();
    ana.wait_until(
        "the joined state after the resume",
        r#"return document.querySelector('#status').dataset.state === 'joined'
             && document.querySelector('#banner').hidden;"#,
    )
    .await;
    assert_eq!(ana.self_id().await, ana_id, "the page kept its id: it resumed, not rejoined");
    server.wait_for_metric("switchboard_suspended_members", 0.0).await;
    ana.wait_connected(&bob_id).await;
    bob.wait_for("channel_open to ana", |e| e["event"] == "channel_open" && e["peer"] == ana_id).await;
    ana.wait_line(&bob_id, "hello from bob").await;
    ana.send_line("after the resume").await;
    bob.wait_message(&ana_id, "after the resume").await;
    rusty.wait_message(&ana_id, "after the resume").await;
    // The connection to rusty is the one from before the outage: still up, never rebuilt.
    ana.wait_connected(&rusty_id).await;
    let shown = ana.chat_lines().await;
    assert_eq!(
        shown.iter().filter(|l| l.from == rusty_id && l.text == "sent during the outage").count(),
        1,
        "the line sent during the outage is shown once: {shown:?}"
    );
    rusty.assert_none("peer_left for ana", |e| e["event"] == "peer_left" && e["id"] == ana_id);
    rusty.assert_none("a closed or reopened channel to ana", |e| {
        (e["event"] == "channel_closed" || e["event"] == "channel_open") && e["peer"] == ana_id
    });
    bob.assert_none("peer_left for ana", |e| e["event"] == "peer_left" && e["id"] == ana_id);
    ana.close().await;
}

in_each_browser!(a_refused_join_says_why);
/// A join the server refuses (here: the room is full) brings back the form with the reason.
async fn a_refused_join_says_why(kind: BrowserKind) {
    let server = start_server_with_page(&["--room-size", "1"]).await;
    let ana = Browser::start_kind(kind, "ana").await;
    ana.join(&server, "tiny", "ana").await;
    let bo = Browser::start_kind(kind, "bo").await;
    bo.open(&format!("{}/?room=tiny&name=bo", server.http_url())).await;
    let shown = bo
        .wait_until(
            "the join error",
            "const e = document.querySelector('#join-error'); return !e.hidden && e.textContent;",
        )
        .await;
    assert!(shown.as_str().is_some_and(|t| t.contains("full")), "unclear message: {shown}");
    // The form is back, filled in, so that trying again is one click.
    let room = bo.eval("return document.querySelector('#room').value;").await;
    assert_eq!(room, "tiny");
    ana.close().await;
    bo.close().await;
}

in_each_browser!(a_room_token_in_the_link_lets_the_page_in);
/// With room tokens required, the page without one is refused and says why; the invite link
/// carrying `token=` gets in.
async fn a_room_token_in_the_link_lets_the_page_in(kind: BrowserKind) {
    let secret = ["--token-secret", "browser-test-secret"];
    let server = start_server_with_page(&secret).await;
    let out = std::process::Command::new(tests::bin_path("server"))
        .args(["token", "--room", "vip", "--ttl", "10m"])
        .args(secret)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `server token`: {e}"));
    assert!(out.status.success(), "`server token` failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().last().unwrap_or_default().trim().to_string();

    let ana = Browser::start_kind(kind, "ana").await;
    ana.open(&format!("{}/?room=vip&name=ana", server.http_url())).await;
    let shown = ana
        .wait_until(
            "the join error",
            "const e = document.querySelector('#join-error'); return !e.hidden && e.textContent;",
        )
        .await;
    assert!(shown.as_str().is_some_and(|t| t.contains("token")), "unclear message: {shown}");

    ana.open(&format!("{}/?room=vip&name=ana&token={token}", server.http_url())).await;
    let id = ana.self_id().await;
    assert!(!id.is_empty());
    // The invite link the page offers carries the token along.
    let invite = ana.eval("return document.querySelector('#invite').dataset.inviteUrl;").await;
    let invite = invite.as_str().unwrap_or_default();
    assert!(
        invite.contains("room=vip")
            && invite.contains(&format!("token={token}"))
            && !invite.contains("name="),
        "invite link {invite:?}"
    );
    ana.close().await;
}

/// What Firefox puts on the wire, unchanged, is enough for the Rust peer: its offer with
/// `a=max-message-size:1073741823`, upper-case `UDP`/`TCP` candidates, `::1` candidates, and
/// the end of candidates as `candidate:""` and then `null` (../shared/notes/round2.md).
///
/// The test stands in for the page's signaling: an `RTCPeerConnection` made in Firefox by the
/// test, a WebSocket client in the test joined to the real server, the real Rust peer on the
/// other side. Firefox's signals go out exactly as `toJSON()` gives them, but only its `::1`
/// candidates, and the Rust peer's candidates (and the candidate lines of its answer) are held
/// back from Firefox: so the only way to connect is the Rust peer checking Firefox's `::1`
/// candidate it was sent. A refused candidate, end-of-candidates or offer fails the test.
#[test]
fn firefox_signals_as_sent_connect_to_the_rust_peer_over_ipv6() {
    tests::isolated(|| async {
        let server = start_server_with_page(&[]).await;
        let mut rusty =
            Peer::spawn(&server, &["--room", "wire", "--name", "rusty", "--send", "hello fox"]).await;
        let rusty_id = rusty.joined().await;
        let fox = Browser::start_firefox("fox").await;
        // Any page of the server's origin will do: the test's script makes its own connection.
        fox.open(&format!("{}/", server.http_url())).await;
        fox.wait_shown("#join").await;
        let mut ws = RawClient::join(&server, "wire", "fox").await;

        // The newcomer makes the offer (PROTOCOL.md): here Firefox.
        fox.eval(FIREFOX_OFFERER).await;
        let offer = fox.wait_until("Firefox's offer", "return window.__fox.offer;").await;
        let sdp = offer["sdp"].as_str().unwrap_or_default().to_string();
        assert!(sdp.contains("a=max-message-size:1073741823"), "Firefox's offer as measured: {sdp}");
        ws.signal(&rusty_id, offer).await;

        let gathered = fox
            .wait_until(
                "Firefox's candidates, ended by null",
                "const c = window.__fox.candidates; return c.length > 0 && c[c.length - 1] === null && c;",
            )
            .await;
        let gathered = gathered.as_array().cloned().unwrap_or_default();
        let line = |c: &Value| c["candidate"].as_str().map(str::to_string);
        let ipv6: Vec<Value> =
            gathered.iter().filter(|c| line(c).is_some_and(|l| l.contains(" ::1 "))).cloned().collect();
        assert!(
            ipv6.iter().any(|c| line(c).is_some_and(|l| l.contains(" UDP "))),
            "Firefox offers an upper-case UDP candidate on ::1: {gathered:?}"
        );
        assert!(
            ipv6.iter().any(|c| line(c).is_some_and(|l| l.contains(" TCP "))),
            "Firefox offers an upper-case TCP candidate on ::1: {gathered:?}"
        );
        let end_of_candidates: Vec<&Value> =
            gathered.iter().filter(|c| line(c).as_deref() == Some("")).collect();
        assert_eq!(
            end_of_candidates.len(),
            1,
            "Firefox ends its candidates with candidate:\"\": {gathered:?}"
        );
        for candidate in ipv6.iter().chain(end_of_candidates).chain([&Value::Null]) {
            ws.signal(&rusty_id, json!({ "type": "candidate", "candidate": candidate })).await;
        }

        // The Rust peer's answer, without its candidates: Firefox must be found by its own.
        let answer = ws.wait_signal(&rusty_id, "answer").await;
        let stripped: String = answer["sdp"]
            .as_str()
            .unwrap_or_default()
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
            .collect();
        fox.eval(&format!(
            "window.__fox.pc.setRemoteDescription({}); return true;",
            json!({ "type": "answer", "sdp": stripped })
        ))
        .await;

        fox.wait_until(
            "the chat channel open in Firefox",
            "return window.__fox.channel.readyState === 'open';",
        )
        .await;
        rusty.wait_for("channel_open to fox", |e| e["event"] == "channel_open" && e["peer"] == ws.id).await;
        fox.wait_until("rusty's line in Firefox", "return window.__fox.lines.includes('hello fox');").await;
        fox.eval("window.__fox.channel.send('hello rusty, from Firefox over ::1'); return true;").await;
        rusty.wait_message(&ws.id, "hello rusty, from Firefox over ::1").await;
        let pair = fox
            .wait_until(
                "the selected candidate pair",
                r#"return window.__fox.pc.getStats().then(report => {
                     for (const s of report.values()) {
                       if (s.type === 'candidate-pair' && s.selected) {
                         return { local: report.get(s.localCandidateId).address,
                                  remote: report.get(s.remoteCandidateId).address };
                       }
                     }
                     return null;
                   });"#,
            )
            .await;
        assert_eq!(pair["local"], "::1", "connected over Firefox's ::1 candidate: {pair}");
        drop(ws);
        fox.close().await;
    });
}

/// Run in Firefox: an `RTCPeerConnection` with a `chat` channel that records its offer, every
/// `icecandidate` as `toJSON()` gives it (`null` for the last), and the lines it receives.
const FIREFOX_OFFERER: &str = r#"
const pc = new RTCPeerConnection();
const fox = { pc, offer: null, candidates: [], lines: [] };
window.__fox = fox;
fox.channel = pc.createDataChannel('chat', { ordered: true });
fox.channel.onmessage = ({ data }) => fox.lines.push(data);
pc.onicecandidate = ({ candidate }) => fox.candidates.push(candidate ? candidate.toJSON() : null);
pc.setLocalDescription().then(() => { fox.offer = pc.localDescription.toJSON(); });
return true;
"#;

/// A bare signaling client (PROTOCOL.md) for tests that make the WebRTC side themselves.
struct RawClient {
    id: String,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl RawClient {
    async fn join(server: &tests::Server, room: &str, name: &str) -> RawClient {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", server.ws_url()));
        let join = json!({ "type": "join", "room": room, "name": name }).to_string();
        ws.send(Message::text(join)).await.unwrap_or_else(|e| panic!("cannot send join: {e}"));
        let mut client = RawClient { id: String::new(), ws };
        let welcome = client.next_where("welcome", |m| m["type"] == "welcome").await;
        client.id = welcome["id"].as_str().unwrap_or_default().to_string();
        client
    }

    async fn signal(&mut self, to: &str, signal: Value) {
        let message = json!({ "type": "signal", "to": to, "signal": signal }).to_string();
        self.ws.send(Message::text(message)).await.unwrap_or_else(|e| panic!("cannot send a signal: {e}"));
    }

    /// The next signal of `kind` from `from`; other messages are skipped.
    async fn wait_signal(&mut self, from: &str, kind: &str) -> Value {
        let message = self
            .next_where(&format!("a signal {kind} from {from}"), |m| {
                m["type"] == "signal" && m["from"] == from && m["signal"]["type"] == kind
            })
            .await;
        message["signal"].clone()
    }

    async fn next_where(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let give_up = tokio::time::Instant::now() + BROWSER_DEADLINE;
        let mut skipped = Vec::new();
        loop {
            let next = tokio::time::timeout_at(give_up, self.ws.next()).await;
            let frame = match next {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => panic!("waiting for {what}: the connection failed: {e}"),
                Ok(None) => panic!("waiting for {what}: the server closed the connection; seen {skipped:?}"),
                Err(_) => panic!("waited {BROWSER_DEADLINE:?} for {what}; seen {skipped:?}"),
            };
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("the server sent bad JSON ({e}): {text}"));
            if wanted(&message) {
                return message;
            }
            skipped.push(message);
        }
    }
}
