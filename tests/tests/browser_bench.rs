//! Benchmark (issue 7): browser ↔ Rust connect time, join → `chat` open, in headless Chromium
//! (`browser_rust_connect_times`) and headless Firefox ESR (`firefox_rust_connect_times`).
//! Not part of `cargo test`; `scripts/bench.sh` runs it with release binaries:
//!
//! ```text
//! cargo build --release -p server -p peer
//! SWITCHBOARD_BIN_DIR=$PWD/target/release \
//!   cargo test -p tests --test browser_bench -- --ignored --nocapture
//! ```
//!
//! Same definition as the Rust ↔ Rust figure (`peer/examples/bench.rs`): for each of 20 runs in
//! a fresh room, one member is already there and the newcomer joins; the time is from the
//! newcomer's `welcome` to its `chat` channel being open. That covers the offer, the trickled
//! candidates through the server, ICE, DTLS, SCTP and the channel's open.
//!
//! - Page joins a Rust peer (`browser_connect_ms`): the Rust peer joins first, then the page.
//!   Timed inside the page with `performance.now()`, so that WebDriver's polling adds nothing: a
//!   `MutationObserver` on the page's DOM contract (INTERFACES.md) records when `data-self-id`
//!   appears (the page sets it on `welcome`) and when the Rust peer's entry shows
//!   `data-channel="open"` (set from the channel's `open` event). The observer is installed on
//!   the join form before joining, so the page itself is unchanged.
//! - Rust peer joins the page (`rust_joins_browser_ms`): the page joins first, then the Rust
//!   peer; from the Rust peer's `welcome` event to its `channel_open`, timestamped as they are
//!   read from its `--json` stdout (as in `peer/examples/bench.rs`).
//!
//! One browser serves every run (the page is reloaded for each); one warm-up run per direction
//! comes first and is reported but not counted. Each direction prints one line to stdout:
//! `NAME: {"runs":20,"p50":..,"p99":..,"min":..,"max":..,"warmup":..,"times":[..]}` (ms).

use std::time::Duration;

use serde_json::{Value, json};
use tests::browser::{Browser, BrowserKind, start_server_with_page};
use tests::{Peer, Server, isolated_with_timeout};

const RUNS: usize = 20;

#[test]
#[ignore = "benchmark: run by scripts/bench.sh"]
fn browser_rust_connect_times() {
    isolated_with_timeout(Duration::from_secs(600), || {
        connect_times(BrowserKind::Chromium, "browser_connect_ms", "rust_joins_browser_ms")
    });
}

/// The same in Firefox ESR.
#[test]
#[ignore = "benchmark: run by scripts/bench.sh"]
fn firefox_rust_connect_times() {
    isolated_with_timeout(Duration::from_secs(600), || {
        connect_times(BrowserKind::Firefox, "firefox_connect_ms", "rust_joins_firefox_ms")
    });
}

/// Both directions with one browser of `kind`, reported as `page_joins` and `rust_joins`.
async fn connect_times(kind: BrowserKind, page_joins: &str, rust_joins: &str) {
    // libtest has printed `test NAME ... ` without a newline: start the result lines afresh.
    println!();
    let server = start_server_with_page(&[]).await;
    let page = Browser::start_kind(kind, "page").await;
    println!("{page_joins} browser: {}", page.version());

    let mut times = Vec::new();
    for run in 0..=RUNS {
        times.push(page_joins_rust_peer(&server, &page, &format!("bp{run}")).await);
    }
    report(page_joins, &times);

    let mut times = Vec::new();
    for run in 0..=RUNS {
        times.push(rust_peer_joins_page(&server, &page, &format!("rp{run}")).await);
    }
    report(rust_joins, &times);

    page.close().await;
}

/// Installed on the join form before joining: records, in page time, when `data-self-id`
/// appears and when the peer `PEER`'s `chat` channel shows open.
const HOOK: &str = r#"
const peer = arguments_peer;
const app = document.querySelector('#app');
const times = { welcome: null, open: null };
window.__benchTimes = times;
new MutationObserver(() => {
  const now = performance.now();
  if (times.welcome === null && app.dataset.selfId) times.welcome = now;
  if (times.open === null &&
      document.querySelector(`[data-peer-id="${peer}"][data-channel="open"]`)) times.open = now;
}).observe(app, { subtree: true, childList: true, attributes: true,
                  attributeFilter: ['data-self-id', 'data-channel'] });
return true;
"#;

/// A Rust peer joins `room`, then the page (through its join form); returns the page's
/// `welcome` → `chat` open in ms.
async fn page_joins_rust_peer(server: &Server, page: &Browser, room: &str) -> f64 {
    let mut rusty = Peer::spawn(server, &["--room", room, "--name", "rusty"]).await;
    let rusty_id = rusty.joined().await;

    // A fresh page each run (the previous one leaves on unload), at its join form. The module
    // script has run once the document is complete, so the form's submit handler is there.
    page.open_join_form(server).await;
    page.eval(&HOOK.replace("arguments_peer", &json!(rusty_id).to_string())).await;
    page.submit_join_form(room, "page").await;
    let times = page
        .wait_until(
            "chat open with the Rust peer (timed in the page)",
            "const t = window.__benchTimes; return t && t.open !== null && t.welcome !== null && t;",
        )
        .await;
    page.wait_connected(&rusty_id).await;
    let page_id = page.self_id().await;
    rusty
        .wait_for("channel_open to the page", |e| e["event"] == "channel_open" && e["peer"] == page_id)
        .await;
    rusty.kill().await;

    let (welcome, open) = (number(&times["welcome"]), number(&times["open"]));
    assert!(open >= welcome, "chat open ({open} ms) before welcome ({welcome} ms) in the page");
    open - welcome
}

/// The page joins `room`, then a Rust peer; returns the Rust peer's `welcome` → `channel_open`
/// in ms, timestamped as its stdout lines arrive.
async fn rust_peer_joins_page(server: &Server, page: &Browser, room: &str) -> f64 {
    // Not `Browser::join`: the previous run's page also carries a `data-self-id` until the new
    // one replaces it, so wait for the id of the page that is in this run's room.
    page.open(&format!("{}/?room={room}&name=page", server.http_url())).await;
    let page_id = page
        .wait_until(
            "the page's own id in the new room",
            &format!(
                "const e = document.querySelector('[data-self-id]');
                 return new URLSearchParams(location.search).get('room') === {room} && e && e.dataset.selfId;",
                room = json!(room)
            ),
        )
        .await;
    let page_id = page_id.as_str().unwrap_or_else(|| panic!("odd page id {page_id}")).to_string();

    let mut rusty = Peer::spawn(server, &["--room", room, "--name", "rusty"]).await;
    let (_, welcome) = rusty.wait_for_arrival("welcome", |e| e["event"] == "welcome").await;
    let (_, open) = rusty
        .wait_for_arrival("channel_open to the page", |e| {
            e["event"] == "channel_open" && e["peer"] == page_id
        })
        .await;
    rusty.kill().await;
    (open - welcome).as_secs_f64() * 1000.0
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Prints `NAME: {json}`; the first time is the warm-up and is not counted.
fn report(name: &str, times: &[f64]) {
    let (warmup, counted) = times.split_first().unwrap_or_else(|| panic!("{name}: no runs"));
    let mut sorted = counted.to_vec();
    sorted.sort_by(f64::total_cmp);
    // The same percentile as peer/examples/bench.rs: nearest rank on the sorted runs.
    let p = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let line = json!({
        "runs": sorted.len(),
        "p50": r1(p(0.5)),
        "p99": r1(p(0.99)),
        "min": r1(sorted[0]),
        "max": r1(sorted[sorted.len() - 1]),
        "warmup": r1(*warmup),
        "times": counted.iter().map(|&t| r1(t)).collect::<Vec<_>>(),
    });
    println!("{name}: {line}");
}
