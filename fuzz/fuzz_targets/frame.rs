//! Any text frame: parsing never panics, and what it accepts is what the protocol allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::inbound::{Request, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text) {
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
