//! A burst of lost SCTP packets, made deterministic: two rtc-sctp associations (the data
//! channels' transport) joined by an in-memory link with a fixed delay and a virtual clock, no
//! sockets and no real time. The link drops a run of consecutive DATA packets once, as a
//! receiver's full socket buffer does (Chromium's, on a loaded machine: the Rust -> Chromium file
//! that crawled at 130 KiB/s in CI, docs/benchmarks.md, "Rust → browser").
//!
//! What a user notices is how long the transfer stalls: the receiver cannot hand anything past
//! the first hole to the page. rtc-sctp 0.21.1 retransmitted one lost packet per round trip, so a
//! run of 24 lost packets held everything up for 24 round trips (on a loaded machine, where a
//! round trip through Chromium took 80-500 ms, several seconds). With vendor/rtc-sctp's patch the
//! whole run goes out again at once and the stall lasts a few round trips.

use std::collections::VecDeque;
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
const ROUND_TRIP: Duration = Duration::from_millis(10);
/// Messages written, as the file sender writes them.
const MESSAGES: usize = 128;
const MESSAGE_BYTES: usize = 16 * 1024;
/// The DATA packets (counted from the first) the link drops, once each.
const FIRST_LOST: usize = 300;
const LOST: usize = 24;
/// A bound on the simulation: far more steps than a transfer of this size needs.
const MAX_STEPS: usize = 200_000;

/// One side: its endpoint and (once the handshake got that far) its association.
struct Side {
    addr: SocketAddr,
    endpoint: Endpoint,
    association: Option<(AssociationHandle, Association)>,
    /// Datagrams on their way to this side, with their arrival times (in order: fixed delay).
    inbound: VecDeque<(Instant, Bytes)>,
}

impl Side {
    fn new(addr: SocketAddr, server: bool) -> Side {
        let mut config = EndpointConfig::new();
        config.max_payload_size(max_payload_size_for_mtu(SCTP_MTU));
        let server = server.then(|| Arc::new(ServerConfig::new(TransportConfig::default())));
        Side {
            addr,
            endpoint: Endpoint::new(addr, TransportProtocol::UDP, Arc::new(config), server),
            association: None,
            inbound: VecDeque::new(),
        }
    }

    /// When this side next has something to do.
    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.association.as_ref().and_then(|(_, a)| a.poll_timeout());
        [timer, self.inbound.front().map(|(at, _)| *at)].into_iter().flatten().min()
    }

    /// Takes what has arrived by `now` and runs due timers; returns the association's events.
    fn run(&mut self, now: Instant, remote: SocketAddr) -> Vec<Event> {
        while self.inbound.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, datagram)) = self.inbound.pop_front() else { break };
            match self.endpoint.handle(now, remote, None, datagram) {
                Some((handle, DatagramEvent::NewAssociation(association))) => {
                    self.association = Some((handle, association))
                }
                Some((_, DatagramEvent::AssociationEvent(event))) => {
                    if let Some((_, association)) = &mut self.association {
                        association.handle_event(event);
                    }
                }
                _ => {}
            }
        }
        let mut events = Vec::new();
        if let Some((_, association)) = &mut self.association {
            if association.poll_timeout().is_some_and(|t| t <= now) {
                association.handle_timeout(now);
            }
            while let Some(event) = association.poll() {
                events.push(event);
            }
        }
        events
    }

    /// Datagrams this side sends now.
    fn transmit(&mut self, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some((_, association)) = &mut self.association {
            while let Some(transmit) = association.poll_transmit(now) {
                if let Payload::RawEncode(datagrams) = transmit.message {
                    out.extend(datagrams);
                }
            }
        }
        out
    }
}

/// A DATA chunk first in the packet (chunk type 0 after the 12-byte common header).
fn is_data(datagram: &[u8]) -> bool {
    datagram.get(12) == Some(&0)
}

/// Sends [`MESSAGES`] messages over a link that loses DATA packets `FIRST_LOST..FIRST_LOST +
/// LOST` (numbered from 1); returns how long, from the first loss, the receiver took to have
/// every message up to the one the last lost packet belongs to (ordered delivery: nothing
/// behind a hole is delivered), and how many packets the sender had retransmitted fast by then.
fn transfer_over_a_burst_loss() -> (Duration, u64) {
    let start = Instant::now();
    let mut now = start;
    let mut client = Side::new("127.0.0.1:5000".parse().expect("address"), false);
    let mut server = Side::new("127.0.0.1:5001".parse().expect("address"), true);
    let (handle, association) = client
        .endpoint
        .connect(now, ClientConfig::new(TransportConfig::default()), server.addr)
        .expect("connect");
    client.association = Some((handle, association));

    let mut written = false;
    let mut data_packets = 0usize;
    let mut first_loss_at = None;
    let mut received = 0usize;
    // Every packet carries one full chunk of a 16 KiB message.
    let chunk = max_payload_size_for_mtu(SCTP_MTU) as usize - 16;
    let through_last_loss = (FIRST_LOST + LOST - 1) * chunk;
    let repaired = through_last_loss.div_ceil(MESSAGE_BYTES) * MESSAGE_BYTES;
    for _ in 0..MAX_STEPS {
        for event in client.run(now, server.addr) {
            if matches!(event, Event::Connected) && !written {
                let (_, association) = client.association.as_mut().expect("client association");
                let mut stream = association.open_stream(1, PayloadProtocolIdentifier::Binary).expect("open");
                let message = Bytes::from(vec![7u8; MESSAGE_BYTES]);
                for _ in 0..MESSAGES {
                    stream
                        .write_chunk_with_ppi(now, &message, PayloadProtocolIdentifier::Binary)
                        .expect("write");
                }
                written = true;
            }
        }
        for datagram in client.transmit(now) {
            if is_data(&datagram) {
                data_packets += 1;
                if (FIRST_LOST..FIRST_LOST + LOST).contains(&data_packets) {
                    first_loss_at.get_or_insert(now);
                    continue;
                }
            }
            server.inbound.push_back((now + DELAY, datagram));
        }

        let events = server.run(now, client.addr);
        if let Some((_, association)) = &mut server.association {
            for event in events {
                let id = match event {
                    Event::Stream(StreamEvent::Opened { id } | StreamEvent::Readable { id }) => id,
                    _ => continue,
                };
                let mut stream = association.stream(id).expect("stream");
                while let Some(chunks) = stream.read_sctp().expect("read") {
                    received += chunks.len();
                }
            }
        }
        if received >= repaired {
            let first_loss_at = first_loss_at.expect("the link dropped packets");
            let (_, association) = client.association.as_ref().expect("client association");
            return (now - first_loss_at, association.stats().get_num_fast_retrans());
        }
        for datagram in server.transmit(now) {
            client.inbound.push_back((now + DELAY, datagram));
        }

        now = match [client.next_wakeup(), server.next_wakeup()].into_iter().flatten().min() {
            Some(next) => next.max(now),
            None => panic!("both sides idle with {received} of {} bytes delivered", MESSAGES * MESSAGE_BYTES),
        };
    }
    panic!("no end after {MAX_STEPS} steps: {received} of {} bytes delivered", MESSAGES * MESSAGE_BYTES);
}

#[test]
fn a_burst_of_lost_packets_is_sent_again_in_one_round_trip_not_one_per_packet() {
    let (stalled, fast_retransmits) = transfer_over_a_burst_loss();
    // Virtual time, so exact: detecting the loss takes about a round trip (three SACKs report
    // the hole), repairing it one more, and what waited behind the hole is then delivered at
    // once. One retransmission per round trip took 23.5 round trips here (rtc-sctp 0.21.1).
    let round_trips = stalled.as_secs_f64() / ROUND_TRIP.as_secs_f64();
    assert!(
        round_trips <= 6.0,
        "the receiver had everything {round_trips:.1} round trips after the first of {LOST} packets was lost"
    );
    assert_eq!(fast_retransmits, LOST as u64, "each lost packet is retransmitted fast, once");
}
