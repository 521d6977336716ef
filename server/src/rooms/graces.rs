//! Members in grace, in the order their grace runs out, and how many there are: the sweep looks
//! only at those whose time has come, and `/metrics` counts nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::ids::PeerId;

#[derive(Debug, Default)]
pub struct Graces {
    /// Every suspension of the last grace period, earliest end first. A member that resumed (or
    /// ended) meanwhile leaves its entry behind; [`super::Rooms::expire`] skips an entry whose
    /// member is not suspended until exactly that moment.
    due: BinaryHeap<Reverse<(Instant, PeerId)>>,
    suspended: usize,
}

impl Graces {
    /// `id` is suspended until `until`.
    pub fn suspend(&mut self, id: PeerId, until: Instant) {
        self.suspended += 1;
        self.due.push(Reverse((until, id)));
    }

    /// A suspended member is connected again, or ended.
    pub fn leave(&mut self) {
        debug_assert!(self.suspended > 0, "a member left grace that was not in it");
        self.suspended = self.suspended.saturating_sub(1);
    }

    /// Members suspended now.
    pub fn count(&self) -> usize {
        self.suspended
    }

    /// The next suspension whose end has come by `now` (possibly a stale one), taken out.
    pub fn next_due(&mut self, now: Instant) -> Option<(Instant, PeerId)> {
        if self.due.peek().is_some_and(|Reverse((until, _))| *until <= now) {
            return self.due.pop().map(|Reverse(entry)| entry);
        }
        None
    }

    /// True when `id` has an entry ending at `until` (for the invariant check).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn holds(&self, id: &PeerId, until: Instant) -> bool {
        self.due.iter().any(|Reverse((at, held))| *at == until && held == id)
    }
}
