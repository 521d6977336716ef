//! The real `server` binary, on a free loopback port.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::bins::bin_path;

/// How long the server may take to print its `listening on` line.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running `server` process. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    extra_args: Vec<String>,
}

impl Server {
    /// Starts `server --addr 127.0.0.1:0 EXTRA_ARGS...` and waits for its `listening on` line.
    ///
    /// `extra_args` are passed as they are, e.g. `&["--resume-grace", "2s"]` or
    /// `&["--web-dir", "web"]`. Panics when the server does not come up.
    pub async fn start(extra_args: &[&str]) -> Server {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn("127.0.0.1:0", &extra_args).await;
        Server { child: Some(child), addr, extra_args }
    }

    /// [`Server::start`] listening on `addr` instead of `127.0.0.1:0` (e.g. a
    /// [`crate::SplitNetwork`]'s service address, `198.18.0.1:0`).
    pub async fn start_on(addr: &str, extra_args: &[&str]) -> Server {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn(addr, &extra_args).await;
        Server { child: Some(child), addr, extra_args }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The whole HTTP response (status line, headers, body) to `GET path`, asked directly (not
    /// through any proxy a test put in front).
    pub async fn http_get(&self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        let mut response = String::new();
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: the server at {} refuses TCP: {e}", self.addr));
        stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("GET {path}: cannot send: {e}"));
        stream.read_to_string(&mut response).await.unwrap_or_else(|e| panic!("GET {path}: cannot read: {e}"));
        response
    }

    /// One value from its `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let response = self.http_get("/metrics").await;
        response
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{response}"))
    }

    /// Waits (at most 20 s) until `/metrics` shows `name` at `value`, failing with what it
    /// showed last.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {now}, expected {value}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the server with SIGKILL (no close frames, no goodbye) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Sends SIGTERM (graceful shutdown) and returns its exit code, waiting at most `deadline`.
    pub async fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        crate::peer::send_signal(child.id(), "TERM");
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.start_kill();
                None
            }
        }
    }

    /// Starts the server again on the same address with the same extra arguments (after
    /// [`Server::kill`]; a running one is killed first).
    pub async fn restart(&mut self) {
        self.kill().await;
        let addr = self.addr.to_string();
        // The port was just freed; a few retries cover the rare case where binding races it.
        let mut last_error = String::new();
        for _ in 0..20 {
            match try_spawn(&addr, &self.extra_args).await {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server did not restart on {addr}: {last_error}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

async fn spawn(addr: &str, extra_args: &[String]) -> (Child, SocketAddr) {
    try_spawn(addr, extra_args).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn try_spawn(addr: &str, extra_args: &[String]) -> Result<(Child, SocketAddr), String> {
    let path = bin_path("server");
    let mut child = Command::new(&path)
        .arg("--addr")
        .arg(addr)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let stdout = child.stdout.take().ok_or("server stdout is not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let wait_line = async {
        let mut seen = Vec::new();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        let hostport = url.trim_start_matches("http://").trim_start_matches("https://");
                        return hostport
                            .trim_end_matches('/')
                            .parse::<SocketAddr>()
                            .map_err(|e| format!("cannot parse the address in {line:?}: {e}"));
                    }
                    seen.push(line);
                }
                Ok(None) => {
                    return Err(format!("server exited before printing `listening on` (stdout: {seen:?})"));
                }
                Err(e) => return Err(format!("cannot read server stdout: {e}")),
            }
        }
    };
    let addr = match tokio::time::timeout(START_DEADLINE, wait_line).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
            return Err(format!("{e} [{status}]"));
        }
        Err(_) => return Err(format!("server printed no `listening on` line within {START_DEADLINE:?}")),
    };
    // Keep draining stdout so that the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}
