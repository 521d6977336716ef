//! The real HAProxy (Debian's `haproxy`) with the repository's `deploy/haproxy/haproxy.cfg`, in
//! front of two server instances. Started by a test in a temp dir of its own; the package's
//! system service is never used (scripts/test.sh disables it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::Scratch;
use crate::redis::free_port;

const HAPROXY: &str = "/usr/sbin/haproxy";
const HAPROXY_ENV: &str = "SWITCHBOARD_HAPROXY";
/// How long HAProxy may take to answer `/healthz` through itself.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The config kept in the repository, the one the README tells users to run.
pub fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg")
}

/// A running `haproxy`. Killed when dropped.
pub struct HaProxy {
    child: Child,
    addr: SocketAddr,
    _dir: Scratch,
}

impl HaProxy {
    /// Starts HAProxy on a free loopback port in front of instances `a` and `b`; waits until a
    /// request through it is answered.
    pub async fn start(a: SocketAddr, b: SocketAddr) -> HaProxy {
        let program = std::env::var_os(HAPROXY_ENV).map(PathBuf::from).unwrap_or_else(|| HAPROXY.into());
        if !program.exists() {
            panic!(
                "haproxy not found at {} (set {HAPROXY_ENV} to use another): install Debian's `haproxy` \
                 (`apt-get install -y haproxy`; scripts/test.sh does it)",
                program.display()
            );
        }
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = Scratch::new("haproxy", &addr.port().to_string());
        let mut command = Command::new(&program);
        command
            .arg("-db")
            .arg("-f")
            .arg(repo_config())
            .env("SWITCHBOARD_LISTEN", addr.to_string())
            .env("SWITCHBOARD_A", a.to_string())
            .env("SWITCHBOARD_B", b.to_string())
            .env("SWITCHBOARD_HAPROXY_STATE", dir.str());
        let child = crate::daemon::spawn(command, &program);
        let mut proxy = HaProxy { child, addr, _dir: dir };
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("haproxy exited at start ({status}); see its messages above");
            }
            if proxy.healthz().await == Some(200) {
                return proxy;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "haproxy did not pass a request within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/ws` through HAProxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://127.0.0.1:PORT` through HAProxy.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The status of `GET /healthz` through HAProxy, if it answered.
    pub async fn healthz(&self) -> Option<u16> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.ok()?.ok()?;
        String::from_utf8_lossy(&response).split(' ').nth(1)?.parse().ok()
    }
}
