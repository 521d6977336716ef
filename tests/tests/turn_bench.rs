//! Benchmark (issue 16): connect time and data-channel throughput through the TURN relay
//! (coturn) against a direct path. Not part of `cargo test`; run it on its own:
//!
//! ```text
//! cargo test --workspace --test turn_bench -- --ignored --nocapture
//! # or with release binaries:
//! cargo build --release -p server -p peer
//! SWITCHBOARD_BIN_DIR=$PWD/target/release cargo test --workspace --test turn_bench -- --ignored --nocapture
//! ```
//!
//! The network is the TURN tests' [`SplitNetwork`] (tests/tests/turn.rs): sides A and B linked
//! only to T (server and coturn on 198.18.0.1, no forwarding), veth links without added delay,
//! so the figures show what the relay itself costs. The server hands out TURN in both cases.
//! - direct: both peers in A; ICE picks their host candidates (`ice_selected` checked).
//! - relay: one peer in A, one in B; only relay ↔ relay works (`ice_selected` checked).
//! - relay_only (connect only): the same with both peers `--relay-only`.
//!
//! Connect: for each of 20 runs in a fresh room, the first peer joins, then the second; from
//! the second's `welcome` event to its `channel_open`, timestamped as read from its `--json`
//! stdout (as `peer/examples/bench.rs` and `browser_bench.rs` do). The first run of each kind
//! is a warm-up, reported but not counted.
//!
//! Throughput: the newcomer sends a 64 MiB file (`--send-file`) to the first peer; from the
//! receiver's `channel_open` to its `file_received` (stored and SHA-256-verified), 3 runs.
//!
//! Each measure prints one line: `NAME: {"runs":..,"p50":..,"min":..,"max":..,"values":[..]}`.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::coturn::Coturn;
use tests::{SERVICE_ADDR, Server, SplitNetwork, bin_path, isolated_with_timeout};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SECRET: &str = "bench-secret";
const CONNECT_RUNS: usize = 20;
const FILE_RUNS: usize = 3;
const FILE_BYTES: u64 = 64 * 1024 * 1024;
const EVENT_DEADLINE: Duration = Duration::from_secs(120);

/// A `peer --json` with its stdout read line by line, each event stamped when read.
struct TimedPeer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Held open: a peer without `--expect*` exits at the end of its stdin.
    _stdin: Option<ChildStdin>,
    /// Events read while waiting for another, with when they were read.
    seen: Vec<(Value, Instant)>,
}

impl TimedPeer {
    async fn spawn(launcher: &[String], url: &str, args: &[&str]) -> TimedPeer {
        let (program, rest) = launcher.split_first().unwrap_or_else(|| panic!("no launcher"));
        let mut child = Command::new(program)
            .args(rest)
            .arg(bin_path("peer"))
            .args(["--server", url, "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the peer: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("peer stdout is not piped"));
        TimedPeer {
            _stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// The first event named `name` not taken yet, and when it was read.
    async fn wait(&mut self, name: &str) -> (Value, Instant) {
        if let Some(i) = self.seen.iter().position(|(e, _)| e["event"] == name) {
            return self.seen.remove(i);
        }
        let read = async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                let at = Instant::now();
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if event["event"] == name {
                    return (event, at);
                }
                self.seen.push((event, at));
            }
            panic!("the peer exited before {name}");
        };
        tokio::time::timeout(EVENT_DEADLINE, read)
            .await
            .unwrap_or_else(|_| panic!("no {name} within {EVENT_DEADLINE:?}"))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Direct,
    Relay,
    /// Relay with both peers `--relay-only`.
    RelayOnly,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "relay",
            Path::RelayOnly => "relay_only",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Path::RelayOnly => &["--relay-only"],
            Path::Direct | Path::Relay => &[],
        }
    }

    fn expected_type(self) -> &'static str {
        match self {
            Path::Direct => "host",
            Path::Relay | Path::RelayOnly => "relay",
        }
    }
}

struct World {
    net: SplitNetwork,
    server: Server,
    _coturn: Coturn,
}

impl World {
    /// Launchers of the first and the second peer for `path`.
    fn sides(&self, path: Path) -> (Vec<String>, Vec<String>) {
        match path {
            Path::Direct => (self.net.a.launcher(), self.net.a.launcher()),
            Path::Relay | Path::RelayOnly => (self.net.a.launcher(), self.net.b.launcher()),
        }
    }
}

/// One connect: milliseconds from the newcomer's `welcome` to its `channel_open`.
async fn connect_once(world: &World, path: Path, room: &str) -> f64 {
    let (first_side, second_side) = world.sides(path);
    let url = world.server.ws_url();
    let args = [&["--room", room][..], path.flags()].concat();
    let mut first = TimedPeer::spawn(&first_side, &url, &args).await;
    first.wait("welcome").await;
    let mut second = TimedPeer::spawn(&second_side, &url, &args).await;
    let (_, joined) = second.wait("welcome").await;
    let (_, open) = second.wait("channel_open").await;
    let (selected, _) = second.wait("ice_selected").await;
    assert_eq!(selected["local"], path.expected_type(), "{} run took another path: {selected}", path.name());
    first.stop().await;
    second.stop().await;
    (open - joined).as_secs_f64() * 1000.0
}

/// One file: MB/s from the receiver's `channel_open` to its `file_received`.
async fn file_once(world: &World, path: Path, room: &str, file: &str, inbox: &str) -> f64 {
    let (first_side, second_side) = world.sides(path);
    let url = world.server.ws_url();
    let mut receiver = TimedPeer::spawn(&first_side, &url, &["--room", room, "--receive-dir", inbox]).await;
    receiver.wait("welcome").await;
    let sender = TimedPeer::spawn(&second_side, &url, &["--room", room, "--send-file", file]).await;
    let (_, open) = receiver.wait("channel_open").await;
    let (received, done) = receiver.wait("file_received").await;
    assert_eq!(received["size"], FILE_BYTES, "{received}");
    if let Some(stored) = received["path"].as_str() {
        let _ = std::fs::remove_file(stored);
    }
    receiver.stop().await;
    sender.stop().await;
    FILE_BYTES as f64 / 1e6 / (done - open).as_secs_f64()
}

fn report(name: &str, values: &[f64], warmup: Option<f64>) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let line = json!({
        "runs": values.len(),
        "p50": round(sorted[sorted.len() / 2]),
        "min": round(sorted[0]),
        "max": round(sorted[sorted.len() - 1]),
        "warmup": warmup.map(round),
        "values": values.iter().map(|v| round(*v)).collect::<Vec<_>>(),
    });
    println!("{name}: {line}");
}

#[test]
#[ignore = "benchmark: run on its own (see the module docs)"]
fn relay_vs_direct() {
    isolated_with_timeout(Duration::from_secs(900), || async {
        println!();
        let net = SplitNetwork::build().await;
        let coturn = Coturn::start(SERVICE_ADDR, SECRET, &[net.a.subnet, net.b.subnet]).await;
        let url = coturn.url();
        let server = Server::start_on(
            &format!("{SERVICE_ADDR}:0"),
            &["--turn-url", &url, "--turn-secret", SECRET, "--no-rate-limit"],
        )
        .await;
        let world = World { net, server, _coturn: coturn };

        for path in [Path::Direct, Path::Relay, Path::RelayOnly] {
            let warmup = connect_once(&world, path, &format!("w{}", path.name())).await;
            let mut times = Vec::new();
            for run in 0..CONNECT_RUNS {
                times.push(connect_once(&world, path, &format!("c{}{run}", path.name())).await);
            }
            report(&format!("connect_ms_{}", path.name()), &times, Some(warmup));
        }

        let dir = std::env::temp_dir().join(format!("switchboard-turn-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let file = dir.join("payload.bin");
        let mut bytes = Vec::new();
        std::fs::File::open("/dev/urandom")
            .and_then(|f| f.take(FILE_BYTES).read_to_end(&mut bytes))
            .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
        std::fs::write(&file, &bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        let (file, inbox) =
            (file.to_string_lossy().into_owned(), dir.join("inbox").to_string_lossy().into_owned());
        for path in [Path::Direct, Path::Relay] {
            let mut rates = Vec::new();
            for run in 0..FILE_RUNS {
                rates.push(file_once(&world, path, &format!("f{}{run}", path.name()), &file, &inbox).await);
            }
            report(&format!("file_mb_per_s_{}", path.name()), &rates, None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
