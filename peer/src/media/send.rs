//! `--send-video` / `--send-audio`: a file played in a loop into one connection.
//!
//! Every link gets its own track and its own player, started from the file's first frame once
//! the connection is up: a peer that joins later gets the file from its start (a keyframe), and
//! a slow link never holds up the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
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
use webrtc::rtp_transceiver::RtpSender;

use super::receive::negotiated_payload_type;
use super::{AudioFile, Kind, LinkMedia, VideoFile, codec};

/// How far behind its schedule a player may fall (a busy machine) before it skips ahead
/// instead of sending a burst.
const MAX_LAG: Duration = Duration::from_secs(1);

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
    let player = Player { track, sender, ssrc, mime, remote: link.remote.clone() };
    tasks.spawn(player.play(source, link.connected.subscribe(), link.stop.clone()));
}

struct Player {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    mime: String,
    remote: String,
}

impl Player {
    /// Waits for the connection, then plays the frames at their pace, in a loop, until stopped.
    async fn play(self, source: Source, mut connected: watch::Receiver<bool>, stop: CancellationToken) {
        tokio::select! {
            up = connected.wait_for(|up| *up) => if up.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let frames = source.frames();
        let mut payload_type = None;
        let mut due = Instant::now();
        loop {
            for (data, duration) in frames {
                if payload_type.is_none() {
                    // None until the remote accepted the track (a peer that takes no media
                    // never does): the player keeps its pace and sends nothing.
                    payload_type = negotiated_payload_type(&self.sender, &self.mime).await;
                }
                if let Some(pt) = payload_type {
                    let sample = Sample {
                        data: data.clone(),
                        duration: *duration,
                        ..Sample::new(std::time::Instant::now())
                    };
                    if let Err(e) = self.track.write_sample(self.ssrc, pt, &sample, &[]).await {
                        tracing::trace!(peer = %self.remote, "frame not sent: {e}");
                        payload_type = None;
                    }
                }
                due += *duration;
                let now = Instant::now();
                if now > due + MAX_LAG {
                    due = now;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
