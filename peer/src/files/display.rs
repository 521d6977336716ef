//! How file events are shown: the `--json` events, the human lines, and the terminal progress
//! bars of human output.

use std::collections::HashMap;
use std::time::Duration;

use protocol::PeerId;

use super::{FileEvent, TransferId};

/// The `--json` line of a file event (INTERFACES.md); `None` for progress, which is only drawn.
pub fn json_event(event: &FileEvent) -> Option<serde_json::Value> {
    use serde_json::json;
    match event {
        FileEvent::Started { .. } | FileEvent::Progress { .. } => None,
        FileEvent::Received { peer, file, .. } => Some(json!({
            "event": "file_received", "from": peer, "name": file.name, "size": file.size,
            "sha256": file.sha256, "path": file.path.display().to_string(),
        })),
        FileEvent::Failed { peer, name, error, .. } => {
            Some(json!({"event": "file_failed", "from": peer, "name": name, "error": error}))
        }
        FileEvent::Sent { peer, name, size, error: None, .. } => {
            Some(json!({"event": "file_sent", "to": peer, "name": name, "size": size, "ok": true}))
        }
        FileEvent::Sent { peer, name, size, error: Some(error), .. } => Some(json!({
            "event": "file_sent", "to": peer, "name": name, "size": size, "ok": false, "error": error,
        })),
    }
}

/// The human line of a file event, `who` being the remote's display form; `None` for progress.
/// With `bars`, starts and progress are drawn as bars instead of printed.
pub fn human_line(event: &FileEvent, who: &str, bars: Option<&mut ProgressBars>) -> Option<String> {
    match event {
        FileEvent::Started { transfer, outgoing, name, size, .. } => {
            let (verb, dir) = if *outgoing { ("sending", "to") } else { ("receiving", "from") };
            match bars {
                Some(bars) => {
                    bars.start(*transfer, format!("{name} {dir} {who}"), *size);
                    None
                }
                None => Some(format!("* {verb} {name} ({}) {dir} {who}", format_size(*size))),
            }
        }
        FileEvent::Progress { transfer, bytes } => {
            if let Some(bars) = bars {
                bars.update(*transfer, *bytes);
            }
            None
        }
        FileEvent::Received { transfer, file, elapsed, .. } => {
            if let Some(bars) = bars {
                bars.finish(*transfer);
            }
            Some(format!(
                "* received {} ({}) from {who} in {:.1} s, {}; sha256 {}; saved as {}",
                file.name,
                format_size(file.size),
                elapsed.as_secs_f64(),
                format_rate(file.size, *elapsed),
                file.sha256,
                file.path.display()
            ))
        }
        FileEvent::Failed { transfer, name, error, .. } => {
            if let Some(bars) = bars {
                bars.finish(*transfer);
            }
            Some(format!("! receiving {name:?} from {who} failed: {error}"))
        }
        FileEvent::Sent { transfer, name, size, error, elapsed, .. } => {
            if let Some(bars) = bars {
                bars.finish(*transfer);
            }
            Some(match error {
                None => format!(
                    "* sent {name} ({}) to {who} in {:.1} s, {}; verified by the receiver",
                    format_size(*size),
                    elapsed.as_secs_f64(),
                    format_rate(*size, *elapsed)
                ),
                Some(error) => format!("! sending {name} to {who} failed: {error}"),
            })
        }
    }
}

impl FileEvent {
    /// The remote peer's id, when the event names one.
    pub fn peer(&self) -> Option<&PeerId> {
        match self {
            FileEvent::Started { peer, .. }
            | FileEvent::Received { peer, .. }
            | FileEvent::Failed { peer, .. }
            | FileEvent::Sent { peer, .. } => Some(peer),
            FileEvent::Progress { .. } => None,
        }
    }
}

/// `12.3 MB/s` for `bytes` moved in `elapsed`.
pub fn format_rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", indicatif::HumanBytes((bytes as f64 / secs) as u64))
}

/// `1.50 MiB`.
pub fn format_size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// One progress bar per transfer on the terminal (stderr), for human output.
pub struct ProgressBars {
    multi: indicatif::MultiProgress,
    bars: HashMap<TransferId, indicatif::ProgressBar>,
}

impl std::fmt::Debug for ProgressBars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressBars").field("bars", &self.bars.len()).finish()
    }
}

impl Default for ProgressBars {
    fn default() -> Self {
        ProgressBars::new()
    }
}

impl ProgressBars {
    pub fn new() -> ProgressBars {
        ProgressBars {
            multi: indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()),
            bars: HashMap::new(),
        }
    }

    pub fn start(&mut self, transfer: TransferId, label: String, size: u64) {
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = self.multi.add(indicatif::ProgressBar::new(size).with_style(style).with_message(label));
        self.bars.insert(transfer, bar);
    }

    pub fn update(&mut self, transfer: TransferId, bytes: u64) {
        if let Some(bar) = self.bars.get(&transfer) {
            bar.set_position(bytes);
        }
    }

    pub fn finish(&mut self, transfer: TransferId) {
        if let Some(bar) = self.bars.remove(&transfer) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    /// Runs `f` (which prints to stdout) with the bars hidden, so lines and bars don't mix.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}
