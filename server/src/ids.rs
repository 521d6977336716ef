//! Peer ids and resume tokens: both made only here.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};

/// A member's id. Only [`IdSource`] makes one, so an id a client sends is only ever compared
/// with existing ids, never trusted as one.
#[derive(Debug, Clone, PartialOrd, Ord)]
pub struct PeerId(Arc<str>);

/// Equal when the text is. Most comparisons on the relay path are of an id with a clone of
/// itself (the sender's own id, a map's key), so the shared pointer is looked at first: a
/// relayed signal compared ids five times, each a `memcmp` call.
impl PartialEq for PeerId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for PeerId {}

/// As derived: the text's hash (so that a lookup by `&str`, through `Borrow<str>`, finds it).
impl std::hash::Hash for PeerId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PeerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id that an [`IdSource`] on another instance made, read back from the state the
    /// instances share (Redis, `crate::cluster`).
    pub(crate) fn made_elsewhere(id: &str) -> PeerId {
        PeerId(id.into())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for PeerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Hands out ids that are never reused: a random part chosen at start (so ids differ across
/// restarts) and a counter (so they differ within a run). Clones share the counter, so every
/// shard of the rooms hands out ids from the same sequence.
#[derive(Debug, Clone)]
pub struct IdSource {
    start: Arc<str>,
    issued: Arc<AtomicU64>,
}

impl IdSource {
    pub fn new() -> Self {
        Self::with_random_part(6)
    }

    /// With a longer random part where many processes make ids for one service (several
    /// instances): 12 characters make a clash between any two starts negligible.
    pub fn with_random_part(chars: usize) -> Self {
        let start = Alphanumeric.sample_string(&mut rand::rng(), chars).to_ascii_lowercase();
        Self { start: start.into(), issued: Arc::new(AtomicU64::new(0)) }
    }

    pub fn next_id(&self) -> PeerId {
        let issued = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        PeerId(format!("{}-{issued}", self.start).into())
    }
}

impl Default for IdSource {
    fn default() -> Self {
        Self::new()
    }
}

/// A resume token: 128 bits from the thread's CSPRNG, written as 32 lowercase hex digits. Kept
/// as a number, not a string: every member holds one and the rooms index them (an idle
/// connection's bytes count, docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResumeToken(u128);

impl ResumeToken {
    pub fn fresh() -> Self {
        Self(rand::rng().random())
    }

    /// The token `text` names, if it is one this server could have issued (exactly 32 lowercase
    /// hex digits, as [`fmt::Display`] writes them).
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| u128::from_str_radix(text, 16).ok().map(Self)).flatten()
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_within_a_run_and_across_runs() {
        let first_run = IdSource::new();
        let second_run = IdSource::new();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(first_run.next_id()));
            assert!(seen.insert(second_run.next_id()));
        }
    }

    #[test]
    fn ids_are_equal_by_their_text_and_found_by_it() {
        let id = IdSource::new().next_id();
        let same_text = PeerId::made_elsewhere(id.as_str());
        assert_eq!(id, id.clone());
        assert_eq!(id, same_text, "a separate allocation of the same text");
        assert_ne!(id, PeerId::made_elsewhere(&format!("{id}0")));
        let mut map = std::collections::HashMap::new();
        map.insert(same_text, 1);
        assert_eq!(map.get(&id), Some(&1));
        assert_eq!(map.get(id.as_str()), Some(&1), "looked up by the client's text");
    }

    #[test]
    fn resume_tokens_carry_128_bits() {
        let token = ResumeToken::fresh();
        let text = token.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(ResumeToken::parse(&text), Some(token));
        assert_ne!(token, ResumeToken::fresh());
        for other in [&text.to_uppercase(), &text[1..], "", &format!("{text}0"), &format!("+{}", &text[1..])]
        {
            assert_eq!(ResumeToken::parse(other), None, "{other}");
        }
    }
}
