//! The Lua scripts that hold every cross-instance rule (`lua/`, each prefixed with
//! `lua/common.lua`), and their replies as Rust types. Each script runs atomically in Redis, so
//! "room full", join order, numbering and the hand-over of a member between instances are
//! decided once, by Redis, whichever instance asks.

use redis::{Script, Value};

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/common.lua"), "\n", include_str!(concat!("lua/", $file))))
    };
}

#[derive(Debug)]
pub struct Scripts {
    pub join: Script,
    pub resume: Script,
    pub relay: Script,
    pub leave: Script,
    pub suspend: Script,
    pub beat: Script,
    pub sweep: Script,
    pub reconcile: Script,
    pub writeback: Script,
    pub budget: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            join: script!("join.lua"),
            resume: script!("resume.lua"),
            relay: script!("relay.lua"),
            leave: script!("leave.lua"),
            suspend: script!("suspend.lua"),
            beat: script!("beat.lua"),
            sweep: script!("sweep.lua"),
            reconcile: script!("reconcile.lua"),
            writeback: script!("writeback.lua"),
            budget: script!("budget.lua"),
        }
    }
}

/// The key prefix of a room's keys (one hash slot per room).
pub fn room_prefix(room: &str) -> String {
    format!("sb:{{{room}}}:")
}

/// The channel an instance listens on.
pub fn instance_channel(instance: &str) -> String {
    format!("sb:i:{instance}")
}

/// A reply that does not have the shape the script returns: Redis is not running our script
/// (or something else answered).
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct Unexpected(pub String);

pub fn text(value: &Value) -> Result<String, Unexpected> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(|_| unexpected(value)),
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(n) => Ok(n.to_string()),
        _ => Err(unexpected(value)),
    }
}

pub fn number(value: &Value) -> Result<u64, Unexpected> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| unexpected(value)),
        _ => text(value)?.parse().map_err(|_| unexpected(value)),
    }
}

pub fn list(value: &Value) -> Result<&[Value], Unexpected> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        // Lua's empty table comes back as an empty array, or as nil from some servers.
        Value::Nil => Ok(&[]),
        _ => Err(unexpected(value)),
    }
}

/// `[id, name, id, name, ...]` as pairs.
pub fn pairs(value: &Value) -> Result<Vec<(String, String)>, Unexpected> {
    list(value)?
        .chunks(2)
        .map(|pair| Ok((text(&pair[0])?, pair.get(1).map(text).transpose()?.unwrap_or_default())))
        .collect()
}

fn unexpected(value: &Value) -> Unexpected {
    let mut shown = format!("{value:?}");
    shown.truncate(200);
    Unexpected(shown)
}
