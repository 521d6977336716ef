//! Benchmark (issue 19): what bounds a browser → Rust file (15–18 MB/s, against 56–74 MB/s Rust
//! → Rust). The same 50 MiB file goes Chromium → Chromium and Chromium → Rust peer, the two
//! interleaved run by run on the same machine, each in a fresh room: if the page's sender sets
//! the pace, both run at about the same rate; if the Rust receiver does, browser → browser is
//! faster. Not part of `cargo test`:
//!
//! ```text
//! cargo build --release -p server -p peer
//! SWITCHBOARD_BIN_DIR=$PWD/target/release \
//!   cargo test -p tests --test files_bench -- --ignored --nocapture
//! ```
//!
//! "On the wire" is the sending page's own timing (channel created → receiver's `{"ok":true}`,
//! the row's `data-file-elapsed-ms`), the figure docs/benchmarks.md has always used for the
//! page. For the Rust receiver, its CPU time over the transfer (user + system, from
//! `/proc/PID/stat`) is printed too: a receiver near a full core would be the bound. Each run
//! prints a `measured:` line and the 1-minute load average, since the machine is shared.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::browser::{Browser, BrowserKind, start_server_with_page};
use tests::{Peer, Scratch, isolated_with_timeout};

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 50 * MIB;
const RUNS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(300);

#[test]
#[ignore = "benchmark: run by hand, see the module docs"]
fn browser_file_throughput() {
    isolated_with_timeout(Duration::from_secs(3600), || async {
        let server = start_server_with_page(&[]).await;
        let scratch = Scratch::new("files-bench", "b2x");
        let source = scratch.join("upload.bin");
        let sha = write_random(&source, SIZE);
        for run in 1..=RUNS {
            // Chromium -> Chromium.
            let room = format!("b2b{run}");
            let ana = Browser::start_kind(BrowserKind::Chromium, "ana").await;
            let ana_id = ana.join(&server, &room, "ana").await;
            let bob = Browser::start_kind(BrowserKind::Chromium, "bob").await;
            let bob_id = bob.join(&server, &room, "bob").await;
            ana.wait_connected(&bob_id).await;
            bob.wait_connected(&ana_id).await;
            let load = load_average();
            choose_files(&ana, &[&source]).await;
            let received = wait_row(&bob, "upload.bin", "in", "done").await;
            assert_eq!(received["sha"], sha.as_str(), "bob's page got the file intact");
            let sent = wait_row(&ana, "upload.bin", "out", "done").await;
            let ms = sent["ms"].as_f64().unwrap_or(0.0);
            println!(
                "measured: run {run} Chromium -> Chromium: {:.1} MB/s on the wire ({ms:.0} ms); load {load}",
                SIZE as f64 / 1e3 / ms.max(1.0)
            );
            ana.close().await;
            bob.close().await;

            // Chromium -> Rust.
            let room = format!("b2r{run}");
            let inbox = scratch.join(&format!("inbox{run}"));
            let inbox_arg = inbox.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", inbox.display()));
            let mut rusty = Peer::spawn(
                &server,
                &["--room", &room, "--name", "rusty", "--receive-dir", inbox_arg, "--expect-files", "1"],
            )
            .await;
            let rusty_id = rusty.joined().await;
            let ana = Browser::start_kind(BrowserKind::Chromium, "ana").await;
            ana.join(&server, &room, "ana").await;
            ana.wait_connected(&rusty_id).await;
            let load = load_average();
            let pid = rusty.pid();
            let cpu_before = cpu_seconds(pid);
            let started = Instant::now();
            choose_files(&ana, &[&source]).await;
            let event =
                rusty.wait_for_within(DEADLINE, "file_received", |e| e["event"] == "file_received").await;
            let cpu = cpu_seconds(pid) - cpu_before;
            let elapsed = started.elapsed();
            assert_eq!(event["sha256"], sha.as_str(), "{event}");
            let sent = wait_row(&ana, "upload.bin", "out", "done").await;
            let ms = sent["ms"].as_f64().unwrap_or(0.0);
            println!(
                "measured: run {run} Chromium -> Rust ({}): {:.1} MB/s on the wire ({ms:.0} ms); receiving peer \
                 {cpu:.2} s CPU in {:.2} s from choosing the file to file_received ({:.0} % of a core); load {load}",
                binaries(),
                SIZE as f64 / 1e3 / ms.max(1.0),
                elapsed.as_secs_f64(),
                100.0 * cpu / elapsed.as_secs_f64().max(1e-3),
            );
            assert_eq!(rusty.wait_exit().await, Some(0));
            ana.close().await;
        }
    });
}

/// Writes `size` random bytes to `path` and returns their SHA-256 (hex).
fn write_random(path: &Path, size: u64) -> String {
    let mut data = Vec::with_capacity(size as usize);
    std::fs::File::open("/dev/urandom")
        .and_then(|f| f.take(size).read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    assert_eq!(data.len() as u64, size, "short read from /dev/urandom");
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    hex::encode(Sha256::digest(&data))
}

/// Chooses `paths` in the page's `#file` input (as a person picking files would).
async fn choose_files(browser: &Browser, paths: &[&Path]) {
    browser.wait_for_css("#file input", "#file").await;
    let list = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
    let result = async { browser.client().find(Locator::Css("#file")).await?.send_keys(&list).await }.await;
    if let Err(e) = result {
        panic!("cannot choose {list} in #file: {e}");
    }
}

/// Waits for the transfer row of `name` in `direction` to reach `state`: its SHA-256 and the
/// page's elapsed time.
async fn wait_row(browser: &Browser, name: &str, direction: &str, state: &str) -> Value {
    let script = format!(
        r#"const row = [...document.querySelectorAll('[data-file-name]')].find(e =>
             e.dataset.fileName === {name} && e.dataset.fileDirection === {direction} &&
             e.dataset.fileState === {state});
           if (!row) return null;
           return {{ sha: row.dataset.fileSha256 || '', ms: Number(row.dataset.fileElapsedMs || 0) }};"#,
        name = serde_json::json!(name),
        direction = serde_json::json!(direction),
        state = serde_json::json!(state),
    );
    browser.wait_until(&format!("{direction} row of {name} in state {state}"), &script).await
}

/// User + system CPU time of `pid` so far, in seconds.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let pid = pid.unwrap_or_else(|| panic!("the peer has exited; cannot read its CPU time"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // The fields after the command name (which may hold spaces and parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // `rest` starts at field 3: utime (14) is index 11, stime (15) index 12, in clock ticks of
    // 1/100 s (USER_HZ, 100 on every Linux platform this runs on).
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn binaries() -> String {
    match std::env::var("SWITCHBOARD_BIN_DIR") {
        Ok(dir) => format!("peer from {dir}"),
        Err(_) => "debug peer".to_string(),
    }
}
