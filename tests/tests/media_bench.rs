//! Benchmark (issue 18): calls. Not part of `cargo test`; run it on its own, with release
//! binaries:
//!
//! ```text
//! cargo build --release -p server -p peer
//! SWITCHBOARD_BIN_DIR=$PWD/target/release \
//!   cargo test -p tests --test media_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `call_first_frame_times`: join → first remote video frame in the page, headless Chromium
//!   with its fake camera. For each of 5 runs (after one warm-up, reported but not counted) in a
//!   fresh room, the sender is in the room first and the measured page joins through its form:
//!   - `rust_video_first_frame_ms`: the sender is a Rust peer with `--send-video` (a 640×480
//!     VP8 file at 30 fps, a keyframe every second);
//!   - `page_video_first_frame_ms`: the sender is another page with `camera=1` (the fake camera,
//!     640×480).
//!
//!   Timed inside the page with `performance.now()`, so WebDriver's polling adds nothing: a
//!   `MutationObserver` installed on the join form before joining records when `data-self-id`
//!   appears (the page's `welcome`) and, once `video[data-peer-video="<sender>"]` is there,
//!   `requestVideoFrameCallback` records when its first frame is presented. The page is not
//!   changed for it.
//! - `rust_receiver_cpu`: the CPU a Rust peer spends per received video stream. A `peer
//!   --send-video` (640×480, 30 fps, VP8 at 1 Mbit/s) sends to a second peer on loopback; once
//!   the track arrived and 2 s passed, the receiver's user+system CPU time over 10 s is read
//!   from `/proc/<pid>/stat`, in three modes: counting frames only (`--expect-frames`, never
//!   reached), `--record` (writing the IVF), `--echo-media` (sending the stream back), and for
//!   reference a peer without media flags (it rejects the video: the connection's own cost);
//!   then `--record` with 4 senders against 4 peers without media, which sets the per-stream
//!   cost apart from the per-connection one (ICE's timer, keepalives). Two rounds, modes
//!   interleaved. Prints `NAME: {"receiver_cpu_percent": [..], ...}` per mode.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tests::browser::{Browser, start_server_with_page};
use tests::{Peer, Scratch, Server, isolated_with_timeout};

const RUNS: usize = 5;
const CPU_ROUNDS: usize = 2;
const CPU_WARMUP: Duration = Duration::from_secs(2);
const CPU_WINDOW: Duration = Duration::from_secs(10);

#[test]
#[ignore = "benchmark: run it with --ignored (see the module docs)"]
fn call_first_frame_times() {
    isolated_with_timeout(Duration::from_secs(600), || async {
        // libtest has printed `test NAME ... ` without a newline: start the result lines afresh.
        println!();
        let server = start_server_with_page(&[]).await;
        let dir = Scratch::new("media-bench", "frames");
        let video = make_ivf(&dir, "400k");
        let page = Browser::start("page").await;
        println!("browser: {}", page.version());

        let mut times = Vec::new();
        for run in 0..=RUNS {
            let room = format!("rv{run}");
            let mut rusty = Peer::spawn(
                &server,
                &["--room", &room, "--name", "rusty", "--send-video", video.to_str().unwrap_or_default()],
            )
            .await;
            let rusty_id = rusty.joined().await;
            times.push(join_to_first_frame(&server, &page, &room, &rusty_id).await);
            rusty.kill().await;
        }
        report("rust_video_first_frame_ms", &times);

        let sender = Browser::start("sender").await;
        let mut times = Vec::new();
        for run in 0..=RUNS {
            let room = format!("pv{run}");
            sender.open(&format!("{}/?room={room}&name=sender&camera=1", server.http_url())).await;
            let sender_id = sender
                .wait_until(
                    "the sender's id in the new room, camera on",
                    &format!(
                        r#"const e = document.querySelector('[data-self-id]');
                           const v = document.querySelector('video[data-self-video]');
                           return new URLSearchParams(location.search).get('room') === {room}
                             && v && v.videoWidth > 0 && e && e.dataset.selfId;"#,
                        room = json!(room)
                    ),
                )
                .await;
            let sender_id = sender_id.as_str().unwrap_or_default().to_string();
            times.push(join_to_first_frame(&server, &page, &room, &sender_id).await);
        }
        report("page_video_first_frame_ms", &times);
        sender.close().await;
        page.close().await;
    });
}

/// Installed on the join form before joining: records, in page time, when `data-self-id`
/// appears and when the first frame of `video[data-peer-video=SENDER]` is presented.
const HOOK: &str = r#"
const sender = arguments_sender;
const app = document.querySelector('#app');
const times = { welcome: null, frame: null };
window.__benchTimes = times;
const watch = (v) => {
  if (v.__benchWatched) return;
  v.__benchWatched = true;
  v.requestVideoFrameCallback(() => { if (times.frame === null) times.frame = performance.now(); });
};
new MutationObserver(() => {
  if (times.welcome === null && app.dataset.selfId) times.welcome = performance.now();
  const v = document.querySelector(`video[data-peer-video="${sender}"]`);
  if (v) watch(v);
}).observe(app, { subtree: true, childList: true, attributes: true,
                  attributeFilter: ['data-self-id', 'data-peer-video'] });
return true;
"#;

/// The page joins `room` through its form; returns its `welcome` → first frame of `sender`'s
/// video, in ms.
async fn join_to_first_frame(server: &Server, page: &Browser, room: &str, sender: &str) -> f64 {
    // A fresh page each run (the previous one leaves on unload), at its join form.
    page.open_join_form(server).await;
    page.eval(&HOOK.replace("arguments_sender", &json!(sender).to_string())).await;
    page.submit_join_form(room, "page").await;
    let times = page
        .wait_until(
            "the first frame of the sender's video (timed in the page)",
            "const t = window.__benchTimes; return t && t.frame !== null && t.welcome !== null && t;",
        )
        .await;
    let (welcome, frame) = (number(&times["welcome"]), number(&times["frame"]));
    assert!(frame >= welcome, "first frame ({frame} ms) before welcome ({welcome} ms)");
    frame - welcome
}

#[test]
#[ignore = "benchmark: run it with --ignored (see the module docs)"]
fn rust_receiver_cpu() {
    isolated_with_timeout(Duration::from_secs(600), || async {
        println!();
        let server = Server::start(&[]).await;
        let dir = Scratch::new("media-bench", "cpu");
        let video = make_ivf(&dir, "1M");
        let record = dir.join("recordings");
        let record = record.to_str().unwrap_or_default().to_string();
        // (name, the receiver's flags, how many senders): the same connection count with and
        // without media sets the per-stream cost apart from the connections' own.
        let modes: [(&str, Vec<&str>, usize); 6] = [
            ("receive_count", vec!["--expect-frames", "100000000"], 1),
            ("receive_record", vec!["--record", record.as_str()], 1),
            ("receive_echo", vec!["--echo-media"], 1),
            ("no_media_flags", vec![], 1),
            ("receive_record_4_streams", vec!["--record", record.as_str()], 4),
            ("no_media_flags_4_peers", vec![], 4),
        ];
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
        for round in 0..CPU_ROUNDS {
            for (i, (name, flags, senders)) in modes.iter().enumerate() {
                let room = format!("cpu{round}{i}");
                let mut playing = Vec::new();
                for n in 0..*senders {
                    let sender_name = format!("sender{n}");
                    let mut sender = Peer::spawn(
                        &server,
                        &[
                            "--room",
                            &room,
                            "--name",
                            &sender_name,
                            "--send-video",
                            video.to_str().unwrap_or_default(),
                        ],
                    )
                    .await;
                    let id = sender.joined().await;
                    playing.push((sender, id));
                }
                let mut args = vec!["--room", room.as_str(), "--name", name];
                args.extend(flags.iter().copied());
                let mut receiver = Peer::spawn(&server, &args).await;
                receiver.joined().await;
                for (_, id) in &playing {
                    if flags.is_empty() {
                        receiver
                            .wait_for("chat open", |e| e["event"] == "channel_open" && e["peer"] == *id)
                            .await;
                    } else {
                        receiver
                            .wait_for("a sender's video", |e| e["event"] == "track" && e["peer"] == *id)
                            .await;
                    }
                }
                let sender = &playing[0].0;
                tokio::time::sleep(CPU_WARMUP).await;
                let (r0, s0) = (cpu_seconds(&receiver), cpu_seconds(sender));
                tokio::time::sleep(CPU_WINDOW).await;
                let (r1, s1) = (cpu_seconds(&receiver), cpu_seconds(sender));
                let percent = |a: f64, b: f64| (b - a) / CPU_WINDOW.as_secs_f64() * 100.0;
                results[i].push((percent(r0, r1), percent(s0, s1)));
                receiver.kill().await;
                for (mut sender, _) in playing {
                    sender.kill().await;
                }
            }
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        for ((name, _, _), runs) in modes.iter().zip(&results) {
            let r1 = |x: f64| (x * 10.0).round() / 10.0;
            let line = json!({
                "receiver_cpu_percent": runs.iter().map(|r| r1(r.0)).collect::<Vec<_>>(),
                "first_sender_cpu_percent": runs.iter().map(|r| r1(r.1)).collect::<Vec<_>>(),
                "window_s": CPU_WINDOW.as_secs(),
            });
            println!("{name}: {line}");
        }
        println!("load average at the end: {}", load.trim());
    });
}

/// User + system CPU time of a running peer, in seconds, from `/proc/<pid>/stat`.
fn cpu_seconds(peer: &Peer) -> f64 {
    let pid = peer.pid().unwrap_or_else(|| panic!("the peer has exited"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces) start at the state, field 3; utime
    // and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or_else(|| panic!("odd stat: {stat}"))
    };
    (tick(11) + tick(12)) / 100.0
}

/// A 640×480 VP8 IVF test pattern, 10 s at 30 fps with a keyframe every second.
fn make_ivf(dir: &Scratch, bitrate: &str) -> PathBuf {
    let path = dir.join(&format!("pattern-{bitrate}.ivf"));
    let out = path.to_str().unwrap_or_default();
    let args = ["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=640x480:rate=30", "-t", "10"];
    let codec = ["-c:v", "libvpx", "-g", "30", "-b:v", bitrate, "-f", "ivf", out];
    let status = Command::new("ffmpeg")
        .args(args)
        .args(codec)
        .status()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg ({e}); install Debian's `ffmpeg`"));
    assert!(status.success(), "ffmpeg failed to make {}", path.display());
    path
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Prints `NAME: {json}`; the first time is the warm-up and is not counted.
fn report(name: &str, times: &[f64]) {
    let (warmup, counted) = times.split_first().unwrap_or_else(|| panic!("{name}: no runs"));
    let mut sorted = counted.to_vec();
    sorted.sort_by(f64::total_cmp);
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let line = json!({
        "runs": sorted.len(),
        "p50": r1(sorted[sorted.len() / 2]),
        "min": r1(sorted[0]),
        "max": r1(sorted[sorted.len() - 1]),
        "warmup": r1(*warmup),
        "times": counted.iter().map(|&t| r1(t)).collect::<Vec<_>>(),
    });
    println!("{name}: {line}");
}
