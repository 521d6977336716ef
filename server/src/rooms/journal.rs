//! One member's messages, numbered: those not yet handed to a writer, and those already written
//! but kept so that a client whose socket died with them unread can ask for them again
//! (`last_seq`, PROTOCOL.md "Sequence numbers").
//!
//! The journal is a single queue with a cursor. Entries before the cursor were handed to a
//! connection's writer (retained); entries from the cursor on are pending. A resume moves the
//! cursor (back to `last_seq + 1`, or leaves it where it is for a v1 client), a failed write
//! moves it back to the first frame of the failed batch, and retention trims written entries
//! from the front. A message therefore lives in exactly one place whatever happens to the
//! member's sockets, and its number never changes.
//!
//! Positions count every entry ever pushed (numbered or not), so that the writer can name "the
//! first frame of my batch" even when the front has been trimmed meanwhile.

use std::collections::VecDeque;

use crate::outbox::{Bound, Frame, Overflow, QueuedBytes, cost};

#[derive(Debug)]
struct Entry {
    frame: Frame,
    /// `None`: an `error` answering a request of the connection that was current when it was
    /// queued. Errors keep their place among the numbered messages but are never replayed on
    /// another connection.
    seq: Option<u64>,
}

/// A resume asked for messages the journal no longer holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Trimmed;

#[derive(Debug)]
pub struct Journal {
    entries: VecDeque<Entry>,
    /// Position of `entries[0]`.
    front: u64,
    /// Position of the next entry to hand to a writer.
    cursor: u64,
    /// Errors before this position belong to an earlier connection and are skipped.
    connection_start: u64,
    /// The number the next numbered entry gets; the latest given is `next_seq - 1`.
    next_seq: u64,
    pending_frames: usize,
    pending_bytes: usize,
    /// Every entry's cost, pending and written.
    bytes: usize,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            front: 0,
            cursor: 0,
            connection_start: 0,
            next_seq: 1,
            pending_frames: 0,
            pending_bytes: 0,
            bytes: 0,
        }
    }
}

impl Journal {
    /// The number the next numbered message will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn end(&self) -> u64 {
        self.front + self.entries.len() as u64
    }

    /// Appends a message numbered [`Self::next_seq`] (the frame must carry that number) unless
    /// that would take the pending part past `pending`; then the frame is handed back and the
    /// number stays unused.
    pub fn push_numbered(
        &mut self,
        frame: Frame,
        pending: Bound,
        usage: &mut QueuedBytes,
    ) -> Result<(), Overflow> {
        self.push(Entry { frame, seq: Some(self.next_seq) }, pending, usage)
    }

    /// Appends an `error` for the current connection (not numbered, never replayed).
    pub fn push_error(
        &mut self,
        frame: Frame,
        pending: Bound,
        usage: &mut QueuedBytes,
    ) -> Result<(), Overflow> {
        self.push(Entry { frame, seq: None }, pending, usage)
    }

    fn push(&mut self, entry: Entry, pending: Bound, usage: &mut QueuedBytes) -> Result<(), Overflow> {
        let size = cost(&entry.frame);
        if self.pending_frames >= pending.frames || self.pending_bytes + size > pending.bytes {
            return Err(Overflow(entry.frame));
        }
        if entry.seq.is_some() {
            self.next_seq += 1;
        }
        self.entries.push_back(entry);
        self.pending_frames += 1;
        self.pending_bytes += size;
        self.bytes += size;
        usage.add(size);
        Ok(())
    }

    /// True when something waits for the writer.
    pub fn has_pending(&self) -> bool {
        self.cursor < self.end()
    }

    pub fn pending_frames(&self) -> usize {
        self.pending_frames
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Appends every pending frame to `out` and marks them written. Returns the position of the
    /// first one (for [`Self::rewind`]) and their total cost, or `None` if nothing was pending.
    pub fn take(&mut self, out: &mut Vec<Frame>) -> Option<(u64, usize)> {
        if !self.has_pending() {
            return None;
        }
        let start = self.cursor;
        let skip = (start - self.front) as usize;
        let mut taken = 0;
        for entry in self.entries.range(skip..) {
            taken += cost(&entry.frame);
            if entry.seq.is_some() || self.cursor >= self.connection_start {
                out.push(entry.frame.clone());
            }
            self.cursor += 1;
        }
        self.pending_frames = 0;
        self.pending_bytes = 0;
        Some((start, taken))
    }

    /// A batch taken from `position` on was not (surely) written: hand it out again. Entries
    /// trimmed meanwhile are gone; the rest is pending again, in order.
    pub fn rewind(&mut self, position: u64) {
        if position < self.cursor {
            self.move_cursor(position.max(self.front));
        }
    }

    /// A new connection takes over. With `last_seq`, everything numbered above it is pending
    /// (written or not), or [`Trimmed`] if the journal no longer holds `last_seq + 1`; without
    /// it, what was pending stays pending (v1). Errors queued for the old connection are
    /// dropped. Returns the `welcome.seq`: the number just before the first message to come.
    pub fn resume(&mut self, last_seq: Option<u64>) -> Result<u64, Trimmed> {
        let latest = self.next_seq - 1;
        let cursor = match last_seq {
            Some(handled) if handled >= latest => self.end(),
            Some(handled) => self.position_of(handled + 1).ok_or(Trimmed)?,
            None => self.cursor,
        };
        self.connection_start = self.end();
        self.move_cursor(cursor);
        let first_numbered = self.entries.range((cursor - self.front) as usize..).find_map(|e| e.seq);
        Ok(first_numbered.map_or(latest, |seq| seq - 1))
    }

    /// Checks, without changing anything, that a resume with `last_seq` can be served.
    pub fn can_resume(&self, last_seq: Option<u64>) -> bool {
        match last_seq {
            Some(handled) if handled < self.next_seq - 1 => self.position_of(handled + 1).is_some(),
            _ => true,
        }
    }

    fn position_of(&self, seq: u64) -> Option<u64> {
        // Numbered entries are in increasing order; errors in between are few.
        let index = self.entries.iter().position(|e| e.seq.is_some_and(|s| s >= seq))?;
        (self.entries[index].seq == Some(seq)).then_some(self.front + index as u64)
    }

    fn move_cursor(&mut self, position: u64) {
        self.cursor = position;
        let skip = (position - self.front) as usize;
        self.pending_frames = self.entries.len() - skip;
        self.pending_bytes = self.entries.range(skip..).map(|e| cost(&e.frame)).sum();
    }

    /// Drops written entries from the front: those before `written_before`, and as many more as
    /// it takes to bring the whole journal under `bound`. Pending entries are never dropped.
    pub fn trim(&mut self, written_before: u64, bound: Bound, usage: &mut QueuedBytes) {
        while self.front < self.cursor {
            let over = self.entries.len() > bound.frames || self.bytes > bound.bytes;
            if self.front >= written_before && !over {
                break;
            }
            let Some(entry) = self.entries.pop_front() else { break };
            let size = cost(&entry.frame);
            self.bytes -= size;
            usage.sub(size);
            self.front += 1;
        }
        // A member that went quiet keeps no slots: what a long-idle connection holds counts.
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
    }

    /// Position up to which entries have been handed to a writer.
    pub fn written_until(&self) -> u64 {
        self.cursor
    }

    /// True when written entries are retained (so a trim is due some time).
    pub fn retains_written(&self) -> bool {
        self.front < self.cursor
    }

    /// Releases every entry (the member ended).
    pub fn clear(&mut self, usage: &mut QueuedBytes) {
        usage.sub(self.bytes);
        *self = Journal { next_seq: self.next_seq, ..Journal::default() };
    }

    /// Every entry's cost, for the invariant check.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// An empty journal whose next message carries `next_seq` (a member whose earlier messages
    /// are numbered and kept elsewhere: Redis, with several instances).
    pub fn starting_at(next_seq: u64) -> Self {
        Journal { next_seq: next_seq.max(1), ..Journal::default() }
    }

    /// The latest seq handed to a writer (after a [`Self::rewind`], of what stayed written).
    pub fn written_seq(&self) -> u64 {
        let written = (self.cursor - self.front) as usize;
        if let Some(seq) = self.entries.range(..written).rev().find_map(|e| e.seq) {
            return seq;
        }
        match self.entries.range(written..).find_map(|e| e.seq) {
            Some(first_pending) => first_pending - 1,
            None => self.next_seq - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Bound = Bound { frames: 100, bytes: 1 << 20 };

    fn numbered(journal: &mut Journal, usage: &mut QueuedBytes) {
        let frame = format!("m{}", journal.next_seq()).into();
        journal.push_numbered(frame, ROOMY, usage).expect("fits");
    }

    fn texts(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.as_str()).collect()
    }

    #[test]
    fn resume_with_last_seq_replays_written_messages_after_it() {
        let mut usage = QueuedBytes::new(usize::MAX);
        let mut journal = Journal::default();
        for _ in 0..3 {
            numbered(&mut journal, &mut usage);
        }
        let mut out = Vec::new();
        assert_eq!(journal.take(&mut out).map(|(p, _)| p), Some(0));
        assert_eq!(texts(&out), ["m1", "m2", "m3"]);
        // The client handled m1 only: m2 and m3 died with its socket.
        assert_eq!(journal.resume(Some(1)), Ok(1));
        numbered(&mut journal, &mut usage);
        out.clear();
        journal.take(&mut out);
        assert_eq!(texts(&out), ["m2", "m3", "m4"]);
    }

    #[test]
    fn resume_without_last_seq_keeps_what_was_pending_and_drops_old_errors() {
        let mut usage = QueuedBytes::new(usize::MAX);
        let mut journal = Journal::default();
        numbered(&mut journal, &mut usage);
        journal.take(&mut Vec::new());
        numbered(&mut journal, &mut usage);
        journal.push_error("oops".into(), ROOMY, &mut usage).expect("fits");
        numbered(&mut journal, &mut usage);
        assert_eq!(journal.resume(None), Ok(1));
        let mut out = Vec::new();
        journal.take(&mut out);
        assert_eq!(texts(&out), ["m2", "m3"]);
    }

    #[test]
    fn a_trimmed_message_refuses_the_resume_and_a_future_last_seq_replays_nothing() {
        let mut usage = QueuedBytes::new(usize::MAX);
        let mut journal = Journal::default();
        for _ in 0..4 {
            numbered(&mut journal, &mut usage);
        }
        journal.take(&mut Vec::new());
        journal.trim(2, ROOMY, &mut usage);
        assert!(!journal.can_resume(Some(1)));
        assert_eq!(journal.resume(Some(1)), Err(Trimmed));
        assert!(journal.can_resume(Some(2)));
        assert_eq!(journal.resume(Some(99)), Ok(4));
        assert!(!journal.has_pending());
    }

    #[test]
    fn a_failed_write_is_handed_out_again_and_trimming_respects_the_bound() {
        let mut usage = QueuedBytes::new(usize::MAX);
        let mut journal = Journal::default();
        numbered(&mut journal, &mut usage);
        journal.take(&mut Vec::new());
        numbered(&mut journal, &mut usage);
        numbered(&mut journal, &mut usage);
        let (start, _) = journal.take(&mut Vec::new()).expect("two pending");
        journal.rewind(start);
        let mut out = Vec::new();
        journal.take(&mut out);
        assert_eq!(texts(&out), ["m2", "m3"]);
        journal.trim(0, Bound { frames: 1, bytes: usize::MAX }, &mut usage);
        assert_eq!(journal.entries.len(), 1);
        assert_eq!(usage.bytes(), journal.bytes());
        journal.clear(&mut usage);
        assert_eq!(usage.bytes(), 0);
    }

    #[test]
    fn the_pending_bound_refuses_without_using_a_number() {
        let mut usage = QueuedBytes::new(usize::MAX);
        let mut journal = Journal::default();
        let tight = Bound { frames: 1, bytes: 1 << 20 };
        journal.push_numbered("m1".into(), tight, &mut usage).expect("fits");
        assert!(journal.push_numbered("m2".into(), tight, &mut usage).is_err());
        assert_eq!(journal.next_seq(), 2);
    }
}
