//! A bounded queue of frames waiting to be written to one client.
//!
//! The same queue serves two lives of a member: while it is connected it is the connection's
//! outbound queue (drained by the connection's writer), and while it is suspended (its socket
//! gone, its grace period running) it holds what the member will get when it resumes. Moving the
//! queue between the two keeps every frame in order and delivered once.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;

/// One outbound WebSocket text frame. Cloning is cheap (reference-counted bytes), so a
/// broadcast shares one buffer among all recipients.
pub type Frame = Utf8Bytes;

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
    pub fn push(&mut self, frame: Frame, bound: Bound) -> Result<(), Overflow> {
        if self.frames.len() >= bound.frames || self.bytes + frame.len() > bound.bytes {
            return Err(Overflow(frame));
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Appends without a bound check: only for frames that were already counted elsewhere
    /// (a queue moving from a suspended member to its new connection).
    fn push_unbounded(&mut self, frame: Frame) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Appends all of `other`, in order, after what this queue holds.
    pub fn append(&mut self, other: Outbox) {
        for frame in other.frames {
            self.push_unbounded(frame);
        }
    }

    /// Takes everything queued, oldest first, leaving the queue empty.
    pub fn take_all(&mut self) -> Vec<Frame> {
        self.bytes = 0;
        Vec::from(std::mem::take(&mut self.frames))
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Bound = Bound { frames: 2, bytes: 10 };

    #[test]
    fn refuses_past_either_bound_and_keeps_order() {
        let mut outbox = Outbox::default();
        outbox.push("abc".into(), SMALL).expect("fits");
        outbox.push("defg".into(), SMALL).expect("fits");
        assert!(outbox.push("h".into(), SMALL).is_err(), "frame bound");
        let mut bytes_bound = Outbox::default();
        bytes_bound.push("123456".into(), SMALL).expect("fits");
        assert!(bytes_bound.push("12345".into(), SMALL).is_err(), "byte bound");
        let taken: Vec<String> = outbox.take_all().iter().map(|f| f.as_str().to_owned()).collect();
        assert_eq!(taken, ["abc", "defg"]);
        assert!(outbox.is_empty());
        outbox.push("again".into(), SMALL).expect("bytes were released by take_all");
    }

    #[test]
    fn append_keeps_both_queues_in_order() {
        let mut first = Outbox::default();
        first.push("1".into(), SMALL).expect("fits");
        let mut second = Outbox::default();
        second.push("2".into(), SMALL).expect("fits");
        second.push("3".into(), SMALL).expect("fits");
        first.append(second);
        let taken: Vec<String> = first.take_all().iter().map(|f| f.as_str().to_owned()).collect();
        assert_eq!(taken, ["1", "2", "3"]);
    }
}
