//! Parsing one client text frame into a request, or a [`Refusal`] saying exactly what is wrong.
//!
//! A `signal` is validated against the protocol's shapes but relayed as the sender wrote it: the
//! request keeps the raw JSON text of the signal, so fields a browser adds survive unchanged and
//! the relay never re-encodes.

use std::borrow::Cow;

use protocol::{DisplayName, ErrorCode, RoomName};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::refusal::Refusal;

/// A well-formed client request.
#[derive(Debug, PartialEq)]
pub enum Request<'a> {
    Join {
        room: RoomName,
        name: Option<DisplayName>,
        resume: Option<String>,
        token: Option<String>,
        /// v1.1: the highest `seq` the client handled (meaningful only with `resume`).
        last_seq: Option<u64>,
    },
    /// `signal` is the signal's JSON text exactly as received, already validated.
    Signal {
        to: Cow<'a, str>,
        signal: &'a str,
    },
    Leave,
}

/// Every field any request may carry, each kept raw so that a field is type-checked only when
/// the message type gives it a meaning ("unknown fields are ignored").
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    room: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resume: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    last_seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    signal: Option<&'a RawValue>,
}

pub fn parse(text: &str) -> Result<Request<'_>, Refusal> {
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            Refusal::new(ErrorCode::BadMessage, format!("not a protocol message: {e}"))
        } else {
            Refusal::new(ErrorCode::BadJson, format!("not valid JSON: {e}"))
        }
    })?;
    let kind = match envelope.kind {
        None => return Err(bad_message("missing field \"type\"")),
        Some(raw) => string_field("type", raw)?,
    };
    match kind.as_ref() {
        "join" => parse_join(&envelope),
        "signal" => parse_signal(&envelope),
        "leave" => Ok(Request::Leave),
        other => Err(bad_message(format!("unknown message type {other:?}"))),
    }
}

fn parse_join(envelope: &Envelope) -> Result<Request<'static>, Refusal> {
    let room = match envelope.room {
        None => return Err(bad_message("join needs a \"room\"")),
        Some(raw) => string_field("room", raw)?,
    };
    let room = RoomName::parse(&room).map_err(|e| Refusal::new(ErrorCode::BadRoom, e.to_string()))?;
    let name = optional_string_field("name", envelope.name)?
        .map(|name| DisplayName::parse(&name).map_err(|e| Refusal::new(ErrorCode::BadName, e.to_string())))
        .transpose()?;
    let resume = optional_string_field("resume", envelope.resume)?.map(Cow::into_owned);
    let token = optional_string_field("token", envelope.token)?.map(Cow::into_owned);
    let last_seq = match envelope.last_seq {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            bad_message(format!(
                "\"last_seq\" must be a non-negative integer (the highest seq handled), got {}",
                abbreviate(raw.get())
            ))
        })?),
    };
    Ok(Request::Join { room, name, resume, token, last_seq })
}

fn parse_signal<'a>(envelope: &Envelope<'a>) -> Result<Request<'a>, Refusal> {
    // An error about a signal carries its `to` whenever the client gave a usable one.
    let to = match envelope.to {
        None => return Err(bad_message("signal needs a \"to\"")),
        Some(raw) => string_field("to", raw)?,
    };
    let Some(signal) = envelope.signal else {
        return Err(bad_message("signal needs a \"signal\"").about_signal_to(Some(&to)));
    };
    if let Err(problem) = check_signal(signal) {
        return Err(bad_message(format!(
            "\"signal\" must be an offer, an answer or a candidate as the browser gives them: {problem}"
        ))
        .about_signal_to(Some(&to)));
    }
    Ok(Request::Signal { to, signal: signal.get() })
}

/// The fields of a signal the protocol constrains, borrowed from the frame: checking them this
/// way accepts exactly what [`protocol::Signal`] accepts, without copying the SDP. The relay
/// spends most of its parsing time here, so the candidate is checked in the same pass rather
/// than kept raw and parsed again (profiled: a third of the candidate-sized signal's cost).
#[derive(Deserialize)]
struct SignalShape<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sdp: Option<&'a RawValue>,
    /// `None` when the field is missing (`null` is `Some(Null)`).
    #[serde(borrow, default, deserialize_with = "present")]
    candidate: Option<CandidateField<'a>>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<CandidateField<'de>>, D::Error> {
    CandidateField::deserialize(deserializer).map(Some)
}

/// What a signal's `candidate` field holds. Any value is accepted here, because an offer or
/// answer that carries a stray `candidate` is still valid; only a candidate signal needs an
/// `Object` (or `Null`).
enum CandidateField<'a> {
    Null,
    Object(CandidateShape<'a>),
    Other,
}

/// The fields of an `RTCIceCandidateInit`, kept raw and type-checked only for a candidate signal.
#[derive(Default)]
struct CandidateShape<'a> {
    candidate: Option<&'a RawValue>,
    sdp_mid: Option<&'a RawValue>,
    sdp_m_line_index: Option<&'a RawValue>,
    username_fragment: Option<&'a RawValue>,
    /// A field given twice: a typed parse refuses that.
    duplicate: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for CandidateField<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CandidateFieldVisitor)
    }
}

struct CandidateFieldVisitor;

impl<'de> serde::de::Visitor<'de> for CandidateFieldVisitor {
    type Value = CandidateField<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(CandidateField::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(CandidateField::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(CandidateField::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(CandidateField::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(CandidateField::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(CandidateField::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(CandidateField::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut shape = CandidateShape::default();
        while let Some(key) = map.next_key::<Cow<str>>()? {
            let slot = match key.as_ref() {
                "candidate" => &mut shape.candidate,
                "sdpMid" => &mut shape.sdp_mid,
                "sdpMLineIndex" => &mut shape.sdp_m_line_index,
                "usernameFragment" => &mut shape.username_fragment,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            shape.duplicate |= slot.is_some();
            *slot = Some(map.next_value()?);
        }
        Ok(CandidateField::Object(shape))
    }
}

fn is_string(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

fn is_null_or_string(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|raw| raw.get() == "null" || is_string(raw))
}

fn is_null_or_u16(raw: &RawValue) -> bool {
    raw.get() == "null" || serde_json::from_str::<u16>(raw.get()).is_ok()
}

fn check_signal(signal: &RawValue) -> Result<(), String> {
    let shape: SignalShape = serde_json::from_str(signal.get()).map_err(|e| e.to_string())?;
    match shape.kind.as_deref() {
        Some("offer" | "answer") if shape.sdp.is_some_and(is_string) => Ok(()),
        Some("offer" | "answer") => Err("an offer or answer needs a string \"sdp\"".into()),
        Some("candidate") => match shape.candidate {
            None => Err("a candidate signal needs \"candidate\" (null ends the candidates)".into()),
            Some(CandidateField::Null) => Ok(()),
            Some(CandidateField::Other) => Err("not an RTCIceCandidateInit".into()),
            Some(CandidateField::Object(candidate)) => {
                let valid = !candidate.duplicate
                    && candidate.candidate.is_some_and(is_string)
                    && is_null_or_string(candidate.sdp_mid)
                    && candidate.sdp_m_line_index.is_none_or(is_null_or_u16)
                    && is_null_or_string(candidate.username_fragment);
                valid.then_some(()).ok_or_else(|| "not an RTCIceCandidateInit".into())
            }
        },
        Some(other) => Err(format!("unknown signal type {other:?}")),
        None => Err("missing \"type\"".into()),
    }
}

fn bad_message(message: impl Into<String>) -> Refusal {
    Refusal::new(ErrorCode::BadMessage, message)
}

/// The string a raw field holds: borrowed when it has no escapes (the common case: the parse
/// that captured `raw` already checked it is valid JSON), decoded otherwise.
fn string_field<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, Refusal> {
    let json = raw.get();
    if let Some(plain) = json.strip_prefix('"').and_then(|rest| rest.strip_suffix('"'))
        && !plain.contains('\\')
    {
        return Ok(Cow::Borrowed(plain));
    }
    serde_json::from_str::<String>(json)
        .map(Cow::Owned)
        .map_err(|_| bad_message(format!("field {field:?} must be a string, got {}", abbreviate(json))))
}

/// A field that may be absent or `null`.
fn optional_string_field<'a>(
    field: &str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, Refusal> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => string_field(field, raw).map(Some),
    }
}

fn abbreviate(json: &str) -> String {
    match json.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &json[..cut]),
        None => json.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err("should be refused").code
    }

    #[test]
    fn join_with_every_field() {
        let request =
            parse(r#"{"type":"join","room":"lobby","name":"ana","resume":"t0","token":"x","extra":[1]}"#);
        assert_eq!(
            request,
            Ok(Request::Join {
                room: RoomName::parse("lobby").expect("valid"),
                name: Some(DisplayName::parse("ana").expect("valid")),
                resume: Some("t0".into()),
                token: Some("x".into()),
                last_seq: None,
            })
        );
    }

    #[test]
    fn last_seq_is_a_non_negative_integer() {
        let join = |last_seq: &str| parse_join_with(last_seq);
        assert!(matches!(join("17"), Ok(Request::Join { last_seq: Some(17), .. })));
        assert!(matches!(join("0"), Ok(Request::Join { last_seq: Some(0), .. })));
        assert!(matches!(join("null"), Ok(Request::Join { last_seq: None, .. })));
        for bad in ["-1", "1.5", "\"3\"", "true", "[]", "1e2", "18446744073709551616"] {
            assert_eq!(join(bad).map(|_| ()).expect_err(bad).code, ErrorCode::BadMessage, "{bad}");
        }
    }

    fn parse_join_with(last_seq: &str) -> Result<Request<'static>, Refusal> {
        let text = format!(r#"{{"type":"join","room":"r","resume":"t","last_seq":{last_seq}}}"#);
        parse(&text).map(|request| match request {
            Request::Join { room, name, resume, token, last_seq } => {
                Request::Join { room, name, resume, token, last_seq }
            }
            _ => Request::Leave,
        })
    }

    #[test]
    fn signal_keeps_the_raw_text() {
        let text = r#"{"type":"signal","to":"p-1","signal":{"type":"offer", "sdp":"v=0","x-extra":true}}"#;
        assert_eq!(
            parse(text),
            Ok(Request::Signal {
                to: Cow::Borrowed("p-1"),
                signal: r#"{"type":"offer", "sdp":"v=0","x-extra":true}"#
            })
        );
    }

    #[test]
    fn refusals_name_the_right_code() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadMessage);
        assert_eq!(code("42"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"room":"a"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"join","room":5}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"join","room":"a b"}"#), ErrorCode::BadRoom);
        assert_eq!(code(r#"{"type":"join","room":"a","name":""}"#), ErrorCode::BadName);
        assert_eq!(code(r#"{"type":"join","room":"a","token":5}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"signal","signal":{"type":"offer","sdp":""}}"#), ErrorCode::BadMessage);
    }

    #[test]
    fn a_bad_signal_error_carries_its_to() {
        let refusal = parse(r#"{"type":"signal","to":"p-2","signal":{"type":"offer"}}"#).expect_err("no sdp");
        assert_eq!((refusal.code, refusal.to.as_deref()), (ErrorCode::BadMessage, Some("p-2")));
        let refusal = parse(r#"{"type":"signal","to":"p-2"}"#).expect_err("no signal");
        assert_eq!(refusal.to.as_deref(), Some("p-2"));
    }

    #[test]
    fn fields_of_other_types_are_ignored() {
        assert_eq!(parse(r#"{"type":"leave","room":5,"to":[]}"#), Ok(Request::Leave));
    }

    proptest::proptest! {
        /// The borrowed check accepts exactly what the typed `protocol::Signal` accepts.
        #[test]
        fn the_signal_check_agrees_with_the_typed_signal(
            kind in proptest::sample::select(vec!["\"offer\"", "\"answer\"", "\"candidate\"", "\"pranswer\"", "7", "null"]),
            sdp in proptest::sample::select(vec!["", ",\"sdp\":\"v=0\"", ",\"sdp\":1", ",\"sdp\":null"]),
            candidate in proptest::sample::select(vec![
                "", ",\"candidate\":null", ",\"candidate\":5", ",\"candidate\":{}", ",\"candidate\":{\"candidate\":\"c\"}",
                ",\"candidate\":{\"candidate\":\"c\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":null}",
                ",\"candidate\":{\"candidate\":\"c\",\"sdpMid\":0}", ",\"candidate\":{\"candidate\":\"c\",\"sdpMLineIndex\":-1}",
                ",\"candidate\":{\"candidate\":\"c\",\"sdpMLineIndex\":\"0\"}", ",\"candidate\":{\"candidate\":null}",
                ",\"candidate\":{\"candidate\":\"c\",\"usernameFragment\":[]}",
                ",\"candidate\":{\"candidate\":\"c\",\"candidate\":\"d\"}", ",\"candidate\":[1,{\"a\":[]}]",
                ",\"candidate\":\"c\"", ",\"candidate\":true", ",\"candidate\":{\"candidate\":\"c\",\"sdpMLineIndex\":70000}",
                ",\"candidate\":{\"candidate\":\"c\",\"sdpMLineIndex\":null}", ",\"candidate\":{\"candidate\":\"c\",\"sdpMLineIndex\":1.0}",
                ",\"candidate\":{\"candidate\":\"c\",\"x\":{\"candidate\":5},\"sdpMid\":null}",
            ]),
            extra in proptest::sample::select(vec!["", ",\"x\":{\"y\":[1]}"]),
        ) {
            let text = format!("{{\"type\":{kind}{sdp}{candidate}{extra}}}");
            let raw: Box<RawValue> = serde_json::from_str(&text).expect("valid JSON");
            // One deliberate difference: the server refuses a candidate signal without its
            // "candidate" field (PROTOCOL.md: a missing field is bad_message), where the typed
            // Signal, liberal as a client should be, reads it as end-of-candidates.
            let typed = serde_json::from_str::<protocol::Signal>(&text).is_ok()
                && !(kind == "\"candidate\"" && candidate.is_empty());
            proptest::prop_assert_eq!(check_signal(&raw).is_ok(), typed, "{}", text);
        }
    }

    #[test]
    fn candidate_shapes_from_the_browser_pass() {
        for signal in [
            r#"{"type":"candidate","candidate":null}"#,
            r#"{"type":"candidate","candidate":{"candidate":""}}"#,
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 ::1 9 typ host","sdpMid":null,"sdpMLineIndex":null,"usernameFragment":null}}"#,
        ] {
            let text = format!(r#"{{"type":"signal","to":"p","signal":{signal}}}"#);
            assert!(parse(&text).is_ok(), "{text}");
        }
    }
}
