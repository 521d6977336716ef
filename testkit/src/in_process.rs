//! The server as a library in the caller's runtime.

use std::ops::Deref;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Endpoint;

/// A server running in this process, on `127.0.0.1` port 0 unless told otherwise. Dropping it
/// shuts it down (its connections get 1001, as on SIGTERM).
pub struct InProcess {
    endpoint: Endpoint,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Starts the server with the binary's flags (`--addr` aside), e.g. `&["--resume-grace",
    /// "2s"]`. Panics on a flag the binary would refuse, with clap's message.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", args).await
    }

    /// [`InProcess::start`] on `addr` (e.g. `127.0.0.2:0`).
    pub async fn start_on(addr: &str, args: &[&str]) -> Self {
        log_if_asked();
        let argv = ["server", "--addr", addr].into_iter().chain(args.iter().copied());
        let argv: Vec<&str> = argv.collect();
        let cli = server::Cli::try_parse_from(&argv)
            .unwrap_or_else(|error| panic!("bad server flags {argv:?}: {error}"));
        let config = cli.serve.into_config();
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        let local = listener.local_addr().expect("a bound listener has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = server::run(listener, config, shutdown).await {
                panic!("the in-process server failed: {error:#}");
            }
        });
        Self { endpoint: Endpoint::new(local, "http"), stop: Some(stop), task: Some(task) }
    }

    /// Shuts down as on SIGTERM and waits until the server has returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the in-process server ended without a panic");
        }
    }
}

impl Deref for InProcess {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `SWITCHBOARD_TEST_LOG=debug` (a `RUST_LOG`-style filter) shows the in-process server's log on
/// stderr; without it the server logs nothing, as the binary under `RUST_LOG=warn` nearly does.
fn log_if_asked() {
    if let Ok(filter) = std::env::var("SWITCHBOARD_TEST_LOG") {
        // Once per test binary: a second init (another test) is refused, which is fine.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_test_writer()
            .try_init();
    }
}
