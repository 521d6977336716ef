//! The real `server` binary, on a free loopback port, started by the one test-support crate
//! (`testkit`); this wraps it in the async calls the end-to-end tests use.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::{Endpoint, Launch, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bins::bin_path;

/// A running `server` process. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    /// Always `Some` between calls; taken only while a blocking start runs off the runtime.
    process: Option<ServerProcess>,
    /// Where it listens (the same after a restart); `/metrics` is read through it.
    endpoint: Endpoint,
    killed: bool,
}

impl Server {
    /// Starts `server --addr 127.0.0.1:0 EXTRA_ARGS...` and waits for its `listening on` line.
    ///
    /// `extra_args` are passed as they are, e.g. `&["--resume-grace", "2s"]` or
    /// `&["--web-dir", "web"]`. Panics when the server does not come up.
    pub async fn start(extra_args: &[&str]) -> Server {
        Self::start_on("127.0.0.1:0", extra_args).await
    }

    /// [`Server::start`] listening on `addr` instead of `127.0.0.1:0` (e.g. a
    /// [`crate::SplitNetwork`]'s service address, `198.18.0.1:0`).
    pub async fn start_on(addr: &str, extra_args: &[&str]) -> Server {
        let launch = Launch::new(bin_path("server")).on(addr).args(extra_args);
        let process = tokio::task::spawn_blocking(move || launch.start())
            .await
            .expect("the start task ran")
            .unwrap_or_else(|e| panic!("{e}"));
        Server { endpoint: process.endpoint().clone(), process: Some(process), killed: false }
    }

    fn process(&mut self) -> &mut ServerProcess {
        self.process.as_mut().expect("the server process is in place between calls")
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.socket_addr()
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        self.endpoint.ws_url()
    }

    /// The whole HTTP response (status line, headers, body) to `GET path`, asked directly (not
    /// through any proxy a test put in front).
    pub async fn http_get(&self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr());
        let mut response = String::new();
        let mut stream = tokio::net::TcpStream::connect(self.addr())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: the server at {} refuses TCP: {e}", self.addr()));
        stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("GET {path}: cannot send: {e}"));
        stream.read_to_string(&mut response).await.unwrap_or_else(|e| panic!("GET {path}: cannot read: {e}"));
        response
    }

    /// One value from its `/metrics` (testkit's reading, which waits out a cap's refusal).
    pub async fn metric(&self, name: &str) -> f64 {
        self.endpoint.metric(name).await
    }

    /// Waits (at most 20 s) until `/metrics` shows `name` at `value`, failing with what it
    /// showed last.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        self.endpoint.wait_for_metric_within(name, value, Duration::from_secs(20)).await;
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let process = self.process.as_ref()?;
        (!self.killed).then(|| process.pid())
    }

    /// Kills the server with SIGKILL (no close frames, no goodbye) and waits until it is gone.
    pub async fn kill(&mut self) {
        self.process().kill();
        self.killed = true;
    }

    /// Sends SIGTERM (graceful shutdown) and returns its exit code, waiting at most `deadline`.
    pub async fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        if self.killed {
            return None;
        }
        self.process().signal("TERM");
        let until = tokio::time::Instant::now() + deadline;
        let code = loop {
            if let Some(status) = self.process().exited() {
                break status.code();
            }
            if tokio::time::Instant::now() >= until {
                self.process().kill();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.killed = true;
        code
    }

    /// Starts the server again on the same address with the same extra arguments (after
    /// [`Server::kill`]; a running one is killed first).
    pub async fn restart(&mut self) {
        let mut process = self.process.take().expect("the server process is in place between calls");
        let (process, restarted) = tokio::task::spawn_blocking(move || {
            let restarted = process.restart();
            (process, restarted)
        })
        .await
        .expect("the restart task ran");
        self.process = Some(process);
        restarted.unwrap_or_else(|e| panic!("{e}"));
        self.killed = false;
    }
}
