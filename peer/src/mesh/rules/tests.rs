//! The mesh's ordering rules, input by input: no sockets, no server, no links.

use protocol::PeerInfo;

use super::*;

fn welcome(id: &str, peers: &[&str], resumed: bool) -> Input {
    Input::Server(SignalingEvent::Welcome(Welcome {
        id: id.into(),
        room: "room".into(),
        peers: peers.iter().map(|p| PeerInfo { id: p.to_string(), name: p.to_string() }).collect(),
        ice_servers: Vec::new(),
        resume_token: "token".into(),
        resumed,
        seq: None,
    }))
}

fn joined(id: &str) -> Input {
    Input::Server(SignalingEvent::PeerJoined(PeerInfo { id: id.into(), name: id.into() }))
}

fn left(id: &str) -> Input {
    Input::Server(SignalingEvent::PeerLeft(id.into()))
}

fn link(peer: &str, generation: u64) -> LinkId {
    LinkId { peer: peer.into(), generation }
}

fn from(peer: &str, generation: u64, event: LinkEvent) -> Input {
    Input::Link(link(peer, generation), event)
}

fn line(text: &str) -> LinkEvent {
    LinkEvent::Message(text.into())
}

fn emitted(commands: &[Command]) -> Vec<Event> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn opened(peer: &str) -> Event {
    Event::ChannelOpen { peer: peer.into() }
}

fn closed(peer: &str) -> Event {
    Event::ChannelClosed { peer: peer.into() }
}

fn peer_left(id: &str) -> Event {
    Event::PeerLeft { id: id.into() }
}

fn message(from: &str, text: &str) -> Event {
    Event::Message { from: from.into(), text: text.into() }
}

/// Rules that were welcomed as `me` into an empty room, saw `bob` join (link generation 1)
/// and his channel open.
fn with_bob(options: RulesOptions) -> Rules {
    let mut rules = Rules::new(options);
    rules.handle(welcome("me", &[], false));
    let commands = rules.handle(joined("bob"));
    assert!(
        commands.iter().any(|c| matches!(c, Command::OpenLink { link, polite: false, offer: false, .. } if *link == super::LinkId { peer: "bob".into(), generation: 1 })),
        "{commands:?}"
    );
    assert_eq!(emitted(&rules.handle(from("bob", 1, LinkEvent::ChannelOpen))), [opened("bob")]);
    rules
}

#[test]
fn the_newcomer_offers_politely_to_everyone_listed() {
    let mut rules = Rules::new(RulesOptions::default());
    let commands = rules.handle(welcome("me", &["ana", "bob"], false));
    let offers: Vec<(&str, bool, bool)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::OpenLink { link, polite, offer, .. } => Some((link.peer.as_str(), *polite, *offer)),
            _ => None,
        })
        .collect();
    assert_eq!(offers, [("ana", true, true), ("bob", true, true)]);
}

#[test]
fn peer_left_waits_for_the_lines_its_link_still_hands_over() {
    let mut rules = with_bob(RulesOptions { expect_lines: Some(2), ..Default::default() });
    let commands = rules.handle(left("bob"));
    assert_eq!(commands, [Command::CloseLink { link: link("bob", 1) }], "nothing reported yet");
    // bob's last line was still in his link's queue: it is reported, and counts.
    assert_eq!(emitted(&rules.handle(from("bob", 1, line("last words")))), [message("bob", "last words")]);
    assert_eq!(emitted(&rules.handle(Input::LinkEnded(link("bob", 1)))), [closed("bob"), peer_left("bob")]);
}

#[test]
fn a_line_racing_a_departure_still_reaches_expect() {
    let mut rules = with_bob(RulesOptions { expect_lines: Some(1), ..Default::default() });
    rules.handle(left("bob"));
    let commands = rules.handle(from("bob", 1, line("bye")));
    assert!(commands.contains(&Command::Stop { outcome: Outcome::Done, interrupted: false }), "{commands:?}");
}

#[test]
fn a_channel_is_reported_closed_once_whoever_ends_it() {
    let mut rules = with_bob(RulesOptions::default());
    // The link reports the close first, then the server says bob left.
    let commands = rules.handle(from("bob", 1, LinkEvent::ChannelClosed));
    assert_eq!(emitted(&commands), [closed("bob")]);
    assert!(commands.contains(&Command::CloseLink { link: link("bob", 1) }));
    assert!(emitted(&rules.handle(left("bob"))).is_empty(), "peer_left waits for the closing link");
    assert_eq!(emitted(&rules.handle(Input::LinkEnded(link("bob", 1)))), [peer_left("bob")]);
    // A late close from the same link changes nothing.
    assert!(emitted(&rules.handle(from("bob", 1, LinkEvent::ChannelClosed))).is_empty());
}

#[test]
fn an_old_links_events_do_not_touch_the_new_link() {
    let mut rules = with_bob(RulesOptions::default());
    rules.handle(from("bob", 1, LinkEvent::Failed("ice".into())));
    // bob offers again: a fresh link, generation 2.
    let offer = Signal::Offer { sdp: "v=0".into() };
    let commands =
        rules.handle(Input::Server(SignalingEvent::Signal { from: "bob".into(), signal: offer.clone() }));
    assert!(commands.contains(&Command::Deliver { link: link("bob", 2), signal: offer }), "{commands:?}");
    assert_eq!(emitted(&rules.handle(from("bob", 2, LinkEvent::ChannelOpen))), [opened("bob")]);
    // The old link's stale close neither closes the new one nor reports it closed.
    let commands = rules.handle(from("bob", 1, LinkEvent::ChannelClosed));
    assert!(commands.is_empty(), "{commands:?}");
    // But a line it still delivers is shown.
    assert_eq!(emitted(&rules.handle(from("bob", 1, line("late")))), [message("bob", "late")]);
}

#[test]
fn echo_goes_to_the_current_link_only() {
    let mut rules = with_bob(RulesOptions { echo: true, ..Default::default() });
    let commands = rules.handle(from("bob", 1, line("ping")));
    assert!(commands.contains(&Command::SendChat { link: link("bob", 1), text: "ping".into() }));
    rules.handle(left("bob"));
    let commands = rules.handle(from("bob", 1, line("again")));
    assert!(!commands.iter().any(|c| matches!(c, Command::SendChat { .. })), "no echo to a leaving peer");
}

#[test]
fn a_refused_resume_reports_the_old_peers_gone_before_the_new_welcome() {
    let mut rules = with_bob(RulesOptions::default());
    let commands = rules.handle(welcome("me2", &["carl"], false));
    assert_eq!(commands, [Command::CloseLink { link: link("bob", 1) }], "the new welcome waits");
    // A server message arriving meanwhile waits behind the welcome.
    assert!(rules.handle(joined("dora")).is_empty());
    let commands = rules.handle(Input::LinkEnded(link("bob", 1)));
    let events = emitted(&commands);
    assert_eq!(events[..2], [closed("bob"), peer_left("bob")]);
    assert!(matches!(&events[2], Event::Welcome { id, resumed: false, .. } if id == "me2"), "{events:?}");
    assert_eq!(events[3], Event::PeerJoined { id: "dora".into(), name: "dora".into() });
    assert_eq!(rules.self_id().map(PeerId::as_str), Some("me2"));
}

#[test]
fn a_resumed_welcome_keeps_links_and_drops_only_the_missing() {
    let mut rules = with_bob(RulesOptions::default());
    rules.handle(joined("carl"));
    let commands = rules.handle(welcome("me", &["carl"], true));
    assert_eq!(commands, [Command::CloseLink { link: link("bob", 1) }]);
    let events = emitted(&rules.handle(Input::LinkEnded(link("bob", 1))));
    assert_eq!(events[..2], [closed("bob"), peer_left("bob")]);
    assert!(matches!(&events[2], Event::Welcome { resumed: true, .. }));
    assert_eq!(events.len(), 3, "no offers after a resume: {events:?}");
}

#[test]
fn send_lines_and_files_go_out_when_a_channel_opens() {
    let options =
        RulesOptions { send: vec!["one".into(), "two".into()], send_files: true, ..Default::default() };
    let mut rules = Rules::new(options);
    rules.handle(welcome("me", &["ana"], false));
    let commands = rules.handle(from("ana", 1, LinkEvent::ChannelOpen));
    assert_eq!(
        commands[1..],
        [
            Command::SendChat { link: link("ana", 1), text: "one".into() },
            Command::SendChat { link: link("ana", 1), text: "two".into() },
            Command::SendFiles { link: link("ana", 1) },
        ]
    );
}

#[test]
fn typed_lines_go_to_open_channels_and_overlong_ones_nowhere() {
    let mut rules = with_bob(RulesOptions::default());
    let commands = rules.handle(Input::Line("hi".into()));
    assert_eq!(commands, [Command::SendChat { link: link("bob", 1), text: "hi".into() }]);
    let commands = rules.handle(Input::Line("x".repeat(MAX_CHAT_LINE_BYTES + 1)));
    assert!(matches!(&commands[..], [Command::Emit(Event::Error { .. })]), "{commands:?}");
}

#[test]
fn end_of_input_stops_only_without_expectations() {
    let mut rules = Rules::new(RulesOptions::default());
    assert_eq!(
        rules.handle(Input::EndOfInput),
        [Command::Stop { outcome: Outcome::Done, interrupted: false }]
    );
    let mut rules = Rules::new(RulesOptions { expect_lines: Some(1), ..Default::default() });
    assert!(rules.handle(Input::EndOfInput).is_empty());
}

#[test]
fn a_timeout_fails_with_an_error_event_and_stops_once() {
    let mut rules = Rules::new(RulesOptions::default());
    let commands = rules.handle(Input::Timeout);
    assert_eq!(
        commands,
        [
            Command::Emit(Event::Error { message: "timed out".into() }),
            Command::Stop { outcome: Outcome::Failed("timed out".into()), interrupted: false }
        ]
    );
    assert!(rules.handle(Input::Shutdown).is_empty(), "already stopping");
}

#[test]
fn ctrl_c_stops_interrupted() {
    let mut rules = Rules::new(RulesOptions::default());
    assert_eq!(rules.handle(Input::Shutdown), [Command::Stop { outcome: Outcome::Done, interrupted: true }]);
}
