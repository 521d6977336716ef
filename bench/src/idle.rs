//! Idle joined connections: opened, joined in rooms of 4 (where the server has rooms), then left
//! alone while the server's memory is read.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;

use crate::client::{self, JoinTiming, Member};
use crate::proto::Proto;
use crate::server::Server;
use crate::stats::Latency;

pub const ROOM_SIZE: usize = 4;

/// Opens `n` joined connections, `concurrency` at a time; fails on the first refusal.
pub async fn open(
    proto: Proto,
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<(Vec<Member>, Vec<JoinTiming>)> {
    let mut joins = futures_util::stream::iter(0..n)
        .map(|i| {
            let room = format!("{tag}-{}", i / ROOM_SIZE);
            let id = format!("{tag}-{i}");
            async move { client::join(proto, addr, &room, &id).await }
        })
        .buffer_unordered(concurrency.max(1));
    let mut members = Vec::with_capacity(n);
    let mut timings = Vec::with_capacity(n);
    while let Some(joined) = joins.next().await {
        let (member, timing) = joined?;
        members.push(member);
        timings.push(timing);
    }
    Ok((members, timings))
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdleResult {
    pub connections: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub bytes_per_conn: f64,
    /// Connect (TCP + upgrade + join) to membership.
    pub connect: Latency,
    /// `join` to `welcome` (Switchboard only).
    pub join: Option<Latency>,
    #[serde(default)]
    pub detail: Option<Detail>,
}

/// Measures the RSS growth of a fresh `server` for `n` idle joined connections.
pub async fn measure(
    proto: Proto,
    server: &Server,
    n: usize,
    concurrency: usize,
    later: &[Duration],
) -> anyhow::Result<IdleResult> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss()?;
    let (members, timings) = open(proto, server.addr, n, concurrency, &format!("idle{n}")).await?;
    // Let the server finish what the joins started (presence broadcasts, allocator settling).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss()?;
    let mut detail = detail(server)?;
    let start = std::time::Instant::now();
    for &wait in later {
        tokio::time::sleep_until((start + wait).into()).await;
        detail.rss_later.push((wait.as_millis() as u64, server.rss()?));
    }
    drop(members);
    let mut connect: Vec<u64> = timings.iter().map(|t| t.connect_us).collect();
    let mut join: Vec<u64> = timings.iter().filter_map(|t| t.join_us).collect();
    Ok(IdleResult {
        connections: n,
        rss_before,
        rss_after,
        bytes_per_conn: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        connect: Latency::from_micros(&mut connect),
        join: (!join.is_empty()).then(|| Latency::from_micros(&mut join)),
        detail: Some(detail),
    })
}

/// What else might move the figure, read with `rss_after` while the connections are open.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Detail {
    pub threads: u64,
    /// `Anonymous` of /proc/PID/smaps_rollup (heap and stacks), KiB.
    pub anon_kib: u64,
    /// Peak RSS so far.
    pub rss_peak: u64,
    /// RSS read again this long after `rss_after` (ms, bytes): settling, trims, the allocator
    /// giving pages back.
    pub rss_later: Vec<(u64, u64)>,
}

fn detail(server: &Server) -> anyhow::Result<Detail> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid))?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", server.pid)).unwrap_or_default();
    Ok(Detail {
        threads: field(&status, "Threads:"),
        anon_kib: field(&rollup, "Anonymous:"),
        rss_peak: server.peak_rss()?,
        rss_later: Vec::new(),
    })
}
