//! The soak of issue 6: many concurrent connections in rooms of 4, every member sending numbered
//! signals to each of its 3 peers; every signal must arrive exactly once and in order, the
//! server's memory must come back down when everyone has left, and /metrics back to zero.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Member;
use crate::idle::{self, ROOM_SIZE};
use crate::proto::{self, Proto};
use crate::server::Server;

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub connections: usize,
    pub signals: u64,
    pub concurrency: usize,
    /// Longest the signalling phase may take.
    pub deadline: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakResult {
    pub connections: usize,
    pub rooms: usize,
    pub signals_per_member_per_peer: u64,
    pub signals_expected: u64,
    pub signals_received: u64,
    pub relayed_by_server: Option<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub open_s: f64,
    pub relay_s: f64,
    pub rss_before_mib: f64,
    pub rss_joined_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_mib: f64,
    pub metrics_after: HashMap<String, f64>,
    pub passed: bool,
}

pub async fn run(server: &Server, config: &SoakConfig, cycle: usize) -> anyhow::Result<SoakResult> {
    let proto = Proto::Switchboard;
    let addr = server.addr;
    if !config.connections.is_multiple_of(ROOM_SIZE) {
        bail!("--connections must be a multiple of {ROOM_SIZE}");
    }
    let relayed_before = metrics(addr).await?.get("switchboard_signals_relayed_total").copied();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss()?;

    let opening = Instant::now();
    let (members, _timings) =
        idle::open(proto, addr, config.connections, config.concurrency, &format!("soak{cycle}")).await?;
    let open_s = opening.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_joined = server.rss()?;

    // Group the members by room (the room is in the welcome they got).
    let mut rooms: HashMap<String, Vec<Member>> = HashMap::new();
    for member in members {
        let room = room_of(&member.welcome).context("welcome without room")?;
        rooms.entry(room).or_default().push(member);
    }
    if rooms.values().any(|members| members.len() != ROOM_SIZE) {
        bail!("rooms are not all of {ROOM_SIZE}");
    }
    let room_count = rooms.len();

    let received = Arc::new(AtomicU64::new(0));
    let relaying = Instant::now();
    let deadline = relaying + config.deadline;
    let mut tasks = JoinSet::new();
    for members in rooms.into_values() {
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        for member in members {
            let peers: Vec<String> = ids.iter().filter(|id| **id != member.id).cloned().collect();
            tasks.spawn(soak_member(member, peers, config.signals, deadline, Arc::clone(&received)));
        }
    }
    let mut errors = 0;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done.context("member task panicked").and_then(|r| r) {
            errors += 1;
            first_error.get_or_insert_with(|| format!("{error:#}"));
        }
    }
    let relay_s = relaying.elapsed().as_secs_f64();
    let rss_peak = server.peak_rss()?;

    // Everyone has sent `leave`; wait for the server to count them gone.
    let settle = Instant::now() + Duration::from_secs(30);
    let mut after = metrics(addr).await?;
    while Instant::now() < settle
        && (after.get("switchboard_connections") != Some(&0.0)
            || after.get("switchboard_rooms") != Some(&0.0))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = metrics(addr).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss()?;
    let expected = config.connections as u64 * (ROOM_SIZE as u64 - 1) * config.signals;
    let received = received.load(Ordering::Relaxed);
    let relayed = after
        .get("switchboard_signals_relayed_total")
        .map(|total| (*total - relayed_before.unwrap_or(0.0)) as u64);
    let zero = |name: &str| after.get(name) == Some(&0.0);
    let passed = errors == 0
        && received == expected
        && relayed == Some(expected)
        && zero("switchboard_connections")
        && zero("switchboard_rooms")
        && zero("switchboard_members");
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Ok(SoakResult {
        connections: config.connections,
        rooms: room_count,
        signals_per_member_per_peer: config.signals,
        signals_expected: expected,
        signals_received: received,
        relayed_by_server: relayed,
        errors,
        first_error,
        open_s,
        relay_s,
        rss_before_mib: mib(rss_before),
        rss_joined_mib: mib(rss_joined),
        rss_peak_mib: mib(rss_peak),
        rss_after_mib: mib(rss_after),
        metrics_after: after,
        passed,
    })
}

fn room_of(welcome: &str) -> Option<String> {
    let value: Value = serde_json::from_str(welcome).ok()?;
    value["room"].as_str().map(str::to_owned)
}

/// Sends `signals` numbered signals to each peer (interleaved), and checks that each peer's
/// signals arrive exactly once, in order, and only after that peer was announced.
async fn soak_member(
    member: Member,
    peers: Vec<String>,
    signals: u64,
    deadline: Instant,
    received_total: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let Member { ws, id, welcome, early } = member;
    let welcome: Value = serde_json::from_str(&welcome)?;
    let mut announced: HashSet<String> = welcome["peers"]
        .as_array()
        .map(|peers| peers.iter().filter_map(|p| p["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut expected: HashMap<String, u64> = peers.iter().map(|p| (p.clone(), 0)).collect();
    let mut pending = early.into_iter();
    let (mut sink, mut stream) = ws.split();
    let send = async {
        for seq in 0..signals {
            for peer in &peers {
                sink.feed(Message::text(Proto::Switchboard.signal_frame(peer, seq, 0))).await?;
            }
        }
        sink.flush().await?;
        anyhow::Ok(())
    };
    let receive = async {
        let mut left = signals * peers.len() as u64;
        while left > 0 {
            let text = match pending.next() {
                Some(text) => text,
                None => match stream.next().await.context("server closed the connection")?? {
                    Message::Text(text) => text.to_string(),
                    _ => continue,
                },
            };
            let value: Value = serde_json::from_str(&text)?;
            match value["type"].as_str() {
                Some("peer_joined") => {
                    if let Some(peer) = value["peer"]["id"].as_str() {
                        announced.insert(peer.to_owned());
                    }
                }
                Some("signal") => {
                    let from = value["from"].as_str().context("signal without from")?;
                    if !announced.contains(from) {
                        bail!("{id}: signal from {from} before its peer_joined");
                    }
                    let (seq, _) = proto::marker(text.as_bytes()).context("signal without marker")?;
                    let next =
                        expected.get_mut(from).with_context(|| format!("signal from a stranger {from}"))?;
                    if seq != *next {
                        bail!("{id}: from {from} expected signal {} but got {seq}", *next);
                    }
                    *next += 1;
                    left -= 1;
                    received_total.fetch_add(1, Ordering::Relaxed);
                }
                _ => bail!("{id}: unexpected {text:.200}"),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout_at(deadline.into(), async { tokio::try_join!(send, receive) })
        .await
        .context("signals still missing at the deadline")??;
    let mut ws = sink.reunite(stream).map_err(|_| anyhow::anyhow!("cannot reunite the socket"))?;
    // Leave, and wait for the server's close (bounded) so that it has counted us out.
    ws.send(Message::text(r#"{"type":"leave"}"#)).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// Reads the server's /metrics over plain HTTP/1.1.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut body)).await??;
    Ok(body
        .lines()
        .filter(|line| line.starts_with("switchboard_"))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

const SOAK: crate::suite::Markers = crate::suite::Markers {
    begin: "<!-- bench:soak:begin (generated by `bench soak --doc`; edits here are overwritten) -->",
    end: "<!-- bench:soak:end -->",
    title: "# Reliability",
};

/// Writes the "Soak" section of docs/reliability.md, keeping the rest of the file.
pub fn write_doc(path: &std::path::Path, cycles: &[SoakResult], machine: &str) -> anyhow::Result<()> {
    let Some(r) = cycles.first() else { return Ok(()) };
    let passed = cycles.iter().all(|c| c.passed);
    let verdict = if passed { "**passed**" } else { "**FAILED**" };
    let mut per_cycle = String::from(
        "| cycle | signals received | RSS joined | RSS peak | RSS after all left |\n|---:|---:|---:|---:|---:|\n",
    );
    for (i, c) in cycles.iter().enumerate() {
        per_cycle.push_str(&format!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            i + 1,
            c.signals_received,
            c.rss_joined_mib,
            c.rss_peak_mib,
            c.rss_after_mib
        ));
    }
    let metric = |name: &str| r.metrics_after.get(name).map_or("–".to_owned(), |v| format!("{v}"));
    let section = format!(
        "## Soak\n\n\
         {verdict}: {} concurrent WebSocket connections in {} rooms of 4; every member sent {} numbered signals to \
         each of its 3 peers ({} signals in all). Every signal arrived exactly once and in order: {} received, \
         {} counted relayed by the server, {} members with an error{}.\n\n\
         | figure | value |\n|---|---:|\n\
         | connections open and joined in | {:.1} s |\n\
         | all signals delivered in | {:.1} s ({:.0} signals/s) |\n\
         | server RSS before | {:.1} MiB |\n\
         | server RSS with everyone joined | {:.1} MiB ({:.0} bytes per connection) |\n\
         | server RSS peak (VmHWM) | {:.1} MiB |\n\
         | server RSS after everyone left | {:.1} MiB |\n\
         | /metrics after: connections / rooms / members | {} / {} / {} |\n\n\
         The same workload {} times in a row against one server process (the leak check: \
         RSS after each cycle should not keep growing):\n\n{per_cycle}\n\
         The server runs with its defaults (rate limit on: 300 signals per member fit its burst) except the \
         connection caps (`--max-connections 30000 --max-connections-per-ip 30000`, all clients share 127.0.0.1) \
         and `--max-rooms 30000`. Each member checks that a peer's signals come only after that peer was announced \
         (`welcome.peers` or `peer_joined`), then leaves with `leave`. RSS after is higher than before because the \
         allocator (glibc malloc) keeps freed memory for reuse rather than returning it to the system; no \
         growth from one cycle to the next is the leak check.\n\n\
         Machine: {machine}\n\n\
         Reproduce (release build, by hand, not in CI; the tool raises its open-file limit):\n\n\
         ```sh\ncargo build --release -p server -p bench\n\
         target/release/bench soak --connections {} --signals {} --cycles {} --doc docs/reliability.md\n```\n",
        r.connections,
        r.rooms,
        r.signals_per_member_per_peer,
        r.signals_expected,
        r.signals_received,
        r.relayed_by_server.map_or("–".to_owned(), |n| n.to_string()),
        r.errors,
        r.first_error.as_ref().map_or(String::new(), |e| format!(" (first: {e})")),
        r.open_s,
        r.relay_s,
        r.signals_received as f64 / r.relay_s.max(1e-9),
        r.rss_before_mib,
        r.rss_joined_mib,
        (r.rss_joined_mib - r.rss_before_mib) * 1024.0 * 1024.0 / r.connections.max(1) as f64,
        r.rss_peak_mib,
        r.rss_after_mib,
        metric("switchboard_connections"),
        metric("switchboard_rooms"),
        metric("switchboard_members"),
        cycles.len(),
        r.connections,
        r.signals_per_member_per_peer,
        cycles.len(),
    );
    crate::suite::write_doc(path, &section, &SOAK)
}
