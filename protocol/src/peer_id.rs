//! Peer ids: opaque strings the server gives out (`welcome.id`, `peer_joined.peer.id`), a type of
//! their own so that an id is never mixed up with a name, a room or a line of text.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A peer's id, as the server gave it. The wire form is the plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(String);

impl PeerId {
    pub fn new(id: impl Into<String>) -> PeerId {
        PeerId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for PeerId {
    fn from(id: String) -> PeerId {
        PeerId(id)
    }
}

impl From<&str> for PeerId {
    fn from(id: &str) -> PeerId {
        PeerId(id.to_owned())
    }
}

impl Borrow<str> for PeerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PeerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PeerId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PeerId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
