//! Starts Switchboard's server for every suite and benchmark, one way each:
//!
//! - [`InProcess`]: the server as a library ([`server::run`]) on a listener bound to port 0, in
//!   the test's own runtime. Under `#[tokio::test(start_paused = true)]` every server timer
//!   (idle, join, grace, ping) runs on the paused clock, so a test waits out a 45 s idle timeout
//!   in no time and exactly.
//! - [`ServerProcess`] (from a [`Launch`]): the real binary, for what only a process shows (its
//!   command line, stdout, exit codes, signals, open-file limits, RSS and CPU time), pinned to a
//!   core with `taskset` when a benchmark asks.
//!
//! Both deref to an [`Endpoint`]: the client side every suite uses (WebSocket clients, HTTP,
//! `/metrics`).

mod client;
mod in_process;
mod process;
pub mod procfs;
mod real_time;
mod tls;

pub use client::{Client, Ended, Endpoint, WAIT, http_get, sequence_of, signal_to};
pub use in_process::InProcess;
pub use process::{Launch, ServerProcess};
pub use real_time::within_real_time;
pub use tls::self_signed_localhost;
