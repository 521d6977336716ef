//! Any text frame: parsing never panics, and what it accepts is what the protocol allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ErrorCode;
use server::inbound::{Request, parse};

/// Containers nested deeper than this reach serde_json's recursion limit (128), which is not a
/// rule of JSON: the scanner walks any depth, so there the oracle has no say.
const ORACLE_DEPTH: usize = 100;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let outcome = parse(text);
    // The scanner (`inbound/scan.rs`, one pass, a vector classification of string bytes) must
    // tell JSON from not-JSON exactly as serde_json does: what is not JSON is `bad_json`, and
    // nothing else is.
    if text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() <= ORACLE_DEPTH {
        let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        let refused_as_not_json = matches!(&outcome, Err(refusal) if refusal.code == ErrorCode::BadJson);
        assert_eq!(refused_as_not_json, !is_json, "serde_json says JSON: {is_json}; parse: {outcome:?}");
    }
    match outcome {
        Ok(Request::Signal { signal, .. }) => {
            // An accepted signal is valid JSON of a protocol shape, exactly as sent.
            assert!(serde_json::from_str::<protocol::Signal>(signal).is_ok());
            assert!(text.contains(signal));
        }
        Ok(Request::Join { room, .. }) => assert!(protocol::RoomName::parse(room.as_str()).is_ok()),
        Ok(Request::Leave) => {}
        Err(refusal) => {
            // Every refusal becomes a valid protocol error message.
            let frame = refusal.frame();
            assert!(serde_json::from_str::<protocol::ServerMessage>(frame.as_str()).is_ok());
        }
    }
});
