//! The relay workload: P pairs, each member sending numbered signals to the other, with a bounded
//! in-flight window per direction, either as fast as the window allows (throughput) or at a fixed
//! total rate (latency). Every received signal is checked: exactly once, in order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use crate::client::micros;
use crate::proto::{self, Proto};
use crate::raw::{RawConn, RawMember, SignalTemplate};
use crate::stats::Latency;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// Where the second member of each pair joins (another instance of one service); `None`:
    /// at `addr` too.
    pub addr_b: Option<SocketAddr>,
    pub pairs: usize,
    /// Signals in flight per direction at most.
    pub window: u64,
    pub warmup: Duration,
    pub measure: Duration,
    /// Total signals per second over all pairs; None: as fast as the window allows.
    pub rate: Option<f64>,
    /// Measure the server's CPU time over the measuring window.
    pub server_pid: Option<u32>,
    /// Distinguishes rooms and ids of successive runs against one server.
    pub tag: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    /// Signals received in the measuring window, per second.
    pub msgs_per_s: f64,
    pub latency: Latency,
    pub sent: u64,
    pub received: u64,
    /// Out-of-order, duplicate or error messages.
    pub errors: u64,
    /// Sent but never received (after a drain of several seconds).
    pub lost: u64,
    pub first_error: Option<String>,
    /// Server CPU time per signal received in the measuring window.
    pub server_cpu_us_per_msg: Option<f64>,
    /// Server CPU use over the window, in cores (1.0 = one core busy).
    pub server_cores: Option<f64>,
    /// This generator's CPU use over the whole run, in cores.
    pub generator_cores: f64,
}

/// How long after sending stops the stragglers may take to arrive.
const DRAIN: Duration = Duration::from_secs(5);

pub async fn run(config: LoadConfig) -> anyhow::Result<LoadResult> {
    let mut pairs = Vec::with_capacity(config.pairs);
    for i in 0..config.pairs {
        let room = format!("{}-{i}", config.tag);
        let a = RawConn::join(config.proto, config.addr, &room, &format!("{room}a")).await?;
        let b = RawConn::join(config.proto, config.addr_b.unwrap_or(config.addr), &room, &format!("{room}b"))
            .await?;
        pairs.push((a, b));
    }
    let own_cpu_start = crate::server::cpu_us(std::process::id())?;
    let epoch = Instant::now();
    let window_start = epoch + config.warmup;
    let send_end = window_start + config.measure;
    let cpu = config.server_pid.map(|pid| {
        tokio::spawn(async move {
            sleep_until(window_start.into()).await;
            let start = crate::server::cpu_us(pid);
            sleep_until(send_end.into()).await;
            Some((start.ok()?, crate::server::cpu_us(pid).ok()?))
        })
    });
    let mut tasks = JoinSet::new();
    let streams = (config.pairs * 2) as f64;
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        let clock = Clock { epoch, window_start, send_end };
        // Streams are spread over the rate's period so that they do not all send at once.
        let phase = i as f64 / config.pairs as f64;
        let pace = config.rate.map(|rate| Pace { per_second: rate / streams, phase });
        tasks.spawn(run_pair(config.proto, a, b, config.window, pace, clock));
    }
    let mut total = PairStats::default();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("pair task panicked")??);
    }
    let own_cpu = crate::server::cpu_us(std::process::id())? - own_cpu_start;
    let seconds = config.measure.as_secs_f64();
    let server_cpu = match cpu {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    Ok(LoadResult {
        msgs_per_s: total.counted as f64 / seconds,
        latency: Latency::from_micros(&mut total.latencies),
        sent: total.sent,
        received: total.received,
        errors: total.errors,
        lost: total.sent - total.received.min(total.sent),
        first_error: total.first_error,
        server_cpu_us_per_msg: server_cpu
            .filter(|_| total.counted > 0)
            .map(|(start, end)| (end - start) as f64 / total.counted as f64),
        server_cores: server_cpu.map(|(start, end)| (end - start) as f64 / 1e6 / seconds),
        generator_cores: own_cpu as f64 / 1e6 / (Instant::now() - epoch).as_secs_f64(),
    })
}

#[derive(Clone, Copy)]
struct Clock {
    epoch: Instant,
    window_start: Instant,
    send_end: Instant,
}

#[derive(Clone, Copy)]
struct Pace {
    per_second: f64,
    phase: f64,
}

impl Pace {
    /// How many signals a stream should have sent by `elapsed`.
    fn due(self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.per_second + self.phase) as u64
    }

    /// When the stream's signal number `next` falls due.
    fn at(self, epoch: Instant, next: u64) -> Instant {
        epoch + Duration::from_secs_f64(((next as f64 + 1.0 - self.phase) / self.per_second).max(0.0))
    }
}

#[derive(Debug, Default)]
struct PairStats {
    sent: u64,
    received: u64,
    counted: u64,
    errors: u64,
    latencies: Vec<u64>,
    first_error: Option<String>,
}

impl PairStats {
    fn merge(&mut self, other: PairStats) {
        self.sent += other.sent;
        self.received += other.received;
        self.counted += other.counted;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One direction of a pair: what was sent, and what the other side has received of it.
#[derive(Default)]
struct Stream {
    sent: u64,
    received: u64,
}

struct Side {
    conn: RawConn,
    /// This side's signal to the other side, candidate- and offer-sized.
    candidate: SignalTemplate,
    offer: SignalTemplate,
    /// The stream this side sends.
    out: Stream,
}

impl Side {
    fn new(proto: Proto, member: RawMember, to: &str) -> Self {
        Side {
            conn: member.conn,
            candidate: SignalTemplate::new(proto, to, false),
            offer: SignalTemplate::new(proto, to, true),
            out: Stream::default(),
        }
    }
}

async fn run_pair(
    proto: Proto,
    a: RawMember,
    b: RawMember,
    window: u64,
    pace: Option<Pace>,
    clock: Clock,
) -> anyhow::Result<PairStats> {
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    let mut sides = [Side::new(proto, a, &b_id), Side::new(proto, b, &a_id)];
    let mut stats = PairStats::default();
    let sample = pace.is_some();
    let give_up = clock.send_end + DRAIN;
    let wake = tokio::time::sleep_until(clock.send_end.into());
    tokio::pin!(wake);
    loop {
        let now = Instant::now();
        let sending = now < clock.send_end;
        let mut next_due = clock.send_end;
        for side in sides.iter_mut() {
            while sending && side.out.sent.saturating_sub(side.out.received) < window {
                if let Some(pace) = pace
                    && side.out.sent >= pace.due(now - clock.epoch)
                {
                    next_due = next_due.min(pace.at(clock.epoch, side.out.sent));
                    break;
                }
                let seq = side.out.sent;
                // Every 16th signal is an SDP-sized offer, the others candidates.
                let template = if seq.is_multiple_of(16) { &side.offer } else { &side.candidate };
                // The send time is only read back when latencies are sampled.
                let t = if sample { micros(Instant::now() - clock.epoch) } else { 0 };
                side.conn.push_template(template, seq, t);
                side.out.sent += 1;
            }
            // Signals and any pongs, in one write.
            side.conn.flush().await?;
        }
        if !sending && sides.iter().all(|s| s.out.received >= s.out.sent) {
            break;
        }
        if now > give_up {
            stats.first_error.get_or_insert_with(|| "signals still missing after the drain".to_owned());
            break;
        }
        let wake_at = if sending { next_due } else { give_up };
        if wake.deadline() != wake_at.into() {
            wake.as_mut().reset(wake_at.into());
        }
        let [first, second] = &mut sides;
        let (receiver, sender) = tokio::select! {
            read = first.conn.read_more() => { read?; (first, second) }
            read = second.conn.read_more() => { read?; (second, first) }
            () = &mut wake => continue,
        };
        let at = Instant::now();
        let in_window = at >= clock.window_start && at < clock.send_end;
        // What `receiver` gets belongs to the stream `sender` sends.
        let stream = &mut sender.out;
        receiver.conn.take_frames(|text| {
            if proto.is_signal(text) {
                let Some((seq, t)) = proto::marker(text) else {
                    stats.errors += 1;
                    stats.first_error.get_or_insert_with(|| {
                        format!("signal without marker: {:.200}", String::from_utf8_lossy(text))
                    });
                    return;
                };
                if seq != stream.received {
                    stats.errors += 1;
                    stats
                        .first_error
                        .get_or_insert_with(|| format!("expected signal {} but got {seq}", stream.received));
                }
                stream.received = seq + 1;
                stats.received += 1;
                if in_window {
                    stats.counted += 1;
                    if sample {
                        stats.latencies.push(micros(at - clock.epoch).saturating_sub(t));
                    }
                }
            } else if proto.is_error(text) {
                stats.errors += 1;
                stats
                    .first_error
                    .get_or_insert_with(|| format!("server error: {:.200}", String::from_utf8_lossy(text)));
            }
        })?;
    }
    stats.sent = sides.iter().map(|s| s.out.sent).sum();
    for mut side in sides {
        if proto == Proto::Switchboard {
            side.conn.push_text(br#"{"type":"leave"}"#);
        }
        side.conn.close().await;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spreads_signals_evenly() {
        let pace = Pace { per_second: 100.0, phase: 0.5 };
        assert_eq!(pace.due(Duration::ZERO), 0);
        assert_eq!(pace.due(Duration::from_millis(5)), 1);
        assert_eq!(pace.due(Duration::from_secs(1)), 100);
        let epoch = Instant::now();
        assert_eq!(pace.at(epoch, 0), epoch + Duration::from_millis(5));
        assert_eq!(pace.at(epoch, 1), epoch + Duration::from_millis(15));
    }
}
