//! The per-connection rate limit: token buckets on messages and bytes, and a strike count that
//! turns sustained abuse into a close.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The server's rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages a client may send at once; a burst of 1,000 signals fits.
    pub burst_messages: f64,
    pub messages_per_sec: f64,
    pub burst_bytes: f64,
    pub bytes_per_sec: f64,
    /// Refusals a client may collect at once before it is closed with 1008.
    pub burst_refusals: f64,
    pub refusals_per_sec: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        // A client joining a full room of 16 while trickling sends ~200 messages in a second;
        // a burst of 1,000 signals fits too. A flood of 20,000 gets 1,200 plus 200 a second.
        Self {
            burst_messages: 1200.0,
            messages_per_sec: 200.0,
            burst_bytes: 16.0 * 1024.0 * 1024.0,
            bytes_per_sec: 2.0 * 1024.0 * 1024.0,
            burst_refusals: 200.0,
            refusals_per_sec: 20.0,
        }
    }
}

#[derive(Debug, Clone)]
struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn full(capacity: f64, per_sec: f64, now: Instant) -> Self {
        Self { capacity, per_sec, tokens: capacity, refilled_at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.refilled_at = now;
    }

    fn has(&self, amount: f64) -> bool {
        self.tokens >= amount
    }

    fn take(&mut self, amount: f64) {
        self.tokens -= amount;
    }
}

/// What the budget says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over budget: refuse with `rate_limited`.
    Refused,
    /// Over budget again and again: close the connection with 1008.
    Abusive,
}

/// One connection's budget. `None` settings mean no rate limit (`--no-rate-limit`).
#[derive(Debug, Clone)]
pub struct Budget {
    buckets: Option<[TokenBucket; 3]>,
}

impl Budget {
    pub fn new(limit: Option<RateLimit>, now: Instant) -> Self {
        let buckets = limit.map(|l| {
            [
                TokenBucket::full(l.burst_messages, l.messages_per_sec, now),
                TokenBucket::full(l.burst_bytes, l.bytes_per_sec, now),
                TokenBucket::full(l.burst_refusals, l.refusals_per_sec, now),
            ]
        });
        Self { buckets }
    }

    /// Charges one message of `bytes` bytes.
    pub fn charge(&mut self, bytes: usize, now: Instant) -> Verdict {
        let Some([messages, volume, refusals]) = &mut self.buckets else { return Verdict::Allowed };
        messages.refill(now);
        volume.refill(now);
        let bytes = bytes as f64;
        if messages.has(1.0) && volume.has(bytes.min(volume.capacity)) {
            messages.take(1.0);
            volume.take(bytes);
            return Verdict::Allowed;
        }
        refusals.refill(now);
        if refusals.has(1.0) {
            refusals.take(1.0);
            Verdict::Refused
        } else {
            Verdict::Abusive
        }
    }
}

/// What is left of a member's budget, to carry it to another instance (`crate::cluster`): the
/// tokens of each bucket (messages, bytes, refusals) when it was taken.
pub type Tokens = [f64; 3];

impl Budget {
    /// The tokens left now (refilled up to `now`); `None` without a rate limit.
    fn tokens(&mut self, now: Instant) -> Option<Tokens> {
        let buckets = self.buckets.as_mut()?;
        Some(buckets.each_mut().map(|bucket| {
            bucket.refill(now);
            bucket.tokens
        }))
    }

    /// A budget going on from `tokens`, taken `age` ago (refilled for that long).
    fn resumed(limit: Option<RateLimit>, tokens: Tokens, age: std::time::Duration, now: Instant) -> Self {
        let mut budget = Self::new(limit, now);
        if let Some(buckets) = &mut budget.buckets {
            for (bucket, left) in buckets.iter_mut().zip(tokens) {
                let refilled = left + age.as_secs_f64() * bucket.per_sec;
                bucket.tokens = refilled.min(bucket.capacity);
            }
        }
        budget
    }
}

/// A budget that outlives the connection that spends it: a member's, which its next connection
/// (a resume, or a connection that replaces it) goes on spending, so that dropping and resuming
/// never starts a fresh one. Only the member's current reader charges it, so the lock is free.
/// Without a rate limit (`--no-rate-limit`) there is nothing to keep, and nothing is allocated.
#[derive(Debug, Clone)]
pub struct SharedBudget(Option<Arc<Mutex<Budget>>>);

impl SharedBudget {
    pub fn new(limit: Option<RateLimit>, now: Instant) -> Self {
        Self(limit.map(|limit| Arc::new(Mutex::new(Budget::new(Some(limit), now)))))
    }

    pub fn charge(&self, bytes: usize, now: Instant) -> Verdict {
        match &self.0 {
            None => Verdict::Allowed,
            Some(budget) => budget.lock().unwrap_or_else(PoisonError::into_inner).charge(bytes, now),
        }
    }

    /// What is left now, to hand to another instance.
    pub fn tokens(&self, now: Instant) -> Option<Tokens> {
        self.0.as_ref()?.lock().unwrap_or_else(PoisonError::into_inner).tokens(now)
    }

    /// A member's budget carried from another instance: `tokens` left `age` ago.
    pub fn resumed(limit: Option<RateLimit>, tokens: Tokens, age: std::time::Duration, now: Instant) -> Self {
        Self(limit.map(|limit| Arc::new(Mutex::new(Budget::resumed(Some(limit), tokens, age, now)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_a_thousand_fits_and_a_flood_is_cut_then_closed() {
        let start = Instant::now();
        let mut budget = Budget::new(Some(RateLimit::default()), start);
        for _ in 0..1000 {
            assert_eq!(budget.charge(300, start), Verdict::Allowed);
        }
        let mut allowed = 1000;
        let mut refused = 0;
        let mut verdict = Verdict::Allowed;
        for _ in 0..20_000 {
            verdict = budget.charge(300, start);
            match verdict {
                Verdict::Allowed => allowed += 1,
                Verdict::Refused => refused += 1,
                Verdict::Abusive => break,
            }
        }
        assert_eq!(verdict, Verdict::Abusive);
        assert_eq!(allowed, 1200);
        assert_eq!(refused, 200);
    }

    #[test]
    fn the_budget_refills_over_time() {
        let start = Instant::now();
        let mut budget = Budget::new(Some(RateLimit::default()), start);
        while budget.charge(10, start) == Verdict::Allowed {}
        assert_eq!(budget.charge(10, start + Duration::from_secs(1)), Verdict::Allowed);
    }

    #[test]
    fn bytes_count_too() {
        let start = Instant::now();
        let limit = RateLimit { burst_bytes: 1000.0, bytes_per_sec: 0.0, ..RateLimit::default() };
        let mut budget = Budget::new(Some(limit), start);
        assert_eq!(budget.charge(800, start), Verdict::Allowed);
        assert_eq!(budget.charge(800, start), Verdict::Refused);
    }

    #[test]
    fn a_carried_budget_goes_on_where_it_was_refilled_for_its_age() {
        let start = Instant::now();
        let limit = Some(RateLimit { messages_per_sec: 10.0, ..RateLimit::default() });
        let spent = SharedBudget::new(limit, start);
        while spent.charge(10, start) == Verdict::Allowed {}
        let tokens = spent.tokens(start).expect("limited");
        assert!(tokens[0] < 1.0);
        let carried = SharedBudget::resumed(limit, tokens, Duration::ZERO, start);
        assert_eq!(carried.charge(10, start), Verdict::Refused, "no fresh budget");
        let later = SharedBudget::resumed(limit, tokens, Duration::from_secs(1), start);
        for _ in 0..10 {
            assert_eq!(later.charge(10, start), Verdict::Allowed, "refilled for its age");
        }
        assert_eq!(later.charge(10, start), Verdict::Refused);
        assert!(SharedBudget::new(None, start).tokens(start).is_none());
        assert!(SharedBudget::resumed(None, tokens, Duration::ZERO, start).tokens(start).is_none());
    }

    #[test]
    fn no_limit_allows_everything() {
        let start = Instant::now();
        let mut budget = Budget::new(None, start);
        let shared = SharedBudget::new(None, start);
        for _ in 0..100_000 {
            assert_eq!(budget.charge(65536, start), Verdict::Allowed);
            assert_eq!(shared.charge(65536, start), Verdict::Allowed);
        }
    }
}
