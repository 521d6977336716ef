//! Switchboard's signaling server as a library: [`run`] serves on a listener the caller bound,
//! until the `shutdown` future resolves, so tests and `main` start it the same way.
//!
//! Where things live: `rooms` holds every rule (membership, relay, resume) with no I/O;
//! `ws` moves frames for one connection; `http` routes; `admission` and `budget` are the limits.

pub mod admission;
pub mod budget;
pub mod config;
pub mod grant;
mod http;
pub mod ids;
pub mod inbound;
pub mod outbox;
mod readahead;
pub mod refusal;
pub mod rooms;
mod state;
mod tls;
pub mod turn;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpStream};

pub use config::{Cli, Command, Config};
use state::Shared;

/// How often suspended members are checked for an expired grace period.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to send their close frames.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(4);

/// Serves on `listener` until `shutdown` resolves; then closes every WebSocket with 1001 and
/// returns once every connection task has ended (or [`SHUTDOWN_WAIT`] has passed).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = Shared::new(config);
    shared.tasks.spawn(sweep_expired_members(shared.clone()));
    let app = http::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shared.shutdown.clone();
    let stopping = async move {
        tokio::select! {
            () = shutdown => stop.cancel(),
            () = stop.cancelled() => {}
        }
    };
    let served = match &shared.config.tls {
        None => {
            // Signaling frames are small and latency-bound: never let Nagle hold one back.
            let listener = ReadAheadListener(listener).tap_io(|tcp| {
                let _ = tcp.get_mut().set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(stopping).await.map_err(anyhow::Error::from)
        }
        Some(files) => tls::serve(listener, app, files, stopping).await,
    };
    shared.shutdown.cancel();
    shared.tasks.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, shared.tasks.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    served
}

/// Plain TCP: every accepted socket reads through [`readahead::ReadAhead`].
struct ReadAheadListener(TcpListener);

impl axum::serve::Listener for ReadAheadListener {
    type Io = readahead::ReadAhead<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, client) = axum::serve::Listener::accept(&mut self.0).await;
        (readahead::ReadAhead::new(tcp), client)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

async fn sweep_expired_members(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = tick.tick() => shared.rooms().expire(Instant::now()),
        }
    }
}
