//! A deliberately cheap WebSocket client for the relay load.
//!
//! With the server pinned to one core and the generator to the other, the generator must spend
//! far less per signal than any server does, or it measures itself: the tungstenite client cost
//! about as much per signal as the servers (a `String` per frame built with `format!`, a
//! `Message` allocated per frame received, one flush per batch), so both servers came out at the
//! generator's ~60k signals/s. Here the upgrade is done by hand, each signal is copied from a
//! template with only its marker digits patched, masked in place with a fixed key, and batched
//! into one write; received frames are found by scanning headers in one read buffer and only
//! the marker is read out of them. Servers see ordinary, correctly masked client frames.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::Proto;

/// RFC 6455 wants an unpredictable key per frame; a fixed one costs the server exactly the same
/// unmasking work, which is what is measured here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const READ_CHUNK: usize = 64 * 1024;
/// Largest server frame accepted (the biggest relayed offer is ~1.3 KB).
const MAX_FRAME: usize = 1 << 20;
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

pub struct RawConn {
    stream: TcpStream,
    /// Received bytes; frames are parsed from `start`.
    input: Vec<u8>,
    start: usize,
    /// Frames waiting for the next `flush`.
    output: Vec<u8>,
}

/// A joined raw connection and the id the server gave it.
pub struct RawMember {
    pub conn: RawConn,
    pub id: String,
}

impl RawConn {
    async fn upgrade(proto: Proto, addr: SocketAddr, room: &str, client_id: &str) -> anyhow::Result<Self> {
        let url = proto.url(addr, room, client_id);
        let path = url.strip_prefix(&format!("ws://{addr}")).context("unexpected URL")?;
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn =
            RawConn { stream, input: Vec::with_capacity(READ_CHUNK), start: 0, output: Vec::new() };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.stream.write_all(request.as_bytes()).await?;
        let head_end = loop {
            if let Some(at) = memmem::find(&conn.input, b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(conn.input.len() < 16 * 1024, "upgrade response too long");
            conn.read_more().await?;
        };
        let head = String::from_utf8_lossy(&conn.input[..head_end]).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {}", head.lines().next().unwrap_or(""));
        conn.start = head_end;
        Ok(conn)
    }

    /// Connects, upgrades and joins; frames that arrive before the join is answered are dropped
    /// (presence messages; the load only counts signals sent after every member joined).
    pub async fn join(
        proto: Proto,
        addr: SocketAddr,
        room: &str,
        client_id: &str,
    ) -> anyhow::Result<RawMember> {
        let joined = async {
            let mut conn = Self::upgrade(proto, addr, room, client_id).await?;
            if let Some(frame) = proto.join_frame(room) {
                conn.push_text(frame.as_bytes());
                conn.flush().await?;
            }
            loop {
                let mut id = None;
                let mut refused = None;
                // The answer may have come in one read with the upgrade response.
                conn.take_frames(|text| {
                    if proto.is_error(text) {
                        refused = Some(String::from_utf8_lossy(text).into_owned());
                    } else if id.is_none() {
                        id = proto.joined(&String::from_utf8_lossy(text), client_id);
                    }
                })?;
                if let Some(refused) = refused {
                    bail!("join refused: {refused}");
                }
                if let Some(id) = id {
                    return Ok(RawMember { conn, id });
                }
                conn.read_more().await?;
            }
        };
        tokio::time::timeout(JOIN_TIMEOUT, joined)
            .await
            .with_context(|| format!("{} did not answer a join within {JOIN_TIMEOUT:?}", proto.label()))?
    }

    /// Appends a masked text frame.
    pub fn push_text(&mut self, payload: &[u8]) {
        push_masked(&mut self.output, OP_TEXT, payload);
    }

    /// Appends a signal frame from its (already masked) template, marked with `seq` and `t_us`.
    pub fn push_template(&mut self, template: &SignalTemplate, seq: u64, t_us: u64) {
        let at = self.output.len();
        self.output.extend_from_slice(&template.frame);
        let frame = &mut self.output[at..];
        write_masked_digits(frame, template.seq_at, seq, 10);
        write_masked_digits(frame, template.t_at, t_us, 16);
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Waits for more bytes from the server. Cancel-safe: a cancelled read has read nothing.
    pub async fn read_more(&mut self) -> anyhow::Result<()> {
        if self.start > 0 && self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.input.drain(..self.start);
            self.start = 0;
        }
        // Reads into spare capacity: a cancelled read leaves `input` as it was.
        self.input.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.input).await?;
        ensure!(n > 0, "server closed the connection");
        Ok(())
    }

    /// Hands every complete text frame's payload to `on_text`; answers pings; fails on close.
    pub fn take_frames(&mut self, mut on_text: impl FnMut(&[u8])) -> anyhow::Result<()> {
        loop {
            let rest = &self.input[self.start..];
            let Some((opcode, header, len)) = parse_header(rest)? else { return Ok(()) };
            if rest.len() < header + len {
                return Ok(());
            }
            let payload = &rest[header..header + len];
            match opcode {
                OP_TEXT => on_text(payload),
                OP_PING => {
                    let payload = payload.to_vec();
                    push_masked(&mut self.output, OP_PONG, &payload);
                }
                OP_CLOSE => {
                    bail!("server closed: {}", String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])))
                }
                _ => {}
            }
            self.start += header + len;
        }
    }

    /// Sends a close frame and shuts the socket down; errors are irrelevant at this point.
    pub async fn close(mut self) {
        push_masked(&mut self.output, OP_CLOSE, &1000_u16.to_be_bytes());
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// (opcode, header length, payload length) of the server frame at the start of `bytes`, or None
/// if the header is not complete yet. Server frames are unmasked and, here, never fragmented.
fn parse_header(bytes: &[u8]) -> anyhow::Result<Option<(u8, usize, usize)>> {
    let [first, second, ..] = *bytes else { return Ok(None) };
    ensure!(first & 0x80 != 0, "fragmented frame from the server");
    ensure!(second & 0x80 == 0, "masked frame from the server");
    let (header, len) = match second & 0x7f {
        126 => match bytes.get(2..4) {
            Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as usize),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => (10, u64::from_be_bytes(b.try_into()?) as usize),
            None => return Ok(None),
        },
        short => (2, short as usize),
    };
    ensure!(len <= MAX_FRAME, "server frame of {len} bytes");
    Ok(Some((first & 0x0f, header, len)))
}

/// Appends a final, masked client frame.
fn push_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ MASK[i % 4]));
}

/// A signal frame, masked, whose marker digits can be rewritten in place.
pub struct SignalTemplate {
    frame: Vec<u8>,
    /// Where the marker's sequence number and send time digits are.
    seq_at: MaskedAt,
    t_at: MaskedAt,
}

#[derive(Clone, Copy)]
struct MaskedAt {
    /// The first digit's offset in the frame.
    offset: usize,
    /// The digit's position in the payload modulo 4: which mask byte covers it.
    phase: usize,
}

impl SignalTemplate {
    /// `proto`'s signal to `to`, in its candidate-sized (`offer: false`) or SDP-sized shape.
    pub fn new(proto: Proto, to: &str, offer: bool) -> Self {
        // Sequence 0 and 16 are offers, 1 a candidate (see `Proto::signal_frame`).
        let text = proto.signal_frame(to, if offer { 0 } else { 1 }, 0);
        let marker = text.find("seq=").expect("every signal frame carries a marker");
        let mut frame = Vec::with_capacity(text.len() + 14);
        push_masked(&mut frame, OP_TEXT, text.as_bytes());
        let payload_at = frame.len() - text.len();
        let at = |in_payload: usize| MaskedAt { offset: payload_at + in_payload, phase: in_payload % 4 };
        SignalTemplate { frame, seq_at: at(marker + 4), t_at: at(marker + 17) }
    }
}

/// Writes `value` as `width` zero-padded decimal digits into a masked frame at `at`.
fn write_masked_digits(frame: &mut [u8], at: MaskedAt, mut value: u64, width: usize) {
    for i in (0..width).rev() {
        let digit = b'0' + (value % 10) as u8;
        value /= 10;
        frame[at.offset + i] = digit ^ MASK[(at.phase + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::marker;

    fn unmask(frame: &[u8]) -> String {
        let (header, len) = match frame[1] & 0x7f {
            126 => (8, u16::from_be_bytes([frame[2], frame[3]]) as usize),
            short => (6, short as usize),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        assert_eq!(&frame[header - 4..header], &MASK);
        let payload: Vec<u8> = frame[header..].iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
        assert_eq!(payload.len(), len);
        String::from_utf8(payload).expect("utf-8")
    }

    #[test]
    fn templates_patch_the_marker_through_the_mask() {
        for proto in [Proto::Switchboard, Proto::Matchbox, Proto::Peerjs] {
            for offer in [false, true] {
                let template = SignalTemplate::new(proto, "peer-7", offer);
                let mut frame = template.frame.clone();
                write_masked_digits(&mut frame, template.seq_at, 1_234_567, 10);
                write_masked_digits(&mut frame, template.t_at, 98_765, 16);
                let text = unmask(&frame);
                let expected = proto.signal_frame("peer-7", if offer { 0 } else { 1 }, 0);
                let _: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
                assert_eq!(marker(text.as_bytes()), Some((1_234_567, 98_765)), "{proto:?} offer={offer}");
                assert_eq!(text.len(), expected.len());
            }
        }
    }

    #[test]
    fn server_frame_headers() {
        assert_eq!(parse_header(&[0x81]).expect("ok"), None);
        assert_eq!(parse_header(&[0x81, 5]).expect("ok"), Some((OP_TEXT, 2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 0x01]).expect("ok"), None);
        assert_eq!(parse_header(&[0x81, 126, 0x01, 0x00]).expect("ok"), Some((OP_TEXT, 4, 256)));
        assert_eq!(parse_header(&[0x89, 0]).expect("ok"), Some((OP_PING, 2, 0)));
        assert!(parse_header(&[0x01, 5]).is_err(), "fragment");
        assert!(parse_header(&[0x81, 0x85]).is_err(), "masked");
    }
}
