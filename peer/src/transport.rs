//! How every peer connection is built: settings measured for fast connects on loopback, the
//! sockets to bind, UDP socket buffers large enough for full-speed data channels, and one
//! receive per driver turn so that a browser sending to us gets its SACKs often enough.

use std::future::Future;
use std::io;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtc::ice::mdns::MulticastDnsMode;
use webrtc::peer_connection::{RTCIceServer, SettingEngine, SettingEngineBuilder};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// UDP socket buffer size. The kernel default (~208 KB) makes the receiver drop datagrams under
/// load, which SCTP then retransmits: throughput falls to a fraction and becomes erratic.
pub const UDP_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// Outstanding bytes per data channel before `send` waits: bounds the memory a fast sender
/// (a 10,000-line burst, or a file in issue 8) can pin while the receiver catches up.
pub const SEND_BUFFER_LIMIT: usize = 1024 * 1024;

/// Local UDP addresses to bind when none are given. Loopback first, bound explicitly because
/// webrtc-rs skips loopback when it expands a wildcard (and `include_loopback_candidate` is
/// ignored in 0.21): peers on one machine, or in a namespace with only `lo`, connect over it.
/// The wildcards add one socket per real interface, for peers on other machines.
pub const DEFAULT_BIND: [&str; 4] = ["127.0.0.1:0", "[::1]:0", "0.0.0.0:0", "[::]:0"];

/// The local UDP addresses to bind when `--bind` is not given. With `--relay-only` only the
/// wildcards: relay candidates are all ICE may use then, and webrtc-rs starts a TURN client on
/// every bound socket, so a loopback socket would only add a client that cannot reach a TURN
/// server elsewhere and whose allocation times out (holding back the end of candidates).
pub fn default_bind(relay_only: bool) -> Vec<String> {
    let wanted = |addr: &&&str| !relay_only || addr.starts_with("0.0.0.0") || addr.starts_with("[::]");
    DEFAULT_BIND.iter().filter(wanted).map(|s| s.to_string()).collect()
}

/// SCTP packet budget (common header + DATA chunks), in bytes: 1,024 bytes of message per DATA
/// chunk (1,052 - 12 - 16) instead of webrtc-rs's default 1,191 (1,160 per chunk).
///
/// Why: webrtc-rs 0.21 sends a run of equal-size datagrams in one GSO `sendmsg` (`UDP_SEGMENT`),
/// but only runs of at least 16 (`MIN_GSO_RUN`), and a shorter datagram ends a run; shorter runs
/// cost one syscall per datagram. With 1,160-byte chunks a 16 KiB message (a file chunk, and the
/// largest chat line) is 14 × 1,160 + 144 bytes: a run of 15, so every packet was its own
/// syscall. With 1,024-byte chunks any message of a whole number of KiB is cut into equal
/// packets, a 16 KiB one is a run of 16, and runs continue across queued messages (up to 60
/// datagrams, 64 KiB, per call). Measured on the 2-core machine (docs/benchmarks.md,
/// "Data-channel throughput"): `peer/examples/bench.rs` with 16 KiB messages 87–129 MB/s before,
/// 105–188 after on a quiet machine (load ~1), 37–92 before and 99–192 after with builds
/// running (load 4–6), CPU time per byte about halved; the 50 MiB file e2e test 52–66 MB/s before,
/// 94–141 after, same peak RSS. The cost: ~13 % more packets, so 64 KiB messages (already sent
/// with GSO) went from ~150 to ~125 MB/s; the peer never sends messages over 16 KiB. 1,120
/// (1,092-byte chunks: 16 KiB = 15 × 1,092 + 4, a run of exactly 16) keeps 64 KiB but gained
/// less for 16 KiB messages and files. The 1 MiB send-buffer limit was not the bound: 2, 4 or
/// 8 MiB, or none, changed nothing measurable. Packets smaller than the default fit every path
/// the default fits (TURN, IPv6).
pub const SCTP_MTU: u32 = 1052;

/// The ICE agent's connectivity-check interval while connecting (`peer --ice-tick`).
///
/// With the patched webrtc-rs (vendor/README.md) every connect step is acted on when it is due
/// (a remote candidate, the DTLS ClientHello, SCTP INIT, DCEP OPEN), so this interval only paces
/// checks that are retried; it no longer sets the connect time, and it costs nothing once
/// connected: a connected agent wakes for [`ICE_KEEPALIVE`] only. Before the patch the same
/// setting was also the keepalive and the driver's tick for the connection's whole life, and
/// was 10 ms: 1.34 % of a core per idle connection (docs/benchmarks.md, "Idle CPU").
pub const DEFAULT_ICE_TICK: Duration = Duration::from_millis(20);

/// How often a connected agent sends a STUN binding request on its selected pair (consent
/// freshness, RFC 7675; webrtc-rs's default). It is also when the agent looks at what it has
/// received: a connection silent for 5 s becomes `disconnected`, for 30 s `failed`
/// (webrtc-rs's defaults, kept). Browsers check consent about every 5 s.
pub const ICE_KEEPALIVE: Duration = Duration::from_secs(2);

/// How long connectivity checks may go on before a pair fails: webrtc-rs's default budget
/// (7 checks of 200 ms), kept whatever the tick.
const ICE_CHECK_BUDGET: Duration = Duration::from_millis(1400);

/// How long ICE waits, from its start, before it may nominate a pair with a relay candidate
/// (webrtc-rs's default is 2 s, pion's). Waiting lets a direct pair win where one exists: a host
/// pair may be nominated at once, a server-reflexive one after 500 ms (the default, kept), so a
/// path punched through NATs within 1 s is still preferred to the relay. With `--relay-only`
/// nothing better can come, so no wait. Measured in the TURN benchmark (docs/benchmarks.md,
/// "TURN"): join → `chat` open through coturn took 2.1 s with the default, all of it this wait.
pub fn relay_acceptance_wait(relay_only: bool) -> Duration {
    if relay_only { Duration::ZERO } else { Duration::from_secs(1) }
}

/// The settings every connection uses, with connectivity checks every `ice_tick`.
///
/// A peer-reflexive first pair is accepted at once instead of after 1 s. mDNS is off: nobody here
/// resolves `.local` candidates, and with only `lo` it fails to bind. The SCTP packet size is
/// [`SCTP_MTU`].
pub fn setting_engine(ice_tick: Duration) -> SettingEngine {
    setting_engine_builder(ice_tick).build()
}

/// [`setting_engine`] before `build()`, for benchmarks that vary one setting.
pub fn setting_engine_builder(ice_tick: Duration) -> SettingEngineBuilder {
    let ice_tick = ice_tick.max(Duration::from_millis(1));
    let checks =
        u16::try_from(ICE_CHECK_BUDGET.as_millis() / ice_tick.as_millis()).unwrap_or(u16::MAX).max(1);
    let tick = Some(ice_tick);
    SettingEngineBuilder::new()
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_ice_connection_attempts(tick, Some(checks))
        .with_ice_timeouts(None, None, Some(ICE_KEEPALIVE))
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_sctp_mtu(SCTP_MTU)
}

/// `welcome.ice_servers`, as webrtc-rs wants them.
pub fn ice_servers(servers: &[protocol::IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// Why a connection gathered no relay candidate although `servers` list TURN servers, for the
/// user; `None` when there is no TURN server (then no relay candidate is expected).
///
/// webrtc-rs 0.21 only logs a failed allocation (it emits no `icecandidateerror`), and coturn
/// answers an expired credential and a wrong secret alike (401). The credential's expiry is in
/// its username (TURN REST: `<unix expiry>:<id>`), so an expired one can be told apart here.
pub fn turn_failure(servers: &[protocol::IceServer], now: SystemTime) -> Option<String> {
    let is_turn = |url: &String| url.starts_with("turn:") || url.starts_with("turns:");
    let turn = servers.iter().find(|s| s.urls.iter().any(is_turn))?;
    let urls = turn.urls.iter().filter(|u| is_turn(u)).cloned().collect::<Vec<_>>().join(", ");
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let expiry =
        turn.username.as_deref().and_then(|u| u.split_once(':')).and_then(|(e, _)| e.parse::<u64>().ok());
    Some(match expiry {
        Some(expiry) if expiry <= now => format!(
            "no TURN relay from {urls}: the TURN credential expired {}s ago (the server's --turn-ttl is too short, \
             or a clock is off)",
            now - expiry
        ),
        _ => format!(
            "no TURN relay from {urls}: the TURN server refused the credential or did not answer (is the \
             server's --turn-secret coturn's static-auth-secret? is the TURN server reachable over UDP?)"
        ),
    })
}

/// The tokio runtime, except that every UDP socket gets [`UDP_BUFFER_BYTES`] of send and
/// receive buffer before webrtc-rs starts using it, and is wrapped in [`OneReceivePerTurn`].
#[derive(Debug)]
pub struct BigBufferRuntime(TokioRuntime);

impl BigBufferRuntime {
    pub fn shared() -> Arc<dyn Runtime> {
        Arc::new(BigBufferRuntime(TokioRuntime))
    }
}

impl Runtime for BigBufferRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.0.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.0.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let sock = socket2::SockRef::from(&socket);
        // Best effort: the kernel caps the sizes at net.core.[rw]mem_max, which is fine.
        if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER_BYTES) {
            tracing::debug!("cannot raise SO_RCVBUF: {e}");
        }
        if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER_BYTES) {
            tracing::debug!("cannot raise SO_SNDBUF: {e}");
        }
        let inner = self.0.wrap_udp_socket(socket)?;
        Ok(Arc::new(OneReceivePerTurn { inner, just_received: AtomicBool::new(false) }))
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.0.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.0.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.0.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.0.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.0.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio (2 MiB UDP buffers, one receive per turn)"
    }
}

/// A UDP socket that hands webrtc-rs's driver at most one receive per turn of its loop, so that
/// the SCTP SACKs it owes go out after every second packet instead of once per burst.
///
/// Why: after each receive, webrtc-rs 0.21's driver drains up to 64 more ready datagrams
/// without blocking (`MAX_UDP_RECV_BURST`, probing `poll_recv` with a no-op waker) and only then
/// flushes, so a burst of DATA packets is answered by one SACK. Chromium's SCTP (dcsctp) sends at
/// most 4 packets (`max_burst`) each time something lets it send: a SACK, or the page's
/// `send()`. While the page waits for `bufferedamountlow` only SACKs do, so a browser sending a
/// file to us sent 4 packets, waited for the one SACK that answered them (~0.45 ms round trip
/// through Chromium's processes on loopback), sent 4 more: ~4.6 KB per round trip whatever the
/// windows (the receive window stayed above 1 MB, no loss). Answering this burst drain with
/// "not ready" (once after every receive that returned data) makes the driver flush after each
/// receive; webrtc-rs's SACK rule (delay the first packet, acknowledge the second) then sends a
/// SACK per two packets, each lets dcsctp send 4, and the flight grows until CPU is the bound.
///
/// Measured on the 2-core machine (docs/benchmarks.md, "Files", "Browser → Rust"): the 50 MiB
/// browser → Rust test 13.2–23.9 MB/s on the wire (median 16.4, 16 runs) with this against
/// 10.8–16.7 (median 13.7, 12 runs) without, interleaved in one session (load 0.7–3.1; with it
/// the two cores are busy, mostly with Chromium). Rust → Rust, which sends with GSO and so
/// arrives in GRO batches (one receive, many packets, still one SACK), 94–105 against
/// 90–97 MB/s: unchanged.
#[derive(Debug)]
struct OneReceivePerTurn {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Set when the last `poll_recv` returned data: the next one answers "not ready".
    just_received: AtomicBool,
}

impl AsyncUdpSocket for OneReceivePerTurn {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.just_received.swap(false, Ordering::Relaxed) {
            // The driver's burst probe (a no-op waker) stops here and the driver flushes. Any
            // other caller is woken at once and gets the datagram on its next poll.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if matches!(polled, Poll::Ready(Ok(_))) {
            self.just_received.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod ice_race;
#[cfg(test)]
mod sctp_init_retransmit;
#[cfg(test)]
mod sctp_recovery;

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(username: &str) -> protocol::IceServer {
        protocol::IceServer {
            urls: vec!["turn:198.18.0.1:3478".into()],
            username: Some(username.into()),
            credential: Some("c".into()),
        }
    }

    #[test]
    fn relay_only_binds_only_the_wildcards() {
        assert_eq!(default_bind(false), DEFAULT_BIND);
        assert_eq!(default_bind(true), ["0.0.0.0:0", "[::]:0"]);
    }

    #[test]
    fn a_turn_failure_says_whether_the_credential_had_expired() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        let stun = protocol::IceServer { urls: vec!["stun:a".into()], username: None, credential: None };
        assert_eq!(
            turn_failure(std::slice::from_ref(&stun), now),
            None,
            "no TURN server, nothing to explain"
        );
        let expired = turn_failure(&[stun.clone(), turn("1700000000:p")], now).unwrap_or_default();
        assert!(expired.contains("expired 10s ago") && expired.contains("turn:198.18.0.1:3478"), "{expired}");
        let refused = turn_failure(&[turn("1700003600:p")], now).unwrap_or_default();
        assert!(refused.contains("refused") && refused.contains("--turn-secret"), "{refused}");
    }
}
