//! Audio and video on the peer connection that carries `chat` (PROTOCOL.md, "Audio and video";
//! INTERFACES.md, `--record`, `--echo-media`, `--send-video`, `--send-audio`, `--expect-frames`).
//!
//! - [`Media`]: one per process: the options, the events, every recording still open (so that
//!   all are closed before exit), the video frame count for `--expect-frames`.
//! - [`LinkMedia`]: one per link: adds the tracks we send (`send`), serves the tracks the remote
//!   sends (`receive`: count, record, echo), and stops all of it when the link closes.
//! - [`ivf`], [`ogg`]: the file formats; [`naming`]: recording names.
//!
//! A peer without media flags builds its connections with no audio or video codec, so webrtc-rs
//! rejects every media section a remote offers and chat goes on (the page copes with that).

pub mod ivf;
mod keyframes;
mod naming;
pub mod ogg;
mod receive;
mod send;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use protocol::PeerId;
use rtc::interceptor::{Registry, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{configure_nack, configure_rtcp_reports};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::PeerConnection;

pub use ivf::VideoFile;
pub use ogg::AudioFile;

use crate::sync::lock;

/// Media events queued for the mesh; a track's events wait when it is full.
pub const MEDIA_EVENT_QUEUE: usize = 256;

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct MediaOptions {
    /// `--record DIR`: every incoming track is written there.
    pub record: Option<PathBuf>,
    /// `--echo-media`: every incoming track goes back to its sender.
    pub echo: bool,
    /// `--send-video FILE`, loaded.
    pub send_video: Option<Arc<VideoFile>>,
    /// `--send-audio FILE`, loaded.
    pub send_audio: Option<Arc<AudioFile>>,
    /// `--expect-frames N`.
    pub expect_frames: Option<usize>,
}

impl MediaOptions {
    /// True when any media flag was given: only then do connections offer audio and video.
    pub fn enabled(&self) -> bool {
        self.record.is_some()
            || self.echo
            || self.send_video.is_some()
            || self.send_audio.is_some()
            || self.expect_frames.is_some()
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Video,
    Audio,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
        }
    }

    fn codec(self) -> &'static str {
        match self {
            Kind::Video => "VP8",
            Kind::Audio => "opus",
        }
    }
}

/// Something about media worth telling the user (INTERFACES.md, events `track`, `track_ended`).
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// A remote track started arriving.
    Track { peer: PeerId, kind: Kind },
    /// A remote track ended: `frames` written (with `--record`, to `path`), else received.
    TrackEnded { peer: PeerId, kind: Kind, frames: u64, path: Option<PathBuf> },
    /// `--expect-frames` is reached.
    FramesExpected,
}

impl MediaEvent {
    pub fn peer(&self) -> Option<&PeerId> {
        match self {
            MediaEvent::Track { peer, .. } | MediaEvent::TrackEnded { peer, .. } => Some(peer),
            MediaEvent::FramesExpected => None,
        }
    }
}

/// The `--json` line for a media event (`None`: nothing to print).
pub fn json_event(event: &MediaEvent) -> Option<Value> {
    match event {
        MediaEvent::Track { peer, kind } => {
            Some(json!({"event": "track", "peer": peer, "kind": kind.as_str(), "codec": kind.codec()}))
        }
        MediaEvent::TrackEnded { peer, kind, frames, path } => {
            let mut v =
                json!({"event": "track_ended", "peer": peer, "kind": kind.as_str(), "frames": frames});
            if let Some(path) = path {
                v["path"] = json!(path.display().to_string());
            }
            Some(v)
        }
        MediaEvent::FramesExpected => None,
    }
}

/// The human-readable line for a media event; `who` names the peer.
pub fn human_line(event: &MediaEvent, who: &str) -> Option<String> {
    match event {
        MediaEvent::Track { kind, .. } => {
            Some(format!("* {who} is sending {} ({})", kind.as_str(), kind.codec()))
        }
        MediaEvent::TrackEnded { kind, frames, path, .. } => Some(match path {
            Some(path) => {
                format!("* {who} stopped sending {}: {frames} frames in {}", kind.as_str(), path.display())
            }
            None => format!("* {who} stopped sending {} ({frames} frames)", kind.as_str()),
        }),
        MediaEvent::FramesExpected => None,
    }
}

/// The codec we send and receive for `kind`: VP8 or Opus (PROTOCOL.md), as registered.
pub fn codec(kind: Kind) -> RTCRtpCodec {
    let feedback = |types: &[(&str, &str)]| {
        types
            .iter()
            .map(|(t, p)| RTCPFeedback { typ: t.to_string(), parameter: p.to_string() })
            .collect::<Vec<_>>()
    };
    match kind {
        Kind::Video => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: ivf::VP8_CLOCK,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: feedback(&[("goog-remb", ""), ("ccm", "fir"), ("nack", ""), ("nack", "pli")]),
        },
        Kind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: ogg::OPUS_CLOCK,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: Vec::new(),
        },
    }
}

/// The codecs every client offers (PROTOCOL.md): VP8 and Opus, with NACK (both ways), RTCP
/// reports, and keyframe requests handed to our tracks ([`keyframes`]).
///
/// No RTP header extension is registered (webrtc-rs's defaults add `sdes:mid`, the RID ones and
/// transport-wide CC): webrtc-rs 0.21 numbers them its own way again in every offer it makes,
/// also after answering a browser's offer that numbered them differently, and Chromium refuses
/// such a re-offer ("RTP extension ID reassignment not supported"), which broke the call with
/// that peer for good. Without them the packets are told apart by SSRC, as the SDP lists them.
pub fn media_engine() -> webrtc::error::Result<(MediaEngine, Registry)> {
    let mut engine = MediaEngine::default();
    for (kind, rtp_kind, payload_type) in
        [(Kind::Video, RtpCodecKind::Video, 96), (Kind::Audio, RtpCodecKind::Audio, 111)]
    {
        engine.register_codec(RTCRtpCodecParameters { rtp_codec: codec(kind), payload_type }, rtp_kind)?;
    }
    let registry = configure_rtcp_reports(configure_nack(Registry::new(), &mut engine))
        .with(Slot::from(keyframes::SLOT), keyframes::KeyframeRequests::default());
    Ok((engine, registry))
}

/// The process's media: options, events, open recordings, the frame count.
#[derive(Debug)]
pub struct Media {
    options: MediaOptions,
    events: mpsc::Sender<MediaEvent>,
    /// Video frames received (or written, with `--record`) in total, from each track's first
    /// keyframe.
    frames: AtomicUsize,
    expected: AtomicBool,
    /// Every track being received; finished by its task, or by [`Media::finish`] at exit.
    tracks: Mutex<Vec<Arc<Mutex<receive::TrackState>>>>,
}

impl Media {
    pub fn new(options: MediaOptions, events: mpsc::Sender<MediaEvent>) -> Arc<Media> {
        Arc::new(Media {
            options,
            events,
            frames: AtomicUsize::new(0),
            expected: AtomicBool::new(false),
            tracks: Mutex::new(Vec::new()),
        })
    }

    pub fn options(&self) -> &MediaOptions {
        &self.options
    }

    /// The media half of a new link to `remote`.
    pub fn for_link(self: &Arc<Self>, remote: PeerId) -> LinkMedia {
        LinkMedia {
            media: self.clone(),
            remote,
            pc: OnceLock::new(),
            connected: watch::Sender::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// Closes every recording still open and reports its `track_ended`: at exit, so that every
    /// file is complete whatever stopped the peer (`--expect-frames`, `--timeout`, SIGTERM).
    pub async fn finish(&self) {
        let tracks: Vec<_> = lock(&self.tracks).drain(..).collect();
        for track in tracks {
            let ended = lock(&track).end();
            if let Some(event) = ended {
                let _ = self.events.send(event).await;
            }
        }
    }

    async fn emit(&self, event: MediaEvent) {
        // The mesh is gone only while shutting down; nothing is left to tell then.
        let _ = self.events.send(event).await;
    }

    /// Counts one video frame; tells the mesh once `--expect-frames` is reached.
    async fn count_frame(&self) {
        let total = self.frames.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(n) = self.options.expect_frames
            && total >= n
            && !self.expected.swap(true, Ordering::Relaxed)
        {
            self.emit(MediaEvent::FramesExpected).await;
        }
    }
}

/// The media of one link. [`LinkMedia::stop`] (from `Link::close`) ends its tasks.
#[derive(Debug)]
pub struct LinkMedia {
    media: Arc<Media>,
    remote: PeerId,
    /// Weak: the connection's handler holds this, and the connection holds its handler.
    pc: OnceLock<Weak<dyn PeerConnection>>,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
}

impl LinkMedia {
    /// Adds the tracks we send (`--send-video`, `--send-audio`) before the first offer or answer,
    /// and starts playing them into the connection once it is up.
    pub async fn start(&self, pc: &Arc<dyn PeerConnection>, tasks: &TaskTracker) {
        let _ = self.pc.set(Arc::downgrade(pc));
        let options = &self.media.options;
        if let Some(video) = &options.send_video {
            send::add(self, pc, tasks, send::Source::Video(video.clone())).await;
        }
        if let Some(audio) = &options.send_audio {
            send::add(self, pc, tasks, send::Source::Audio(audio.clone())).await;
        }
    }

    /// The connection's state changed: players wait for `connected`.
    pub fn set_connected(&self, connected: bool) {
        self.connected.send_replace(connected);
    }

    /// A track from the remote: counted, recorded, echoed as the flags say.
    pub fn on_track(&self, track: Arc<dyn TrackRemote>, tasks: &TaskTracker) {
        let pc = self.pc.get().cloned();
        tasks.spawn(receive::serve(self.media.clone(), self.remote.clone(), pc, track, self.stop.clone()));
    }

    /// Ends every media task of this link (recordings are closed by their tasks).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}
