//! A track the remote sends: counted, recorded (`--record`) and echoed (`--echo-media`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use protocol::PeerId;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

use super::ivf::{IvfWriter, Vp8Assembler};
use super::ogg::OggOpusWriter;
use super::{Kind, Media, MediaEvent, codec, keyframes, naming};
use crate::sync::lock;

/// How often a video receiver that echoes asks the sender for a keyframe: the echo's own
/// receiver may have joined mid-stream, and webrtc-rs hands us no RTCP from it to forward.
const ECHO_KEYFRAME_INTERVAL: Duration = Duration::from_secs(3);
/// At most one keyframe request per this long after losses.
const LOSS_KEYFRAME_GAP: Duration = Duration::from_millis(500);

/// A recording in progress.
#[derive(Debug)]
enum Recorder {
    Video(IvfWriter),
    Audio(OggOpusWriter),
}

/// What is known about one incoming track; ended exactly once, by its task or at exit.
#[derive(Debug)]
pub(super) struct TrackState {
    peer: PeerId,
    kind: Kind,
    recorder: Option<Recorder>,
    path: Option<PathBuf>,
    frames: u64,
    ended: bool,
}

impl TrackState {
    /// Closes the recording (final frame count, end of stream) and gives the `track_ended`
    /// event, the first time only.
    pub(super) fn end(&mut self) -> Option<MediaEvent> {
        if std::mem::replace(&mut self.ended, true) {
            return None;
        }
        let closed = match self.recorder.take() {
            Some(Recorder::Video(w)) => w.finish().map(u64::from),
            Some(Recorder::Audio(w)) => w.finish(),
            None => Ok(self.frames),
        };
        if let Err(e) = closed {
            tracing::error!(peer = %self.peer, "closing the recording {:?}: {e}", self.path);
        }
        Some(MediaEvent::TrackEnded {
            peer: self.peer.clone(),
            kind: self.kind,
            frames: self.frames,
            path: self.path.clone(),
        })
    }

    /// Writes what a packet completed; false when the recording failed (it is then dropped).
    fn record_video(&mut self, frame: &super::ivf::Vp8Frame) {
        if let Some(Recorder::Video(w)) = &mut self.recorder
            && let Err(e) = w.write(frame)
        {
            tracing::error!(peer = %self.peer, "recording stopped: {e}");
            self.recorder = None;
        }
        self.frames += 1;
    }

    fn record_audio(&mut self, packet: &rtp::Packet) {
        if let Some(Recorder::Audio(w)) = &mut self.recorder
            && let Err(e) = w.write(packet.payload.clone(), packet.header.timestamp)
        {
            tracing::error!(peer = %self.peer, "recording stopped: {e}");
            self.recorder = None;
        }
        self.frames += 1;
    }
}

/// Serves one remote track until it ends or the link stops.
pub(super) async fn serve(
    media: Arc<Media>,
    remote: PeerId,
    pc: Option<Weak<dyn PeerConnection>>,
    track: Arc<dyn TrackRemote>,
    stop: CancellationToken,
) {
    let kind = match track.kind().await {
        RtpCodecKind::Video => Kind::Video,
        RtpCodecKind::Audio => Kind::Audio,
        other => {
            tracing::info!(peer = %remote, "ignoring a track of kind {other}");
            return;
        }
    };
    let ssrc = track.ssrcs().await.first().copied().unwrap_or_default();
    let track_id = track.track_id().await;
    let (recorder, path) = match start_recording(&media, &remote, &track_id, kind) {
        Ok(Some((recorder, path))) => (Some(recorder), Some(path)),
        Ok(None) => (None, None),
        Err(e) => {
            tracing::error!(peer = %remote, "cannot record its {} track: {e}", kind.as_str());
            (None, None)
        }
    };
    let state = Arc::new(Mutex::new(TrackState {
        peer: remote.clone(),
        kind,
        recorder,
        path,
        frames: 0,
        ended: false,
    }));
    lock(&media.tracks).push(state.clone());
    media.emit(MediaEvent::Track { peer: remote.clone(), kind }).await;

    let pc = pc.and_then(|pc| pc.upgrade());
    let mut echo = match (&pc, media.options.echo) {
        (Some(pc), true) => Echo::start(pc, kind, &remote).await,
        _ => None,
    };
    let ask_keyframe = || async {
        let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
        if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
            tracing::debug!(peer = %remote, "keyframe request not sent: {e}");
        }
    };
    // The first keyframe may have gone by before this task started reading.
    if kind == Kind::Video {
        ask_keyframe().await;
    }
    let mut assembler = Vp8Assembler::default();
    let mut last_ask = tokio::time::Instant::now();
    let mut echo_keyframes = tokio::time::interval(ECHO_KEYFRAME_INTERVAL);
    // The echo's receiver asks us for keyframes: passed on to the sender (and drained, else
    // webrtc-rs's queue of them fills and it logs every one it drops).
    let echo_track = echo.as_ref().map(|e| e.track.clone());
    let mut echo_listening = echo_track.is_some();
    loop {
        tokio::select! {
            event = async { match &echo_track { Some(t) => t.poll().await, None => None } }, if echo_listening => match event {
                Some(event) if kind == Kind::Video && keyframes::is_request(&event) => {
                    if last_ask.elapsed() >= LOSS_KEYFRAME_GAP {
                        last_ask = tokio::time::Instant::now();
                        ask_keyframe().await;
                    }
                }
                Some(_) => {}
                None => echo_listening = false,
            },
            _ = stop.cancelled() => break,
            event = track.poll() => match event {
                None | Some(TrackRemoteEvent::OnEnded) => break,
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                    if let Some(echo) = &mut echo {
                        echo.forward(packet.clone()).await;
                    }
                    match kind {
                        Kind::Video => {
                            let h = &packet.header;
                            if let Some(frame) = assembler.push(h.sequence_number, h.timestamp, h.marker, &packet.payload) {
                                lock(&state).record_video(&frame);
                                media.count_frame().await;
                            }
                            if assembler.take_lost() && last_ask.elapsed() >= LOSS_KEYFRAME_GAP {
                                last_ask = tokio::time::Instant::now();
                                ask_keyframe().await;
                            }
                        }
                        Kind::Audio if !packet.payload.is_empty() => lock(&state).record_audio(&packet),
                        Kind::Audio => {}
                    }
                }
                Some(_) => {}
            },
            _ = echo_keyframes.tick(), if echo.is_some() && kind == Kind::Video => ask_keyframe().await,
        }
    }
    let ended = lock(&state).end();
    lock(&media.tracks).retain(|t| !Arc::ptr_eq(t, &state));
    if let Some(event) = ended {
        media.emit(event).await;
    }
    if let (Some(echo), Some(pc), false) = (echo, pc, stop.is_cancelled()) {
        // The remote stopped sending: stop the echo too (this renegotiates).
        if let Err(e) = pc.remove_track(&echo.sender).await {
            tracing::debug!(peer = %remote, "removing the echo: {e}");
        }
    }
}

/// Opens the recording for a track, when `--record` is on.
fn start_recording(
    media: &Media,
    remote: &PeerId,
    track_id: &str,
    kind: Kind,
) -> std::io::Result<Option<(Recorder, PathBuf)>> {
    let Some(dir) = &media.options.record else { return Ok(None) };
    std::fs::create_dir_all(dir)?;
    let base = naming::base_name(remote.as_str(), track_id, kind.as_str());
    let ext = if kind == Kind::Video { "ivf" } else { "ogg" };
    let (path, file) = naming::create(dir, &base, ext)?;
    let recorder = match kind {
        Kind::Video => Recorder::Video(IvfWriter::new(file)?),
        Kind::Audio => Recorder::Audio(OggOpusWriter::new(file, 2)?),
    };
    Ok(Some((recorder, path)))
}

/// Sends a remote's track back to it on a track of our own (`--echo-media`).
struct Echo {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    mime: String,
    /// The payload type the remote negotiated for our echo; looked up until known.
    payload_type: Option<u8>,
}

impl Echo {
    /// Adds the echo track: webrtc-rs puts it on the transceiver that brought the remote's track
    /// when it can, and the connection renegotiates.
    async fn start(pc: &Arc<dyn PeerConnection>, kind: Kind, remote: &PeerId) -> Option<Echo> {
        let ssrc = rand::random::<u32>();
        let codec = codec(kind);
        let mime = codec.mime_type.clone();
        let rtp_kind = if kind == Kind::Video { RtpCodecKind::Video } else { RtpCodecKind::Audio };
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "echo".to_string(),
            format!("echo-{}", kind.as_str()),
            format!("echo of {remote}'s {}", kind.as_str()),
            rtp_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        )));
        match pc.add_track(track.clone() as Arc<dyn TrackLocal>).await {
            Ok(sender) => Some(Echo { track, sender, ssrc, mime, payload_type: None }),
            Err(e) => {
                tracing::warn!(peer = %remote, "cannot echo its {} track: {e}", kind.as_str());
                None
            }
        }
    }

    async fn forward(&mut self, mut packet: rtp::Packet) {
        if self.payload_type.is_none() {
            self.payload_type = negotiated_payload_type(&self.sender, &self.mime).await;
        }
        let Some(payload_type) = self.payload_type else { return };
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = payload_type;
        // Header extension ids belong to the remote's direction; ours may differ.
        packet.header.extension = false;
        packet.header.extensions.clear();
        if let Err(e) = self.track.write_rtp(packet).await {
            tracing::trace!("echo packet not sent: {e}");
            self.payload_type = None;
        }
    }
}

/// The payload type negotiated for `mime` on `sender`, once negotiation is done.
pub(super) async fn negotiated_payload_type(sender: &Arc<dyn RtpSender>, mime: &str) -> Option<u8> {
    let parameters = sender.get_parameters().await.ok()?;
    parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
}
