//! Room and display names: parsed once at the edge, so an invalid one cannot exist past it.

use std::fmt;

pub const MAX_ROOM_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("room must be 1–{MAX_ROOM_CHARS} characters of A–Z, a–z, 0–9, '_', '.', '-'")]
    Room,
    #[error("name must be 1–{MAX_NAME_CHARS} characters with no control characters")]
    Display,
}

/// A room name: 1–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if raw.is_empty() || raw.len() > MAX_ROOM_CHARS || !raw.chars().all(valid_char) {
            return Err(NameError::Room);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1–32 characters, none of them a control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || raw.chars().any(char::is_control) {
            return Err(NameError::Display);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
