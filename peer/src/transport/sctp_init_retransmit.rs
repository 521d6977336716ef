//! An SCTP handshake whose INIT ACK is lost or late, made deterministic: two rtc-sctp endpoints
//! (the data channels' transport) joined by an in-memory link on a virtual clock, no sockets and
//! no real time. The initiator (Firefox, through a TURN relay, in `turn.rs`) sends INIT again
//! after its T1-init timer (1 s).
//!
//! What a user noticed: the page and the Rust peer chatted, but the `file` channel the Rust peer
//! opened next never opened ("the data channel did not open within 9s"), in about one run in
//! three of the Firefox-through-coturn test. rtc-sctp 0.21.1 took the retransmitted INIT for a new
//! association: the initiator completed the handshake with that one, while rtc's data channels
//! wrote to the first, which never left Closed ("sending payload data in non-Established state").
//! And a retransmitted INIT that arrives late, after its COOKIE ECHO has established the
//! association, closed it. `vendor/rtc-sctp`'s patch routes a retransmitted INIT to its
//! association and ignores a late duplicate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::sctp::{
    Association, AssociationHandle, ClientConfig, DatagramEvent, Endpoint, EndpointConfig, Event, Payload,
    PayloadProtocolIdentifier, ServerConfig, StreamEvent, TransportConfig, max_payload_size_for_mtu,
};
use rtc::shared::TransportProtocol;

use super::SCTP_MTU;

/// One-way delay of the link.
const DELAY: Duration = Duration::from_millis(5);
/// A bound on the simulation: far more steps than a handshake and one message need.
const MAX_STEPS: usize = 10_000;
/// Virtual time the simulation may take: T1-init is 1 s, so a few retransmissions fit.
const GIVE_UP_AFTER: Duration = Duration::from_secs(20);

/// What the link does to the responder's first INIT ACK.
#[derive(Clone, Copy)]
enum FirstInitAck {
    /// Dropped, as a relay drops a packet before its permission is in place.
    Lost,
    /// Delivered, but only after the initiator has sent INIT again and that second INIT is held
    /// until the association is established, so it reaches an established responder.
    Late,
}

/// One side: its endpoint and every association it made (a map, as rtc's SCTP handler keeps).
struct Side {
    addr: SocketAddr,
    endpoint: Endpoint,
    associations: BTreeMap<AssociationHandle, Association>,
    /// Datagrams on their way to this side, with their arrival times.
    inbound: Vec<(Instant, Bytes)>,
}

impl Side {
    fn new(addr: SocketAddr, server: bool) -> Side {
        let mut config = EndpointConfig::new();
        config.max_payload_size(max_payload_size_for_mtu(SCTP_MTU));
        let server = server.then(|| Arc::new(ServerConfig::new(TransportConfig::default())));
        Side {
            addr,
            endpoint: Endpoint::new(addr, TransportProtocol::UDP, Arc::new(config), server),
            associations: BTreeMap::new(),
            inbound: Vec::new(),
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timers = self.associations.values().filter_map(Association::poll_timeout);
        timers.chain(self.inbound.iter().map(|(at, _)| *at)).min()
    }

    /// Takes what has arrived by `now` and runs due timers; returns each association's events.
    fn run(&mut self, now: Instant, remote: SocketAddr) -> Vec<(AssociationHandle, Event)> {
        let (arrived, later) = self.inbound.drain(..).partition(|(at, _)| *at <= now);
        self.inbound = later;
        let mut arrived: Vec<(Instant, Bytes)> = arrived;
        arrived.sort_by_key(|(at, _)| *at);
        for (_, datagram) in arrived {
            match self.endpoint.handle(now, remote, None, datagram) {
                Some((handle, DatagramEvent::NewAssociation(association))) => {
                    self.associations.insert(handle, association);
                }
                Some((handle, DatagramEvent::AssociationEvent(event))) => {
                    if let Some(association) = self.associations.get_mut(&handle) {
                        association.handle_event(event);
                    }
                }
                _ => {}
            }
        }
        let mut events = Vec::new();
        for (handle, association) in &mut self.associations {
            if association.poll_timeout().is_some_and(|t| t <= now) {
                association.handle_timeout(now);
            }
            while let Some(event) = association.poll() {
                events.push((*handle, event));
            }
        }
        events
    }

    fn transmit(&mut self, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        for association in self.associations.values_mut() {
            while let Some(transmit) = association.poll_transmit(now) {
                if let Payload::RawEncode(datagrams) = transmit.message {
                    out.extend(datagrams);
                }
            }
        }
        out
    }
}

/// The first chunk's type (after the 12-byte common header): 1 INIT, 2 INIT ACK.
fn first_chunk(datagram: &[u8]) -> Option<u8> {
    datagram.get(12).copied()
}
const INIT: u8 = 1;
const INIT_ACK: u8 = 2;

/// What the responder ended with.
struct Outcome {
    /// Associations the responder made.
    associations: usize,
    /// Messages the initiator received of the two the responder sent: one once connected (as the
    /// page's `chat`), one after any late INIT had reached it (as the Rust peer's `file`).
    messages: usize,
    /// INITs the initiator sent.
    inits: usize,
    /// Why the responder could not write, if it could not (a closed association).
    write_error: Option<String>,
}

/// The initiator connects; the link treats the responder's first INIT ACK as `first_init_ack`
/// says. The responder writes on the association that reported `Connected`, as rtc's data
/// channels do.
fn handshake(first_init_ack: FirstInitAck) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    let mut initiator = Side::new("127.0.0.1:5000".parse().expect("address"), false);
    let mut responder = Side::new("127.0.0.1:5001".parse().expect("address"), true);
    let (handle, association) = initiator
        .endpoint
        .connect(now, ClientConfig::new(TransportConfig::default()), responder.addr)
        .expect("connect");
    initiator.associations.insert(handle, association);

    let mut inits = 0;
    let mut init_acks = 0;
    let mut held_init_ack: Option<Bytes> = None;
    let mut held_init: Vec<Bytes> = Vec::new();
    let mut connected: Option<AssociationHandle> = None;
    let mut written = 0;
    let mut messages = 0;
    let mut write_error = None;
    for _ in 0..MAX_STEPS {
        for (_, event) in initiator.run(now, responder.addr) {
            if let Event::Stream(StreamEvent::Opened { id } | StreamEvent::Readable { id }) = event {
                let association =
                    initiator.associations.values_mut().next().expect("the initiator's association");
                let mut stream = association.stream(id).expect("stream");
                while let Some(chunks) = stream.read_sctp().expect("read") {
                    messages += usize::from(!chunks.is_empty());
                }
            }
        }
        for datagram in initiator.transmit(now) {
            if first_chunk(&datagram) == Some(INIT) {
                inits += 1;
                // The late case: the second INIT waits until the responder is established.
                if inits > 1 && matches!(first_init_ack, FirstInitAck::Late) {
                    held_init.push(datagram);
                    continue;
                }
            }
            responder.inbound.push((now + DELAY, datagram));
        }
        if connected.is_some() {
            for datagram in held_init.drain(..) {
                responder.inbound.push((now + DELAY, datagram));
            }
        }

        for (handle, event) in responder.run(now, initiator.addr) {
            if matches!(event, Event::Connected) && connected.is_none() {
                connected = Some(handle);
            }
        }
        if let Some(handle) = connected {
            // The first message at once; the second once the first arrived and nothing else
            // (a late INIT) is on its way to the responder.
            let quiet = messages >= 1 && held_init.is_empty() && responder.inbound.is_empty();
            if written == 0 || (written == 1 && quiet) {
                let association = responder.associations.get_mut(&handle).expect("connected association");
                let wrote = association.open_stream(written + 1, PayloadProtocolIdentifier::Binary).and_then(
                    |mut stream| {
                        let message = Bytes::from_static(b"hello");
                        stream.write_chunk_with_ppi(now, &message, PayloadProtocolIdentifier::Binary)
                    },
                );
                if let Err(error) = wrote {
                    write_error = Some(error.to_string());
                    break;
                }
                written += 1;
            }
        }
        for datagram in responder.transmit(now) {
            if first_chunk(&datagram) == Some(INIT_ACK) {
                init_acks += 1;
                if init_acks == 1 {
                    match first_init_ack {
                        FirstInitAck::Lost => continue,
                        FirstInitAck::Late => {
                            held_init_ack = Some(datagram);
                            continue;
                        }
                    }
                }
            }
            initiator.inbound.push((now + DELAY, datagram));
        }
        // The late INIT ACK arrives once the initiator has sent INIT again.
        if inits > 1
            && let Some(datagram) = held_init_ack.take()
        {
            initiator.inbound.push((now + DELAY, datagram));
        }

        if messages >= 2 || now - start > GIVE_UP_AFTER {
            break;
        }
        now = match [initiator.next_wakeup(), responder.next_wakeup()].into_iter().flatten().min() {
            Some(next) => next.max(now),
            None => break,
        };
    }
    Outcome { associations: responder.associations.len(), messages, inits, write_error }
}

#[test]
fn a_retransmitted_init_reaches_the_association_the_first_one_made() {
    let outcome = handshake(FirstInitAck::Lost);
    assert!(outcome.inits >= 2, "the initiator sent INIT again after the lost INIT ACK");
    assert_eq!(outcome.associations, 1, "one association on the responder, not one per INIT");
    assert_eq!(outcome.write_error, None);
    assert_eq!(outcome.messages, 2, "both messages on the responder's connected association arrived");
}

#[test]
fn a_late_duplicate_init_leaves_an_established_association_alone() {
    let outcome = handshake(FirstInitAck::Late);
    assert!(outcome.inits >= 2, "the initiator sent INIT again while the INIT ACK was late");
    assert_eq!(outcome.associations, 1, "one association on the responder");
    assert_eq!(outcome.write_error, None, "the responder writes after the late INIT");
    assert_eq!(outcome.messages, 2, "the association survived the late INIT and carried the second message");
}
