//! The three signaling protocols the load generator speaks, reduced to what a benchmark needs:
//! where to connect, how to join, how to address a signal, and how to recognise what comes back.
//!
//! Every relayed signal carries a marker `seq=NNNNNNNNNN t=NNNNNNNNNNNNNNNN` (sequence number
//! and send time in µs since the run's epoch) inside the SDP or candidate string, where any
//! server relays it untouched; the receiver finds it without parsing the whole JSON.

use std::net::SocketAddr;
use std::sync::LazyLock;

use clap::ValueEnum;
use memchr::memmem;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// Switchboard: `GET /ws`, `join`, `signal` with `to`.
    Switchboard,
    /// matchbox_server 0.15: `GET /<room>`, `IdAssigned` on connect, `Signal` with `receiver`.
    Matchbox,
    /// PeerJS server 1.x: `GET /peerjs?key&id&token`, `OPEN`, typed messages with `dst`.
    Peerjs,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Switchboard => "Switchboard",
            Proto::Matchbox => "matchbox_server",
            Proto::Peerjs => "PeerJS server",
        }
    }

    /// The WebSocket URL for a client that wants to be in `room`. PeerJS has no rooms and lets
    /// the client pick its id, `client_id`.
    pub fn url(self, addr: SocketAddr, room: &str, client_id: &str) -> String {
        match self {
            Proto::Switchboard => format!("ws://{addr}/ws"),
            Proto::Matchbox => format!("ws://{addr}/{room}"),
            Proto::Peerjs => format!("ws://{addr}/peerjs?key=peerjs&id={client_id}&token=t{client_id}"),
        }
    }

    /// The frame to send after the upgrade to join `room`, if the protocol has one.
    pub fn join_frame(self, room: &str) -> Option<String> {
        match self {
            Proto::Switchboard => Some(format!(r#"{{"type":"join","room":"{room}"}}"#)),
            Proto::Matchbox | Proto::Peerjs => None,
        }
    }

    /// Some(own id) if `text` is the server's answer that makes this client a member.
    pub fn joined(self, text: &str, client_id: &str) -> Option<String> {
        let value: Value = serde_json::from_str(text).ok()?;
        match self {
            Proto::Switchboard => {
                (value["type"] == "welcome").then(|| value["id"].as_str().map(str::to_owned)).flatten()
            }
            Proto::Matchbox => value["IdAssigned"].as_str().map(str::to_owned),
            Proto::Peerjs => (value["type"] == "OPEN").then(|| client_id.to_owned()),
        }
    }

    /// Whether `text` is a relayed signal (as opposed to presence or error messages).
    pub fn is_signal(self, text: &[u8]) -> bool {
        match self {
            Proto::Switchboard => text.starts_with(br#"{"type":"signal""#),
            Proto::Matchbox => text.starts_with(br#"{"Signal""#),
            Proto::Peerjs => {
                memmem::find(text, br#""type":"CANDIDATE""#).is_some()
                    || memmem::find(text, br#""type":"OFFER""#).is_some()
            }
        }
    }

    /// Whether `text` is an error from the server (always a failure in a benchmark).
    pub fn is_error(self, text: &[u8]) -> bool {
        match self {
            Proto::Switchboard => text.starts_with(br#"{"type":"error""#),
            Proto::Matchbox => false,
            Proto::Peerjs => {
                memmem::find(text, br#""type":"ERROR""#).is_some()
                    || memmem::find(text, br#""type":"ID-TAKEN""#).is_some()
            }
        }
    }

    /// A signal frame to `to`: every 16th an SDP-sized offer, the others ~300-byte candidates,
    /// shaped as each server's own clients send them.
    pub fn signal_frame(self, to: &str, seq: u64, t_us: u64) -> String {
        let marker = format!("seq={seq:010} t={t_us:016}");
        let offer = seq.is_multiple_of(16);
        match (self, offer) {
            (Proto::Switchboard, true) => {
                format!(
                    r#"{{"type":"signal","to":"{to}","signal":{{"type":"offer","sdp":"{}"}}}}"#,
                    sdp(&marker)
                )
            }
            (Proto::Switchboard, false) => format!(
                r#"{{"type":"signal","to":"{to}","signal":{{"type":"candidate","candidate":{{"candidate":"{}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"x7Qa"}}}}}}"#,
                candidate(&marker)
            ),
            // matchbox_socket sends the SDP as a string and the candidate as a JSON string of
            // RTCIceCandidateInit.
            (Proto::Matchbox, true) => {
                format!(r#"{{"Signal":{{"receiver":"{to}","data":{{"Offer":"{}"}}}}}}"#, sdp(&marker))
            }
            (Proto::Matchbox, false) => format!(
                r#"{{"Signal":{{"receiver":"{to}","data":{{"IceCandidate":"{{\"candidate\":\"{}\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":\"x7Qa\"}}"}}}}}}"#,
                candidate(&marker)
            ),
            // PeerJS clients wrap the browser's objects in a payload with the connection's id.
            (Proto::Peerjs, true) => format!(
                r#"{{"type":"OFFER","payload":{{"sdp":{{"type":"offer","sdp":"{}"}},"type":"data","connectionId":"dc_bench"}},"dst":"{to}"}}"#,
                sdp(&marker)
            ),
            (Proto::Peerjs, false) => format!(
                r#"{{"type":"CANDIDATE","payload":{{"candidate":{{"candidate":"{}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"x7Qa"}},"type":"data","connectionId":"dc_bench"}},"dst":"{to}"}}"#,
                candidate(&marker)
            ),
        }
    }
}

/// The sequence number and send time carried by a relayed signal.
pub fn marker(text: &[u8]) -> Option<(u64, u64)> {
    static FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new("seq="));
    let rest = text.get(FINDER.find(text)? + 4..)?;
    Some((decimal(rest.get(..10)?)?, decimal(rest.get(13..29)?)?))
}

fn decimal(digits: &[u8]) -> Option<u64> {
    digits
        .iter()
        .try_fold(0_u64, |value, &digit| digit.is_ascii_digit().then(|| value * 10 + u64::from(digit - b'0')))
}

/// A data-channel-only offer as a browser writes it (~1 KB), JSON-escaped, carrying `marker`.
fn sdp(marker: &str) -> String {
    format!(
        "v=0\\r\\no=- 4215775240449105457 2 IN IP4 127.0.0.1 {marker}\\r\\ns=-\\r\\nt=0 0\\r\\n\
         a=group:BUNDLE 0\\r\\na=extmap-allow-mixed\\r\\na=msid-semantic: WMS\\r\\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\\r\\nc=IN IP4 0.0.0.0\\r\\n\
         a=candidate:2999745851 1 udp 2122260223 192.168.1.23 54321 typ host generation 0 network-id 1 network-cost 10\\r\\n\
         a=candidate:1425424099 1 udp 1686052607 203.0.113.7 54321 typ srflx raddr 192.168.1.23 rport 54321 generation 0\\r\\n\
         a=candidate:4233069003 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active generation 0 network-id 1\\r\\n\
         a=ice-ufrag:x7Qa\\r\\na=ice-pwd:Rk1QpCm3WbYvQe8sKzL0uN2d\\r\\na=ice-options:trickle\\r\\n\
         a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\\r\\n\
         a=setup:actpass\\r\\na=mid:0\\r\\na=sctp-port:5000\\r\\na=max-message-size:262144\\r\\n\
         a=candidate:3817429831 1 udp 41885439 198.51.100.20 3478 typ relay raddr 203.0.113.7 rport 54321 generation 0\\r\\n"
    )
}

/// An ICE candidate string (~230 bytes; ~300 with its JSON envelope) carrying `marker`.
fn candidate(marker: &str) -> String {
    format!(
        "candidate:1425424099 1 udp 1686052607 203.0.113.7 54321 typ srflx raddr 192.168.1.23 \
         rport 54321 generation 0 ufrag x7Qa network-id 1 network-cost 10 {marker} pad=0000000000"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_is_json_and_carries_its_marker() {
        for proto in [Proto::Switchboard, Proto::Matchbox, Proto::Peerjs] {
            for seq in [0, 1, 15, 16, 1_234_567] {
                let frame = proto.signal_frame("peer-1", seq, 987_654);
                let _: Value = serde_json::from_str(&frame).expect("valid JSON");
                assert_eq!(marker(frame.as_bytes()), Some((seq, 987_654)), "{proto:?} {seq}");
            }
        }
    }

    #[test]
    fn sizes_are_realistic() {
        let candidate = Proto::Switchboard.signal_frame("p", 1, 0).len();
        let offer = Proto::Switchboard.signal_frame("p", 0, 0).len();
        assert!((250..400).contains(&candidate), "candidate frame {candidate} bytes");
        assert!((900..1600).contains(&offer), "offer frame {offer} bytes");
    }

    #[test]
    fn recognises_joins_and_relayed_signals() {
        let welcome = r#"{"type":"welcome","id":"abc","room":"r","peers":[]}"#;
        assert_eq!(Proto::Switchboard.joined(welcome, "").as_deref(), Some("abc"));
        assert_eq!(Proto::Matchbox.joined(r#"{"IdAssigned":"u-1"}"#, "").as_deref(), Some("u-1"));
        assert_eq!(Proto::Peerjs.joined(r#"{"type":"OPEN"}"#, "me").as_deref(), Some("me"));
        assert!(Proto::Switchboard.is_signal(br#"{"type":"signal","from":"a","signal":{}}"#));
        assert!(!Proto::Switchboard.is_signal(br#"{"type":"peer_joined","peer":{}}"#));
        assert!(Proto::Matchbox.is_signal(br#"{"Signal":{"sender":"a","data":{}}}"#));
        assert!(!Proto::Matchbox.is_signal(br#"{"NewPeer":"a"}"#));
    }
}
