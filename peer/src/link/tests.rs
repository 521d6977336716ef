//! Two links in one process, wired to each other without a server.

use std::time::Duration;

use protocol::{MAX_CHAT_LINE_BYTES, PeerId, Signal};
use tokio::sync::mpsc;

use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

fn loopback() -> LinkOptions {
    LinkOptions { bind: vec!["127.0.0.1:0".to_string()], ..LinkOptions::default() }
}

/// How signals travel between the two links in a test.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    /// Every signal, as the server would relay it.
    Trickle,
    /// No candidate signals: each side's SDP must carry its candidates (sent once gathering
    /// is complete), as a non-trickling client does.
    NoTrickle,
}

struct Pair {
    a: Link,
    b: Link,
    /// Non-signal events seen by each side, `IceSelected` aside.
    a_events: mpsc::Receiver<LinkEvent>,
    b_events: mpsc::Receiver<LinkEvent>,
    /// Each side's `IceSelected` events: they come whenever ICE settles, between the others.
    a_paths: mpsc::Receiver<LinkEvent>,
    b_paths: mpsc::Receiver<LinkEvent>,
}

/// `a` (polite, the newcomer) and `b` (impolite), with a task relaying signals between them.
async fn pair(wire: Wire) -> Pair {
    pair_with(wire, loopback()).await
}

/// [`pair`] with `b`'s options.
async fn pair_with(wire: Wire, b_options: LinkOptions) -> Pair {
    let (tx, mut rx) = mpsc::channel::<(PeerId, LinkEvent)>(256);
    let a = Link::new("b".into(), true, &loopback(), tx.clone()).await.expect("link a");
    let b = Link::new("a".into(), false, &b_options, tx).await.expect("link b");
    let (a_out, a_events) = mpsc::channel(256);
    let (b_out, b_events) = mpsc::channel(256);
    let (a_path, a_paths) = mpsc::channel(16);
    let (b_path, b_paths) = mpsc::channel(16);
    // The relay needs to call into the links, so it gets its own handles through channels.
    let (to_a, mut for_a) = mpsc::channel::<Signal>(256);
    let (to_b, mut for_b) = mpsc::channel::<Signal>(256);
    tokio::spawn(async move {
        while let Some((remote, event)) = rx.recv().await {
            // A link's events carry the *remote* id: events from link a say "b".
            let (signal_to, events_to, paths_to) =
                if remote == "b" { (&to_b, &a_out, &a_path) } else { (&to_a, &b_out, &b_path) };
            match event {
                LinkEvent::IceSelected { .. } => {
                    let _ = paths_to.try_send(event);
                }
                LinkEvent::Signal(Signal::Candidate { .. }) if wire == Wire::NoTrickle => {}
                LinkEvent::Signal(signal) => {
                    let _ = signal_to.send(signal).await;
                }
                other => {
                    let _ = events_to.send(other).await;
                }
            }
        }
    });
    let pair = Pair { a, b, a_events, b_events, a_paths, b_paths };
    let (a_pc, b_pc) = (pair.a.peer_connection().clone(), pair.b.peer_connection().clone());
    // Weak, as the link's own handler holds it: a strong sender here would keep each link's
    // negotiation task alive after `close`, which then waits out its 2 s limit.
    let a_input = pair.a.input.downgrade();
    let b_input = pair.b.input.downgrade();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(signal) = for_a.recv() => {
                    let signal = with_gathered_sdp(signal, &a_pc, &b_pc, wire).await;
                    if let Some(input) = a_input.upgrade() {
                        let _ = input.send(Input::Remote(signal));
                    }
                }
                Some(signal) = for_b.recv() => {
                    let signal = with_gathered_sdp(signal, &b_pc, &a_pc, wire).await;
                    if let Some(input) = b_input.upgrade() {
                        let _ = input.send(Input::Remote(signal));
                    }
                }
                else => break,
            }
        }
    });
    pair
}

/// In `NoTrickle` mode, replaces an SDP by the sender's local description once its gathering
/// is complete (it then lists every candidate), as a non-trickling client would send it.
async fn with_gathered_sdp(
    signal: Signal,
    _receiver: &Arc<dyn PeerConnection>,
    sender: &Arc<dyn PeerConnection>,
    wire: Wire,
) -> Signal {
    if wire == Wire::Trickle {
        return signal;
    }
    let full = async {
        loop {
            if let Some(d) = sender.local_description().await
                && d.sdp.contains("a=candidate:")
                && d.sdp.contains("a=end-of-candidates")
            {
                return d.sdp;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let sdp = tokio::time::timeout(DEADLINE, full).await.expect("gathering never completed");
    match signal {
        Signal::Offer { .. } => Signal::Offer { sdp },
        Signal::Answer { .. } => Signal::Answer { sdp },
        other => other,
    }
}

async fn next(events: &mut mpsc::Receiver<LinkEvent>, what: &str) -> LinkEvent {
    match tokio::time::timeout(DEADLINE, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {DEADLINE:?}"),
    }
}

async fn expect_open(events: &mut mpsc::Receiver<LinkEvent>) {
    assert_eq!(next(events, "channel open").await, LinkEvent::ChannelOpen);
}

#[tokio::test]
async fn each_side_reports_the_selected_pair_once() {
    let mut p = pair(Wire::Trickle).await;
    p.a.offer();
    expect_open(&mut p.a_events).await;
    expect_open(&mut p.b_events).await;
    let host = LinkEvent::IceSelected { local: "host".into(), remote: "host".into() };
    for paths in [&mut p.a_paths, &mut p.b_paths] {
        assert_eq!(next(paths, "ice_selected").await, host, "two loopback host candidates");
    }
    // The pair stays: a few more looks (one per second) report nothing new.
    tokio::time::sleep(PAIR_CHECK_INTERVAL * 3).await;
    assert!(p.a_paths.try_recv().is_err() && p.b_paths.try_recv().is_err(), "reported once");
    p.a.close(None).await;
    p.b.close(None).await;
}

#[tokio::test]
async fn newcomer_offer_opens_chat_both_ways() {
    let mut p = pair(Wire::Trickle).await;
    p.a.offer();
    expect_open(&mut p.a_events).await;
    expect_open(&mut p.b_events).await;

    p.a.send_chat("hello from a".into()).await.expect("send a");
    p.b.send_chat("hello from b".into()).await.expect("send b");
    assert_eq!(next(&mut p.b_events, "message").await, LinkEvent::Message("hello from a".into()));
    assert_eq!(next(&mut p.a_events, "message").await, LinkEvent::Message("hello from b".into()));

    // Closing one side closes the channel on the other.
    p.a.close(Some(DEADLINE)).await;
    assert_eq!(next(&mut p.b_events, "channel closed").await, LinkEvent::ChannelClosed);
    p.b.close(None).await;
}

#[tokio::test]
async fn accepts_sdp_that_carries_all_candidates_without_trickle() {
    let mut p = pair(Wire::NoTrickle).await;
    p.a.offer();
    expect_open(&mut p.a_events).await;
    expect_open(&mut p.b_events).await;
    p.b.send_chat("no trickle".into()).await.expect("send");
    assert_eq!(next(&mut p.a_events, "message").await, LinkEvent::Message("no trickle".into()));
    p.a.close(None).await;
    p.b.close(None).await;
}

#[tokio::test]
async fn glare_resolves_with_the_polite_side_yielding() {
    let mut p = pair(Wire::Trickle).await;
    // Both sides offer at once: b (impolite) keeps its offer, a (polite) rolls back.
    p.a.offer();
    p.b.offer();
    expect_open(&mut p.a_events).await;
    expect_open(&mut p.b_events).await;
    p.a.send_chat("after glare".into()).await.expect("send");
    assert_eq!(next(&mut p.b_events, "message").await, LinkEvent::Message("after glare".into()));
    p.a.close(None).await;
    p.b.close(None).await;
}

#[tokio::test]
async fn lines_over_the_limit_are_refused_locally_and_lines_at_it_arrive() {
    let mut p = pair(Wire::Trickle).await;
    p.a.offer();
    expect_open(&mut p.a_events).await;
    expect_open(&mut p.b_events).await;
    let too_long = "x".repeat(MAX_CHAT_LINE_BYTES + 1);
    assert!(matches!(p.a.send_chat(too_long).await, Err(LinkError::LineTooLong(_))));
    let at_limit = "y".repeat(MAX_CHAT_LINE_BYTES);
    p.a.send_chat(at_limit.clone()).await.expect("send");
    assert_eq!(next(&mut p.b_events, "message").await, LinkEvent::Message(at_limit));
    p.a.close(None).await;
    p.b.close(None).await;
}

#[test]
fn binary_oversized_and_invalid_utf8_chat_messages_are_ignored() {
    assert_eq!(chat_line(&PeerId::from("r"), true, BytesMut::from(&b"ok"[..])), Some("ok".to_string()));
    assert_eq!(chat_line(&PeerId::from("r"), false, BytesMut::from(&b"ok"[..])), None);
    assert_eq!(chat_line(&PeerId::from("r"), true, BytesMut::from(&[0xff, 0xfe][..])), None);
    assert_eq!(
        chat_line(&PeerId::from("r"), true, BytesMut::from(vec![b'a'; MAX_CHAT_LINE_BYTES + 1].as_slice())),
        None
    );
}

/// A pair whose `b` stores incoming files, and a small file for `a` to send.
struct FilePair {
    pair: Pair,
    file: Arc<files::Outgoing>,
    received: mpsc::Receiver<files::FileEvent>,
    dir: std::path::PathBuf,
}

async fn file_pair(name: &str) -> FilePair {
    let dir = std::env::temp_dir().join(format!("switchboard-link-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("in")).expect("scratch dir");
    let source = dir.join("small.bin");
    std::fs::write(&source, vec![7u8; 3000]).expect("write the file");
    let file = Arc::new(files::Outgoing::prepare(&source).expect("prepare"));
    let (received_tx, received) = mpsc::channel(1024);
    let receiving = files::Receiving {
        dir: dir.join("in"),
        max_size: files::DEFAULT_MAX_FILE_SIZE,
        idle: files::DEFAULT_IDLE,
        test_write_delay: None,
    };
    let inbox = Inbox::new(receiving, received_tx);
    let mut pair = pair_with(Wire::Trickle, LinkOptions { inbox: Some(inbox), ..loopback() }).await;
    pair.a.offer();
    expect_open(&mut pair.a_events).await;
    expect_open(&mut pair.b_events).await;
    FilePair { pair, file, received, dir }
}

impl FilePair {
    /// Sends `count` copies of the file from `a` at once; returns when `a` saw every one end,
    /// failing on any error.
    async fn send_at_once(&mut self, count: usize) {
        let (sent_tx, mut sent) = mpsc::channel(count * 4);
        let opener = self.pair.a.channel_opener();
        for _ in 0..count {
            tokio::spawn(files::send("b".into(), opener.clone(), self.file.clone(), None, sent_tx.clone()));
        }
        let mut failures = Vec::new();
        let mut done = 0;
        while done < count {
            match tokio::time::timeout(DEADLINE, sent.recv()).await {
                Ok(Some(files::FileEvent::Sent { error, .. })) => {
                    done += 1;
                    failures.extend(error);
                }
                Ok(Some(_)) => {}
                Ok(None) => unreachable!("the test holds a sender"),
                Err(_) => panic!("only {done} of {count} transfers ended within {DEADLINE:?}"),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {count} transfers failed, e.g. {:?}",
            failures.len(),
            failures.first()
        );
    }

    /// Waits until `b` stored `count` files, failing on any failure it reports except a
    /// channel that closed before its header: an attempt `a` abandoned and retried (PROTOCOL.md
    /// makes any early close a failed transfer on the receiver too).
    async fn expect_stored(&mut self, count: usize) {
        let mut stored = 0;
        while stored < count {
            match tokio::time::timeout(DEADLINE, self.received.recv()).await {
                Ok(Some(files::FileEvent::Received { .. })) => stored += 1,
                Ok(Some(files::FileEvent::Failed { name, error, .. }))
                    if name.is_empty() && error == files::FileError::ClosedBeforeHeader.to_string() => {}
                Ok(Some(files::FileEvent::Failed { error, .. })) => panic!("b failed a transfer: {error}"),
                Ok(Some(_)) => {}
                Ok(None) => unreachable!("the inbox holds a sender"),
                Err(_) => panic!("b stored only {stored} of {count} files within {DEADLINE:?}"),
            }
        }
    }

    async fn close(self) {
        self.pair.a.close(None).await;
        self.pair.b.close(None).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Many files sent at once to one peer all arrive: each has its own `file` channel, opened on
/// the live connection through `channels` (which guards against a webrtc-rs race that can
/// leave such a channel never reported open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_sent_at_once_on_a_live_connection_all_arrive() {
    let mut p = file_pair("at-once").await;
    // The sender runs `channels::TRANSFERS_AT_ONCE` of them at a time, the rest queue.
    p.send_at_once(32).await;
    p.expect_stored(32).await;
    p.close().await;
}

/// Files sent in waves, each right after the last one's channels closed, all arrive. webrtc-rs
/// reuses a closed channel's stream id before the remote is done with it; without the retry in
/// `channels::ChannelOpener::open`, 3-18 % of these opens failed and some runs hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sent_in_waves_on_one_connection_all_arrive() {
    let mut p = file_pair("waves").await;
    for _ in 0..20 {
        p.send_at_once(8).await;
    }
    p.expect_stored(20 * 8).await;
    p.close().await;
}
