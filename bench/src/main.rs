//! `bench`: Switchboard's load generator and benchmark suite (release build, run by hand or by
//! `scripts/bench.sh`; never in CI). Only ever talks to servers on loopback.

mod client;
mod idle;
mod load;
mod proto;
mod raw;
mod scaling;
mod server;
mod soak;
mod stats;
mod suite;
mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::proto::Proto;
use crate::server::Launch;

#[derive(Parser)]
#[command(about = "Switchboard benchmarks: relay, latency, memory, joins, soak (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every server in turn, every figure; writes the report and prints the JSON summary last.
    Suite(Box<SuiteArgs>),
    /// One relay run against a server that is already running (for profiling).
    Relay(RelayArgs),
    /// Raw UDP loopback throughput (the data-channel ceiling).
    Udp(UdpArgs),
    /// The soak of issue 6 against a Switchboard server this command starts.
    Soak(SoakArgs),
    /// The suite's idle-memory figure, repeated on fresh Switchboard servers, with RSS read
    /// again later and the server's threads: how much the figure varies from run to run.
    Idle(IdleArgs),
    /// Saturated relay throughput with the server pinned to each CPU list in turn (1 core vs 2):
    /// signals/s, the server's CPU use and signals per server CPU-second.
    Scaling(ScalingArgs),
}

#[derive(clap::Args)]
struct SuiteArgs {
    /// Switchboard's server binary.
    #[arg(long)]
    switchboard: PathBuf,
    #[arg(long, default_value = "")]
    switchboard_version: String,
    /// matchbox_server binary; skipped if absent.
    #[arg(long)]
    matchbox: Option<PathBuf>,
    #[arg(long, default_value = "0.15.0")]
    matchbox_version: String,
    /// PeerJS server's `peerjs` launcher; skipped if absent.
    #[arg(long)]
    peerjs: Option<PathBuf>,
    #[arg(long, default_value = "1.0.2")]
    peerjs_version: String,
    /// The core every server is pinned to (`taskset -c`); pin the generator elsewhere.
    #[arg(long)]
    server_core: Option<usize>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    #[arg(long, default_value_t = 128)]
    window: u64,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Total offered rate of the latency runs, signals/s.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Idle connection counts for the memory figures.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Which idle count the summary's bytes_per_idle_conn keys report.
    #[arg(long, default_value_t = 10_000)]
    idle_key: usize,
    /// Output of `bench udp`.
    #[arg(long)]
    udp_json: Option<PathBuf>,
    /// WebRTC figures from the peer/browser tools: a JSON object with rust_connect_p50_ms,
    /// browser_connect_p50_ms, dc_mb_per_s.
    #[arg(long)]
    webrtc_json: Option<PathBuf>,
    /// Output of `bench scaling --out` (relay on 1 core vs 2); its summary goes into the report
    /// and the summary line as relay_scaling.
    #[arg(long)]
    scaling_json: Option<PathBuf>,
    /// The report to write (only between its markers).
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// Every round's raw figures.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct RelayArgs {
    #[arg(long, value_enum, default_value = "switchboard")]
    proto: Proto,
    #[arg(long)]
    addr: SocketAddr,
    /// The second member of each pair joins here (another instance sharing one Redis).
    #[arg(long)]
    addr_b: Option<SocketAddr>,
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    #[arg(long, default_value_t = 128)]
    window: u64,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Paced total rate; absent: as fast as the window allows.
    #[arg(long)]
    rate: Option<f64>,
    /// The server's pid, for CPU per signal.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(clap::Args)]
struct UdpArgs {
    /// Large datagrams: the loopback path's byte-rate ceiling.
    #[arg(long, default_value_t = 64_000)]
    bytes: usize,
    /// SCTP-over-DTLS-sized datagrams: the packet-rate view.
    #[arg(long, default_value_t = 1200)]
    small_bytes: usize,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct IdleArgs {
    /// Switchboard's server binary (release).
    #[arg(long, default_value = "target/release/server")]
    server: PathBuf,
    /// The core(s) to pin the server to (`taskset -c`, e.g. `0` as the suite does, or `0-1`).
    #[arg(long)]
    server_cores: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Joins in parallel (the suite: 64 for its large run).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Extra server flags, e.g. `--resume-grace=5s`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

#[derive(clap::Args)]
struct ScalingArgs {
    /// Switchboard's server binary (release).
    #[arg(long, default_value = "target/release/server")]
    server: PathBuf,
    /// `taskset -c` CPU lists for the server, compared in this order (the last against the
    /// first). Pin this generator with `taskset` too, to a CPU of the last list on a 2-core machine.
    #[arg(long, value_delimiter = ',', default_value = "0,0-1")]
    cpus: Vec<String>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pairs, each a room of its own: spread over every shard.
    #[arg(long, default_value_t = 400)]
    pairs: usize,
    #[arg(long, default_value_t = 128)]
    window: u64,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Extra server flags.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Every round's figures and the summary, as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SoakArgs {
    /// Switchboard's server binary (release).
    #[arg(long, default_value = "target/release/server")]
    server: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Signals each member sends to each of its 3 peers.
    #[arg(long, default_value_t = 100)]
    signals: u64,
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Runs of the whole workload against the same server process (RSS after each: leak check).
    #[arg(long, default_value_t = 2)]
    cycles: usize,
    /// Write the figures into this file's "Soak" section (between markers).
    #[arg(long)]
    doc: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let nofile = server::raise_nofile();
    let result = match cli.command {
        Cmd::Udp(args) => udp_command(args),
        Cmd::Suite(args) => current_thread().and_then(|rt| rt.block_on(suite_command(*args, nofile))),
        Cmd::Relay(args) => current_thread().and_then(|rt| rt.block_on(relay_command(args))),
        Cmd::Scaling(args) => current_thread().and_then(|rt| rt.block_on(scaling_command(args))),
        Cmd::Idle(args) => current_thread().and_then(|rt| rt.block_on(idle_command(args, nofile))),
        Cmd::Soak(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(soak_command(args, nofile))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn udp_command(args: UdpArgs) -> anyhow::Result<()> {
    let result = udp::run(args.bytes, args.small_bytes, args.duration)?;
    let text = serde_json::to_string(&result)?;
    if let Some(out) = args.out {
        std::fs::write(&out, &text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    println!("{text}");
    Ok(())
}

async fn relay_command(args: RelayArgs) -> anyhow::Result<()> {
    if !args.addr.ip().is_loopback() || args.addr_b.is_some_and(|addr| !addr.ip().is_loopback()) {
        bail!("benchmarks only run against loopback addresses");
    }
    let result = load::run(load::LoadConfig {
        proto: args.proto,
        addr: args.addr,
        addr_b: args.addr_b,
        pairs: args.pairs,
        window: args.window,
        warmup: args.warmup,
        measure: args.measure,
        rate: args.rate,
        server_pid: args.pid,
        tag: format!("relay{}", std::process::id()),
    })
    .await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn suite_command(args: SuiteArgs, nofile: u64) -> anyhow::Result<()> {
    let need = args.idle.iter().max().copied().unwrap_or(0) as u64 + 100;
    if nofile < need {
        bail!("open-file limit {nofile} is below the {need} the idle runs need");
    }
    let server_core = args.server_core.map(|core| core.to_string());
    let mut launches = vec![(
        Launch {
            proto: Proto::Switchboard,
            program: args.switchboard.clone(),
            core: server_core.clone(),
            extra: vec!["--no-rate-limit".into()],
        },
        args.switchboard_version.clone(),
    )];
    if let Some(program) = &args.matchbox {
        launches.push((
            Launch {
                proto: Proto::Matchbox,
                program: program.clone(),
                core: server_core.clone(),
                extra: vec![],
            },
            args.matchbox_version.clone(),
        ));
    }
    if let Some(program) = &args.peerjs {
        launches.push((
            Launch {
                proto: Proto::Peerjs,
                program: program.clone(),
                core: server_core.clone(),
                extra: vec![],
            },
            args.peerjs_version.clone(),
        ));
    }
    let config = suite::SuiteConfig {
        launches,
        rounds: args.rounds,
        pairs: args.pairs,
        window: args.window,
        warmup: args.warmup,
        measure: args.measure,
        rate: args.rate,
        idle: args.idle.clone(),
    };
    let mut reports = Vec::new();
    for (launch, version) in &config.launches {
        reports.push(suite::run_server(&config, launch, version).await?);
    }
    let read_json = |path: &Option<PathBuf>| -> anyhow::Result<Option<serde_json::Value>> {
        match path {
            Some(path) if path.exists() => Ok(Some(serde_json::from_str(&std::fs::read_to_string(path)?)?)),
            _ => Ok(None),
        }
    };
    let extra = suite::Extra {
        udp: read_json(&args.udp_json)?.map(serde_json::from_value).transpose()?,
        webrtc: read_json(&args.webrtc_json)?,
        scaling: read_json(&args.scaling_json)?.and_then(|scaling| scaling.get("summary").cloned()),
    };
    let summary = suite::summary(&reports, &extra, args.idle_key);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::json!({ "servers": reports, "summary": summary }))?,
    )?;
    let ctx = suite::ReportContext {
        machine: machine(),
        config: config.clone(),
        idle_key: args.idle_key,
        out_json: args.out.clone(),
    };
    suite::write_doc(&args.doc, &suite::markdown(&reports, &extra, &ctx, &summary), &suite::BENCHMARKS)?;
    println!("{summary}");
    Ok(())
}

async fn scaling_command(args: ScalingArgs) -> anyhow::Result<()> {
    if args.cpus.iter().any(|cpus| cpu_count(cpus).is_none()) {
        bail!("--cpus takes taskset CPU lists such as 0,0-1");
    }
    let config = scaling::ScalingConfig {
        server: args.server,
        cpu_lists: args.cpus,
        rounds: args.rounds,
        pairs: args.pairs,
        window: args.window,
        warmup: args.warmup,
        measure: args.measure,
        extra: args.server_arg,
    };
    let runs = scaling::run(&config).await?;
    let summary = scaling::summary(&runs, config.pairs);
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "runs": runs, "summary": summary }))?;
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    println!("{summary}");
    Ok(())
}

async fn idle_command(args: IdleArgs, nofile: u64) -> anyhow::Result<()> {
    if nofile < args.connections as u64 + 100 {
        bail!("open-file limit {nofile} is too low for {} connections", args.connections);
    }
    let mut extra = vec!["--no-rate-limit".to_owned()];
    extra.extend(args.server_arg.iter().cloned());
    let launch = Launch { proto: Proto::Switchboard, program: args.server, core: args.server_cores, extra };
    for round in 0..args.rounds.max(1) {
        let server = launch.start()?;
        let later = [Duration::from_secs(1), Duration::from_secs(4)];
        let result =
            idle::measure(Proto::Switchboard, &server, args.connections, args.concurrency, &later).await?;
        println!(
            "{}",
            serde_json::json!({ "round": round, "bytes_per_conn": result.bytes_per_conn.round(),
            "rss_before": result.rss_before, "rss_after": result.rss_after, "detail": result.detail })
        );
    }
    Ok(())
}

async fn soak_command(args: SoakArgs, nofile: u64) -> anyhow::Result<()> {
    if nofile < args.connections as u64 + 100 {
        bail!("open-file limit {nofile} is too low for {} connections", args.connections);
    }
    let launch = Launch { proto: Proto::Switchboard, program: args.server, core: None, extra: vec![] };
    let server = launch.start()?;
    let config = soak::SoakConfig {
        connections: args.connections,
        signals: args.signals,
        concurrency: args.concurrency,
        deadline: args.deadline,
    };
    let mut cycles = Vec::new();
    for cycle in 0..args.cycles.max(1) {
        let result = soak::run(&server, &config, cycle).await?;
        println!("{}", serde_json::to_string(&result)?);
        let passed = result.passed;
        cycles.push(result);
        if !passed {
            break;
        }
    }
    drop(server);
    if let Some(doc) = &args.doc {
        soak::write_doc(doc, &cycles, &machine())?;
    }
    if let Some(failed) = cycles.iter().find(|c| !c.passed) {
        bail!("soak failed: {}", failed.first_error.as_deref().unwrap_or("see the figures above"));
    }
    Ok(())
}

/// A description of this machine for the reports.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    // The machine's cores, not this process's: the suite runs under `taskset -c 1`, which
    // `available_parallelism` would report as 1.
    let cores = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| cpu_count(&list))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(0, |n| n.get()));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB RAM, Linux {}, {}, Node {}.",
        kernel.trim(),
        version("rustc"),
        version("node")
    )
}

/// The number of CPUs in a kernel CPU list such as `0-1` or `0,2-5,8`.
pub(crate) fn cpu_count(list: &str) -> Option<usize> {
    list.trim().split(',').try_fold(0, |count, part| {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last) = (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?);
        Some(count + last.checked_sub(first)? + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::cpu_count;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_count("0-1\n"), Some(2));
        assert_eq!(cpu_count("0"), Some(1));
        assert_eq!(cpu_count("0,2-5,8"), Some(6));
        assert_eq!(cpu_count(""), None);
        assert_eq!(cpu_count("3-1"), None);
    }
}
