//! Relay throughput against the cores the server may use (issue 20: "no single lock on every
//! relay"). The same saturated relay workload as the suite (many pairs, each pair a room of its
//! own, so the rooms spread over every shard) against a fresh server pinned to each CPU list in
//! turn, interleaved over rounds so that a drift in the machine's speed hits every CPU list alike.
//!
//! On a 2-core machine the generator cannot have a core of its own while the server has two: it
//! stays on its core (the caller pins it) and shares that core with the server's second worker.
//! So the figures to compare are the server's own: its CPU use in cores (utime + stime over the
//! measured window) and the signals it relays per second of that CPU. A server that scales
//! relays more signals per second in proportion to the CPU it gets, at about the same signals per
//! CPU-second; one serialised on a lock would stay near one core's worth of signals whatever the
//! CPU list, or burn the second core waiting.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::load::{self, LoadConfig, LoadResult};
use crate::proto::Proto;
use crate::server::Launch;
use crate::stats::median;

#[derive(Debug, Clone)]
pub struct ScalingConfig {
    /// Switchboard's server binary.
    pub server: std::path::PathBuf,
    /// `taskset -c` CPU lists, e.g. `0` and `0-1`.
    pub cpu_lists: Vec<String>,
    pub rounds: usize,
    pub pairs: usize,
    pub window: u64,
    pub warmup: Duration,
    pub measure: Duration,
    /// Extra server flags besides `--no-rate-limit`.
    pub extra: Vec<String>,
}

/// One CPU list's rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuListRuns {
    pub cpus: String,
    /// The CPUs in the list: what tokio's worker count and the shard count follow.
    pub cpu_count: usize,
    pub rounds: Vec<Round>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Round {
    pub signals_per_s: f64,
    pub server_cores: f64,
    /// Signals relayed per second of server CPU (utime + stime).
    pub signals_per_cpu_s: f64,
    pub generator_cores: f64,
    /// The server's threads while it relayed: the main thread and tokio's workers.
    pub server_threads: u64,
    pub lost: u64,
    pub errors: u64,
    /// The 1-minute load average when the round started.
    pub load: f64,
}

pub async fn run(config: &ScalingConfig) -> anyhow::Result<Vec<CpuListRuns>> {
    let mut runs: Vec<CpuListRuns> = config
        .cpu_lists
        .iter()
        .map(|cpus| CpuListRuns {
            cpus: cpus.clone(),
            cpu_count: crate::cpu_count(cpus).unwrap_or(0),
            rounds: Vec::new(),
        })
        .collect();
    for round in 0..config.rounds.max(1) {
        for runs in &mut runs {
            let mut extra = vec!["--no-rate-limit".to_owned()];
            extra.extend(config.extra.iter().cloned());
            let launch = Launch {
                proto: Proto::Switchboard,
                program: config.server.clone(),
                core: Some(runs.cpus.clone()),
                extra,
            };
            let server = launch.start()?;
            let load = load_average();
            // Read while the relay runs (tokio's workers follow the CPU list).
            let (pid, warmup) = (server.pid, config.warmup);
            let threads = std::thread::spawn(move || {
                std::thread::sleep(warmup + Duration::from_millis(500));
                server_threads(pid)
            });
            let relay = load::run(LoadConfig {
                proto: Proto::Switchboard,
                addr: server.addr,
                addr_b: None,
                pairs: config.pairs,
                window: config.window,
                warmup: config.warmup,
                measure: config.measure,
                rate: None,
                server_pid: Some(server.pid),
                tag: format!("scale{round}"),
            })
            .await
            .with_context(|| format!("relay with the server on CPUs {}", runs.cpus))?;
            let threads = threads.join().unwrap_or(0);
            let round = round_of(&relay, threads, load);
            eprintln!(
                "bench: scaling round {}: server on CPUs {} ({} threads): {:.0} signals/s, {:.2} server cores, {:.0} signals per CPU-second, generator {:.2} cores, load {:.2}",
                runs.rounds.len(),
                runs.cpus,
                round.server_threads,
                round.signals_per_s,
                round.server_cores,
                round.signals_per_cpu_s,
                round.generator_cores,
                round.load
            );
            runs.rounds.push(round);
        }
    }
    Ok(runs)
}

fn round_of(relay: &LoadResult, server_threads: u64, load: f64) -> Round {
    let server_cores = relay.server_cores.unwrap_or(f64::NAN);
    Round {
        signals_per_s: relay.msgs_per_s,
        server_cores,
        signals_per_cpu_s: relay.server_cpu_us_per_msg.map_or(f64::NAN, |us| 1e6 / us),
        generator_cores: relay.generator_cores,
        server_threads,
        lost: relay.lost,
        errors: relay.errors,
        load,
    }
}

fn server_threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The JSON summary (`relay_scaling` in scripts/bench.sh's line): medians per CPU list, and the
/// last list against the first: how much more it relayed, how much more CPU the server got, and
/// the ratio of the two (1.0: signals/s grew exactly with the server's CPU).
pub fn summary(runs: &[CpuListRuns], pairs: usize) -> Value {
    let med = |runs: &CpuListRuns, f: fn(&Round) -> f64| {
        median(&runs.rounds.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let round = |x: f64, digits: i32| {
        let scale = 10f64.powi(digits);
        if x.is_finite() { json!((x * scale).round() / scale) } else { Value::Null }
    };
    let mut by_cpus = serde_json::Map::new();
    for runs in runs {
        by_cpus.insert(
            runs.cpu_count.to_string(),
            json!({
                "cpus": runs.cpus,
                "signals_per_s": round(med(runs, |r| r.signals_per_s), 0),
                "server_cores": round(med(runs, |r| r.server_cores), 2),
                "signals_per_cpu_s": round(med(runs, |r| r.signals_per_cpu_s), 0),
                "generator_cores": round(med(runs, |r| r.generator_cores), 2),
                "rounds": runs.rounds.len(),
                "lost": runs.rounds.iter().map(|r| r.lost).sum::<u64>(),
                "errors": runs.rounds.iter().map(|r| r.errors).sum::<u64>(),
            }),
        );
    }
    let (speedup, cpu_ratio) = match (runs.first(), runs.last()) {
        (Some(first), Some(last)) if runs.len() > 1 => (
            med(last, |r| r.signals_per_s) / med(first, |r| r.signals_per_s),
            med(last, |r| r.server_cores) / med(first, |r| r.server_cores),
        ),
        _ => (f64::NAN, f64::NAN),
    };
    json!({
        "pairs": pairs,
        "by_cpus": by_cpus,
        "speedup": round(speedup, 2),
        "server_cpu_ratio": round(cpu_ratio, 2),
        "scaling_efficiency": round(speedup / cpu_ratio, 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(cpus: &str, count: usize, rounds: &[(f64, f64)]) -> CpuListRuns {
        CpuListRuns {
            cpus: cpus.to_owned(),
            cpu_count: count,
            rounds: rounds
                .iter()
                .map(|&(rate, cores)| Round {
                    signals_per_s: rate,
                    server_cores: cores,
                    signals_per_cpu_s: rate / cores,
                    generator_cores: 0.3,
                    server_threads: 2,
                    lost: 0,
                    errors: 0,
                    load: 0.5,
                })
                .collect(),
        }
    }

    #[test]
    fn summary_compares_the_last_cpu_list_with_the_first() {
        let one = runs("0", 1, &[(500_000.0, 1.0), (400_000.0, 0.9), (520_000.0, 1.0)]);
        let two = runs("0-1", 2, &[(800_000.0, 1.7), (900_000.0, 1.8), (700_000.0, 1.6)]);
        let summary = summary(&[one, two], 400);
        assert_eq!(summary["by_cpus"]["1"]["signals_per_s"], json!(500_000.0));
        assert_eq!(summary["by_cpus"]["2"]["server_cores"], json!(1.7));
        assert_eq!(summary["by_cpus"]["2"]["cpus"], json!("0-1"));
        assert_eq!(summary["speedup"], json!(1.6));
        assert_eq!(summary["server_cpu_ratio"], json!(1.7));
        assert_eq!(summary["scaling_efficiency"], json!(0.94));
    }

    #[test]
    fn one_cpu_list_has_no_ratio() {
        let summary = summary(&[runs("0", 1, &[(1.0, 1.0)])], 1);
        assert_eq!(summary["speedup"], Value::Null);
        assert_eq!(summary["by_cpus"]["1"]["rounds"], json!(1));
    }
}
