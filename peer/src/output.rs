//! What the user sees on stdout: one line per [`Event`], human-readable or `--json`
//! (INTERFACES.md). Logs go to stderr through `tracing`, never here.
//!
//! Human lines carry text other people chose (chat lines, names, refusal reasons). A terminal
//! obeys control characters in it: ESC sequences retitle the window or move the cursor, CR and
//! LF let a chat line fake a line of ours (`* alice left`). So every human line goes through
//! [`printable`] before it is written; `--json` needs nothing (JSON escapes controls itself).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use protocol::{PeerId, PeerInfo};
use serde_json::json;

use crate::files::{self, FileEvent, ProgressBars};
use crate::media::{self, MediaEvent};

/// Something worth telling the user.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Welcome {
        id: PeerId,
        room: String,
        peers: Vec<PeerInfo>,
        resumed: bool,
    },
    PeerJoined {
        id: PeerId,
        name: String,
    },
    ChannelOpen {
        peer: PeerId,
    },
    Message {
        from: PeerId,
        text: String,
    },
    ChannelClosed {
        peer: PeerId,
    },
    PeerLeft {
        id: PeerId,
    },
    /// Signaling was lost; the data channels keep working while it reconnects.
    Reconnecting {
        reason: String,
    },
    Error {
        message: String,
    },
    /// A file transfer started, progressed or ended (see [`crate::files`]).
    File(FileEvent),
    /// The candidate pair types ICE selected toward `peer` (`host`, `srflx`, `prflx`, `relay`).
    IceSelected {
        peer: PeerId,
        local: String,
        remote: String,
    },
    /// A remote track started or ended (see [`crate::media`]).
    Media(MediaEvent),
}

/// Renders events to stdout.
#[derive(Debug)]
pub struct Output {
    json: bool,
    /// Display names by id, for human output.
    names: HashMap<PeerId, String>,
    /// File transfer progress bars, in human output on a terminal.
    bars: Option<ProgressBars>,
}

impl Output {
    pub fn new(json: bool) -> Output {
        let bars = (!json && std::io::stderr().is_terminal()).then(ProgressBars::new);
        Output { json, names: HashMap::new(), bars }
    }

    /// Prints `event` as one line and flushes, so that a reader sees it at once.
    pub fn emit(&mut self, event: &Event) {
        let line = match event {
            // Progress has no line of its own: it is drawn, or not shown.
            Event::File(file) if self.json => files::json_event(file).map(|v| v.to_string()),
            Event::File(file) => {
                let who = file.peer().map(|id| self.who(id)).unwrap_or_default();
                files::human_line(file, &who, self.bars.as_mut()).map(|line| printable(&line).into_owned())
            }
            Event::Media(m) if self.json => media::json_event(m).map(|v| v.to_string()),
            Event::Media(m) => media::human_line(m, &m.peer().map(|id| self.who(id)).unwrap_or_default()),
            _ if self.json => Some(Self::json_line(event)),
            _ => Some(printable(&self.human_line(event)).into_owned()),
        };
        let Some(line) = line else { return };
        let print = || {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout (the reader went away) is no reason to stop chatting.
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        };
        // Lines go above the progress bars, not through them.
        match &self.bars {
            Some(bars) => bars.suspend(print),
            None => print(),
        }
    }

    /// The `--json` line for `event`.
    pub fn json_line(event: &Event) -> String {
        let value = match event {
            Event::Welcome { id, room, peers, resumed } => json!({
                "event": "welcome", "id": id, "room": room, "peers": peers, "resumed": resumed,
            }),
            Event::PeerJoined { id, name } => json!({"event": "peer_joined", "id": id, "name": name}),
            Event::ChannelOpen { peer } => json!({"event": "channel_open", "peer": peer}),
            Event::Message { from, text } => json!({"event": "message", "from": from, "text": text}),
            Event::ChannelClosed { peer } => json!({"event": "channel_closed", "peer": peer}),
            Event::PeerLeft { id } => json!({"event": "peer_left", "id": id}),
            Event::Reconnecting { reason } => json!({"event": "reconnecting", "reason": reason}),
            Event::Error { message } => json!({"event": "error", "message": message}),
            Event::IceSelected { peer, local, remote } => {
                json!({"event": "ice_selected", "peer": peer, "local": local, "remote": remote})
            }
            Event::File(file) => files::json_event(file).unwrap_or(serde_json::Value::Null),
            Event::Media(m) => media::json_event(m).unwrap_or(serde_json::Value::Null),
        };
        value.to_string()
    }

    /// How a remote is named in human lines (and progress bars): made printable here too,
    /// since a bar's label does not pass through [`Output::emit`]'s line.
    fn who(&self, id: &PeerId) -> String {
        let who = match self.names.get(id) {
            Some(name) if *id != **name => format!("{name} ({id})"),
            _ => id.to_string(),
        };
        printable(&who).into_owned()
    }

    fn human_line(&mut self, event: &Event) -> String {
        match event {
            Event::Welcome { id, room, peers, resumed } => {
                for p in peers {
                    self.names.insert(PeerId::from(p.id.as_str()), p.name.clone());
                }
                let verb = if *resumed { "back in" } else { "joined" };
                let others: Vec<String> =
                    peers.iter().map(|p| self.who(&PeerId::from(p.id.as_str()))).collect();
                if others.is_empty() {
                    format!("* {verb} room {room} as {id}; nobody else here yet")
                } else {
                    format!("* {verb} room {room} as {id}; here: {}", others.join(", "))
                }
            }
            Event::PeerJoined { id, name } => {
                self.names.insert(id.clone(), name.clone());
                format!("* {} joined", self.who(id))
            }
            Event::ChannelOpen { peer } => format!("* connected to {}", self.who(peer)),
            Event::Message { from, text } => {
                let name = self.names.get(from).cloned().unwrap_or_else(|| from.to_string());
                format!("<{name}> {text}")
            }
            Event::ChannelClosed { peer } => format!("* connection to {} closed", self.who(peer)),
            Event::PeerLeft { id } => {
                let line = format!("* {} left", self.who(id));
                self.names.remove(id);
                line
            }
            Event::Reconnecting { reason } => format!("* signaling lost ({reason}); reconnecting..."),
            Event::Error { message } => format!("! {message}"),
            Event::IceSelected { peer, local, remote } => {
                format!("* path to {}: {local} -> {remote}", self.who(peer))
            }
            Event::File(file) => {
                let who = file.peer().map(|id| self.who(id)).unwrap_or_default();
                files::human_line(file, &who, None).unwrap_or_default()
            }
            Event::Media(m) => {
                media::human_line(m, &m.peer().map(|id| self.who(id)).unwrap_or_default()).unwrap_or_default()
            }
        }
    }
}

/// `text` with every character a terminal would act on made visible: C0 controls, DEL and C1
/// controls (ESC, BEL, CR, LF, CSI U+009B, ...) become `\x1b`, `\n`, `\r`, `\t`, `\u{9b}`;
/// bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069), which reorder what
/// follows on the line (a name could otherwise pass for another), become `\u{202e}` and the like.
/// A backslash stays as it is: a line that already reads `\x1b` is not an escape sequence.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // `is_control` is Unicode's Cc: U+0000-U+001F, U+007F-U+009F.
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_events_have_the_interface_shapes() {
        let welcome = Event::Welcome {
            id: "a".into(),
            room: "lobby".into(),
            peers: vec![PeerInfo { id: "b".into(), name: "bob".into() }],
            resumed: false,
        };
        let v: serde_json::Value = serde_json::from_str(&Output::json_line(&welcome)).unwrap_or_default();
        assert_eq!(
            v,
            json!({"event":"welcome","id":"a","room":"lobby","peers":[{"id":"b","name":"bob"}],"resumed":false})
        );
        let message = Event::Message { from: "b".into(), text: "hi \"there\"\n".into() };
        let v: serde_json::Value = serde_json::from_str(&Output::json_line(&message)).unwrap_or_default();
        assert_eq!(v, json!({"event":"message","from":"b","text":"hi \"there\"\n"}));
    }

    #[test]
    fn human_lines_use_names() {
        let mut out = Output::new(false);
        out.human_line(&Event::PeerJoined { id: "b1".into(), name: "bob".into() });
        assert_eq!(out.human_line(&Event::Message { from: "b1".into(), text: "hi".into() }), "<bob> hi");
        assert_eq!(out.human_line(&Event::PeerLeft { id: "b1".into() }), "* bob (b1) left");
    }

    #[test]
    fn remote_control_characters_are_shown_not_obeyed() {
        // The attack from issue 13: retitle the terminal, then fake a line of ours.
        assert_eq!(printable("\u{1b}]0;pwned\u{7}\n* alice left"), "\\x1b]0;pwned\\x07\\n* alice left");
        assert_eq!(printable("a\rb\tc\u{7f}\u{9b}2J\u{0}"), "a\\rb\\tc\\x7f\\u{9b}2J\\x00");
        assert_eq!(printable("bob\u{202e}evil\u{2069}"), "bob\\u{202e}evil\\u{2069}");
        assert!(matches!(printable("plain text, é, 日本, \\x1b stays"), Cow::Borrowed(_)));
    }

    #[test]
    fn names_are_printable_in_every_line() {
        let mut out = Output::new(false);
        out.human_line(&Event::PeerJoined { id: "b1".into(), name: "bo\u{1b}[2Jb".into() });
        assert_eq!(out.who(&PeerId::from("b1")), "bo\\x1b[2Jb (b1)");
    }
}
