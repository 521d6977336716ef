//! The slow join -> chat runs, made deterministic: two rtc-ice agents (the peer connections' ICE)
//! joined by an in-memory link with a fixed delay and a virtual clock, no sockets and no real time.
//!
//! The race, as traced in `peer/examples/bench.rs` (docs/benchmarks.md, "Join → chat open"): the
//! answerer has the offer and the offerer's candidate, so its first connectivity check reaches
//! the offerer before the answerer's own candidate does (that one travels through the server).
//! The offerer learns the address from the check as a peer-reflexive candidate; then the
//! candidate arrives by signaling with the same address. rtc-ice 0.21.1 kept both: the signaled
//! one's pair ranked higher but could never succeed (everything from that address is credited to
//! the peer-reflexive candidate), so the offerer, which controls ICE, nominated nothing until its
//! next check tick: about 20 ms late, in one join of 10–20. With vendor/rtc-ice's patch the
//! signaled candidate replaces the peer-reflexive one and the pair is nominated at once.
//!
//! What a user notices: the channel opens a check interval late, and the selected pair is
//! reported as `prflx` (`peer --json`'s `candidate_pair` event) although both sides signaled
//! plain host candidates.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::ice::candidate::candidate_host::CandidateHostConfig;
use rtc::ice::candidate::{CandidateConfig, CandidateType, unmarshal_candidate};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::{Agent, AgentConfig, Event};
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};

use super::{DEFAULT_ICE_TICK, ICE_KEEPALIVE};

/// One-way delay of the link between the two agents.
const DELAY: Duration = Duration::from_millis(1);
/// When the answerer's candidate reaches the offerer through the server: after the answerer's
/// first check (sent at once, arriving after `DELAY`) and before the offerer's own check of that
/// address is answered (3 × `DELAY`). In the bench's slow runs it came 0.2 ms after that check.
const CANDIDATE_AT: Duration = Duration::from_millis(2);
/// A bound on the simulation: far more steps than a connect needs.
const MAX_STEPS: usize = 10_000;

/// One agent, its address, the datagrams on their way to it and what it selected.
struct Side {
    agent: Agent,
    addr: SocketAddr,
    inbound: VecDeque<(Instant, BytesMut, SocketAddr)>,
    /// When the agent selected a pair, and the remote candidate's type.
    selected: Option<(Instant, CandidateType)>,
}

impl Side {
    fn new(start: Instant, addr: SocketAddr, controlling: bool) -> Side {
        let config = AgentConfig {
            is_controlling: controlling,
            // The peer's settings (transport::setting_engine_builder).
            check_interval: DEFAULT_ICE_TICK,
            keepalive_interval: Some(ICE_KEEPALIVE),
            prflx_acceptance_min_wait: Some(Duration::ZERO),
            multicast_dns_mode: MulticastDnsMode::Disabled,
            ..AgentConfig::default()
        };
        let crypto = rtc::crypto::default_provider().expect("a crypto provider");
        let mut agent = Agent::new(start, Arc::new(config), crypto).expect("an ICE agent");
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..CandidateConfig::default()
            },
            ..CandidateHostConfig::default()
        };
        agent.add_local_candidate(host.new_candidate_host().expect("a host candidate")).expect("added");
        Side { agent, addr, inbound: VecDeque::new(), selected: None }
    }

    /// The local candidate as the remote receives it by signaling (its SDP line, parsed).
    fn signaled_candidate(&self) -> rtc::ice::candidate::Candidate {
        let line = self.agent.get_local_candidates()[0].marshal();
        unmarshal_candidate(&line).expect("a candidate line")
    }

    fn start_checks(&mut self, now: Instant, remote: &Side) {
        let credentials = remote.agent.get_local_credentials().clone();
        let controlling = self.agent.role();
        self.agent
            .start_connectivity_checks(now, controlling, credentials.ufrag, credentials.pwd)
            .expect("checks started");
    }

    /// Runs what is due at `now`: arrived datagrams, then the agent's timer.
    fn run(&mut self, now: Instant) {
        while self.inbound.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, message, from)) = self.inbound.pop_front() else { break };
            let transport = TransportContext {
                local_addr: self.addr,
                peer_addr: from,
                transport_protocol: TransportProtocol::UDP,
                ecn: None,
            };
            let _ = self.agent.handle_read(TransportMessage { now, transport, message });
        }
        if self.agent.poll_timeout().is_some_and(|at| at <= now) {
            let _ = self.agent.handle_timeout(now);
        }
        while let Some(event) = self.agent.poll_event() {
            if let Event::SelectedCandidatePairChange(_, remote) = event.event {
                self.selected.get_or_insert((now, remote.candidate_type()));
            }
        }
    }

    /// Puts what the agent sent on the link to `to`.
    fn send(&mut self, now: Instant, to: &mut Side) {
        while let Some(out) = self.agent.poll_write() {
            assert_eq!(out.transport.peer_addr, to.addr, "a check to an address nobody has");
            to.inbound.push_back((now + DELAY, out.message, self.addr));
        }
    }

    fn next_due(&mut self) -> Option<Instant> {
        let arrival = self.inbound.front().map(|(at, _, _)| *at);
        [arrival, self.agent.poll_timeout()].into_iter().flatten().min()
    }
}

#[test]
fn a_candidate_that_arrives_after_the_remotes_first_check_is_nominated_at_once() {
    let start = Instant::now();
    let mut offerer = Side::new(start, SocketAddr::from(([127, 0, 0, 1], 40001)), true);
    let mut answerer = Side::new(start, SocketAddr::from(([127, 0, 0, 1], 40002)), false);

    // The answerer has the offer (credentials and candidate) and starts checking; the offerer has
    // the answer's credentials, but the answerer's candidate is still on its way.
    answerer.agent.add_remote_candidate(offerer.signaled_candidate()).expect("added");
    answerer.start_checks(start, &offerer);
    offerer.start_checks(start, &answerer);
    let mut pending_candidate = Some(answerer.signaled_candidate());

    let mut now = start;
    for _ in 0..MAX_STEPS {
        if offerer.selected.is_some() && answerer.selected.is_some() {
            break;
        }
        if pending_candidate.is_some() && now >= start + CANDIDATE_AT {
            let candidate = pending_candidate.take().expect("checked");
            offerer.agent.add_remote_candidate(candidate).expect("added");
        }
        offerer.run(now);
        answerer.run(now);
        offerer.send(now, &mut answerer);
        answerer.send(now, &mut offerer);
        let candidate_due = pending_candidate.as_ref().map(|_| start + CANDIDATE_AT);
        let next = [offerer.next_due(), answerer.next_due(), candidate_due].into_iter().flatten().min();
        now = next.expect("something is always due while connecting").max(now);
    }

    let (offerer_at, offerer_remote) = offerer.selected.expect("the offerer selected a pair");
    let (answerer_at, _) = answerer.selected.expect("the answerer selected a pair");
    // Once the candidate is there: at most a check answered and the nominating check answered,
    // two round trips. Upstream waited for the offerer's next check tick instead.
    let connected = offerer_at.max(answerer_at) - start;
    assert!(
        connected <= CANDIDATE_AT + 4 * DELAY,
        "connected {connected:?} after the start, the candidate arrived at {CANDIDATE_AT:?}: \
         the nomination waited for a check tick ({DEFAULT_ICE_TICK:?})"
    );
    assert_eq!(
        offerer_remote,
        CandidateType::Host,
        "the offerer's selected pair must use the signaled host candidate, not a peer-reflexive \
         duplicate of it"
    );
}
