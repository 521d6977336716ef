//! Benchmarks of the Rust peer (results in docs/benchmarks.md, "WebRTC (Rust peer)").
//!
//! ```text
//! cargo build --release -p server -p peer && cargo run --release -p peer --example bench
//! ```
//!
//! 1. Connect time: the real `server` and two real `peer --json` processes, 20 times; from the
//!    second peer's `welcome` event to its `channel_open` event, as read from its stdout.
//! 2. Mesh: 8 and then 16 real `peer --json` processes started at once in one room; the time
//!    from the first start until every peer has reported `channel_open` for every other, then
//!    the CPU time (utime + stime from /proc) all the peers use over 10 s of silence, as a
//!    share of one core, in all and per connection (a peer connection object: a mesh of N
//!    peers has N × (N - 1) of them).
//! 3. Throughput: two peer connections in this process, built exactly as the peer builds them
//!    (same settings, sockets and buffers), one ordered reliable channel, 64 MiB sent as
//!    16 KiB and as 64 KiB binary messages; from the first send to the last byte received, and
//!    the CPU time (utime + stime) this process, that is both peers, spent meanwhile.
//!
//! To try other settings for the throughput part (the connect part always uses the peer's own):
//!
//! ```text
//! BENCH_THROUGHPUT=16,64      # only the throughput part, these message sizes in KiB
//! BENCH_MESH=8,16             # only the mesh part, these mesh sizes
//! BENCH_IDLE_SECS=10          # how long the mesh's idle CPU is measured
//! BENCH_REPEAT=5              # runs per size (default 1)
//! BENCH_SEND_BUFFER_LIMIT=N   # bytes; default transport::SEND_BUFFER_LIMIT, 0 = unbounded
//! BENCH_SCTP_MTU=N            # bytes; default transport::SCTP_MTU
//! BENCH_SCTP_RECEIVE_BUFFER=N # bytes; default webrtc-rs's (1 MiB)
//! BENCH_ICE_TICK=10ms         # the peers' --ice-tick in the connect and mesh parts
//! BENCH_CONNECT=100           # only the connect part, this many runs (default 20), each printed
//! BENCH_LOG=rtc_ice=trace     # the connect part's peers log with this RUST_LOG filter; the
//!                             # logs of runs slower than BENCH_SLOW_MS (default 10) are kept
//!                             # in target/bench/connect-RUN-{first,second}.log
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use peer::transport;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
};

const RUNS: usize = 20;
/// A connect slower than this (ms) keeps its peers' logs when `BENCH_LOG` is set.
const SLOW_MS: usize = 10;
const VOLUME: usize = 64 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .context("cannot find the target directory")?;
    let sizes = match std::env::var("BENCH_THROUGHPUT") {
        Ok(list) => list
            .split(',')
            .map(|kib| kib.trim().parse::<usize>().map(|kib| kib * 1024))
            .collect::<Result<Vec<_>, _>>()
            .context("BENCH_THROUGHPUT: message sizes in KiB, comma-separated")?,
        Err(_) if std::env::var("BENCH_CONNECT").is_ok() => {
            return connect(&bin, env_usize("BENCH_CONNECT")?.unwrap_or(RUNS)).await;
        }
        Err(_) => {
            let meshes = match std::env::var("BENCH_MESH") {
                Ok(list) => list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("BENCH_MESH: mesh sizes, comma-separated")?,
                Err(_) => {
                    connect(&bin, RUNS).await?;
                    vec![8, 16]
                }
            };
            let idle = Duration::from_secs(env_usize("BENCH_IDLE_SECS")?.unwrap_or(10) as u64);
            for n in &meshes {
                mesh(&bin, *n, idle).await?;
            }
            if std::env::var("BENCH_MESH").is_ok() {
                return Ok(());
            }
            vec![16 * 1024, 64 * 1024]
        }
    };
    let options = Options::from_env()?;
    for _ in 0..env_usize("BENCH_REPEAT")?.unwrap_or(1) {
        for &size in &sizes {
            let before = cpu_ticks(&[std::process::id()])?;
            let (elapsed, rate) = throughput(size, &options).await?;
            let cpu = (cpu_ticks(&[std::process::id()])? - before) as f64 / clock_ticks_per_second();
            println!(
                "throughput: {} KiB messages, {} MiB in {:.2} s = {:.0} MB/s; CPU {:.2} s (both peers) = {:.0} MB per CPU-second",
                size / 1024,
                VOLUME >> 20,
                elapsed.as_secs_f64(),
                rate / 1e6,
                cpu,
                VOLUME as f64 / cpu.max(0.01) / 1e6
            );
        }
    }
    Ok(())
}

async fn connect(bin: &std::path::Path, runs: usize) -> Result<()> {
    println!("connect: join -> chat open, two Rust peers through the server, {runs} runs");
    let mut times = connect_times(bin, runs.max(1)).await?;
    times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().parse().with_context(|| format!("{name}: not a number: {value}")))
        .transpose()
}

/// The throughput part's settings: the peer's own unless overridden (see the top of this file).
struct Options {
    send_buffer_limit: usize,
    sctp_mtu: Option<u32>,
    sctp_receive_buffer: Option<u32>,
}

impl Options {
    fn from_env() -> Result<Self> {
        let options = Options {
            send_buffer_limit: match env_usize("BENCH_SEND_BUFFER_LIMIT")? {
                None => transport::SEND_BUFFER_LIMIT,
                Some(0) => usize::MAX,
                Some(limit) => limit,
            },
            sctp_mtu: env_usize("BENCH_SCTP_MTU")?.map(u32::try_from).transpose()?,
            sctp_receive_buffer: env_usize("BENCH_SCTP_RECEIVE_BUFFER")?.map(u32::try_from).transpose()?,
        };
        if options.send_buffer_limit != transport::SEND_BUFFER_LIMIT
            || options.sctp_mtu.is_some()
            || options.sctp_receive_buffer.is_some()
        {
            println!(
                "settings: send buffer limit {}, SCTP MTU {}, SCTP receive buffer {}",
                options.send_buffer_limit,
                options.sctp_mtu.unwrap_or(transport::SCTP_MTU),
                options.sctp_receive_buffer.map_or("default".to_owned(), |b| b.to_string()),
            );
        }
        Ok(options)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The real server on a free loopback port (started by the test-support crate, as every suite
/// starts it), and its WebSocket URL.
async fn start_server(bin: &std::path::Path) -> Result<(testkit::ServerProcess, String)> {
    let launch = testkit::Launch::new(bin.join("server")).quiet();
    let server = tokio::task::spawn_blocking(move || launch.start())
        .await?
        .map_err(|e| anyhow!("{e} (build the server with --release first)"))?;
    let url = server.ws_url();
    Ok((server, url))
}

async fn connect_times(bin: &std::path::Path, runs: usize) -> Result<Vec<Duration>> {
    let (_server, url) = start_server(bin).await?;
    let log_dir = bin.parent().context("no target directory")?.join("bench");
    let slow = Duration::from_millis(env_usize("BENCH_SLOW_MS")?.unwrap_or(SLOW_MS) as u64);
    let logs = |run: usize| ["first", "second"].map(|p| log_dir.join(format!("connect-{run}-{p}.log")));
    if std::env::var("BENCH_LOG").is_ok() {
        std::fs::create_dir_all(&log_dir)?;
    }
    let mut times = Vec::new();
    for run in 0..runs {
        let room = format!("bench{run}");
        let [first_log, second_log] = logs(run);
        let (mut first, mut first_events) = spawn_peer_logged(bin, &url, &room, Some(&first_log))?;
        wait_event(&mut first_events, "welcome").await?;
        let (mut second, mut second_events) = spawn_peer_logged(bin, &url, &room, Some(&second_log))?;
        let joined = wait_event(&mut second_events, "welcome").await?;
        let opened = wait_event(&mut second_events, "channel_open").await?;
        let time = opened - joined;
        times.push(time);
        if std::env::var("BENCH_CONNECT").is_ok() {
            println!("  run {run}: {:.1} ms", ms(time));
        }
        let _ = first.start_kill();
        let _ = second.start_kill();
        let _ = first.wait().await;
        let _ = second.wait().await;
        if time < slow {
            let _ = std::fs::remove_file(&first_log);
            let _ = std::fs::remove_file(&second_log);
        }
    }
    Ok(times)
}

/// Mesh-forming time and idle CPU of `n` peers in one room (see the top of this file).
async fn mesh(bin: &std::path::Path, n: usize, idle: Duration) -> Result<()> {
    let (_server, url) = start_server(bin).await?;
    let room = format!("mesh{n}");
    let start = Instant::now();
    let mut peers = Vec::new();
    let mut formed = Vec::new();
    for _ in 0..n {
        let (child, mut events) = spawn_peer(bin, &url, &room)?;
        peers.push(child);
        formed.push(tokio::spawn(async move {
            for _ in 1..n {
                wait_event(&mut events, "channel_open").await?;
            }
            // Keep reading, so that a peer never blocks on a full stdout pipe.
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    let mut last = start;
    for done in formed {
        last = last.max(done.await??);
    }
    let pids = peers.iter().filter_map(Child::id).collect::<Vec<_>>();
    // Let the last connects' work (and the pair watchers' first look) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_ticks(&pids)?;
    tokio::time::sleep(idle).await;
    let after = cpu_ticks(&pids)?;
    let core_pct = (after - before) as f64 / clock_ticks_per_second() / idle.as_secs_f64() * 100.0;
    let connections = n * (n - 1);
    println!(
        "mesh: {n} peers formed in {:.0} ms; idle {core_pct:.2} % of a core in all, {:.4} % per connection ({connections} connections, {} s)",
        ms(last - start),
        core_pct / connections as f64,
        idle.as_secs()
    );
    for mut peer in peers {
        let _ = peer.start_kill();
        let _ = peer.wait().await;
    }
    Ok(())
}

/// utime + stime of these processes (all their threads), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        let fields = fields.split_whitespace().collect::<Vec<_>>();
        // utime and stime are fields 14 and 15 of stat(5); here 0 is field 3 (state).
        for i in [11, 12] {
            total += fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("bad /proc/PID/stat")?;
        }
    }
    Ok(total)
}

/// `getconf CLK_TCK` (100 on every Linux this runs on, but asked rather than assumed).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn spawn_peer(
    bin: &std::path::Path,
    url: &str,
    room: &str,
) -> Result<(Child, mpsc::Receiver<(String, Instant)>)> {
    spawn_peer_logged(bin, url, room, None)
}

/// [`spawn_peer`], with the peer's stderr in `log` at `BENCH_LOG`'s filter when both are set.
fn spawn_peer_logged(
    bin: &std::path::Path,
    url: &str,
    room: &str,
    log: Option<&std::path::Path>,
) -> Result<(Child, mpsc::Receiver<(String, Instant)>)> {
    let filter = std::env::var("BENCH_LOG").ok();
    let stderr = match (log, &filter) {
        (Some(path), Some(_)) => Stdio::from(std::fs::File::create(path)?),
        _ => Stdio::null(),
    };
    let mut command = Command::new(bin.join("peer"));
    if let (Some(_), Some(filter)) = (log, filter) {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        // Loopback only: the default binds every interface, and a benchmark must not send ICE
        // checks to this machine's external address.
        .args(["--server", url, "--room", room, "--json", "--bind", "127.0.0.1:0"])
        .args(
            std::env::var("BENCH_ICE_TICK")
                .map(|tick| vec!["--ice-tick".to_string(), tick])
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}/peer", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Timestamp on arrival: the pipe adds microseconds, not milliseconds.
            let at = Instant::now();
            let event = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["event"].as_str().map(str::to_string))
                .unwrap_or_default();
            if tx.send((event, at)).await.is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

async fn wait_event(events: &mut mpsc::Receiver<(String, Instant)>, name: &str) -> Result<Instant> {
    let wait = async {
        while let Some((event, at)) = events.recv().await {
            if event == name {
                return Ok(at);
            }
        }
        Err(anyhow!("peer exited before {name}"))
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.map_err(|_| anyhow!("no {name} within 20 s"))?
}

struct Gather(mpsc::Sender<()>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Gather {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.try_send(());
        }
    }
    async fn on_data_channel(&self, _channel: Arc<dyn DataChannel>) {}
}

struct Receive(mpsc::Sender<Arc<dyn DataChannel>>, mpsc::Sender<()>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Receive {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.1.try_send(());
        }
    }
    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.0.send(channel).await;
    }
}

async fn build(
    handler: Arc<dyn PeerConnectionEventHandler>,
    options: &Options,
) -> Result<Arc<dyn PeerConnection>> {
    let mut settings = transport::setting_engine_builder(transport::DEFAULT_ICE_TICK);
    if let Some(mtu) = options.sctp_mtu {
        settings = settings.with_sctp_mtu(mtu);
    }
    if let Some(bytes) = options.sctp_receive_buffer {
        settings = settings.with_sctp_max_receive_buffer_size(bytes);
    }
    let pc = PeerConnectionBuilder::new()
        .with_setting_engine(settings.build())
        .with_runtime(transport::BigBufferRuntime::shared())
        .with_handler(handler)
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .with_data_channel_send_buffer_limit(options.send_buffer_limit)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

async fn throughput(size: usize, options: &Options) -> Result<(Duration, f64)> {
    let (gathered_a, mut gathered_a_rx) = mpsc::channel(1);
    let (gathered_b, mut gathered_b_rx) = mpsc::channel(1);
    let (channel_tx, mut channel_rx) = mpsc::channel(1);
    let a = build(Arc::new(Gather(gathered_a)), options).await?;
    let b = build(Arc::new(Receive(channel_tx, gathered_b)), options).await?;
    let sender = a.create_data_channel("bench", None).await?;
    // Whole-SDP exchange (no trickle): this measures the channel, not the connect.
    let offer = a.create_offer(None).await?;
    a.set_local_description(offer).await?;
    gathered_a_rx.recv().await;
    b.set_remote_description(a.local_description().await.context("no offer")?).await?;
    let answer = b.create_answer(None).await?;
    b.set_local_description(answer).await?;
    gathered_b_rx.recv().await;
    a.set_remote_description(b.local_description().await.context("no answer")?).await?;

    loop {
        match sender.poll().await {
            Some(DataChannelEvent::OnOpen) => break,
            Some(_) => {}
            None => bail!("channel closed before opening"),
        }
    }
    let receiver = channel_rx.recv().await.context("no remote channel")?;
    let count = VOLUME / size;
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < VOLUME {
            match receiver.poll().await {
                Some(DataChannelEvent::OnMessage(m)) => got += m.data.len(),
                Some(_) => {}
                None => break,
            }
        }
        (got, Instant::now())
    });
    let payload = BytesMut::from(vec![7u8; size].as_slice());
    let start = Instant::now();
    for _ in 0..count {
        // Waits while the send-buffer limit's bytes are unacknowledged: the peer's back-pressure.
        sender.send(payload.clone()).await?;
    }
    let (got, end) = tokio::time::timeout(Duration::from_secs(120), reader).await??;
    if got < VOLUME {
        bail!("received {got} of {VOLUME} bytes");
    }
    let elapsed = end - start;
    let _ = a.close().await;
    let _ = b.close().await;
    Ok((elapsed, VOLUME as f64 / elapsed.as_secs_f64()))
}
