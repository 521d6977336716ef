//! The JSON shapes of PROTOCOL.md, checked byte for byte where the order is ours to choose.

use super::*;
use serde_json::{Value, json};

fn to_value<T: Serialize>(message: &T) -> Value {
    serde_json::to_value(message).expect("serializes")
}

#[test]
fn join_with_only_a_room_omits_the_optional_fields() {
    let join = ClientMessage::Join(Join { room: "lobby".into(), ..Join::default() });
    assert_eq!(to_value(&join), json!({"type": "join", "room": "lobby"}));
}

#[test]
fn join_parses_with_name_resume_and_token() {
    let parsed: ClientMessage = serde_json::from_str(
        r#"{"type":"join","room":"lobby","name":"alice","resume":"abc","token":"t","extra":1}"#,
    )
    .expect("parses");
    assert_eq!(
        parsed,
        ClientMessage::Join(Join {
            room: "lobby".into(),
            name: Some("alice".into()),
            resume: Some("abc".into()),
            token: Some("t".into()),
            last_seq: None,
        })
    );
}

#[test]
fn sequence_numbers_are_optional_both_ways() {
    // v1.1 fields parse where present and stay out of the JSON where absent (v1 peers).
    let join: ClientMessage =
        serde_json::from_str(r#"{"type":"join","room":"r","resume":"t","last_seq":41}"#).expect("parses");
    assert!(matches!(join, ClientMessage::Join(Join { last_seq: Some(41), .. })));
    let signal: ServerMessage = serde_json::from_str(
        r#"{"type":"signal","from":"a","signal":{"type":"candidate","candidate":null},"seq":7}"#,
    )
    .expect("parses");
    assert_eq!(signal.seq(), Some(7));
    let v1: ServerMessage = serde_json::from_str(r#"{"type":"peer_left","id":"a"}"#).expect("parses");
    assert_eq!(v1.seq(), None);
    let joined =
        ServerMessage::PeerJoined { peer: PeerInfo { id: "b".into(), name: "bo".into() }, seq: Some(3) };
    assert_eq!(
        to_value(&joined),
        json!({"type": "peer_joined", "peer": {"id": "b", "name": "bo"}, "seq": 3})
    );
    assert_eq!(
        to_value(&ServerMessage::PeerLeft { id: "b".into(), seq: None }),
        json!({"type": "peer_left", "id": "b"})
    );
}

#[test]
fn signals_keep_the_browser_field_names() {
    let candidate = Signal::Candidate {
        candidate: Some(IceCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }),
    };
    assert_eq!(
        to_value(&candidate),
        json!({"type": "candidate", "candidate": {
            "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0
        }})
    );
    let end: Signal = serde_json::from_str(r#"{"type":"candidate","candidate":null}"#).expect("parses");
    assert!(end.is_end_of_candidates());
    let empty: Signal = serde_json::from_str(
        r#"{"type":"candidate","candidate":{"candidate":"","sdpMid":null,"sdpMLineIndex":null}}"#,
    )
    .expect("parses");
    assert!(empty.is_end_of_candidates());
    let offer: Signal = serde_json::from_str(r#"{"type":"offer","sdp":"v=0\r\n"}"#).expect("parses");
    assert!(!offer.is_end_of_candidates());
}

#[test]
fn welcome_and_error_have_the_documented_shape() {
    let welcome = ServerMessage::Welcome(Welcome {
        id: "a1".into(),
        room: "lobby".into(),
        peers: vec![PeerInfo { id: "b2".into(), name: "bob".into() }],
        ice_servers: vec![IceServer {
            urls: vec!["stun:example.org".into()],
            username: None,
            credential: None,
        }],
        resume_token: "secret".into(),
        resumed: false,
        seq: Some(0),
    });
    assert_eq!(
        to_value(&welcome),
        json!({"type": "welcome", "id": "a1", "room": "lobby", "peers": [{"id": "b2", "name": "bob"}],
               "ice_servers": [{"urls": ["stun:example.org"]}], "resume_token": "secret", "resumed": false, "seq": 0})
    );
    let error = ServerMessage::Error(ErrorMessage {
        code: ErrorCode::UnknownPeer,
        message: "no such peer".into(),
        to: Some("zz".into()),
    });
    assert_eq!(
        to_value(&error),
        json!({"type": "error", "code": "unknown_peer", "message": "no such peer", "to": "zz"})
    );
}

#[test]
fn every_error_code_round_trips_through_its_wire_name() {
    use ErrorCode::*;
    for code in [
        BadJson,
        BadMessage,
        NotJoined,
        AlreadyJoined,
        BadRoom,
        BadName,
        RoomFull,
        UnknownPeer,
        TooLarge,
        RateLimited,
        ServerBusy,
        Unauthorized,
        BinaryUnsupported,
    ] {
        assert_eq!(to_value(&code), Value::String(code.as_str().into()));
        let back: ErrorCode = serde_json::from_value(Value::String(code.as_str().into())).expect("parses");
        assert_eq!(back, code);
    }
}

#[test]
fn room_names_follow_the_protocol() {
    assert!(RoomName::parse("lobby-1_a.b").is_ok());
    assert!(RoomName::parse(&"a".repeat(64)).is_ok());
    for bad in ["", "has space", "é", "a/b", &"a".repeat(65)] {
        assert_eq!(RoomName::parse(bad), Err(NameError::Room), "{bad:?}");
    }
}

#[test]
fn display_names_count_characters_not_bytes() {
    assert!(DisplayName::parse(&"é".repeat(32)).is_ok());
    assert!(DisplayName::parse("ana maria").is_ok());
    for bad in ["", "tab\there", "nl\n", &"x".repeat(33)] {
        assert_eq!(DisplayName::parse(bad), Err(NameError::Display), "{bad:?}");
    }
}

#[test]
fn resume_is_advised_only_for_transient_closes() {
    assert!(close_code::should_resume(None));
    assert!(close_code::should_resume(Some(1001)));
    for final_code in [1000, 1008, 1009, 4000] {
        assert!(!close_code::should_resume(Some(final_code)));
    }
}

#[test]
fn file_headers_are_sent_in_the_protocol_shape_and_checked_when_received() {
    let header = FileHeader { name: "photo.jpg".into(), size: 12345, sha256: "ab".repeat(32) };
    assert_eq!(
        header.to_json(),
        format!(r#"{{"name":"photo.jpg","size":12345,"sha256":"{}"}}"#, "ab".repeat(32))
    );
    assert_eq!(FileHeader::parse(header.to_json().as_bytes()), Ok(header));
    for bad in [
        &b"not json"[..],
        br#"{"name":"a","size":1}"#,
        br#"{"name":"a","size":-1,"sha256":"00"}"#,
        br#"{"name":"a","size":1,"sha256":"ABCDEF"}"#,
        br#"{"name":"a","size":1,"sha256":"0000000000000000000000000000000000000000000000000000000000000000X"}"#,
        br#"{"name":"a","size":1,"sha256":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        br#"["a",1]"#,
    ] {
        assert!(FileHeader::parse(bad).is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
    }
    let huge = format!(
        r#"{{"name":"{}","size":1,"sha256":"{}"}}"#,
        "a".repeat(MAX_FILE_HEADER_BYTES),
        "0".repeat(64)
    );
    assert!(matches!(FileHeader::parse(huge.as_bytes()), Err(FileHeaderError::TooLarge(_))));
}

#[test]
fn file_answers_have_the_protocol_shape() {
    assert_eq!(FileAnswer::accepted().to_json(), r#"{"ok":true}"#);
    assert_eq!(FileAnswer::refused("bad").to_json(), r#"{"ok":false,"error":"bad"}"#);
    assert_eq!(FileAnswer::parse(br#"{"ok":true,"extra":1}"#), Ok(FileAnswer::accepted()));
    assert!(FileAnswer::parse(br#"{"error":"no ok"}"#).is_err());
}

#[test]
fn peer_ids_are_plain_strings_on_the_wire() {
    let id = PeerId::from("p1");
    assert_eq!(serde_json::to_string(&id).ok(), Some(r#""p1""#.to_string()));
    assert_eq!(serde_json::from_str::<PeerId>(r#""p1""#).ok(), Some(id.clone()));
    assert_eq!(id.to_string(), "p1");
    assert_eq!(id, "p1");
}
