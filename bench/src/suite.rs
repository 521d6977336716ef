//! The whole comparison: each server alone in turn (pinned to one core), the same workloads
//! against each, medians of several rounds; then the report in docs/benchmarks.md and the JSON
//! summary line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::idle::{self, IdleResult};
use crate::load::{self, LoadConfig, LoadResult};
use crate::proto::Proto;
use crate::server::Launch;
use crate::stats::median;
use crate::udp::UdpResult;

#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub launches: Vec<(Launch, String)>,
    pub rounds: usize,
    pub pairs: usize,
    pub window: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub rate: f64,
    pub idle: Vec<usize>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerReport {
    pub proto: Proto,
    pub version: String,
    pub relay_msgs_per_s: f64,
    pub cpu_us_per_msg: Option<f64>,
    /// The same at the paced rate, where signals come one at a time and nothing batches.
    #[serde(default)]
    pub paced_cpu_us_per_msg: Option<f64>,
    pub server_cores: Option<f64>,
    pub generator_cores: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub lost: u64,
    pub first_error: Option<String>,
    pub relay_rounds: Vec<LoadResult>,
    pub latency_rounds: Vec<LoadResult>,
    pub idle: Vec<IdleResult>,
}

impl ServerReport {
    fn bytes_per_idle(&self, n: usize) -> Option<f64> {
        self.idle.iter().find(|i| i.connections == n).map(|i| i.bytes_per_conn)
    }

    /// Join latency is taken from the smallest idle run: its joins are made one at a time.
    fn joins(&self) -> Option<&IdleResult> {
        self.idle.iter().min_by_key(|i| i.connections)
    }
}

pub async fn run_server(
    config: &SuiteConfig,
    launch: &Launch,
    version: &str,
) -> anyhow::Result<ServerReport> {
    let proto = launch.proto;
    let mut relay_rounds = Vec::new();
    let mut latency_rounds = Vec::new();
    for round in 0..config.rounds {
        let server = launch.start()?;
        let base = LoadConfig {
            proto,
            addr: server.addr,
            addr_b: None,
            pairs: config.pairs,
            window: config.window,
            warmup: config.warmup,
            measure: config.measure,
            rate: None,
            server_pid: Some(server.pid),
            tag: format!("relay{round}"),
        };
        let relay = load::run(base.clone()).await.with_context(|| format!("{} relay", proto.label()))?;
        eprintln!(
            "bench: {} round {round}: relay {:.0} msgs/s, {:.2} µs server CPU/msg, generator {:.2} cores, errors {} lost {}",
            proto.label(),
            relay.msgs_per_s,
            relay.server_cpu_us_per_msg.unwrap_or(f64::NAN),
            relay.generator_cores,
            relay.errors,
            relay.lost
        );
        let paced = LoadConfig { rate: Some(config.rate), tag: format!("paced{round}"), ..base };
        let latency = load::run(paced).await.with_context(|| format!("{} latency", proto.label()))?;
        eprintln!(
            "bench: {} round {round}: at {:.0} msgs/s p50 {:.3} p99 {:.3} p99.9 {:.3} ms, errors {} lost {}",
            proto.label(),
            latency.msgs_per_s,
            latency.latency.p50_ms,
            latency.latency.p99_ms,
            latency.latency.p999_ms,
            latency.errors,
            latency.lost
        );
        relay_rounds.push(relay);
        latency_rounds.push(latency);
    }
    let mut idle_results = Vec::new();
    for &n in &config.idle {
        let server = launch.start()?;
        // Joins of the smallest run one at a time (clean join latencies), the others in parallel.
        let concurrency = if Some(&n) == config.idle.iter().min() { 1 } else { 64 };
        let result = idle::measure(proto, &server, n, concurrency, &[])
            .await
            .with_context(|| format!("{} idle {n}", proto.label()))?;
        eprintln!(
            "bench: {} idle {n}: {:.0} bytes/conn, connect p50 {:.3} ms",
            proto.label(),
            result.bytes_per_conn,
            result.connect.p50_ms
        );
        idle_results.push(result);
    }
    let med = |f: &dyn Fn(&LoadResult) -> f64, rounds: &[LoadResult]| {
        median(&rounds.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let all = relay_rounds.iter().chain(&latency_rounds);
    Ok(ServerReport {
        proto,
        version: version.to_owned(),
        relay_msgs_per_s: med(&|r| r.msgs_per_s, &relay_rounds),
        cpu_us_per_msg: median(
            &relay_rounds.iter().filter_map(|r| r.server_cpu_us_per_msg).collect::<Vec<_>>(),
        ),
        paced_cpu_us_per_msg: median(
            &latency_rounds.iter().filter_map(|r| r.server_cpu_us_per_msg).collect::<Vec<_>>(),
        ),
        server_cores: median(&relay_rounds.iter().filter_map(|r| r.server_cores).collect::<Vec<_>>()),
        generator_cores: med(&|r| r.generator_cores, &relay_rounds),
        p50_ms: med(&|r| r.latency.p50_ms, &latency_rounds),
        p99_ms: med(&|r| r.latency.p99_ms, &latency_rounds),
        p999_ms: med(&|r| r.latency.p999_ms, &latency_rounds),
        errors: all.clone().map(|r| r.errors).sum(),
        lost: all.clone().map(|r| r.lost).sum(),
        first_error: all.filter_map(|r| r.first_error.clone()).next(),
        relay_rounds,
        latency_rounds,
        idle: idle_results,
    })
}

/// The figures other engineers' tools produce (WebRTC), read from a JSON file if there is one.
#[derive(Debug, Default)]
pub struct Extra {
    pub udp: Option<UdpResult>,
    pub webrtc: Option<Value>,
    /// `bench scaling`'s summary (relay on 1 core vs 2).
    pub scaling: Option<Value>,
}

pub fn summary(reports: &[ServerReport], extra: &Extra, idle_key: usize) -> Value {
    let find = |proto| reports.iter().find(|r| r.proto == proto);
    let sb = find(Proto::Switchboard);
    let mb = find(Proto::Matchbox);
    let webrtc = |key: &str| extra.webrtc.as_ref().and_then(|w| w.get(key)).cloned().unwrap_or(Value::Null);
    json!({
        "relay_msgs_per_s": sb.map(|r| r.relay_msgs_per_s.round()),
        "matchbox_relay_msgs_per_s": mb.map(|r| r.relay_msgs_per_s.round()),
        "p99_ms": sb.map(|r| round3(r.p99_ms)),
        "matchbox_p99_ms": mb.map(|r| round3(r.p99_ms)),
        "cpu_us_per_signal": sb.and_then(|r| r.cpu_us_per_msg).map(round3),
        "matchbox_cpu_us_per_signal": mb.and_then(|r| r.cpu_us_per_msg).map(round3),
        "paced_cpu_us_per_signal": sb.and_then(|r| r.paced_cpu_us_per_msg).map(round3),
        "matchbox_paced_cpu_us_per_signal": mb.and_then(|r| r.paced_cpu_us_per_msg).map(round3),
        "bytes_per_idle_conn": sb.and_then(|r| r.bytes_per_idle(idle_key)).map(f64::round),
        "matchbox_bytes_per_idle_conn": mb.and_then(|r| r.bytes_per_idle(idle_key)).map(f64::round),
        "join_p50_ms": sb.and_then(|r| r.joins()).and_then(|i| i.join).map(|j| round3(j.p50_ms)),
        "rust_connect_p50_ms": webrtc("rust_connect_p50_ms"),
        "rust_connect_p99_ms": webrtc("rust_connect_p99_ms"),
        "mesh_formed_ms_by_peers": webrtc("mesh_formed_ms_by_peers"),
        "mesh_idle_cpu_pct_per_conn": webrtc("mesh_idle_cpu_pct_per_conn"),
        "browser_connect_p50_ms": webrtc("browser_connect_p50_ms"),
        "dc_mb_per_s": webrtc("dc_mb_per_s"),
        "udp_ceiling_mb_per_s": extra.udp.as_ref().map(|u| round3(u.large.mb_per_s)),
        "udp_small_mb_per_s": extra.udp.as_ref().map(|u| round3(u.small.mb_per_s)),
        "relay_scaling": extra.scaling.clone(),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub const BEGIN: &str =
    "<!-- bench:signaling:begin (generated by scripts/bench.sh; edits here are overwritten) -->";
pub const END: &str = "<!-- bench:signaling:end -->";

/// Where a generated section goes in a document that others edit too.
pub struct Markers {
    pub begin: &'static str,
    pub end: &'static str,
    /// The first line of the file if it does not exist yet.
    pub title: &'static str,
}

pub const BENCHMARKS: Markers = Markers { begin: BEGIN, end: END, title: "# Benchmarks" };

/// Puts `section` between the markers of `doc`, keeping everything else in the file; appends
/// it (with markers) if the file has none.
pub fn merge_section(existing: Option<&str>, section: &str, markers: &Markers) -> String {
    let Markers { begin, end, title } = markers;
    let block = format!("{begin}\n{}\n{end}", section.trim_end());
    match existing {
        None => format!("{title}\n\n{block}\n"),
        Some(text) => match (text.find(begin), text.find(end)) {
            (Some(start), Some(stop)) if stop > start => {
                format!("{}{block}{}", &text[..start], &text[stop + end.len()..])
            }
            _ => format!("{}\n\n{block}\n", text.trim_end()),
        },
    }
}

pub fn write_doc(path: &Path, section: &str, markers: &Markers) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).ok();
    std::fs::write(path, merge_section(existing.as_deref(), section, markers))
        .with_context(|| format!("cannot write {}", path.display()))
}

pub struct ReportContext {
    pub machine: String,
    pub config: SuiteConfig,
    pub idle_key: usize,
    pub out_json: PathBuf,
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

fn cell(value: Option<f64>, digits: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".to_owned(),
    }
}

/// The generated part of docs/benchmarks.md.
pub fn markdown(reports: &[ServerReport], extra: &Extra, ctx: &ReportContext, summary: &Value) -> String {
    let mut md = String::new();
    let c = &ctx.config;
    md.push_str("## Signaling: Switchboard vs matchbox_server");
    if reports.iter().any(|r| r.proto == Proto::Peerjs) {
        md.push_str(" and PeerJS server");
    }
    md.push_str("\n\n");
    let sb = reports.iter().find(|r| r.proto == Proto::Switchboard);
    let mb = reports.iter().find(|r| r.proto == Proto::Matchbox);
    if let (Some(sb), Some(mb)) = (sb, mb) {
        md.push_str(&format!(
            "**Relay {} matchbox_server** ({:.0} vs {:.0} signals/s); server CPU per signal {} of matchbox's; \
             p99 at {:.0}/s {:.3} ms vs {:.3} ms; idle memory per joined connection {} vs {} bytes ({} of matchbox's).\n\n",
            ratio(Some(sb.relay_msgs_per_s), Some(mb.relay_msgs_per_s)),
            sb.relay_msgs_per_s,
            mb.relay_msgs_per_s,
            ratio(sb.cpu_us_per_msg, mb.cpu_us_per_msg),
            c.rate,
            sb.p99_ms,
            mb.p99_ms,
            cell(sb.bytes_per_idle(ctx.idle_key), 0),
            cell(mb.bytes_per_idle(ctx.idle_key), 0),
            ratio(sb.bytes_per_idle(ctx.idle_key), mb.bytes_per_idle(ctx.idle_key)),
        ));
    }
    md.push_str("| figure |");
    for r in reports {
        md.push_str(&format!(" {} {} |", r.proto.label(), r.version));
    }
    md.push_str("\n|---|");
    for _ in reports {
        md.push_str("---:|");
    }
    md.push('\n');
    let mut row = |name: &str, f: &dyn Fn(&ServerReport) -> String| {
        md.push_str(&format!("| {name} |"));
        for r in reports {
            md.push_str(&format!(" {} |", f(r)));
        }
        md.push('\n');
    };
    row("relay throughput, signals/s (median of rounds)", &|r| cell(Some(r.relay_msgs_per_s), 0));
    row("server CPU per relayed signal, µs", &|r| cell(r.cpu_us_per_msg, 2));
    row(&format!("server CPU per relayed signal at {:.0} signals/s, µs", c.rate), &|r| {
        cell(r.paced_cpu_us_per_msg, 2)
    });
    row("server CPU use while relaying, cores", &|r| cell(r.server_cores, 2));
    row("generator CPU use while relaying, cores", &|r| cell(Some(r.generator_cores), 2));
    let rate = c.rate;
    row(&format!("latency p50 at {rate:.0} signals/s, ms"), &|r| cell(Some(r.p50_ms), 3));
    row(&format!("latency p99 at {rate:.0} signals/s, ms"), &|r| cell(Some(r.p99_ms), 3));
    row(&format!("latency p99.9 at {rate:.0} signals/s, ms"), &|r| cell(Some(r.p999_ms), 3));
    for &n in &c.idle {
        row(&format!("RSS per idle joined connection at {n}, bytes"), &|r| cell(r.bytes_per_idle(n), 0));
    }
    row("connect → member p50 / p99, ms (TCP + upgrade + join)", &|r| {
        r.joins().map_or("–".to_owned(), |i| format!("{:.3} / {:.3}", i.connect.p50_ms, i.connect.p99_ms))
    });
    row("`join` → `welcome` p50 / p99, ms", &|r| {
        r.joins()
            .and_then(|i| i.join)
            .map_or("n/a (joins on connect)".to_owned(), |j| format!("{:.3} / {:.3}", j.p50_ms, j.p99_ms))
    });
    row("lost / out-of-order signals (all rounds)", &|r| format!("{} / {}", r.lost, r.errors));
    md.push('\n');
    if let Some(udp) = &extra.udp {
        md.push_str(&format!(
            "Raw UDP over loopback (the ceiling for data channels): **{:.0} MB/s** with {}-byte datagrams; \
             {:.0} MB/s ({:.0} datagrams/s) with {}-byte datagrams, the size of SCTP-over-DTLS packets, one \
             syscall each (one sender thread, one receiver thread, {} MiB socket buffers as the peer uses; \
             MB = 10^6 bytes).\n\n",
            udp.large.mb_per_s,
            udp.large.datagram_bytes,
            udp.small.mb_per_s,
            udp.small.datagrams_per_s,
            udp.small.datagram_bytes,
            udp.socket_buffer_bytes >> 20
        ));
    }
    let webrtc_ms = |key: &str| extra.webrtc.as_ref().and_then(|w| w.get(key)).and_then(Value::as_f64);
    let connect =
        |side: &str| match (webrtc_ms(&format!("{side}_p50_ms")), webrtc_ms(&format!("{side}_p99_ms"))) {
            (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1} ms"),
            _ => "not measured".to_owned(),
        };
    md.push_str(&format!(
        "WebRTC join → `chat` open, p50 / p99 over 20 runs (the newcomer's `welcome` to its channel open): \
         Rust ↔ Rust {}; browser ↔ Rust, page joining a Rust peer (headless Chromium) {}; \
         Rust peer joining the page {}.\n\n",
        connect("rust_connect"),
        connect("browser_connect"),
        connect("rust_joins_browser"),
    ));
    md.push_str(&scaling_paragraph(extra.scaling.as_ref()));
    md.push_str("### Targets (issue 7)\n\n");
    if let (Some(sb), Some(mb)) = (sb, mb) {
        let target = |ok: bool| if ok { "met" } else { "**not met**" };
        let per_idle = sb.bytes_per_idle(ctx.idle_key).unwrap_or(f64::INFINITY);
        md.push_str(&format!(
            "- relay ≥ 2× matchbox_server: {} ({})\n- p99 < 2 ms at {rate:.0}/s: {} ({:.3} ms)\n\
             - ≤ 16 KiB RSS per idle connection: {} ({per_idle:.0} bytes at {})\n\
             - {} connections on 2 cores: {}\n\n",
            target(sb.relay_msgs_per_s >= 2.0 * mb.relay_msgs_per_s),
            ratio(Some(sb.relay_msgs_per_s), Some(mb.relay_msgs_per_s)),
            target(sb.p99_ms < 2.0),
            sb.p99_ms,
            target(per_idle <= 16.0 * 1024.0),
            ctx.idle_key,
            ctx.idle_key,
            target(sb.idle.iter().any(|i| i.connections >= 10_000)),
        ));
    }
    md.push_str("### Machine\n\n");
    md.push_str(&ctx.machine);
    md.push_str("\n\n### Method\n\n");
    md.push_str(&format!(
        "- One command: `scripts/bench.sh` (release builds; matchbox_server {} installed with `cargo install --locked` \
         into `target/matchbox`, PeerJS server with npm into `target/peerjs`; neither is committed).\n\
         - Each server runs alone, pinned to core 0 with `taskset`; the load generator (`bench`) is pinned to \
         core 1. It speaks WebSocket through a deliberately cheap client (`bench/src/raw.rs`): signals are \
         pre-masked templates with only their marker digits rewritten, written in one batch per wake-up, and \
         received frames are found by scanning headers; it uses ~0.2 of its core where the servers use a whole \
         one, so the figures are the servers' (the earlier tokio-tungstenite generator capped every server at \
         ~60k signals/s). Logging at `warn` for every server; \
         Switchboard runs with `--no-rate-limit` (the others have no rate limit) and raised connection caps.\n\
         - Relay: {} pairs, each member sending to the other; every 16th signal an SDP-sized offer (~1.2 KB), \
         the others ~300-byte candidates, shaped as each server's own clients send them. At most {} signals in flight \
         per direction. {} s warm-up, then {} s measured; then a drain: every signal is checked for loss, order and \
         duplicates. Throughput counts signals received in the measured window.\n\
         - Latency: the same pairs paced at {:.0} signals/s in total, spread evenly; latency is receive time minus \
         the send time written into each signal (one clock, one process).\n\
         - CPU per signal: server utime+stime from /proc/PID/stat over the measured window (10 ms ticks) ÷ signals \
         relayed in it.\n\
         - Memory: a fresh server, RSS (VmRSS) before and 1 s after opening N connections, each joined in a room of 4 \
         (matchbox: a room path; PeerJS has no rooms), ÷ N. Join latency from the smallest of these runs, joins made \
         one at a time.\n\
         - Rounds: {} per server (fresh server each); the tables show medians. Per-round figures are in `{}`.\n\
         - Noise: this is a shared 2-core machine; other builds and tests may run at the same time \
         (load average at start: {}). The CPU-per-signal and memory figures are the least noisy.\n",
        reports.iter().find(|r| r.proto == Proto::Matchbox).map_or("–", |r| r.version.as_str()),
        c.pairs,
        c.window,
        c.warmup.as_secs_f64(),
        c.measure.as_secs_f64(),
        c.rate,
        c.rounds,
        ctx.out_json.display(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    ));
    if reports.iter().all(|r| r.proto != Proto::Peerjs) {
        md.push_str("- PeerJS server: not run this time (pass `--peerjs` to `bench suite`).\n");
    }
    md.push_str(&format!("\nSummary line printed by the script:\n\n```json\n{summary}\n```\n"));
    md
}

/// The relay on 1 core vs 2 (`bench scaling`), one paragraph.
fn scaling_paragraph(scaling: Option<&Value>) -> String {
    let Some(scaling) = scaling else {
        return "Relay on 1 core vs 2: not part of this run (`NO_SCALING=1`).\n\n".to_owned();
    };
    let by = |n: &str, key: &str| scaling["by_cpus"][n][key].as_f64().unwrap_or(f64::NAN);
    format!(
        "Relay on 1 core vs 2 (`bench scaling`: {} rooms of 2, saturated, server pinned to core 0 or cores 0–1, \
         generator on core 1, medians of rounds): **{:.0} → {:.0} signals/s ({}×)** with the server using {:.2} → {:.2} \
         cores ({}×); {:.0} → {:.0} signals per server CPU-second (scaling efficiency {}).\n\n",
        scaling["pairs"],
        by("1", "signals_per_s"),
        by("2", "signals_per_s"),
        scaling["speedup"],
        by("1", "server_cores"),
        by("2", "server_cores"),
        scaling["server_cpu_ratio"],
        by("1", "signals_per_cpu_s"),
        by("2", "signals_per_cpu_s"),
        scaling["scaling_efficiency"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_sections() {
        let doc =
            format!("# Benchmarks\n\n## WebRTC\n\nrust numbers\n\n{BEGIN}\nold\n{END}\n\n## Notes\n\nkeep\n");
        let merged = merge_section(Some(&doc), "new table\n", &BENCHMARKS);
        assert!(merged.contains("## WebRTC\n\nrust numbers"));
        assert!(merged.contains("## Notes\n\nkeep"));
        assert!(merged.contains("new table"));
        assert!(!merged.contains("old"));
        assert_eq!(merge_section(Some(&merged), "new table\n", &BENCHMARKS), merged, "idempotent");
    }

    #[test]
    fn report_shows_the_webrtc_connect_figures() {
        let extra = Extra {
            udp: None,
            scaling: None,
            webrtc: Some(json!({"rust_connect_p50_ms": 42.6, "rust_connect_p99_ms": 51.6,
                "browser_connect_p50_ms": 85.3, "browser_connect_p99_ms": 94.3})),
        };
        let config = SuiteConfig {
            launches: Vec::new(),
            rounds: 1,
            pairs: 1,
            window: 1,
            warmup: Duration::ZERO,
            measure: Duration::ZERO,
            rate: 1.0,
            idle: Vec::new(),
        };
        let ctx = ReportContext { machine: String::new(), config, idle_key: 0, out_json: PathBuf::new() };
        let summary = summary(&[], &extra, 0);
        assert_eq!(summary["browser_connect_p50_ms"], json!(85.3));
        let md = markdown(&[], &extra, &ctx, &summary);
        assert!(md.contains("Rust ↔ Rust 42.6 / 51.6 ms;"), "{md}");
        assert!(md.contains("page joining a Rust peer (headless Chromium) 85.3 / 94.3 ms;"), "{md}");
        assert!(md.contains("Rust peer joining the page not measured."), "{md}");
    }

    #[test]
    fn report_shows_the_relay_on_one_core_and_two() {
        let scaling = json!({
            "by_cpus": {
                "1": {"cpus": "0", "signals_per_s": 500000.0, "server_cores": 1.0, "signals_per_cpu_s": 500000.0},
                "2": {"cpus": "0-1", "signals_per_s": 850000.0, "server_cores": 1.75, "signals_per_cpu_s": 485714.0},
            },
            "speedup": 1.7, "server_cpu_ratio": 1.75, "scaling_efficiency": 0.97, "pairs": 400,
        });
        let extra = Extra { udp: None, webrtc: None, scaling: Some(scaling.clone()) };
        let summary = summary(&[], &extra, 0);
        assert_eq!(summary["relay_scaling"], scaling);
        let paragraph = scaling_paragraph(extra.scaling.as_ref());
        assert!(
            paragraph.contains(
                "**500000 → 850000 signals/s (1.7×)** with the server using 1.00 → 1.75 cores (1.75×)"
            ),
            "{paragraph}"
        );
        assert!(paragraph.contains("(scaling efficiency 0.97)"), "{paragraph}");
        assert!(scaling_paragraph(None).contains("not part of this run"));
    }

    #[test]
    fn merge_appends_without_markers_and_creates_a_file() {
        let merged = merge_section(Some("# Benchmarks\n\n## WebRTC\n\nx\n"), "table", &BENCHMARKS);
        assert!(merged.starts_with("# Benchmarks\n\n## WebRTC\n\nx\n\n"));
        assert!(merged.ends_with(&format!("{BEGIN}\ntable\n{END}\n")));
        assert!(merge_section(None, "table", &BENCHMARKS).starts_with("# Benchmarks\n"));
    }
}
