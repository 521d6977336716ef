//! Opus audio in Ogg (RFC 7845): a writer for recordings and a packet reader for `--send-audio`.
//!
//! Not `rtc::media::io::ogg_writer`: it closes a stream by writing its last packet a second time
//! (with the previous page's sequence number) and starts the granule position at 1 whatever the
//! pre-skip; and its reader yields pages, while ffmpeg puts many packets on one page.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

/// Opus always counts in 48 kHz samples (granule positions, RTP timestamps).
pub const OPUS_CLOCK: u32 = 48_000;
/// Samples the decoder drops at the start: libopus's encoder delay at 48 kHz (6.5 ms). Browsers'
/// encoders are libopus.
const PRE_SKIP: u16 = 312;
/// The largest Ogg file `--send-audio` loads into memory.
pub const MAX_AUDIO_FILE_BYTES: u64 = 64 * 1024 * 1024;

const HEADER_BOS: u8 = 0x02;
const HEADER_EOS: u8 = 0x04;
const HEADER_CONTINUED: u8 = 0x01;

/// Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 §3.1); `None` for a
/// malformed packet.
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame size in units of 2.5 ms (120 samples).
    let units = match config {
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        12..=15 => [4, 8][usize::from(config % 2)],
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let samples = units * 120 * frames;
    // At most 120 ms per packet.
    (frames > 0 && samples <= 5760).then_some(samples)
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, initial value 0).
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

fn crc(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |c, b| (c << 8) ^ CRC_TABLE[usize::from((c >> 24) as u8 ^ b)])
}

/// Writes an Ogg Opus stream, one packet per page. The granule position of each page is the
/// pre-skip plus the samples up to the end of its packet, taken from the RTP timestamps (so a
/// pause in the sender, e.g. DTX, stays a pause); the last page carries end-of-stream.
#[derive(Debug)]
pub struct OggOpusWriter {
    out: BufWriter<File>,
    serial: u32,
    sequence: u32,
    first_timestamp: Option<u32>,
    last_timestamp: u32,
    wraps: u64,
    granule: u64,
    /// The last packet, written when the next one comes (or with end-of-stream at the end).
    pending: Option<(Bytes, u64)>,
    packets: u64,
}

impl OggOpusWriter {
    /// Writes the identification (`OpusHead`) and comment (`OpusTags`) headers.
    pub fn new(file: File, channels: u8) -> io::Result<OggOpusWriter> {
        let mut w = OggOpusWriter {
            out: BufWriter::new(file),
            serial: rand::random(),
            sequence: 0,
            first_timestamp: None,
            last_timestamp: 0,
            wraps: 0,
            granule: 0,
            pending: None,
            packets: 0,
        };
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels.max(1));
        head.extend_from_slice(&PRE_SKIP.to_le_bytes());
        head.extend_from_slice(&OPUS_CLOCK.to_le_bytes()); // input sample rate (informational)
        head.extend_from_slice(&0u16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono or stereo
        w.page(&head, HEADER_BOS, 0)?;
        let vendor = b"switchboard peer";
        let mut tags = Vec::with_capacity(24 + vendor.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        w.page(&tags, 0, 0)?;
        Ok(w)
    }

    /// Appends one Opus packet that arrived with RTP timestamp `timestamp`.
    pub fn write(&mut self, packet: Bytes, timestamp: u32) -> io::Result<()> {
        let Some(samples) = opus_samples(&packet) else {
            return Ok(()); // not Opus: skipped rather than breaking the file
        };
        if packet.len() > 255 * 254 {
            return Ok(()); // cannot be one page; no real Opus packet is this big
        }
        let first = *self.first_timestamp.get_or_insert(timestamp);
        if self.packets > 0
            && timestamp < self.last_timestamp
            && self.last_timestamp - timestamp > u32::MAX / 2
        {
            self.wraps += 1;
        }
        self.last_timestamp = timestamp;
        let start = (self.wraps << 32) + u64::from(timestamp) - u64::from(first);
        // Never backwards, whatever the timestamps say.
        let granule =
            (u64::from(PRE_SKIP) + start + u64::from(samples)).max(self.granule + u64::from(samples));
        self.granule = granule;
        if let Some((previous, previous_granule)) = self.pending.take() {
            self.page(&previous, 0, previous_granule)?;
        }
        self.pending = Some((packet, granule));
        self.packets += 1;
        Ok(())
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Writes the last page with end-of-stream and flushes to disk.
    pub fn finish(mut self) -> io::Result<u64> {
        match self.pending.take() {
            Some((packet, granule)) => self.page(&packet, HEADER_EOS, granule)?,
            None => self.page(&[], HEADER_EOS, 0)?,
        }
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(self.packets)
    }

    /// One page holding one whole packet (or none).
    fn page(&mut self, packet: &[u8], flags: u8, granule: u64) -> io::Result<()> {
        let mut lacing = vec![255u8; packet.len() / 255];
        if !packet.is_empty() {
            lacing.push((packet.len() % 255) as u8);
        }
        let mut page = Vec::with_capacity(27 + lacing.len() + packet.len());
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled below
        page.push(lacing.len() as u8);
        page.extend_from_slice(&lacing);
        page.extend_from_slice(packet);
        let sum = crc(&page);
        page[22..26].copy_from_slice(&sum.to_le_bytes());
        self.out.write_all(&page)?;
        self.sequence += 1;
        Ok(())
    }
}

/// An Ogg Opus file loaded for `--send-audio`: its packets and how long each lasts.
#[derive(Debug)]
pub struct AudioFile {
    pub packets: Vec<(Bytes, Duration)>,
    pub channels: u8,
}

impl AudioFile {
    /// Reads the first logical stream of the file; a clear error for anything that is not Ogg
    /// Opus with audio.
    pub fn load(path: &Path) -> Result<AudioFile, String> {
        let shown = path.display();
        let mut file = File::open(path).map_err(|e| format!("{shown}: {e}"))?;
        let size = file.metadata().map_err(|e| format!("{shown}: {e}"))?.len();
        if size > MAX_AUDIO_FILE_BYTES {
            return Err(format!("{shown}: {size} bytes; at most {MAX_AUDIO_FILE_BYTES} are loaded"));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| format!("{shown}: {e}"))?;
        let packets = ogg_packets(&bytes).map_err(|e| format!("{shown}: {e}"))?;
        let mut packets = packets.into_iter();
        let head = packets.next().ok_or_else(|| format!("{shown}: an empty Ogg stream"))?;
        if head.len() < 19 || &head[..8] != b"OpusHead" {
            return Err(format!("{shown}: not an Ogg Opus file (no OpusHead)"));
        }
        let channels = head[9];
        let tags = packets.next();
        if !tags.is_some_and(|t| t.starts_with(b"OpusTags")) {
            return Err(format!("{shown}: not an Ogg Opus file (no OpusTags)"));
        }
        let mut audio = Vec::new();
        for packet in packets {
            let Some(samples) = opus_samples(&packet) else { continue };
            let duration = Duration::from_micros(u64::from(samples) * 1_000_000 / u64::from(OPUS_CLOCK));
            audio.push((packet, duration));
        }
        if audio.is_empty() {
            return Err(format!("{shown}: the Ogg Opus file holds no audio"));
        }
        Ok(AudioFile { packets: audio, channels })
    }
}

/// The packets of the first logical stream in an Ogg file, joined across pages.
fn ogg_packets(bytes: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut packets = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut serial = None;
    let mut at = 0;
    while at < bytes.len() {
        let page = bytes.get(at..at + 27).ok_or("a truncated Ogg page")?;
        if &page[..4] != b"OggS" {
            return Err(format!("not an Ogg file (no page at byte {at})"));
        }
        let page_serial = u32::from_le_bytes([page[14], page[15], page[16], page[17]]);
        let segments = usize::from(page[26]);
        let lacing = bytes.get(at + 27..at + 27 + segments).ok_or("a truncated Ogg page")?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let body_start = at + 27 + segments;
        let body = bytes.get(body_start..body_start + body_len).ok_or("a truncated Ogg page")?;
        at = body_start + body_len;
        if *serial.get_or_insert(page_serial) != page_serial {
            continue; // another logical stream (e.g. video) is not ours
        }
        if page[5] & HEADER_CONTINUED == 0 {
            partial.clear();
        }
        let mut offset = 0;
        for &len in lacing {
            partial.extend_from_slice(&body[offset..offset + usize::from(len)]);
            offset += usize::from(len);
            if len < 255 {
                packets.push(Bytes::from(std::mem::take(&mut partial)));
            }
        }
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_packet_durations_follow_the_toc() {
        assert_eq!(opus_samples(&[0xfc]), Some(960), "CELT 20 ms, one frame (config 31)");
        assert_eq!(opus_samples(&[0x78]), Some(960), "hybrid 20 ms (config 15)");
        assert_eq!(opus_samples(&[0x09]), Some(960 * 2), "SILK 20 ms, two frames");
        assert_eq!(opus_samples(&[0x03, 0x03]), Some(480 * 3), "SILK 10 ms, code 3 with three frames");
        assert_eq!(opus_samples(&[0x03, 0x00]), None, "code 3 with no frames");
        assert_eq!(opus_samples(&[0x1b, 0x03]), None, "3 × 60 ms is over 120 ms");
        assert_eq!(opus_samples(&[]), None);
    }

    #[test]
    fn the_crc_is_the_ogg_one() {
        // CRC-32/CKSUM's check value is 0x765e7680; Ogg's is the same CRC without the final
        // inversion.
        assert_eq!(crc(b"123456789"), !0x765e_7680);
        assert_eq!(crc(b""), 0);
    }

    #[test]
    fn written_streams_read_back_with_headers_granules_and_end_of_stream() {
        let dir = std::env::temp_dir().join(format!("ogg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("a.ogg");
        let mut w = OggOpusWriter::new(File::create(&path).expect("create"), 2).expect("writer");
        let packet = Bytes::from(vec![0xfc; 300]); // 20 ms, spans two lacing values
        w.write(packet.clone(), 1000).expect("write");
        w.write(packet.clone(), 1960).expect("write");
        w.write(packet.clone(), 1960 + 960 * 5).expect("write after a pause");
        assert_eq!(w.finish().expect("finish"), 3);
        let bytes = std::fs::read(&path).expect("read");
        let file = AudioFile::load(&path).expect("loads back");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(file.channels, 2);
        assert_eq!(file.packets.len(), 3);
        assert!(file.packets.iter().all(|(p, d)| *p == packet && *d == Duration::from_millis(20)));
        // Five pages: two headers and three packets; BOS first, EOS last, granules rising.
        let mut at = 0;
        let mut pages = Vec::new();
        while at < bytes.len() {
            let flags = bytes[at + 5];
            let granule = u64::from_le_bytes(bytes[at + 6..at + 14].try_into().unwrap_or_default());
            let mut page = bytes[at..].to_vec();
            let segments = usize::from(page[26]);
            let len = 27 + segments + page[27..27 + segments].iter().map(|&l| usize::from(l)).sum::<usize>();
            page.truncate(len);
            let stored = u32::from_le_bytes(page[22..26].try_into().unwrap_or_default());
            page[22..26].fill(0);
            assert_eq!(crc(&page), stored, "page CRC");
            pages.push((flags, granule));
            at += len;
        }
        let pre = u64::from(PRE_SKIP);
        assert_eq!(pages, vec![(2, 0), (0, 0), (0, pre + 960), (0, pre + 1920), (4, pre + 960 * 7)]);
    }
}
