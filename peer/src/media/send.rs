//! `--send-video` / `--send-audio`: a file played in a loop into one connection.
//!
//! Every link gets its own track and its own player, started from the file's first frame once
//! the connection is up: a peer that joins later gets the file from its start (a keyframe), and
//! a slow link never holds up the others. Whenever sending starts (the remote accepted the track,
//! maybe in a later renegotiation) or starts again, it starts at a keyframe.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use protocol::PeerId;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RtpSender};

use super::receive::negotiated_payload_type;
use super::{AudioFile, Kind, LinkMedia, VideoFile, codec, keyframes};

/// How far behind its schedule a player may fall (a busy machine) before it skips ahead
/// instead of sending a burst.
const MAX_LAG: Duration = Duration::from_secs(1);
/// How often a player that sends looks again whether the remote still takes its track.
const ACCEPTED_RECHECK: Duration = Duration::from_secs(1);
/// At most one restart at a keyframe per this long: a receiver repeats its request (Chromium
/// every 200 ms) until a keyframe decodes.
const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(500);

/// What to play.
pub(super) enum Source {
    Video(Arc<VideoFile>),
    Audio(Arc<AudioFile>),
}

impl Source {
    fn kind(&self) -> Kind {
        match self {
            Source::Video(_) => Kind::Video,
            Source::Audio(_) => Kind::Audio,
        }
    }

    fn frames(&self) -> &[(Bytes, Duration)] {
        match self {
            Source::Video(v) => &v.frames,
            Source::Audio(a) => &a.packets,
        }
    }

    /// Where sending may start at or before frame `at`: the keyframe before it for VP8 (a
    /// decoder needs one first), `at` itself for Opus (every packet decodes on its own).
    fn start_at_or_before(&self, at: usize) -> usize {
        match self {
            Source::Video(v) => (0..=at).rev().find(|&i| is_vp8_keyframe(&v.frames[i].0)).unwrap_or(0),
            Source::Audio(_) => at,
        }
    }
}

/// A VP8 frame's first byte has the "not a keyframe" flag in its lowest bit (RFC 6386, 9.1).
fn is_vp8_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// Adds a track for `source` to the connection (before its first offer or answer, so that it
/// is in it) and starts its player.
pub(super) async fn add(link: &LinkMedia, pc: &Arc<dyn PeerConnection>, tasks: &TaskTracker, source: Source) {
    let kind = source.kind();
    let ssrc = rand::random::<u32>();
    let rtp_kind = if kind == Kind::Video { RtpCodecKind::Video } else { RtpCodecKind::Audio };
    let codec = codec(kind);
    let mime = codec.mime_type.clone();
    let track = MediaStreamTrack::new(
        "switchboard".to_string(),
        kind.as_str().to_string(),
        format!("switchboard {}", kind.as_str()),
        rtp_kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        }],
    );
    let track = match TrackLocalStaticSample::new(std::time::Instant::now(), track) {
        Ok(track) => Arc::new(track),
        Err(e) => {
            tracing::error!(peer = %link.remote, "cannot make a {} track: {e}", kind.as_str());
            return;
        }
    };
    let sender = match pc.add_track(track.clone() as Arc<dyn TrackLocal>).await {
        Ok(sender) => sender,
        Err(e) => {
            tracing::error!(peer = %link.remote, "cannot send {}: {e}", kind.as_str());
            return;
        }
    };
    let player = Player { track, sender, pc: Arc::downgrade(pc), ssrc, mime, remote: link.remote.clone() };
    tasks.spawn(player.play(source, link.connected.subscribe(), link.stop.clone()));
}

struct Player {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    /// Weak: the connection holds the task's link, and the task must not keep it alive.
    pc: Weak<dyn PeerConnection>,
    ssrc: u32,
    mime: String,
    remote: PeerId,
}

impl Player {
    /// True once a negotiation has settled that our track is sent (its transceiver's current
    /// direction is `sendrecv` or `sendonly`).
    async fn accepted(&self) -> bool {
        let Some(pc) = self.pc.upgrade() else { return false };
        for transceiver in pc.get_transceivers().await {
            let ours =
                matches!(transceiver.sender().await, Ok(Some(sender)) if sender.id() == self.sender.id());
            if ours {
                return matches!(
                    transceiver.current_direction().await,
                    Ok(RTCRtpTransceiverDirection::Sendrecv | RTCRtpTransceiverDirection::Sendonly)
                );
            }
        }
        false
    }

    /// Waits for the connection, then plays the frames at their pace, in a loop, until stopped.
    async fn play(self, source: Source, mut connected: watch::Receiver<bool>, stop: CancellationToken) {
        tokio::select! {
            up = connected.wait_for(|up| *up) => if up.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let frames = source.frames();
        if frames.is_empty() {
            return;
        }
        let mut at = 0;
        let mut sending: Option<u8> = None; // the payload type, while the remote takes the track
        let mut next_check = Instant::now();
        let mut due = Instant::now();
        let mut listening = source.kind() == Kind::Video;
        let mut last_request: Option<Instant> = None;
        loop {
            // webrtc-rs binds the track when it is added and takes every write, but drops the
            // packets until the remote accepted the track (a peer that takes no media never
            // does): until then the player keeps its pace and sends nothing. When sending starts
            // (or starts again) it goes back to the keyframe before: a track accepted by a
            // renegotiation comes in anywhere into the file, and frames sent from there would
            // not decode until the file's next keyframe (seconds, or the whole loop for a file
            // with one keyframe). Looked at on every frame until sending, then every
            // ACCEPTED_RECHECK.
            if sending.is_none() || Instant::now() >= next_check {
                next_check = Instant::now() + ACCEPTED_RECHECK;
                if !self.accepted().await {
                    sending = None;
                } else if sending.is_none() {
                    sending = negotiated_payload_type(&self.sender, &self.mime).await;
                    if sending.is_some() {
                        at = source.start_at_or_before(at);
                    }
                }
            }
            let (data, duration) = &frames[at];
            if let Some(pt) = sending {
                let sample = Sample {
                    data: data.clone(),
                    duration: *duration,
                    ..Sample::new(std::time::Instant::now())
                };
                if let Err(e) = self.track.write_sample(self.ssrc, pt, &sample, &[]).await {
                    tracing::trace!(peer = %self.remote, "frame not sent: {e}");
                    sending = None;
                }
            }
            at = (at + 1) % frames.len();
            due += *duration;
            let now = Instant::now();
            if now > due + MAX_LAG {
                due = now;
            }
            // Until the next frame is due, listen for the remote's keyframe requests (a lost
            // keyframe, a decoder that started late): go back to the keyframe before, at most
            // once per KEYFRAME_REQUEST_GAP. Opus needs none.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    _ = stop.cancelled() => return,
                    event = self.track.poll(), if listening => match event {
                        Some(event) if keyframes::is_request(&event) => {
                            if sending.is_some() && last_request.is_none_or(|t| t.elapsed() >= KEYFRAME_REQUEST_GAP) {
                                last_request = Some(Instant::now());
                                at = source.start_at_or_before(at);
                            }
                        }
                        Some(_) => {}
                        // Unbound (the link is closing): nothing more will come.
                        None => listening = false,
                    },
                }
            }
        }
    }
}
