//! Starting a server under test (pinned with `taskset` when asked) and reading its memory and CPU
//! time from /proc.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::proto::Proto;

/// How to start each server: its program and, if set, the CPU core to pin it to.
#[derive(Debug, Clone)]
pub struct Launch {
    pub proto: Proto,
    pub program: PathBuf,
    pub core: Option<usize>,
    /// Extra flags (Switchboard: e.g. the soak keeps the rate limit on).
    pub extra: Vec<String>,
}

/// A running server process; killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
}

impl Launch {
    pub fn start(&self) -> anyhow::Result<Server> {
        let mut command = match self.core {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(core.to_string()).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stderr(Stdio::null());
        match self.proto {
            Proto::Switchboard => {
                command
                    .args(["--addr", "127.0.0.1:0", "--max-connections", "30000"])
                    .args(["--max-connections-per-ip", "30000", "--max-rooms", "30000"])
                    .args(&self.extra)
                    .stdout(Stdio::piped());
                let mut child =
                    command.spawn().with_context(|| format!("cannot start {:?}", self.program))?;
                let stdout = child.stdout.take().context("no stdout")?;
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line)?;
                let addr = line
                    .trim()
                    .strip_prefix("listening on http://")
                    .with_context(|| format!("unexpected first line {line:?}"))?
                    .parse()?;
                let pid = child.id();
                Ok(Server { addr, pid, child })
            }
            Proto::Matchbox | Proto::Peerjs => {
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
                let server = Server { addr, pid, child };
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
    }
}

impl Server {
    /// Resident set size now, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmRSS:").map(|kib| kib * 1024)
    }

    /// Peak resident set size so far, in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmHWM:").map(|kib| kib * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context("bad status line")?.parse()?)
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SECOND: u64 = 100;

pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")" come state (field 3) ...; utime is field 14 and stime 15 (1-based, man proc).
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) * 1_000_000 / TICKS_PER_SECOND)
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(super::cpu_us(pid).is_ok());
        assert!(super::status_kib(pid, "VmRSS:").expect("rss") > 0);
    }
}
