//! Outbound frames: their type, what they cost, the server-wide count of queued bytes, and the
//! small queue a connection has of its own (the `welcome` and the errors before it joins).
//! A member's numbered messages live in its journal (`rooms/journal.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tungstenite::Utf8Bytes;

/// One outbound WebSocket text frame. Cloning is cheap (reference-counted bytes): the copy a
/// writer takes and the one the journal retains share one buffer.
pub type Frame = Utf8Bytes;

/// What a queued frame costs besides its text: the queue slot, the shared-buffer header and the
/// allocator's rounding. Counted so that a flood of tiny frames cannot hide behind their size.
pub const FRAME_OVERHEAD: usize = 64;

/// The bytes a queued frame holds, as counted against `--max-queued-bytes`.
pub fn cost(frame: &Frame) -> usize {
    frame.len() + FRAME_OVERHEAD
}

/// The server-wide count of bytes held in every outbound, resume and retention queue, and the
/// bound on it (`--max-queued-bytes`). Each shard of the rooms owns one handle; the total is one
/// atomic that every handle adds to and subtracts from, so the bound holds for the whole server
/// whichever shard queues (no lock is shared for it). Each handle also keeps its own share, so
/// that a shard can check that what it holds is what it counted.
#[derive(Debug)]
pub struct QueuedBytes {
    /// What this handle's owner holds.
    own: usize,
    total: Arc<AtomicUsize>,
    limit: usize,
}

impl QueuedBytes {
    /// A count of its own (one shard, or a test).
    pub fn new(limit: usize) -> Self {
        Self { own: 0, total: Arc::new(AtomicUsize::new(0)), limit }
    }

    /// Another handle on the same server-wide total, starting with nothing of its own.
    pub fn share(&self) -> Self {
        Self { own: 0, total: Arc::clone(&self.total), limit: self.limit }
    }

    /// Bytes queued server-wide.
    pub fn bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes this handle's owner holds.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn own(&self) -> usize {
        self.own
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn add(&mut self, size: usize) {
        self.own += size;
        self.total.fetch_add(size, Ordering::Relaxed);
    }

    pub fn sub(&mut self, size: usize) {
        debug_assert!(size <= self.own, "released more queued bytes than were counted");
        let size = size.min(self.own);
        self.own -= size;
        self.total.fetch_sub(size, Ordering::Relaxed);
    }

    /// `size` of what this owner holds moves to `to`'s owner (a connection moving between
    /// shards); the server-wide total does not change.
    pub fn hand_over(&mut self, size: usize, to: &mut QueuedBytes) {
        debug_assert!(size <= self.own, "handed over more queued bytes than were counted");
        let size = size.min(self.own);
        self.own -= size;
        to.own += size;
    }
}

/// A server message still open for its number: the JSON object without its closing brace.
/// [`OpenFrame::stamp`] appends `,"seq":N}`. A relayed signal is built this way outside the
/// rooms lock with room reserved for the number, so stamping it under the lock writes a few
/// bytes and never copies or parses the signal again.
#[derive(Debug, Clone)]
pub struct OpenFrame(String);

/// `,"seq":` + the longest u64 + `}`.
const STAMP_ROOM: usize = 7 + 20 + 1;

impl OpenFrame {
    /// `json` must be a JSON object (`{...}`); it is reopened.
    pub fn from_object(json: String) -> Self {
        let mut text = json;
        debug_assert!(text.ends_with('}'), "not a JSON object: {text}");
        text.pop();
        text.reserve_exact(STAMP_ROOM);
        Self(text)
    }

    /// Starts a frame of about `len` bytes; complete the object's fields with [`Self::push_str`].
    pub fn with_capacity(len: usize) -> Self {
        Self(String::with_capacity(len + STAMP_ROOM))
    }

    pub fn push_str(&mut self, text: &str) {
        self.0.push_str(text);
    }

    /// The length [`Self::stamp`] with `seq` will give, so that the bound can be checked
    /// before the frame is finished (and handed back if it does not fit).
    pub fn stamped_len(&self, seq: u64) -> usize {
        let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
        self.0.len() + r#","seq":}"#.len() + digits
    }

    /// The finished frame, numbered `seq`.
    pub fn stamp(mut self, seq: u64) -> Frame {
        // Digits by hand: `write!` went through `core::fmt` (three `write_str` calls and the
        // integer padding) for every relayed signal, about 3% of the server's instructions.
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = seq;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.0.push_str(r#","seq":"#);
        // ASCII digits, pushed as chars: `str::from_utf8` of them was a sixth of this function.
        self.0.extend(digits[at..].iter().map(|&digit| char::from(digit)));
        self.0.push('}');
        Frame::from(self.0)
    }
}

/// How much an [`Outbox`] may hold before it counts as overflowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub frames: usize,
    pub bytes: usize,
}

impl Bound {
    pub fn scaled(self, factor: usize) -> Bound {
        Bound { frames: self.frames * factor, bytes: self.bytes * factor }
    }
}

/// A connection's own queue, before its member's journal takes over: the `welcome` and the
/// errors answering requests made before a join.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
}

/// The frame did not fit; it is handed back so that the caller decides where it goes.
#[derive(Debug)]
pub struct Overflow(pub Frame);

impl Outbox {
    /// Appends `frame` unless that would take the queue past `bound`.
    pub fn push(&mut self, frame: Frame, bound: Bound, usage: &mut QueuedBytes) -> Result<(), Overflow> {
        let size = cost(&frame);
        if self.frames.len() >= bound.frames || self.bytes + size > bound.bytes {
            return Err(Overflow(frame));
        }
        self.bytes += size;
        usage.add(size);
        self.frames.push_back(frame);
        Ok(())
    }

    /// Moves everything queued, oldest first, to `out`; returns its cost.
    pub fn take_all(&mut self, out: &mut Vec<Frame>, usage: &mut QueuedBytes) -> usize {
        let taken = std::mem::take(&mut self.bytes);
        usage.sub(taken);
        // The queue itself goes too: it holds a `welcome` and a few errors once, and an idle
        // connection should not keep their slots (docs/benchmarks.md, idle connections).
        out.extend(std::mem::take(&mut self.frames));
        taken
    }

    /// Drops everything queued (its connection is gone).
    pub fn clear(&mut self, usage: &mut QueuedBytes) {
        usage.sub(std::mem::take(&mut self.bytes));
        self.frames.clear();
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Bound = Bound { frames: 2, bytes: 2 * FRAME_OVERHEAD + 10 };

    #[test]
    fn stamp_appends_the_number_and_stamped_len_is_its_length() {
        for seq in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            let mut open = OpenFrame::with_capacity(16);
            open.push_str(r#"{"type":"signal""#);
            let expected = open.stamped_len(seq);
            let stamped = open.stamp(seq);
            assert_eq!(stamped.len(), expected, "seq {seq}");
            assert_eq!(stamped.as_str(), format!(r#"{{"type":"signal","seq":{seq}}}"#));
        }
    }

    #[test]
    fn refuses_past_either_bound_keeps_order_and_counts_every_byte() {
        let mut usage = QueuedBytes::new(usize::MAX);
        let mut outbox = Outbox::default();
        outbox.push("abc".into(), SMALL, &mut usage).expect("fits");
        outbox.push("defg".into(), SMALL, &mut usage).expect("fits");
        assert!(outbox.push("h".into(), SMALL, &mut usage).is_err(), "frame bound");
        assert_eq!(usage.bytes(), 7 + 2 * FRAME_OVERHEAD);
        let mut bytes_bound = Outbox::default();
        bytes_bound.push("123456".into(), SMALL, &mut usage).expect("fits");
        assert!(bytes_bound.push("12345".into(), SMALL, &mut usage).is_err(), "byte bound");
        bytes_bound.clear(&mut usage);
        let mut taken = Vec::new();
        outbox.take_all(&mut taken, &mut usage);
        assert_eq!(taken.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["abc", "defg"]);
        assert!(outbox.is_empty());
        assert_eq!(usage.bytes(), 0);
        outbox.push("again".into(), SMALL, &mut usage).expect("bytes were released by take_all");
    }

    #[test]
    fn an_open_frame_is_stamped_into_valid_json() {
        let open = OpenFrame::from_object(r#"{"type":"peer_left","id":"a"}"#.to_owned());
        let frame = open.clone().stamp(u64::MAX);
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).expect("JSON");
        assert_eq!(value["seq"], u64::MAX);
        assert_eq!(value["id"], "a");
        let mut signal = OpenFrame::with_capacity(40);
        signal.push_str(r#"{"type":"signal","from":"x","signal":{"type":"candidate","candidate":null}"#);
        let value: serde_json::Value = serde_json::from_str(signal.stamp(7).as_str()).expect("JSON");
        assert_eq!((value["seq"].as_u64(), value["signal"]["candidate"].is_null()), (Some(7), true));
    }
}
