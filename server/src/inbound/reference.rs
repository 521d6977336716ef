//! The parse before issue 20, kept as the oracle of the property test: two serde_json passes
//! (the envelope into raw fields, then the signal's shape). [`super::parse`] must agree with it
//! on every frame that is JSON, except where this one strayed from PROTOCOL.md (an array read
//! as an object, a duplicate field reported before a syntax error further on).

use std::borrow::Cow;

use protocol::{DisplayName, ErrorCode, RoomName};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Request, abbreviate, bad_message};
use crate::refusal::Refusal;

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

// Every string decoded by serde_json (`plain: false`), not borrowed on the scanner's word.
fn string_field<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, Refusal> {
    super::string_field(field, raw.get(), false)
}

fn optional_string_field<'a>(
    field: &str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, Refusal> {
    super::optional_string_field(field, raw.map(RawValue::get), false)
}
