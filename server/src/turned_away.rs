//! Requests refused before the WebSocket upgrade, counted rather than logged one line each: a
//! flood of cheap refusals must not become a flood of log lines. At most one summary line per
//! [`SUMMARY_INTERVAL`], and `switchboard_refused_total{reason=...}` in `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A foreign Origin asked for `/ws` (403).
    Origin,
    /// A Host that is not this server's (403), or none (400).
    Host,
    /// Over `--max-connections-per-ip` (429, or closed unanswered).
    PerIp,
    /// Over `--max-connections` (503, or closed unanswered).
    Total,
}

impl Reason {
    const ALL: [Reason; 4] = [Reason::Origin, Reason::Host, Reason::PerIp, Reason::Total];

    fn label(self) -> &'static str {
        match self {
            Reason::Origin => "origin",
            Reason::Host => "host",
            Reason::PerIp => "per_ip",
            Reason::Total => "total",
        }
    }
}

#[derive(Debug, Default)]
pub struct TurnedAway {
    counts: [AtomicU64; 4],
}

impl TurnedAway {
    pub fn count(&self, reason: Reason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> [u64; 4] {
        Reason::ALL.map(|reason| self.counts[reason as usize].load(Ordering::Relaxed))
    }

    /// The Prometheus text for `/metrics`.
    pub fn metrics(&self) -> String {
        let mut text = String::from(
            "# HELP switchboard_refused_total Requests refused before the upgrade, by reason.\n\
             # TYPE switchboard_refused_total counter\n",
        );
        for (reason, total) in Reason::ALL.iter().zip(self.totals()) {
            let _ = writeln!(text, "switchboard_refused_total{{reason=\"{}\"}} {total}", reason.label());
        }
        text
    }

    /// Logs one line per [`SUMMARY_INTERVAL`] in which anything was refused, until `stop`.
    pub async fn log_summaries(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
        tick.tick().await;
        let mut before = self.totals();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.totals();
            let since: Vec<u64> = now.iter().zip(before).map(|(now, before)| now - before).collect();
            if since.iter().any(|n| *n > 0) {
                tracing::info!(
                    origin = since[0],
                    host = since[1],
                    per_ip = since[2],
                    total = since[3],
                    "refused requests in the last {}s",
                    SUMMARY_INTERVAL.as_secs()
                );
            }
            before = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_metrics_by_reason() {
        let turned_away = TurnedAway::default();
        turned_away.count(Reason::PerIp);
        turned_away.count(Reason::PerIp);
        turned_away.count(Reason::Host);
        let text = turned_away.metrics();
        assert!(text.contains("switchboard_refused_total{reason=\"per_ip\"} 2\n"), "{text}");
        assert!(text.contains("switchboard_refused_total{reason=\"host\"} 1\n"), "{text}");
        assert!(text.contains("switchboard_refused_total{reason=\"origin\"} 0\n"), "{text}");
        assert!(text.contains("switchboard_refused_total{reason=\"total\"} 0\n"), "{text}");
    }
}
