//! The real Redis (Debian's `redis-server`), started by a test on a free loopback port in a temp
//! dir of its own, without persistence: stopping it loses everything, as a restarted cache
//! would. The package's system service is never used (scripts/test.sh disables it).

use std::net::TcpListener;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::Scratch;

/// Where the test finds `redis-server`; `SWITCHBOARD_REDIS_SERVER` points elsewhere.
const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_SERVER_ENV: &str = "SWITCHBOARD_REDIS_SERVER";
/// How long Redis may take to answer its first PING.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running `redis-server`. Killed when dropped; its temp dir is removed.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: Scratch,
}

impl Redis {
    /// Starts Redis on a free port of 127.0.0.1 and waits until it answers PING.
    pub async fn start() -> Redis {
        let port = free_port();
        let mut redis = Redis { child: None, port, dir: Scratch::new("redis", &port.to_string()) };
        redis.spawn().await;
        redis
    }

    /// `redis://127.0.0.1:PORT/`, for the server's `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills Redis (SIGKILL): every connection to it drops, its data is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// One command in Redis' inline form (e.g. `DBSIZE`), answered in RESP: the reply's
    /// first line.
    pub async fn command(&self, line: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("Redis on port {} refuses TCP: {e}", self.port));
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("cannot send: {e}"));
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("Redis did not answer {line:?}"))
            .unwrap_or_else(|e| panic!("cannot read Redis' answer: {e}"));
        String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or_default().to_owned()
    }

    async fn spawn(&mut self) {
        let program = std::env::var_os(REDIS_SERVER_ENV)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| REDIS_SERVER.into());
        if !program.exists() {
            panic!(
                "redis-server not found at {} (set {REDIS_SERVER_ENV} to use another): install Debian's \
                 `redis-server` (`apt-get install -y redis-server`; scripts/test.sh does it)",
                program.display()
            );
        }
        let mut command = Command::new(&program);
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", self.dir.str(), "--logfile", &self.dir.join_str("redis.log")]);
        let child = crate::daemon::spawn(command, &program);
        self.child = Some(child);
        let started = tokio::time::Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited at start ({status}); its log:\n{}", self.log());
            }
            if self.pings().await {
                return;
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "redis-server did not answer PING within {START_DEADLINE:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pings(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut answer = [0u8; 16];
        matches!(stream.read(&mut answer).await, Ok(n) if answer[..n].starts_with(b"+PONG"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("redis log:\n{}", self.log());
        }
    }
}

/// A port nothing listens on right now (bound and released; loopback only).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}
