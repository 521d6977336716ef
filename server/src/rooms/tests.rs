//! The room rules, driven directly: no sockets, time passed in.

use super::*;
use serde_json::Value;

fn rooms_with(config: RoomsConfig) -> Rooms {
    Rooms::new(config)
}

fn rooms() -> Rooms {
    rooms_with(RoomsConfig::default())
}

fn request(room: &str, name: Option<&str>, resume: Option<&str>) -> JoinRequest {
    JoinRequest {
        room: RoomName::parse(room).expect("valid room"),
        name: name.map(|n| DisplayName::parse(n).expect("valid name")),
        resume: resume.map(str::to_owned),
        last_seq: None,
    }
}

/// A connection plus the member it joined as.
struct Client {
    conn: ConnId,
    id: PeerId,
}

fn join(rooms: &mut Rooms, room: &str, name: &str, now: Instant) -> Client {
    let conn = rooms.connect(Arc::new(Notify::new()));
    let joined = rooms.join(conn, request(room, Some(name), None), now).expect("join succeeds");
    Client { conn, id: joined.id }
}

/// Everything written to the connection so far, parsed.
fn drain(rooms: &mut Rooms, conn: ConnId) -> Vec<Value> {
    rooms
        .take_outbound(conn, Instant::now())
        .frames
        .iter()
        .map(|f| serde_json::from_str(f.as_str()).expect("JSON"))
        .collect()
}

fn types(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|m| m["type"].as_str().unwrap_or("?")).collect()
}

fn resume_token_of(messages: &[Value]) -> String {
    let welcome = messages.iter().find(|m| m["type"] == "welcome").expect("a welcome");
    welcome["resume_token"].as_str().expect("token").to_owned()
}

fn signal(n: usize) -> OpenFrame {
    OpenFrame::from_object(format!(r#"{{"type":"signal","from":"x","signal":{{"n":{n}}}}}"#))
}

#[test]
fn welcome_lists_earlier_members_oldest_first_and_others_hear_of_the_newcomer() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "lobby", "ana", now);
    let bob = join(&mut rooms, "lobby", "bob", now);
    let cy = join(&mut rooms, "lobby", "cy", now);
    let welcome = drain(&mut rooms, cy.conn);
    assert_eq!(types(&welcome), ["welcome"]);
    let peers: Vec<&str> = welcome[0]["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(peers, ["ana", "bob"]);
    assert_eq!(welcome[0]["resumed"], false);
    let to_ana = drain(&mut rooms, ana.conn);
    assert_eq!(types(&to_ana), ["welcome", "peer_joined", "peer_joined"]);
    assert_eq!(to_ana[2]["peer"]["id"], cy.id.as_str());
    assert_eq!(types(&drain(&mut rooms, bob.conn)), ["welcome", "peer_joined"]);
}

#[test]
fn the_default_name_is_the_id() {
    let mut rooms = rooms();
    let conn = rooms.connect(Arc::new(Notify::new()));
    let joined = rooms.join(conn, request("r", None, None), Instant::now()).expect("joins");
    let other = join(&mut rooms, "r", "b", Instant::now());
    let welcome = drain(&mut rooms, other.conn);
    assert_eq!(welcome[0]["peers"][0]["name"], joined.id.as_str());
}

#[test]
fn signals_reach_only_members_of_the_same_room() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "one", "ana", now);
    let bob = join(&mut rooms, "one", "bob", now);
    let eve = join(&mut rooms, "two", "eve", now);
    drain(&mut rooms, bob.conn);
    rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(1), now).expect("same room");
    assert_eq!(drain(&mut rooms, bob.conn)[0]["signal"]["n"], 1);
    for to in [eve.id.as_str(), ana.id.as_str(), "nobody"] {
        let refusal = rooms.relay(ana.conn, &ana.id, to, signal(2), now).expect_err("not reachable");
        assert_eq!((refusal.code, refusal.to.as_deref()), (ErrorCode::UnknownPeer, Some(to)));
    }
    assert!(drain(&mut rooms, eve.conn).iter().all(|m| m["type"] != "signal"));
    assert_eq!(rooms.stats().signals_relayed, 1);
}

#[test]
fn a_connection_cannot_send_as_another_member() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    let refusal = rooms.relay(bob.conn, &ana.id, bob.id.as_str(), signal(1), now).expect_err("forged");
    assert_eq!(refusal.code, ErrorCode::NotJoined);
}

#[test]
fn room_size_and_room_cap_are_enforced() {
    let mut rooms = rooms_with(RoomsConfig { room_size: 2, max_rooms: 1, ..RoomsConfig::default() });
    let now = Instant::now();
    join(&mut rooms, "r", "a", now);
    join(&mut rooms, "r", "b", now);
    let conn = rooms.connect(Arc::new(Notify::new()));
    assert_eq!(rooms.join(conn, request("r", None, None), now).expect_err("full").code, ErrorCode::RoomFull);
    assert_eq!(rooms.join(conn, request("s", None, None), now).expect_err("cap").code, ErrorCode::ServerBusy);
    assert_eq!(rooms.stats().rooms, 1);
}

#[test]
fn joining_twice_is_refused() {
    let mut rooms = rooms();
    let ana = join(&mut rooms, "r", "ana", Instant::now());
    let refusal = rooms.join(ana.conn, request("s", None, None), Instant::now()).expect_err("twice");
    assert_eq!(refusal.code, ErrorCode::AlreadyJoined);
}

#[test]
fn leave_tells_the_room_at_once_and_closes_normally() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    drain(&mut rooms, ana.conn);
    rooms.leave(bob.conn, now).expect("joined");
    let to_ana = drain(&mut rooms, ana.conn);
    assert_eq!(types(&to_ana), ["peer_left"]);
    assert_eq!(to_ana[0]["id"], bob.id.as_str());
    assert_eq!(rooms.take_outbound(bob.conn, Instant::now()).close.map(|c| c.code), Some(1000));
    rooms.leave(ana.conn, now).expect("joined");
    assert_eq!(rooms.stats().rooms, 0);
}

#[test]
fn a_dropped_member_resumes_with_its_id_and_everything_queued_in_order() {
    let mut rooms = rooms();
    let start = Instant::now();
    let ana = join(&mut rooms, "r", "ana", start);
    let bob = join(&mut rooms, "r", "bob", start);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    rooms.disconnect(bob.conn, start, None);
    for n in 0..5 {
        rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(n), start).expect("queued for bob");
    }
    let cy = join(&mut rooms, "r", "cy", start);
    assert!(
        drain(&mut rooms, ana.conn).iter().all(|m| m["type"] != "peer_left"),
        "no peer_left during grace"
    );

    let back = rooms.connect(Arc::new(Notify::new()));
    let joined =
        rooms.join(back, request("r", None, Some(&token)), start + Duration::from_secs(5)).expect("resumes");
    assert_eq!((joined.id.clone(), joined.resumed), (bob.id.clone(), true));
    let messages = drain(&mut rooms, back);
    assert_eq!(
        types(&messages),
        ["welcome", "signal", "signal", "signal", "signal", "signal", "peer_joined"]
    );
    assert_eq!(messages[0]["resumed"], true);
    assert_ne!(resume_token_of(&messages), token, "a new token each welcome");
    let numbers: Vec<i64> = messages[1..6].iter().map(|m| m["signal"]["n"].as_i64().expect("n")).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4]);
    assert_eq!(messages[6]["peer"]["id"], cy.id.as_str());
    assert!(drain(&mut rooms, back).is_empty(), "exactly once");

    // The token was single-use: a second resume with it joins fresh.
    let again = rooms.connect(Arc::new(Notify::new()));
    let fresh = rooms.join(again, request("r", None, Some(&token)), start).expect("joins");
    assert!(!fresh.resumed);
    assert_ne!(fresh.id, bob.id);
}

#[test]
fn grace_expiry_ends_the_member_and_its_token() {
    let mut rooms =
        rooms_with(RoomsConfig { resume_grace: Duration::from_secs(2), ..RoomsConfig::default() });
    let start = Instant::now();
    let ana = join(&mut rooms, "r", "ana", start);
    let bob = join(&mut rooms, "r", "bob", start);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    drain(&mut rooms, ana.conn);
    rooms.disconnect(bob.conn, start, None);
    rooms.expire(start + Duration::from_millis(1999));
    assert!(drain(&mut rooms, ana.conn).is_empty());
    rooms.expire(start + Duration::from_secs(2));
    let to_ana = drain(&mut rooms, ana.conn);
    assert_eq!(types(&to_ana), ["peer_left"]);
    let late = rooms.connect(Arc::new(Notify::new()));
    let joined =
        rooms.join(late, request("r", None, Some(&token)), start + Duration::from_secs(3)).expect("joins");
    assert!(!joined.resumed, "an expired token joins fresh");
}

#[test]
fn a_resume_while_the_old_socket_is_open_replaces_it() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let token = resume_token_of(&drain(&mut rooms, ana.conn));
    let bob = join(&mut rooms, "r", "bob", now);
    rooms.relay(bob.conn, &bob.id, ana.id.as_str(), signal(7), now).expect("delivered");
    let second = rooms.connect(Arc::new(Notify::new()));
    rooms.join(second, request("r", None, Some(&token)), now).expect("resumes");
    let old = rooms.take_outbound(ana.conn, Instant::now());
    assert!(old.frames.is_empty(), "unwritten frames moved to the new socket");
    assert_eq!(old.close.map(|c| c.code), Some(4000));
    assert_eq!(types(&drain(&mut rooms, second)), ["welcome", "peer_joined", "signal"]);
    // The old socket's end does not suspend the member that moved on.
    rooms.disconnect(ana.conn, now, None);
    assert_eq!(rooms.stats().suspended_members, 0);
}

#[test]
fn a_client_that_does_not_read_is_closed_and_keeps_its_place() {
    let bound = Bound { frames: 4, bytes: 1 << 20 };
    let mut rooms = rooms_with(RoomsConfig { outbox: bound, ..RoomsConfig::default() });
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    for n in 0..5 {
        rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(n), now).expect("accepted");
    }
    let kicked = rooms.take_outbound(bob.conn, Instant::now());
    assert_eq!(kicked.close.map(|c| (c.code, c.immediate)), Some((1008, true)));
    assert!(kicked.frames.is_empty());
    assert_eq!(rooms.stats().suspended_members, 1);
    // Nothing was lost: the resume gets all five.
    rooms.disconnect(bob.conn, now, None);
    let back = rooms.connect(Arc::new(Notify::new()));
    rooms.join(back, request("r", None, Some(&token)), now).expect("resumes");
    assert_eq!(drain(&mut rooms, back).len(), 6);
}

#[test]
fn an_overflowing_resume_queue_ends_the_member() {
    let bound = Bound { frames: 2, bytes: 1 << 20 };
    let mut rooms = rooms_with(RoomsConfig { outbox: bound, ..RoomsConfig::default() });
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    drain(&mut rooms, ana.conn);
    drain(&mut rooms, bob.conn);
    rooms.disconnect(bob.conn, now, None);
    for n in 0..4 {
        rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(n), now).expect("queued");
    }
    assert!(drain(&mut rooms, ana.conn).is_empty());
    assert!(
        rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(4), now).is_ok(),
        "overflow is not the sender's error"
    );
    assert_eq!(types(&drain(&mut rooms, ana.conn)), ["peer_left"]);
    assert_eq!(rooms.stats().members, 1);
}

fn resume_request(token: &str, last_seq: Option<u64>) -> JoinRequest {
    JoinRequest { last_seq, ..request("r", None, Some(token)) }
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

#[test]
fn every_peer_joined_peer_left_and_signal_is_numbered_per_member() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    rooms.relay(bob.conn, &bob.id, ana.id.as_str(), signal(1), now).expect("same room");
    let cy = join(&mut rooms, "r", "cy", now);
    rooms.leave(cy.conn, now).expect("joined");
    let to_ana = drain(&mut rooms, ana.conn);
    assert_eq!(types(&to_ana), ["welcome", "peer_joined", "signal", "peer_joined", "peer_left"]);
    assert_eq!(to_ana[0]["seq"], 0, "a fresh welcome");
    assert_eq!(seqs(&to_ana[1..]), [1, 2, 3, 4]);
    // Bob has his own counter; errors take no number.
    rooms.refuse(bob.conn, &Refusal::new(ErrorCode::BadJson, "x"), now);
    let to_bob = drain(&mut rooms, bob.conn);
    assert_eq!(types(&to_bob), ["welcome", "peer_joined", "peer_left", "error"]);
    assert_eq!(seqs(&to_bob), [0, 1, 2]);
}

#[test]
fn a_resume_with_last_seq_gets_exactly_what_its_client_did_not_handle() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    for n in 1..=4 {
        rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(n), now).expect("delivered");
    }
    // All four were written to bob's socket, which died before his client read the last two.
    assert_eq!(seqs(&drain(&mut rooms, bob.conn)), [1, 2, 3, 4]);
    rooms.disconnect(bob.conn, now, None);
    rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(5), now).expect("queued");
    let back = rooms.connect(Arc::new(Notify::new()));
    rooms.join(back, resume_request(&token, Some(2)), now).expect("resumes");
    let messages = drain(&mut rooms, back);
    assert_eq!(types(&messages), ["welcome", "signal", "signal", "signal"]);
    assert_eq!(
        (messages[0]["resumed"].clone(), messages[0]["seq"].clone()),
        (Value::from(true), Value::from(2))
    );
    assert_eq!(seqs(&messages[1..]), [3, 4, 5]);
    assert!(drain(&mut rooms, back).is_empty(), "once");
    rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(6), now).expect("delivered");
    assert_eq!(seqs(&drain(&mut rooms, back)), [6], "the counter goes on");
}

#[test]
fn a_v1_resume_gets_what_was_not_written_and_a_failed_write_counts_as_not_written() {
    let mut rooms = rooms();
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(1), now).expect("delivered");
    assert_eq!(seqs(&drain(&mut rooms, bob.conn)), [1]);
    rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(2), now).expect("delivered");
    let batch = rooms.take_outbound(bob.conn, now);
    assert_eq!(batch.frames.len(), 1);
    // The writer's flush of seq 2 failed: the socket died.
    rooms.disconnect(bob.conn, now, batch.journal_from);
    let back = rooms.connect(Arc::new(Notify::new()));
    rooms.join(back, resume_request(&token, None), now).expect("resumes");
    let messages = drain(&mut rooms, back);
    assert_eq!(messages[0]["seq"], 1);
    assert_eq!(seqs(&messages[1..]), [2]);
}

#[test]
fn a_resume_asking_for_messages_no_longer_held_starts_over() {
    let grace = Duration::from_secs(2);
    let mut rooms = rooms_with(RoomsConfig { resume_grace: grace, ..RoomsConfig::default() });
    let start = Instant::now();
    let ana = join(&mut rooms, "r", "ana", start);
    let bob = join(&mut rooms, "r", "bob", start);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(1), start).expect("delivered");
    drain(&mut rooms, bob.conn);
    drain(&mut rooms, ana.conn);
    // Written messages are kept at least one grace period, at most two.
    rooms.expire(start + grace);
    assert!(rooms.can_resume(&resume_request(&token, Some(0))), "still held after one grace");
    rooms.expire(start + grace * 2);
    assert!(!rooms.can_resume(&resume_request(&token, Some(0))));
    assert!(rooms.can_resume(&resume_request(&token, Some(1))), "nothing needed is missing");
    let back = rooms.connect(Arc::new(Notify::new()));
    let joined = rooms.join(back, resume_request(&token, Some(0)), start + grace * 2).expect("joins");
    assert!(!joined.resumed);
    assert_ne!(joined.id, bob.id, "a new id, as for an expired token");
    let welcome = drain(&mut rooms, back);
    assert_eq!(
        (welcome[0]["resumed"].clone(), welcome[0]["seq"].clone()),
        (Value::from(false), Value::from(0))
    );
    // The old bob is gone: his old socket is replaced and ana sees him leave, then the new one.
    assert_eq!(rooms.take_outbound(bob.conn, start).close.map(|c| c.code), Some(4000));
    let to_ana = drain(&mut rooms, ana.conn);
    assert_eq!(types(&to_ana), ["peer_left", "peer_joined"]);
    assert_eq!(to_ana[0]["id"], bob.id.as_str());
    rooms.check_invariants().expect("consistent");
}

#[test]
fn a_signal_over_the_server_wide_bound_is_refused_with_server_busy_and_readers_keep_their_half() {
    let mut rooms = rooms_with(RoomsConfig { max_queued_bytes: 8192, ..RoomsConfig::default() });
    let now = Instant::now();
    let ana = join(&mut rooms, "r", "ana", now);
    let bob = join(&mut rooms, "r", "bob", now);
    drain(&mut rooms, ana.conn);
    drain(&mut rooms, bob.conn);
    rooms.disconnect(bob.conn, now, None);
    let mut refused = None;
    for n in 0..100 {
        if let Err(refusal) = rooms.relay(ana.conn, &ana.id, bob.id.as_str(), signal(n), now) {
            refused = Some((n, refusal));
            break;
        }
    }
    let (n, refusal) = refused.expect("the bound is reached");
    assert_eq!((refusal.code, refusal.to.as_deref()), (ErrorCode::ServerBusy, Some(bob.id.as_str())));
    assert!(rooms.stats().queued_bytes <= 4096, "a suspended member's backlog fills half the bound");
    // Memberships still change: a peer_joined is always queued.
    let cy = join(&mut rooms, "r", "cy", now);
    let to_ana = drain(&mut rooms, ana.conn);
    assert_eq!(types(&to_ana), ["peer_joined"]);
    assert_eq!(to_ana[0]["peer"]["id"], cy.id.as_str());
    drain(&mut rooms, cy.conn);
    // A member who reads is served from the other half; what it was written and is only
    // retained for a resume gives way when the bound is reached.
    for n in 0..100 {
        rooms.relay(ana.conn, &ana.id, cy.id.as_str(), signal(n), now).expect("a reader is served");
        assert_eq!(drain(&mut rooms, cy.conn).len(), 1);
        assert!(rooms.stats().queued_bytes <= 8192);
    }
    rooms.check_invariants().expect("counted exactly");
    assert!(n > 5, "the first signals fit");
}

#[test]
fn ids_are_never_reused() {
    let mut rooms = rooms();
    let now = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let client = join(&mut rooms, "r", "x", now);
        assert!(seen.insert(client.id.clone()));
        rooms.leave(client.conn, now).expect("joined");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

    /// Arbitrary sequences of joins, resumes, relays, leaves, drops, drains and time passing keep
    /// every index consistent, never reorder or duplicate a signal, and leave nothing behind.
    #[test]
    fn arbitrary_operation_sequences_keep_the_rules(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        if let Err(broken) = super::exercise::run(&bytes) {
            proptest::prop_assert!(false, "{}", broken);
        }
    }
}

#[test]
fn every_welcome_a_resumed_one_too_carries_a_turn_credential_for_that_member() {
    let turn = crate::turn::TurnConfig {
        urls: vec!["turn:198.18.0.1:3478".into()],
        secret: "s".into(),
        ttl: Duration::from_secs(3600),
    };
    let stun = IceServer { urls: vec!["stun:198.18.0.1:3478".into()], username: None, credential: None };
    let mut rooms = rooms_with(RoomsConfig {
        ice_servers: vec![stun],
        turn: Some(turn.clone()),
        ..RoomsConfig::default()
    });
    let start = Instant::now();
    let ana = join(&mut rooms, "r", "ana", start);
    let first = drain(&mut rooms, ana.conn);
    rooms.disconnect(ana.conn, start, None);
    let back = rooms.connect(Arc::new(Notify::new()));
    rooms.join(back, request("r", None, Some(&resume_token_of(&first))), start).expect("resumes");
    let resumed = drain(&mut rooms, back);
    assert_eq!(resumed[0]["resumed"], true);
    for welcome in [&first[0], &resumed[0]] {
        let servers = welcome["ice_servers"].as_array().expect("ice_servers");
        assert_eq!(servers.len(), 2, "the --ice-server entry, then TURN: {servers:?}");
        assert_eq!(servers[0]["urls"][0], "stun:198.18.0.1:3478");
        assert_eq!(servers[1]["urls"][0], "turn:198.18.0.1:3478");
        let username = servers[1]["username"].as_str().expect("username");
        let (expiry, member) = username.split_once(':').expect("<expiry>:<member>");
        assert_eq!(member, ana.id.as_str());
        let expiry: u64 = expiry.parse().expect("unix seconds");
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
        assert!((now + 3590..=now + 3600).contains(&expiry), "expiry {expiry}, now {now}");
        let minted = turn.credential(member, std::time::UNIX_EPOCH + Duration::from_secs(expiry - 3600));
        assert_eq!(servers[1]["credential"].as_str(), minted.credential.as_deref());
    }
}

#[test]
fn a_member_suspended_twice_ends_at_its_second_grace_not_its_first() {
    let mut rooms = rooms();
    let grace = RoomsConfig::default().resume_grace;
    let start = Instant::now();
    let ana = join(&mut rooms, "r", "ana", start);
    let bob = join(&mut rooms, "r", "bob", start);
    let token = resume_token_of(&drain(&mut rooms, bob.conn));
    rooms.disconnect(bob.conn, start, None);
    // Bob comes back half a grace later and drops again.
    let later = start + grace / 2;
    let back = rooms.connect(Arc::new(Notify::new()));
    rooms.join(back, request("r", None, Some(&token)), later).expect("resumes");
    assert_eq!(rooms.stats().suspended_members, 0);
    rooms.disconnect(back, later, None);
    assert_eq!(rooms.stats().suspended_members, 1);
    drain(&mut rooms, ana.conn);
    // The first grace's end passes: Bob is still in grace from his second drop.
    rooms.expire(start + grace);
    assert!(drain(&mut rooms, ana.conn).is_empty(), "no peer_left at the first grace's end");
    assert_eq!((rooms.stats().members, rooms.stats().suspended_members), (2, 1));
    rooms.check_invariants().expect("consistent");
    rooms.expire(later + grace);
    assert_eq!(types(&drain(&mut rooms, ana.conn)), ["peer_left"]);
    assert_eq!((rooms.stats().members, rooms.stats().suspended_members), (1, 0));
    rooms.check_invariants().expect("consistent");
}
