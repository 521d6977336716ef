//! The ceiling for data-channel throughput: raw UDP over loopback, one sender thread and one
//! receiver thread, datagrams the size WebRTC's SCTP-over-DTLS packets have (~1,200 bytes).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UdpResult {
    pub datagram_bytes: usize,
    /// Received payload bytes per second, in MB (10^6 bytes).
    pub mb_per_s: f64,
    pub sent: u64,
    pub received: u64,
}

pub fn run(datagram_bytes: usize, duration: Duration) -> anyhow::Result<UdpResult> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let target = receiver.local_addr()?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sender.connect(target)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let payload = vec![0x5a_u8; datagram_bytes];
            let mut sent = 0_u64;
            // Bounded by time (the flag) and by count, whichever comes first.
            while !stop.load(Ordering::Relaxed) && sent < 100_000_000 {
                if sender.send(&payload).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let mut buffer = vec![0_u8; 65_536];
    let mut received = 0_u64;
    let mut bytes = 0_u64;
    let started = Instant::now();
    let end = started + duration;
    while Instant::now() < end {
        if let Ok(n) = receiver.recv(&mut buffer) {
            received += 1;
            bytes += n as u64;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    Ok(UdpResult { datagram_bytes, mb_per_s: bytes as f64 / elapsed / 1e6, sent, received })
}
