//! Room and display names: parsed once at the edge, so an invalid one cannot exist past it.

use std::fmt;

pub const MAX_ROOM_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("room must be 1–{MAX_ROOM_CHARS} characters of A–Z, a–z, 0–9, '_', '.', '-'")]
    Room,
    #[error(
        "name must be 1–{MAX_NAME_CHARS} characters with no control or bidirectional formatting characters"
    )]
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

/// Bidirectional formatting characters: an override (U+202E) or isolate in a name makes it render
/// as another name ("alice" written backwards), so names may not hold any of them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A display name: 1–32 characters, none of them a control or bidirectional formatting character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || raw.chars().any(|c| c.is_control() || is_bidi_control(c)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_refuse_bidirectional_formatting() {
        for bad in [
            "\u{202E}ecila",
            "a\u{061C}",
            "a\u{200E}",
            "a\u{200F}",
            "\u{202A}a",
            "\u{2066}a\u{2069}",
            "a\u{2068}",
        ] {
            assert_eq!(DisplayName::parse(bad), Err(NameError::Display), "{bad:?}");
        }
        // Right-to-left text itself is fine; only the invisible direction controls are refused.
        assert!(DisplayName::parse("שלום").is_ok());
        assert!(DisplayName::parse("علي").is_ok());
    }
}
