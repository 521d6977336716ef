//! One pass over a client frame: checks that the whole frame is JSON (RFC 8259) and notes, on
//! the way, where the values the protocol reads are, as slices of the frame. Nothing is decoded
//! or copied here; [`super`] decides what the fields mean.
//!
//! Only three objects have fields of interest: the message itself, its `signal`, and that
//! signal's `candidate`. Everything else is checked for syntax and skipped. A field named twice
//! in one of those objects is noted (a typed parse refuses it), and keys are compared as JSON
//! strings (`"t\u0079pe"` is `type`).

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
    /// The `signal` field's own fields, when it is an object.
    pub signal_fields: SignalFields<'a>,
}

#[derive(Debug, Default)]
pub struct SignalFields<'a> {
    pub kind: Option<Raw<'a>>,
    pub sdp: Option<Raw<'a>>,
    pub candidate: Option<Raw<'a>>,
    pub duplicate: bool,
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

/// Scans `text`, every byte once: its fields if it is a JSON object, `None` if it is JSON but
/// not an object.
pub fn scan(text: &str) -> Result<Option<Envelope<'_>>, NotJson> {
    let bytes = text.as_bytes();
    let mut scanner = Scanner {
        text,
        bytes,
        pos: 0,
        controls: has_control_byte(bytes),
        open: Open::default(),
        roles: [Role::Other; 3],
    };
    let mut envelope = Envelope::default();
    scanner.skip_whitespace();
    let top_is_object = scanner.peek() == Some(b'{');
    scanner.value(Slot::Top, &mut envelope)?;
    scanner.containers(&mut envelope)?;
    scanner.skip_whitespace();
    if scanner.pos < scanner.bytes.len() {
        return Err(scanner.fail("trailing characters"));
    }
    Ok(top_is_object.then_some(envelope))
}

/// Whether any byte is below 0x20 (a control character, or whitespace other than a space).
/// Compact JSON has none, and then a string's body ends only at `"` or `\`, so it can be skipped
/// with a vector search. The minimum of the bytes, unlike a search that stops at the first, is
/// computed with vector instructions (a few per 16 bytes).
fn has_control_byte(bytes: &[u8]) -> bool {
    bytes.iter().fold(u8::MAX, |lowest, &b| lowest.min(b)) < 0x20
}

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGH: u64 = u64::from_le_bytes([0x80; 8]);

/// The high bit of every byte of `word` that is zero, and maybe of bytes above the first such
/// byte (a borrow runs upwards): the lowest bit set always marks the first zero byte.
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGH
}

/// The high bit of every byte of `word` that is below 0x20 (bytes of 0x80 and above never count:
/// `!word` clears them), with the same rule: the lowest bit set is exact.
fn control_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES * 0x20) & !word & HIGH
}

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
    Top,
    Skip,
    Envelope(EnvelopeField),
    Signal(SignalField),
    Candidate(CandidateField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvelopeField {
    Kind,
    Room,
    Name,
    Resume,
    Token,
    LastSeq,
    To,
    Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalField {
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
            Slot::Top => Role::Envelope,
            Slot::Envelope(EnvelopeField::Signal) => Role::Signal,
            Slot::Signal(SignalField::Candidate) => Role::Candidate,
            _ => Role::Other,
        }
    }

    /// Stores `raw` as this slot's value (a repeated field is noted, the later value kept).
    fn fill<'a>(self, raw: Raw<'a>, envelope: &mut Envelope<'a>) {
        let (place, duplicate) = match self {
            Slot::Top | Slot::Skip => return,
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
                return;
            }
            Slot::Signal(field) => {
                let signal = &mut envelope.signal_fields;
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

/// The containers open at the scanner's position, innermost last: whether each is an object
/// (one bit each, so any depth fits), and for the four outermost (the three objects of interest
/// and their fields' values), where they started and which slot takes them when they close.
#[derive(Debug, Default)]
struct Open {
    depth: usize,
    /// Bits of the first 256 levels; deeper ones (only in pathological frames) spill over.
    inline: [u64; 4],
    spill: Vec<u64>,
    outer: [(usize, Option<Slot>); 4],
}

impl Open {
    fn push(&mut self, is_object: bool, start: usize, slot: Slot) {
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
        if let Some(outer) = self.outer.get_mut(self.depth) {
            *outer = (start, Some(slot));
        }
        self.depth += 1;
    }

    /// The innermost container is an object.
    fn in_object(&self) -> bool {
        let at = self.depth - 1;
        let (word, bit) = (at / 64, at % 64);
        let words = self.inline.get(word).or_else(|| self.spill.get(word - self.inline.len()));
        words.is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Closes the innermost container; returns where it started and its slot if it is one of
    /// the outer four.
    fn pop(&mut self) -> Option<(usize, Slot)> {
        self.depth -= 1;
        let (start, slot) = *self.outer.get(self.depth)?;
        slot.map(|slot| (start, slot))
    }
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// The frame has a byte below 0x20 somewhere ([`has_control_byte`]): string bodies must be
    /// checked for them.
    controls: bool,
    open: Open,
    /// The role of each of the three outermost containers.
    roles: [Role; 3],
}

impl<'a> Scanner<'a> {
    fn fail(&self, what: &'static str) -> NotJson {
        NotJson { what, at: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn role(&self) -> Role {
        self.roles.get(self.open.depth - 1).copied().unwrap_or(Role::Other)
    }

    /// One value at the current position (after whitespace). A scalar is read whole and stored
    /// in `slot`; a container is opened, and [`Self::containers`] reads its contents.
    fn value(&mut self, slot: Slot, envelope: &mut Envelope<'a>) -> Result<(), NotJson> {
        self.skip_whitespace();
        let start = self.pos;
        match self.peek() {
            Some(open @ (b'{' | b'[')) => {
                let is_object = open == b'{';
                if let Some(role) = self.roles.get_mut(self.open.depth) {
                    *role = if is_object { slot.role_of_object() } else { Role::Other };
                }
                self.open.push(is_object, start, slot);
                self.pos += 1;
                return Ok(());
            }
            Some(b'"') => {
                self.string()?;
            }
            Some(b'n') => self.literal(b"null")?,
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.fail("expected a value")),
            None => return Err(self.fail("end of frame where a value was expected")),
        }
        slot.fill(&self.text[start..self.pos], envelope);
        Ok(())
    }

    /// Reads the contents of open containers until none is open.
    fn containers(&mut self, envelope: &mut Envelope<'a>) -> Result<(), NotJson> {
        // Right after `{` or `[`: the container may close at once, and no comma comes first.
        let mut first = self.open.depth > 0;
        while self.open.depth > 0 {
            self.skip_whitespace();
            let in_object = self.open.in_object();
            let close = if in_object { b'}' } else { b']' };
            match self.peek() {
                Some(b) if b == close => {
                    self.pos += 1;
                    if let Some((start, slot)) = self.open.pop() {
                        slot.fill(&self.text[start..self.pos], envelope);
                    }
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
            let slot = if in_object {
                let key = self.key()?;
                self.skip_whitespace();
                if self.peek() != Some(b':') {
                    return Err(self.fail("expected ':' after a key"));
                }
                self.pos += 1;
                key
            } else {
                Slot::Skip
            };
            let depth = self.open.depth;
            self.value(slot, envelope)?;
            first = self.open.depth > depth;
        }
        Ok(())
    }

    /// An object's key, and the slot its value goes to.
    fn key(&mut self) -> Result<Slot, NotJson> {
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a string key"));
        }
        let start = self.pos;
        let escaped = self.string()?;
        let role = self.role();
        if role == Role::Other {
            return Ok(Slot::Skip);
        }
        let raw = &self.text[start..self.pos];
        if !escaped {
            return Ok(Slot::for_key(role, &raw[1..raw.len() - 1]));
        }
        // Rare: a key written with escapes means what it decodes to. One that does not decode
        // (a lone surrogate) names no field we know.
        Ok(serde_json::from_str::<String>(raw).map_or(Slot::Skip, |key| Slot::for_key(role, &key)))
    }

    /// A string starting at `"`; returns whether it holds escapes.
    fn string(&mut self) -> Result<bool, NotJson> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.skip_plain();
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
                            if !digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.fail("bad \\u escape"));
                            }
                            self.pos += 5;
                        }
                        _ => return Err(self.fail("bad escape")),
                    }
                }
                Some(_) => return Err(self.fail("control character in a string")),
                None => return Err(self.fail("end of frame inside a string")),
            }
        }
    }

    /// Skips string bytes that need no attention (not `"`, `\\` or a control character), to the
    /// next one that does, or to the end of the frame. Eight at a time, then, in a frame without
    /// control characters, by memchr's vector search: SDP and candidates are long runs of such
    /// bytes, keys and ids are short ones.
    fn skip_plain(&mut self) {
        while let Some(chunk) = self.bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<8>) {
            let word = u64::from_le_bytes(*chunk);
            let mut special =
                zero_bytes(word ^ (ONES * u64::from(b'"'))) | zero_bytes(word ^ (ONES * u64::from(b'\\')));
            if self.controls {
                special |= control_bytes(word);
            }
            if special != 0 {
                self.pos += special.trailing_zeros() as usize / 8;
                return;
            }
            self.pos += 8;
            if !self.controls {
                let rest = &self.bytes[self.pos..];
                self.pos += memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                return;
            }
        }
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                return;
            }
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), NotJson> {
        if self.bytes.get(self.pos..self.pos + word.len()) != Some(word) {
            return Err(self.fail("expected null, true or false"));
        }
        self.pos += word.len();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), NotJson> {
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
