//! The mesh's bookkeeping, driven event by event: no server, and links that never connect.

use super::*;
use crate::signaling::JoinParams;
use crate::transport;

/// A [`Signaling`] whose task finds no server and stops: what the mesh relays goes nowhere.
fn no_signaling(tasks: &TaskTracker) -> Signaling {
    let (events, _) = mpsc::channel(1);
    let params = JoinParams {
        url: "ws://127.0.0.1:9/ws".into(),
        room: "test".into(),
        name: None,
        token: None,
        tls: None,
    };
    Signaling::start(params, events, tasks)
}

fn options(expect: Option<usize>) -> ChatOptions {
    ChatOptions {
        send: Vec::new(),
        echo: false,
        expect,
        bind: vec!["127.0.0.1:0".to_string()],
        ice_tick: transport::DEFAULT_ICE_TICK,
        relay_only: false,
        files: FileOptions::default(),
        media: Default::default(),
    }
}

fn open(peer: &str) -> Event {
    Event::ChannelOpen { peer: peer.into() }
}

fn message(from: &str, text: &str) -> Event {
    Event::Message { from: from.into(), text: text.into() }
}

fn closed(peer: &str) -> Event {
    Event::ChannelClosed { peer: peer.into() }
}

fn left(id: &str) -> Event {
    Event::PeerLeft { id: id.into() }
}

/// Runs `body` on a mesh that knows `bob` and has a link to him whose channel opened; returns
/// what `body` returned and what the mesh reported. `body` gets a sender that queues events as
/// bob's link would.
async fn with_bob<F, R>(expect: Option<usize>, body: F) -> (R, Vec<Event>)
where
    F: AsyncFnOnce(&mut Mesh<'_>, mpsc::Sender<(String, LinkEvent)>) -> R,
{
    let tasks = TaskTracker::new();
    let mut events = Vec::new();
    let mut emit = |event: Event| events.push(event);
    let mut mesh = Mesh::new(options(expect), no_signaling(&tasks), &mut emit);
    mesh.self_id = Some("me".into());
    mesh.members.insert("bob".into(), "bob".into());
    assert!(mesh.open_link("bob", false).await.is_some(), "a link to bob");
    assert_eq!(mesh.on_link("bob".into(), LinkEvent::ChannelOpen).await, None);
    let link_tx = mesh.link_tx.clone();
    let result = body(&mut mesh, link_tx).await;
    mesh.finish().await;
    drop(mesh);
    (result, events)
}

/// The flake of `three_peers_form_a_full_mesh`: bob's last line and his channel's close were
/// queued when the server's `peer_left` for him was handled first (`select!` picks at random).
/// The line was dropped with the link, and so was `channel_closed`.
#[tokio::test]
async fn a_line_queued_when_its_sender_leaves_is_reported_before_peer_left() {
    let (outcome, events) = with_bob(Some(1), async |mesh, bob| {
        bob.send(("bob".into(), LinkEvent::Message("line from bob".into()))).await.expect("queued");
        bob.send(("bob".into(), LinkEvent::ChannelClosed)).await.expect("queued");
        mesh.on_server(SignalingEvent::PeerLeft("bob".into())).await
    })
    .await;
    assert_eq!(outcome, Some(Outcome::Done), "the line counts toward --expect");
    assert_eq!(events, vec![open("bob"), message("bob", "line from bob"), closed("bob"), left("bob")]);
}

/// A line that reaches the queue only after the link is gone (its channel task was slower than
/// the close's wait) is still reported.
#[tokio::test]
async fn a_line_of_a_link_already_closed_still_counts() {
    let (outcomes, events) = with_bob(Some(1), async |mesh, bob| {
        assert_eq!(mesh.on_server(SignalingEvent::PeerLeft("bob".into())).await, None);
        bob.send(("bob".into(), LinkEvent::Message("late line".into()))).await.expect("queued");
        bob.send(("bob".into(), LinkEvent::ChannelClosed)).await.expect("queued");
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (remote, event) = mesh.link_rx.recv().await.expect("an event");
            outcomes.push(mesh.on_link(remote, event).await);
        }
        outcomes
    })
    .await;
    assert_eq!(outcomes, vec![Some(Outcome::Done), None], "the line counts toward --expect");
    assert_eq!(events, vec![open("bob"), closed("bob"), left("bob"), message("bob", "late line")]);
}

/// `channel_closed` once per `channel_open`, whichever of the link and the server tells first.
#[tokio::test]
async fn a_channel_is_reported_closed_once() {
    let ((), events) = with_bob(None, async |mesh, _| {
        assert_eq!(mesh.on_link("bob".into(), LinkEvent::ChannelClosed).await, None);
        assert_eq!(mesh.on_server(SignalingEvent::PeerLeft("bob".into())).await, None);
        assert_eq!(mesh.on_link("bob".into(), LinkEvent::ChannelClosed).await, None);
    })
    .await;
    assert_eq!(events, vec![open("bob"), closed("bob"), left("bob")]);
}
