//! Starting a server under test (pinned with `taskset` when asked) and reading its memory and CPU
//! time from /proc. Switchboard's own server is started by the test-support crate (`testkit`),
//! as every suite starts it; matchbox_server and PeerJS here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::proto::Proto;

/// How to start each server: its program and, if set, the CPU cores to pin it to.
#[derive(Debug, Clone)]
pub struct Launch {
    pub proto: Proto,
    pub program: PathBuf,
    /// A `taskset -c` CPU list: `0`, `0-1`.
    pub core: Option<String>,
    /// Extra flags (Switchboard: e.g. the soak keeps the rate limit on).
    pub extra: Vec<String>,
}

/// A running server process; killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: u32,
    _process: Running,
}

/// What keeps the process alive (and kills it on drop).
enum Running {
    /// Killed by its own drop.
    Switchboard {
        _process: Box<testkit::ServerProcess>,
    },
    Other(Child),
}

impl Launch {
    pub fn start(&self) -> anyhow::Result<Server> {
        if self.proto == Proto::Switchboard {
            let mut launch = testkit::Launch::new(&self.program)
                .args(["--max-connections", "30000", "--max-connections-per-ip", "30000"])
                .args(["--max-rooms", "30000"])
                .args(&self.extra)
                .env("RUST_LOG", "warn")
                .quiet();
            if let Some(core) = &self.core {
                launch = launch.pinned(core.clone());
            }
            let process = launch.start().map_err(anyhow::Error::msg)?;
            let (addr, pid) = (process.socket_addr(), process.pid());
            return Ok(Server { addr, pid, _process: Running::Switchboard { _process: Box::new(process) } });
        }
        let mut command = match &self.core {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(core).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stderr(Stdio::null());
        // matchbox_server or PeerJS: no address line to read; wait until the port accepts.
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        if self.proto == Proto::Matchbox {
            command.arg(addr.to_string());
        } else {
            command.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
            command.args(["--concurrent_limit", "30000", "--alive_timeout", "600000"]);
        }
        command.stdout(Stdio::null());
        let child = command.spawn().with_context(|| format!("cannot start {:?}", self.program))?;
        let pid = child.id();
        let server = Server { addr, pid, _process: Running::Other(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 20 s", self.proto.label());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Server {
    /// Resident set size now, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        Ok(testkit::procfs::rss_bytes(self.pid)?)
    }

    /// Peak resident set size so far, in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        Ok(testkit::procfs::peak_rss_bytes(self.pid)?)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Other(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU time (user + system) of process `pid` so far, in microseconds.
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    Ok(testkit::procfs::cpu_us(pid)?)
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft),
    }
}
