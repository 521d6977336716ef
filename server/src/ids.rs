//! Peer ids and resume tokens: both made only here.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};

/// A member's id. Only [`IdSource`] makes one, so an id a client sends is only ever compared
/// with existing ids, never trusted as one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Arc<str>);

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

/// A fresh resume token: 128 bits from the thread's CSPRNG, as 32 hex digits.
pub fn resume_token() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
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
    fn resume_tokens_carry_128_bits() {
        let token = resume_token();
        assert_eq!(token.len(), 32);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(token, resume_token());
    }
}
