//! The ceiling for data-channel throughput: raw UDP over loopback, one sender thread and one
//! receiver thread, each socket with the peer's 2 MiB send and receive buffers.
//!
//! Two runs, one after the other:
//! - large datagrams (64,000 bytes by default): the byte-rate ceiling of the loopback path, the
//!   figure a data channel is compared with (webrtc-rs coalesces its ~1,200-byte packets into
//!   GSO sends of up to 64 KiB, so it is not bound by one syscall per packet);
//! - 1,200-byte datagrams, one syscall each: the packet-rate view, at the size SCTP-over-DTLS
//!   packets have.
//!
//! Each run counts what the receiver gets in a measured window after a short warm-up; the
//! sender sends as fast as it can, and whatever the receiver's buffer cannot hold is dropped
//! (counted as `sent - received`).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The socket buffers the peer gives its UDP sockets (`peer::transport::UDP_BUFFER_BYTES`).
pub const SOCKET_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// Not counted: lets both threads start and the buffers reach a steady state.
const WARMUP: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UdpResult {
    /// SO_RCVBUF / SO_SNDBUF asked for on both sockets (the kernel may cap or double it).
    pub socket_buffer_bytes: usize,
    /// Large datagrams: the byte-rate ceiling (`udp_ceiling_mb_per_s` in the summary).
    pub large: UdpRun,
    /// SCTP-packet-sized datagrams, one syscall each: the packet-rate view.
    pub small: UdpRun,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UdpRun {
    pub datagram_bytes: usize,
    /// Received payload bytes per second in the measured window, in MB (10^6 bytes).
    pub mb_per_s: f64,
    /// Received datagrams per second in the measured window.
    pub datagrams_per_s: f64,
    /// Whole run, warm-up included.
    pub sent: u64,
    pub received: u64,
}

pub fn run(large_bytes: usize, small_bytes: usize, duration: Duration) -> anyhow::Result<UdpResult> {
    Ok(UdpResult {
        socket_buffer_bytes: SOCKET_BUFFER_BYTES,
        large: measure(large_bytes, duration)?,
        small: measure(small_bytes, duration)?,
    })
}

fn socket() -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let sock = socket2::SockRef::from(&socket);
    sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
    sock.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    Ok(socket)
}

fn measure(datagram_bytes: usize, duration: Duration) -> anyhow::Result<UdpRun> {
    anyhow::ensure!(
        (1..=65_507).contains(&datagram_bytes),
        "datagram size {datagram_bytes} is not a valid UDP payload size"
    );
    let receiver = socket()?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let sender = socket()?;
    sender.connect(receiver.local_addr()?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let payload = vec![0x5a_u8; datagram_bytes];
            let mut sent = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                // A failed send (ENOBUFS under pressure) is simply not counted.
                if sender.send(&payload).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let receiving = std::thread::spawn(move || {
        let mut buffer = vec![0_u8; 65_536];
        let (mut received, mut bytes) = (0_u64, 0_u64);
        let started = Instant::now();
        let window_start = started + WARMUP;
        let window_end = window_start + duration;
        // (received, bytes, instant) when the measured window opened.
        let mut base: Option<(u64, u64, Instant)> = None;
        loop {
            let now = Instant::now();
            if now >= window_end {
                break;
            }
            if base.is_none() && now >= window_start {
                base = Some((received, bytes, now));
            }
            if let Ok(n) = receiver.recv(&mut buffer) {
                received += 1;
                bytes += n as u64;
            }
        }
        let (base_received, base_bytes, from) = base.unwrap_or((0, 0, started));
        let seconds = window_end.duration_since(from).as_secs_f64();
        (received, (received - base_received) as f64 / seconds, (bytes - base_bytes) as f64 / seconds)
    });
    let receiving = receiving.join().map_err(|_| anyhow::anyhow!("receiver thread panicked"));
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    let (received, datagrams_per_s, bytes_per_s) = receiving?;
    Ok(UdpRun { datagram_bytes, mb_per_s: bytes_per_s / 1e6, datagrams_per_s, sent, received })
}
