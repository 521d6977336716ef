//! Switchboard's signaling server as a library: [`run`] serves on a listener the caller bound,
//! until the `shutdown` future resolves, so tests and `main` start it the same way.
//!
//! Where things live: `rooms` holds every rule (membership, relay, resume) with no I/O;
//! `ws` moves frames for one connection; `http` routes; `admission` and `budget` are the limits.

mod accept;
mod admission;
mod budget;
mod clock;
mod cluster;
pub mod config;
pub mod grant;
mod hosts;
mod http;
mod ids;
// The cargo-fuzz targets (fuzz/) drive the frame parser and the room rules directly.
#[cfg(feature = "fuzzing")]
pub mod inbound;
#[cfg(not(feature = "fuzzing"))]
mod inbound;
mod outbox;
mod proxy;
mod readahead;
mod refusal;
#[cfg(feature = "fuzzing")]
pub mod rooms;
#[cfg(not(feature = "fuzzing"))]
mod rooms;
mod shards;
mod socket;
mod state;
pub mod tls;
pub mod turn;
mod turned_away;
mod upgrade;
mod ws;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::{Cli, Command, Config};
use state::Shared;

/// How often suspended members are checked for an expired grace period.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to send their close frames. With the process's own
/// exit after it, this keeps "exit within 5 s of SIGTERM" whatever clients do.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(3500);

/// Serves on `listener` until `shutdown` resolves; then closes every WebSocket with 1001 and
/// returns once every connection task has ended (or [`SHUTDOWN_WAIT`] has passed).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    let listening_on_loopback = listener.local_addr()?.ip().is_loopback();
    let cluster = match &config.redis {
        Some(url) => Some(cluster::Cluster::new(url, config.rooms.room_size, config.rooms.resume_grace)?),
        None => None,
    };
    let shared = Shared::new(config, listening_on_loopback, cluster);
    if let Some(cluster) = &shared.cluster {
        cluster::start(&shared, cluster);
    }
    shared.tasks.spawn(sweep_expired_members(shared.clone()));
    let summaries = shared.clone();
    shared.tasks.spawn(async move { summaries.turned_away.log_summaries(summaries.shutdown.clone()).await });
    let stop = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            () = shutdown => stop.cancel(),
            () = stop.cancelled() => {}
        }
    });
    accept::serve(listener, shared.clone(), tls, http::router(shared.clone())).await;
    shared.shutdown.cancel();
    // Each writer looks at the shutdown when woken, and sends its close (ws.rs).
    shared.rooms.wake_all();
    shared.tasks.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, shared.tasks.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    Ok(())
}

async fn sweep_expired_members(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => shared.rooms.expire(clock::now()),
        }
    }
}
