//! Keyframe requests (PLI, FIR) from a remote, handed to the tracks we send.
//!
//! webrtc-rs 0.21 keeps inbound RTCP inside its interceptor chain unless an interceptor marks a
//! packet with `Attribute::DeliverToApplication`; only then does it reach the local track's
//! `TrackLocal::poll`. [`KeyframeRequests`] marks the keyframe requests and nothing else (the
//! rest goes on unmarked, as before), so that a file player can restart at a keyframe and an echo
//! can pass the request on to whoever sends the original.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use webrtc::media_stream::track_local::TrackLocalEvent;

/// Where [`KeyframeRequests`] sits in the chain: application-most, after every interceptor that
/// reads RTCP (as webrtc-rs's rtcp-processing example places its own).
pub const SLOT: usize = 14_000;

/// Marks inbound PLI and FIR for the application; see the module docs.
#[derive(Default)]
pub struct KeyframeRequests {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// Whether an RTCP packet asks for a keyframe.
fn asks_keyframe(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// True when a track event is (or holds) a keyframe request.
pub fn is_request(event: &TrackLocalEvent) -> bool {
    match event {
        TrackLocalEvent::OnRtcpPacket(packets) => packets.iter().any(|p| asks_keyframe(p.as_ref())),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> =
                packets.iter().filter(|p| asks_keyframe(p.as_ref())).cloned().collect();
            if !requests.is_empty() {
                // Only the requests go to the application; the rest of this compound packet has
                // been read by the interceptors before this one already.
                msg.message.packet = Packet::Rtcp(requests);
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
