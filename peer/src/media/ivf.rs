//! VP8 video: frames out of RTP packets, IVF files in and out.
//!
//! Written here rather than taken from `rtc::media::io::ivf_writer`, whose header carries the
//! size and frame count given up front and whose timestamps are frame numbers: INTERFACES.md asks
//! for the first keyframe's size in the header, a final frame count, and the RTP timestamps
//! (a 1/90,000 s time base, so a recording keeps the sender's real timing and pauses).

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;

/// RTP clock rate of VP8, and the IVF time base we write (1/90,000 s).
pub const VP8_CLOCK: u32 = 90_000;
/// The largest IVF file `--send-video` loads into memory.
pub const MAX_VIDEO_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Frame duration when the file's own timestamps say nothing usable (30 fps).
const DEFAULT_FRAME: Duration = Duration::from_nanos(33_333_333);

/// One complete VP8 frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Vp8Frame {
    pub data: Bytes,
    pub keyframe: bool,
    /// The RTP timestamp shared by the frame's packets.
    pub timestamp: u32,
}

/// Reassembles VP8 frames from RTP packets in arrival order (RFC 7741).
///
/// A gap in sequence numbers loses the frame it falls in, and every frame after it until the next
/// keyframe (they would decode against a missing reference); [`Vp8Assembler::take_lost`] then
/// says so once, so that the receiver asks the sender for a keyframe (PLI). Until the first
/// keyframe nothing comes out.
#[derive(Debug)]
pub struct Vp8Assembler {
    current: Option<(BytesMut, u32)>,
    next_sequence: Option<u16>,
    need_keyframe: bool,
    lost: bool,
}

impl Default for Vp8Assembler {
    fn default() -> Self {
        Vp8Assembler { current: None, next_sequence: None, need_keyframe: true, lost: false }
    }
}

impl Vp8Assembler {
    /// Takes one packet; returns the frame it completes, if any.
    pub fn push(&mut self, sequence: u16, timestamp: u32, marker: bool, payload: &Bytes) -> Option<Vp8Frame> {
        if let Some(expected) = self.next_sequence {
            let ahead = sequence.wrapping_sub(expected) as i16;
            if ahead < 0 {
                // A duplicate, or a retransmission of a packet already given up on.
                return None;
            }
            if ahead > 0 {
                self.current = None;
                self.need_keyframe = true;
                self.lost = true;
            }
        }
        self.next_sequence = Some(sequence.wrapping_add(1));
        if payload.is_empty() {
            return None; // padding
        }
        // A fresh descriptor parser per packet: webrtc-rs's keeps the optional fields of the
        // previous packet when the next one leaves them out.
        let mut descriptor = Vp8Packet::default();
        let Ok(data) = descriptor.depacketize(payload) else {
            // Unreadable: as good as lost.
            self.current = None;
            self.need_keyframe = true;
            self.lost = true;
            return None;
        };
        // A frame starts where S is set in partition 0 (RFC 7741 §4.2): S alone also marks
        // the start of later partitions.
        if descriptor.is_partition_head(payload) && payload[0] & 0x07 == 0 {
            self.current = Some((BytesMut::new(), timestamp));
        }
        let (frame, frame_timestamp) = self.current.as_mut()?;
        if *frame_timestamp != timestamp {
            // A packet of another frame without a start: the start was lost.
            self.current = None;
            return None;
        }
        frame.extend_from_slice(&data);
        if !marker {
            return None;
        }
        let (frame, timestamp) = self.current.take()?;
        let frame = frame.freeze();
        let keyframe = frame.first().is_some_and(|b| b & 0x01 == 0);
        if frame.is_empty() || (self.need_keyframe && !keyframe) {
            return None;
        }
        self.need_keyframe = false;
        Some(Vp8Frame { data: frame, keyframe, timestamp })
    }

    /// True once after frames were lost: time to ask for a keyframe.
    pub fn take_lost(&mut self) -> bool {
        std::mem::take(&mut self.lost)
    }
}

/// Width and height of a VP8 keyframe (RFC 6386 §9.1), `None` for anything else.
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((width, height))
}

/// Writes VP8 frames to an IVF file: the 32-byte header (with the first keyframe's size, and the
/// frame count once [`IvfWriter::finish`] runs), then per frame its size, its timestamp in
/// 1/90,000 s from the first frame, and its bytes.
#[derive(Debug)]
pub struct IvfWriter {
    out: BufWriter<File>,
    frames: u32,
    first_timestamp: Option<u32>,
    /// The last timestamp seen and how many times the 32-bit RTP clock wrapped before it.
    last_timestamp: u32,
    wraps: u64,
    sized: bool,
}

impl IvfWriter {
    /// Starts the file with a header that does not know the size yet.
    pub fn new(file: File) -> io::Result<IvfWriter> {
        let mut out = BufWriter::new(file);
        out.write_all(&header(0, 0, 0))?;
        Ok(IvfWriter { out, frames: 0, first_timestamp: None, last_timestamp: 0, wraps: 0, sized: false })
    }

    /// Appends a frame. The first one written must be a keyframe (the assembler sees to it).
    pub fn write(&mut self, frame: &Vp8Frame) -> io::Result<()> {
        if !self.sized
            && let Some((width, height)) = keyframe_size(&frame.data)
        {
            self.out.seek(SeekFrom::Start(12))?;
            self.out.write_all(&width.to_le_bytes())?;
            self.out.write_all(&height.to_le_bytes())?;
            self.out.seek(SeekFrom::End(0))?;
            self.sized = true;
        }
        let first = *self.first_timestamp.get_or_insert(frame.timestamp);
        if self.frames > 0
            && frame.timestamp < self.last_timestamp
            && self.last_timestamp - frame.timestamp > u32::MAX / 2
        {
            self.wraps += 1;
        }
        self.last_timestamp = frame.timestamp;
        let pts = (self.wraps << 32) + u64::from(frame.timestamp) - u64::from(first);
        let size = u32::try_from(frame.data.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&pts.to_le_bytes())?;
        self.out.write_all(&frame.data)?;
        self.frames += 1;
        Ok(())
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Writes the final frame count into the header and flushes to disk.
    pub fn finish(mut self) -> io::Result<u32> {
        self.out.seek(SeekFrom::Start(24))?;
        self.out.write_all(&self.frames.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(self.frames)
    }
}

fn header(width: u16, height: u16, frames: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(b"DKIF");
    h[4..6].copy_from_slice(&0u16.to_le_bytes()); // version
    h[6..8].copy_from_slice(&32u16.to_le_bytes()); // header size
    h[8..12].copy_from_slice(b"VP80");
    h[12..14].copy_from_slice(&width.to_le_bytes());
    h[14..16].copy_from_slice(&height.to_le_bytes());
    h[16..20].copy_from_slice(&VP8_CLOCK.to_le_bytes()); // time base denominator
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // time base numerator
    h[24..28].copy_from_slice(&frames.to_le_bytes());
    h
}

/// A VP8 IVF file loaded for `--send-video`: its frames and how long each is shown.
#[derive(Debug)]
pub struct VideoFile {
    pub frames: Vec<(Bytes, Duration)>,
}

impl VideoFile {
    /// Reads the whole file; a clear error for anything that is not a VP8 IVF with frames.
    pub fn load(path: &Path) -> Result<VideoFile, String> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("{shown}: {e}"))?;
        let size = file.metadata().map_err(|e| format!("{shown}: {e}"))?.len();
        if size > MAX_VIDEO_FILE_BYTES {
            return Err(format!("{shown}: {size} bytes; at most {MAX_VIDEO_FILE_BYTES} are loaded"));
        }
        let (mut reader, head) = rtc::media::io::ivf_reader::IVFReader::new(io::BufReader::new(file))
            .map_err(|e| format!("{shown}: not an IVF file ({e})"))?;
        if &head.four_cc != b"VP80" {
            return Err(format!(
                "{shown}: the IVF codec is {:?}, not VP8",
                String::from_utf8_lossy(&head.four_cc)
            ));
        }
        let mut raw = Vec::new();
        while let Ok((frame, frame_header)) = reader.parse_next_frame() {
            raw.push((frame.freeze(), frame_header.timestamp));
        }
        if raw.is_empty() {
            return Err(format!("{shown}: the IVF file holds no frames"));
        }
        if keyframe_size(&raw[0].0).is_none() {
            return Err(format!("{shown}: the first frame is not a VP8 keyframe"));
        }
        let tick = if head.timebase_denominator > 0 && head.timebase_numerator > 0 {
            Duration::from_secs_f64(f64::from(head.timebase_numerator) / f64::from(head.timebase_denominator))
        } else {
            DEFAULT_FRAME
        };
        let mut frames = Vec::with_capacity(raw.len());
        for i in 0..raw.len() {
            let shown_for = match raw.get(i + 1) {
                Some((_, next)) if *next > raw[i].1 => {
                    tick.saturating_mul(u32::try_from(next - raw[i].1).unwrap_or(1))
                }
                _ => DEFAULT_FRAME,
            };
            // A gap of a second or more would freeze the picture: keep the loop lively.
            frames.push((raw[i].0.clone(), shown_for.min(Duration::from_secs(1))));
        }
        Ok(VideoFile { frames })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 RTP payload: the 1-byte descriptor (S bit on the first packet), then `data`.
    fn packet(start: bool, data: &[u8]) -> Bytes {
        let mut p = vec![if start { 0x10 } else { 0x00 }];
        p.extend_from_slice(data);
        Bytes::from(p)
    }

    const KEY: [u8; 10] = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];

    #[test]
    fn keyframe_size_reads_width_and_height() {
        assert_eq!(keyframe_size(&KEY), Some((640, 480)));
        assert_eq!(keyframe_size(&[0x11, 0, 0, 0x9d, 1, 0x2a, 0, 0, 0, 0]), None);
        assert_eq!(keyframe_size(&[0x10]), None);
    }

    #[test]
    fn frames_start_at_a_keyframe_and_span_packets() {
        let mut a = Vp8Assembler::default();
        // A delta frame before any keyframe is dropped.
        assert_eq!(a.push(1, 100, true, &packet(true, &[0x01, 7, 7, 7])), None);
        assert_eq!(a.push(2, 200, false, &packet(true, &KEY[..5])), None);
        let frame = a.push(3, 200, true, &packet(false, &KEY[5..])).expect("a keyframe");
        assert!(frame.keyframe);
        assert_eq!(&frame.data[..], &KEY[..]);
        assert_eq!(frame.timestamp, 200);
        let delta = a.push(4, 300, true, &packet(true, &[0x01, 9, 9, 9])).expect("a delta frame");
        assert!(!delta.keyframe);
        assert!(!a.take_lost());
    }

    #[test]
    fn a_lost_packet_drops_frames_until_the_next_keyframe() {
        let mut a = Vp8Assembler::default();
        assert!(a.push(10, 1, true, &packet(true, &KEY)).is_some());
        // Packet 11 is lost: 12 completes a frame whose start is missing.
        assert_eq!(a.push(12, 2, true, &packet(false, &[5, 5, 5])), None);
        assert!(a.take_lost());
        assert!(!a.take_lost());
        assert_eq!(a.push(13, 3, true, &packet(true, &[0x01, 5, 5, 5])), None, "a delta frame after a loss");
        // A late retransmission of 11 is ignored.
        assert_eq!(a.push(11, 2, false, &packet(true, &[0x01, 0, 0])), None);
        assert!(a.push(14, 4, true, &packet(true, &KEY)).is_some());
    }

    #[test]
    fn the_ivf_header_takes_the_keyframe_size_and_the_final_count() {
        let dir = std::env::temp_dir().join(format!("ivf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("a.ivf");
        let mut w = IvfWriter::new(File::create(&path).expect("create")).expect("writer");
        let key = Vp8Frame { data: Bytes::from_static(&KEY), keyframe: true, timestamp: u32::MAX - 1499 };
        w.write(&key).expect("write");
        // The RTP clock wraps between the frames: the timestamp keeps counting up.
        w.write(&Vp8Frame { data: Bytes::from_static(&[1, 2]), keyframe: false, timestamp: 1500 })
            .expect("write");
        assert_eq!(w.finish().expect("finish"), 2);
        let bytes = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(&bytes[0..4], b"DKIF");
        assert_eq!(&bytes[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 640);
        assert_eq!(u16::from_le_bytes([bytes[14], bytes[15]]), 480);
        assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap_or_default()), 90_000);
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap_or_default()), 2);
        let second = 32 + 12 + KEY.len();
        assert_eq!(u64::from_le_bytes(bytes[second + 4..second + 12].try_into().unwrap_or_default()), 3000);
        assert_eq!(bytes.len(), second + 12 + 2);
    }
}
