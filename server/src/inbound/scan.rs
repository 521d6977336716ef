//! One pass over a client frame: checks that the whole frame is JSON (RFC 8259) and notes, on
//! the way, where the values the protocol reads are, as slices of the frame. Nothing is decoded
//! or copied here; [`super`] decides what the fields mean.
//!
//! Only three objects have fields of interest: the message itself, its `signal`, and that
//! signal's `candidate`. Everything else is checked for syntax and skipped. A field named twice
//! in one of those objects is noted (a typed parse refuses it), and keys are compared as JSON
//! strings (`"t\u0079pe"` is `type`).

use super::specials::{self, BLOCK};

/// A known field's value: its exact text in the frame (a string keeps its quotes).
pub type Raw<'a> = &'a str;

/// The message's fields the protocol reads.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    pub kind: Option<Raw<'a>>,
    pub room: Option<Raw<'a>>,
    pub name: Option<Raw<'a>>,
    pub resume: Option<Raw<'a>>,
    pub token: Option<Raw<'a>>,
    pub last_seq: Option<Raw<'a>>,
    pub to: Option<Raw<'a>>,
    pub signal: Option<Raw<'a>>,
    /// A field above given twice.
    pub duplicate: Option<&'static str>,
    /// Some string of the frame (a key or a value, anywhere) has a `\u` escape of a surrogate,
    /// paired or not. JSON allows a lone one; text cannot hold it, so a typed parse refuses it.
    pub surrogate_escape: bool,
    /// Which of the fields above are strings without escapes (a bit per [`EnvelopeField`]):
    /// their text between the quotes is the string, with no second look for a `\`.
    plain: u16,
    /// The `signal` field's own fields, when it is an object.
    pub signal_fields: SignalFields<'a>,
}

#[derive(Debug, Default)]
pub struct SignalFields<'a> {
    pub kind: Option<Raw<'a>>,
    pub sdp: Option<Raw<'a>>,
    pub candidate: Option<Raw<'a>>,
    pub duplicate: bool,
    /// Which of the fields above are strings without escapes (a bit per [`SignalField`]).
    plain: u8,
    /// The `candidate` field's own fields, when it is an object.
    pub candidate_fields: CandidateFields<'a>,
}

/// The fields of an `RTCIceCandidateInit`.
#[derive(Debug, Default)]
pub struct CandidateFields<'a> {
    pub candidate: Option<Raw<'a>>,
    pub sdp_mid: Option<Raw<'a>>,
    pub sdp_m_line_index: Option<Raw<'a>>,
    pub username_fragment: Option<Raw<'a>>,
    pub duplicate: bool,
}

impl Envelope<'_> {
    /// Whether `field`'s value is a string without escapes.
    pub fn is_plain_string(&self, field: EnvelopeField) -> bool {
        self.plain & (1 << field as u16) != 0
    }
}

impl SignalFields<'_> {
    /// Whether `field`'s value is a string without escapes.
    pub fn is_plain_string(&self, field: SignalField) -> bool {
        self.plain & (1 << field as u8) != 0
    }
}

/// Why the frame is not JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    pub what: &'static str,
    pub at: usize,
}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Scans `text`, every byte once, noting the fields of interest in `envelope`: whether it is a
/// JSON object (`false`: JSON, but not an object), or where it stops being JSON.
pub fn scan<'a>(text: &'a str, envelope: &mut Envelope<'a>) -> Result<bool, NotJson> {
    let bytes = text.as_bytes();
    let mut scanner = Scanner {
        text,
        bytes,
        pos: 0,
        block_start: usize::MAX,
        block_mask: 0,
        nesting: Nesting::default(),
        surrogate_escape: false,
        error: NotJson { what: "", at: 0 },
    };
    let outcome = scanner.frame(envelope).map_err(|Failed| scanner.error);
    envelope.surrogate_escape = scanner.surrogate_escape;
    outcome
}

/// A scan stopped at something that is not JSON; [`Scanner::error`] says what. (A unit error keeps
/// every `Result` of the scanner in a register.)
struct Failed;

/// Which of the three interesting objects a container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Envelope,
    Signal,
    Candidate,
    Other,
}

/// Where a value goes once its end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Skip,
    Envelope(EnvelopeField),
    Signal(SignalField),
    Candidate(CandidateField),
}

/// The message's fields the protocol reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeField {
    Kind,
    Room,
    Name,
    Resume,
    Token,
    LastSeq,
    To,
    Signal,
}

/// The signal's fields the protocol reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalField {
    Kind,
    Sdp,
    Candidate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandidateField {
    Candidate,
    SdpMid,
    SdpMLineIndex,
    UsernameFragment,
}

impl Slot {
    fn for_key(role: Role, key: &str) -> Slot {
        match (role, key) {
            (Role::Envelope, "type") => Slot::Envelope(EnvelopeField::Kind),
            (Role::Envelope, "room") => Slot::Envelope(EnvelopeField::Room),
            (Role::Envelope, "name") => Slot::Envelope(EnvelopeField::Name),
            (Role::Envelope, "resume") => Slot::Envelope(EnvelopeField::Resume),
            (Role::Envelope, "token") => Slot::Envelope(EnvelopeField::Token),
            (Role::Envelope, "last_seq") => Slot::Envelope(EnvelopeField::LastSeq),
            (Role::Envelope, "to") => Slot::Envelope(EnvelopeField::To),
            (Role::Envelope, "signal") => Slot::Envelope(EnvelopeField::Signal),
            (Role::Signal, "type") => Slot::Signal(SignalField::Kind),
            (Role::Signal, "sdp") => Slot::Signal(SignalField::Sdp),
            (Role::Signal, "candidate") => Slot::Signal(SignalField::Candidate),
            (Role::Candidate, "candidate") => Slot::Candidate(CandidateField::Candidate),
            (Role::Candidate, "sdpMid") => Slot::Candidate(CandidateField::SdpMid),
            (Role::Candidate, "sdpMLineIndex") => Slot::Candidate(CandidateField::SdpMLineIndex),
            (Role::Candidate, "usernameFragment") => Slot::Candidate(CandidateField::UsernameFragment),
            _ => Slot::Skip,
        }
    }

    /// The role of an object that is this slot's value.
    fn role_of_object(self) -> Role {
        match self {
            Slot::Envelope(EnvelopeField::Signal) => Role::Signal,
            Slot::Signal(SignalField::Candidate) => Role::Candidate,
            _ => Role::Other,
        }
    }

    /// Stores `raw` as this slot's value (a repeated field is noted, the later value kept);
    /// `plain`: it is a string without escapes.
    fn fill<'a>(self, raw: Raw<'a>, plain: bool, envelope: &mut Envelope<'a>) {
        let (place, duplicate) = match self {
            Slot::Skip => return,
            Slot::Envelope(field) => {
                let (place, name) = match field {
                    EnvelopeField::Kind => (&mut envelope.kind, "type"),
                    EnvelopeField::Room => (&mut envelope.room, "room"),
                    EnvelopeField::Name => (&mut envelope.name, "name"),
                    EnvelopeField::Resume => (&mut envelope.resume, "resume"),
                    EnvelopeField::Token => (&mut envelope.token, "token"),
                    EnvelopeField::LastSeq => (&mut envelope.last_seq, "last_seq"),
                    EnvelopeField::To => (&mut envelope.to, "to"),
                    EnvelopeField::Signal => (&mut envelope.signal, "signal"),
                };
                if place.is_some() {
                    envelope.duplicate.get_or_insert(name);
                }
                *place = Some(raw);
                let bit = 1 << field as u16;
                envelope.plain = (envelope.plain & !bit) | (u16::from(plain) * bit);
                return;
            }
            Slot::Signal(field) => {
                let signal = &mut envelope.signal_fields;
                let bit = 1 << field as u8;
                signal.plain = (signal.plain & !bit) | (u8::from(plain) * bit);
                let place = match field {
                    SignalField::Kind => &mut signal.kind,
                    SignalField::Sdp => &mut signal.sdp,
                    SignalField::Candidate => &mut signal.candidate,
                };
                (place, &mut signal.duplicate)
            }
            Slot::Candidate(field) => {
                let candidate = &mut envelope.signal_fields.candidate_fields;
                let place = match field {
                    CandidateField::Candidate => &mut candidate.candidate,
                    CandidateField::SdpMid => &mut candidate.sdp_mid,
                    CandidateField::SdpMLineIndex => &mut candidate.sdp_m_line_index,
                    CandidateField::UsernameFragment => &mut candidate.username_fragment,
                };
                (place, &mut candidate.duplicate)
            }
        };
        *duplicate |= place.is_some();
        *place = Some(raw);
    }
}

/// The containers open inside a value being skipped, innermost last: whether each is an object
/// (one bit each, so any depth fits).
#[derive(Debug, Default)]
struct Nesting {
    depth: usize,
    /// Bits of the first 256 levels; deeper ones (only in pathological frames) spill over.
    inline: [u64; 4],
    spill: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, is_object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        let words = match self.inline.get_mut(word) {
            Some(w) => w,
            None => {
                let spilled = word - self.inline.len();
                if self.spill.len() <= spilled {
                    self.spill.push(0);
                }
                &mut self.spill[spilled]
            }
        };
        *words = (*words & !(1 << bit)) | (u64::from(is_object) << bit);
        self.depth += 1;
    }

    /// Closes the innermost container; returns whether the one around it is an object (`false`
    /// when none is left).
    fn pop(&mut self) -> bool {
        self.depth -= 1;
        let Some(level) = self.depth.checked_sub(1) else {
            return false;
        };
        let (word, bit) = (level / 64, level % 64);
        let words = self.inline.get(word).or_else(|| self.spill.get(word - self.inline.len()));
        words.is_some_and(|w| w & (1 << bit) != 0)
    }
}

/// The scan of one frame. The three objects of interest are read by [`Self::object`] (which
/// calls itself for the next one in: at most three deep); every other value is checked and
/// skipped by [`Self::value`], whose containers are walked without recursion.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// The 64-byte block of the frame that string bodies were last searched in (a multiple of
    /// [`BLOCK`], or `usize::MAX` before the first), and its [`specials::block_mask`]. The scan
    /// only moves forward, so each block's mask is computed once at most.
    block_start: usize,
    block_mask: u64,
    nesting: Nesting,
    /// See [`Envelope::surrogate_escape`].
    surrogate_escape: bool,
    /// Why the scan failed, once it has.
    error: NotJson,
}

impl<'a> Scanner<'a> {
    #[cold]
    fn fail(&mut self, what: &'static str) -> Failed {
        self.error = NotJson { what, at: self.pos };
        Failed
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline(always)]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The whole frame: one value with optional whitespace around it; whether it is an object.
    fn frame(&mut self, envelope: &mut Envelope<'a>) -> Result<bool, Failed> {
        self.skip_whitespace();
        let top_is_object = self.peek() == Some(b'{');
        if top_is_object {
            self.object(Role::Envelope, envelope)?;
        } else {
            self.value()?;
        }
        self.skip_whitespace();
        if self.pos < self.bytes.len() {
            return Err(self.fail("trailing characters"));
        }
        Ok(top_is_object)
    }

    /// One of the objects of interest, from its `{` to past its `}`: the value of each field
    /// `role` knows goes to its slot.
    fn object(&mut self, role: Role, envelope: &mut Envelope<'a>) -> Result<(), Failed> {
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let slot = match self.usual_key(role) {
                Some(slot) => slot,
                None => {
                    let slot = self.key(role)?;
                    self.skip_whitespace();
                    if self.peek() != Some(b':') {
                        return Err(self.fail("expected ':' after a key"));
                    }
                    self.pos += 1;
                    slot
                }
            };
            self.skip_whitespace();
            let start = self.pos;
            let plain = match slot.role_of_object() {
                inner @ (Role::Signal | Role::Candidate) if self.peek() == Some(b'{') => {
                    self.object(inner, envelope)?;
                    false
                }
                _ => self.value()?,
            };
            slot.fill(&self.text[start..self.pos], plain, envelope);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(self.fail("expected ',' or the container's end")),
                None => return Err(self.fail("end of frame inside an object or array")),
            }
        }
    }

    /// A key `role` knows, written as clients write it: `"type":` exactly (no escape, no space
    /// before the colon). Then its slot, with `pos` past the colon; otherwise `None` and nothing
    /// moved, for [`Self::key`] to read whatever is there. One comparison with the expected text
    /// instead of a string scan, a key match and a colon check per key of every signal.
    #[inline(always)]
    fn usual_key(&mut self, role: Role) -> Option<Slot> {
        use {CandidateField as C, EnvelopeField as E, SignalField as S};
        let rest = self.bytes.get(self.pos..)?;
        let known = |text: &'static [u8], slot: Slot| rest.starts_with(text).then_some((text.len(), slot));
        let (len, slot) = match (role, *rest.get(1)?) {
            (Role::Envelope, b't') => known(b"\"type\":", Slot::Envelope(E::Kind))
                .or_else(|| known(b"\"to\":", Slot::Envelope(E::To)))
                .or_else(|| known(b"\"token\":", Slot::Envelope(E::Token))),
            (Role::Envelope, b's') => known(b"\"signal\":", Slot::Envelope(E::Signal)),
            (Role::Envelope, b'r') => known(b"\"room\":", Slot::Envelope(E::Room))
                .or_else(|| known(b"\"resume\":", Slot::Envelope(E::Resume))),
            (Role::Envelope, b'n') => known(b"\"name\":", Slot::Envelope(E::Name)),
            (Role::Envelope, b'l') => known(b"\"last_seq\":", Slot::Envelope(E::LastSeq)),
            (Role::Signal, b't') => known(b"\"type\":", Slot::Signal(S::Kind)),
            (Role::Signal, b's') => known(b"\"sdp\":", Slot::Signal(S::Sdp)),
            (Role::Signal, b'c') => known(b"\"candidate\":", Slot::Signal(S::Candidate)),
            (Role::Candidate, b'c') => known(b"\"candidate\":", Slot::Candidate(C::Candidate)),
            (Role::Candidate, b's') => known(b"\"sdpMid\":", Slot::Candidate(C::SdpMid))
                .or_else(|| known(b"\"sdpMLineIndex\":", Slot::Candidate(C::SdpMLineIndex))),
            (Role::Candidate, b'u') => known(b"\"usernameFragment\":", Slot::Candidate(C::UsernameFragment)),
            _ => None,
        }?;
        self.pos += len;
        Some(slot)
    }

    /// An object's key, and the slot its value goes to.
    #[inline(always)]
    fn key(&mut self, role: Role) -> Result<Slot, Failed> {
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a string key"));
        }
        let start = self.pos;
        let escaped = self.string()?;
        let raw = &self.text[start..self.pos];
        if !escaped {
            return Ok(Slot::for_key(role, &raw[1..raw.len() - 1]));
        }
        // Rare: a key written with escapes means what it decodes to. One that does not decode
        // (a lone surrogate) names no field we know.
        Ok(serde_json::from_str::<String>(raw).map_or(Slot::Skip, |key| Slot::for_key(role, &key)))
    }

    /// Any value at the current position (after whitespace), checked and skipped; whether it is
    /// a string without escapes.
    #[inline(always)]
    fn value(&mut self) -> Result<bool, Failed> {
        match self.peek() {
            Some(b'{' | b'[') => self.container().map(|()| false),
            _ => self.scalar(),
        }
    }

    /// A string, number, `true`, `false` or `null` at the current position; whether it is a
    /// string without escapes.
    #[inline(always)]
    fn scalar(&mut self) -> Result<bool, Failed> {
        match self.peek() {
            Some(b'"') => self.string().map(|escaped| !escaped),
            Some(b'n') => self.literal(b"null").map(|()| false),
            Some(b't') => self.literal(b"true").map(|()| false),
            Some(b'f') => self.literal(b"false").map(|()| false),
            Some(b'-' | b'0'..=b'9') => self.number().map(|()| false),
            Some(_) => Err(self.fail("expected a value")),
            None => Err(self.fail("end of frame where a value was expected")),
        }
    }

    /// A container no field of which is read, from its `{` or `[` to past its matching close,
    /// at any depth, without recursion.
    #[inline(never)]
    fn container(&mut self) -> Result<(), Failed> {
        let around = self.nesting.depth;
        let mut in_object = self.peek() == Some(b'{');
        self.nesting.push(in_object);
        self.pos += 1;
        // Right after `{` or `[`: the container may close at once, and no comma comes first.
        let mut first = true;
        while self.nesting.depth > around {
            self.skip_whitespace();
            let close = if in_object { b'}' } else { b']' };
            match self.peek() {
                Some(b) if b == close => {
                    self.pos += 1;
                    in_object = self.nesting.pop();
                    first = false;
                    continue;
                }
                Some(b',') if !first => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(_) if first => {}
                Some(_) => return Err(self.fail("expected ',' or the container's end")),
                None => return Err(self.fail("end of frame inside an object or array")),
            }
            if in_object {
                if self.peek() != Some(b'"') {
                    return Err(self.fail("expected a string key"));
                }
                self.string()?;
                self.skip_whitespace();
                if self.peek() != Some(b':') {
                    return Err(self.fail("expected ':' after a key"));
                }
                self.pos += 1;
                self.skip_whitespace();
            }
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    in_object = open == b'{';
                    self.nesting.push(in_object);
                    self.pos += 1;
                    first = true;
                }
                _ => {
                    self.scalar()?;
                    first = false;
                }
            }
        }
        Ok(())
    }

    /// A string starting at `"`; returns whether it holds escapes. Keys, ids and candidates have
    /// none: one search to the closing quote.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Failed> {
        self.pos += 1;
        self.skip_plain();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            return Ok(false);
        }
        self.string_rest()
    }

    /// The rest of a string from a byte in its body that is not plain (an escape, the closing
    /// quote, a control character or the end of the frame).
    #[inline(never)]
    fn string_rest(&mut self) -> Result<bool, Failed> {
        let mut escaped = false;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 1,
                        Some(b'u') => {
                            let digits = self.bytes.get(self.pos + 1..self.pos + 5);
                            let Some(digits) = digits.filter(|d| d.iter().all(u8::is_ascii_hexdigit)) else {
                                return Err(self.fail("bad \\u escape"));
                            };
                            // U+D800 to U+DFFF: `d` then `8` to `f`, in either case.
                            self.surrogate_escape |= digits[0].eq_ignore_ascii_case(&b'd')
                                && matches!(digits[1].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f');
                            self.pos += 5;
                        }
                        _ => return Err(self.fail("bad escape")),
                    }
                }
                Some(_) => return Err(self.fail("control character in a string")),
                None => return Err(self.fail("end of frame inside a string")),
            }
            self.skip_plain();
        }
    }

    /// Skips string bytes that need no attention (not `"`, `\\` or a control character), to the
    /// next one that does, or to the end of the frame: the first bit set at or after `pos` in the
    /// masks of its block and the blocks after it.
    #[inline(always)]
    fn skip_plain(&mut self) {
        loop {
            let block = self.pos & !(BLOCK - 1);
            if block != self.block_start {
                self.block_start = block;
                self.block_mask = specials::block_mask(self.bytes, block);
            }
            // The bits past the frame's end are set, so this stops at the end at the latest.
            let ahead = self.block_mask >> (self.pos - block);
            if ahead != 0 {
                self.pos += ahead.trailing_zeros() as usize;
                return;
            }
            self.pos = block + BLOCK;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Failed> {
        if self.bytes.get(self.pos..self.pos + word.len()) != Some(word) {
            return Err(self.fail("expected null, true or false"));
        }
        self.pos += word.len();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), Failed> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.fail("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.fail("bad number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.fail("bad number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }
}
