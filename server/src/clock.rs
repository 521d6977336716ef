//! The server's one clock. Every "now" the rules and the connection loops compute with comes from
//! tokio's clock, the one its timers run on: a test that pauses it (`start_paused`) moves the
//! idle, join and grace deadlines and the timers that fire them together. In a normal runtime
//! this is `std::time::Instant::now()`.

use std::time::Instant;

pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
