//! Keeping the DTLS role that the first negotiation settled (PROTOCOL.md, "Audio and video").
//!
//! webrtc-rs 0.21 answers every offer with `a=setup:active`, also a re-offer on a connection
//! where it was the first offerer and the remote's answer made it the DTLS server. Chromium
//! refuses such an answer ("Failed to set SSL role for the transport") and every later
//! renegotiation with this peer fails, so a camera never reaches it. webrtc-rs itself does not
//! read the role back from a later local answer (its DTLS transport started once), and refuses a
//! local answer other than the one it made, so the settled role goes into the text we send: that
//! is the whole fix.

/// Our side of the DTLS handshake, as `a=setup` says it in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `active`: the DTLS client.
    Active,
    /// `passive`: the DTLS server.
    Passive,
}

impl Setup {
    fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
        }
    }

    fn opposite(self) -> Setup {
        match self {
            Setup::Active => Setup::Passive,
            Setup::Passive => Setup::Active,
        }
    }
}

/// The `a=setup` of the first media section that has an explicit role (`actpass`, which only
/// an offer carries, settles nothing).
fn setup_of(sdp: &str) -> Option<Setup> {
    sdp.lines().find_map(|line| match line.trim_end().strip_prefix("a=setup:") {
        Some("active") => Some(Setup::Active),
        Some("passive") => Some(Setup::Passive),
        _ => None,
    })
}

/// Our role once the remote answered our first offer: the opposite of theirs.
pub fn ours_from_remote_answer(sdp: &str) -> Option<Setup> {
    setup_of(sdp).map(Setup::opposite)
}

/// Our role as our own first answer states it.
pub fn ours_from_local_answer(sdp: &str) -> Option<Setup> {
    setup_of(sdp)
}

/// `answer` with every `a=setup` line saying `ours`; the rest of the text is kept as it is,
/// line endings included.
pub fn keep_role(answer: &str, ours: Setup) -> String {
    let mut out = String::with_capacity(answer.len() + 8);
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("a=setup:") {
            out.push_str("a=setup:");
            out.push_str(ours.as_str());
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=setup:active\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:active\r\na=mid:1\r\n";

    #[test]
    fn a_reanswer_takes_the_settled_passive_role_in_every_section() {
        let kept = keep_role(ANSWER, Setup::Passive);
        assert_eq!(kept, ANSWER.replace("a=setup:active", "a=setup:passive"));
        assert_eq!(kept.matches("a=setup:passive\r\n").count(), 2);
    }

    #[test]
    fn an_answer_already_in_the_settled_role_is_unchanged() {
        assert_eq!(keep_role(ANSWER, Setup::Active), ANSWER);
    }

    #[test]
    fn roles_are_read_from_either_side_of_the_first_exchange() {
        // The browser answered our first offer as the DTLS client: we are the server.
        assert_eq!(ours_from_remote_answer("a=setup:active\n"), Some(Setup::Passive));
        assert_eq!(ours_from_remote_answer("a=setup:passive\n"), Some(Setup::Active));
        assert_eq!(ours_from_local_answer(ANSWER), Some(Setup::Active));
        assert_eq!(ours_from_remote_answer("a=setup:actpass\r\n"), None);
        assert_eq!(ours_from_remote_answer("v=0\r\n"), None);
    }
}
