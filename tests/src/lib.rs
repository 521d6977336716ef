//! End-to-end test harness: the real `server` and `peer` binaries, each test in its own
//! loopback-only network namespace.
//!
//! ```no_run
//! #[test]
//! fn two_peers_talk() {
//!     tests::isolated(|| async {
//!         let server = tests::Server::start(&[]).await;
//!         let mut ana = tests::Peer::spawn(&server, &["--name", "ana"]).await;
//!         ana.wait_event("welcome").await;
//!     });
//! }
//! ```
//!
//! - [`isolated`] runs a test body inside a fresh network namespace that holds only `lo`, so no
//!   packet a test sends can leave the machine. It builds the binaries first (once per process).
//! - [`Server`] spawns the `server` binary on `127.0.0.1:0` and can kill and restart it on the
//!   same port.
//! - [`Peer`] spawns the `peer` binary with `--json` and waits for its events.
//! - [`proxy::CuttingProxy`] sits between one client and the server and can drop that client.

mod bins;
pub mod browser;
pub mod coturn;
mod daemon;
pub mod haproxy;
mod netns;
mod peer;
pub mod proxy;
pub mod redis;
mod scratch;
mod server;

pub use bins::{bin_path, ensure_built};
pub use netns::{SERVICE_ADDR, Side, SplitNetwork, inside_namespace, isolated, isolated_with_timeout};
pub use peer::{DEFAULT_DEADLINE, Peer};
pub use scratch::Scratch;
pub use server::Server;
