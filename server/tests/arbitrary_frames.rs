//! Property: whatever a client sends — arbitrary bytes, arbitrary JSON, near-miss protocol
//! messages — the server answers with a valid protocol message or a close, never panics, and
//! never disturbs another room.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use support::{Client, Endpoint, InProcess, sequence_of, signal_to};

use tokio_tungstenite::tungstenite::Message;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("join"),
            Just("signal"),
            Just("leave"),
            Just("offer"),
            Just("candidate"),
            Just("lobby")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("room".to_owned()),
                    Just("name".to_owned()),
                    Just("to".to_owned()),
                    Just("signal".to_owned()),
                    Just("resume".to_owned()),
                    Just("token".to_owned()),
                    Just("candidate".to_owned()),
                    Just("sdp".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        json_value().prop_map(|v| Frame::Text(v.to_string())),
        ".{0,64}".prop_map(Frame::Text),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| match String::from_utf8(bytes.clone()) {
            Ok(text) => Frame::Text(text),
            Err(_) => Frame::Binary(bytes),
        }),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Frame::Binary),
    ]
}

/// The answer to one frame: a message that parses as a protocol message, or a close.
async fn answer(client: &mut Client) -> Result<(), String> {
    loop {
        let next = support::within_real_time(Duration::from_secs(10), client.ws.next()).await;
        match next {
            None => return Err("no answer within 10 s".into()),
            Some(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str::<protocol::ServerMessage>(&text)
                    .map(|_| ())
                    .map_err(|e| format!("not a protocol message: {text} ({e})"));
            }
            Some(Some(Ok(Message::Close(_)))) | Some(None) => return Ok(()),
            Some(Some(Ok(_))) => continue,
            Some(Some(Err(e))) => return Err(format!("broken connection instead of a close: {e}")),
        }
    }
}

/// The server's `--resume-grace`.
const GRACE: Duration = Duration::from_millis(300);

/// One case: a quiet pair talks in one room while a fuzzer sends `frames` (joined to another
/// room first, or not). Every frame must get a valid answer and the quiet pair must not notice.
async fn run_case(server: &Endpoint, frames: Vec<Frame>, joined: bool) -> Result<(), String> {
    let (mut ana, _) = server.join("quiet", "ana").await;
    let (mut bob, b) = server.join("quiet", "bob").await;
    ana.expect_type("peer_joined").await;
    let mut fuzzer = server.connect().await;
    if joined {
        fuzzer.send(json!({"type": "join", "room": "noisy"})).await;
        fuzzer.expect_type("welcome").await;
    }
    for (n, frame) in frames.into_iter().enumerate() {
        ana.send(signal_to(&b["id"], n as u64)).await;
        let message = match frame {
            Frame::Text(text) => Message::text(text),
            Frame::Binary(bytes) => Message::binary(bytes),
        };
        if fuzzer.ws.send(message).await.is_err() {
            break; // closed by an earlier frame
        }
        answer(&mut fuzzer).await?;
        let relayed = bob.expect_type("signal").await;
        if sequence_of(&relayed) != n as u64 {
            return Err(format!("the quiet room was disturbed: {relayed}"));
        }
    }
    ana.send(json!({"type": "leave"})).await;
    bob.send(json!({"type": "leave"})).await;
    ana.until_closed().await;
    bob.until_closed().await;
    // A fuzzer that joined is in grace once dropped: let its grace run out (on the paused clock,
    // at once) so that the cases do not fill `noisy` between them.
    drop(fuzzer);
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    Ok(())
}

#[test]
fn any_frame_gets_a_valid_answer_other_rooms_are_untouched_and_nothing_is_left_behind() {
    // The server in-process on a paused clock: a case that waits for an answer or a grace period
    // waits in virtual time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let server = runtime.block_on(InProcess::start(&[
        "--no-rate-limit",
        "--max-frame-bytes",
        "4096",
        "--resume-grace",
        &format!("{}ms", GRACE.as_millis()),
    ]));
    // Shrinking re-runs failing cases, each of which may wait out network timeouts: bound it so
    // that a failure is reported in seconds, not after an hour of shrinking.
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 200,
        max_shrink_iters: 64,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    });
    let strategy = (prop::collection::vec(frame(), 1..4), any::<bool>());
    let outcome = runner.run(&strategy, |(frames, joined)| {
        let result = runtime.block_on(run_case(&server, frames, joined));
        prop_assert!(result.is_ok(), "{}", result.err().unwrap_or_default());
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // Every fuzzer is gone and every grace period has run out: no room, no connection left.
    runtime.block_on(async {
        server.wait_for_metric("switchboard_connections", 0.0).await;
        server.wait_for_metric("switchboard_rooms", 0.0).await;
        server.wait_for_metric("switchboard_members", 0.0).await;
        assert_eq!(server.http_get("/healthz").await.0, 200);
    });
}
