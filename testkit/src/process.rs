//! The real `server` binary, started the way every suite and benchmark needs it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::client::Endpoint;

/// How long the binary may take to print its `listening on` line.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How to start the binary: `PROGRAM --addr ADDR ARGS...`, optionally under `taskset -c CORE`
/// and `prlimit --nofile`.
#[derive(Debug, Clone)]
pub struct Launch {
    program: PathBuf,
    addr: String,
    args: Vec<OsString>,
    core: Option<String>,
    nofile: Option<(u64, u64)>,
    env: Vec<(String, String)>,
    stderr: Stderr,
}

#[derive(Debug, Clone)]
enum Stderr {
    Inherit,
    Null,
    File(PathBuf),
}

impl Launch {
    /// `program` is the server binary: `env!("CARGO_BIN_EXE_server")` in the server's own tests,
    /// `target/…/server` elsewhere.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            addr: "127.0.0.1:0".into(),
            args: Vec::new(),
            core: None,
            nofile: None,
            env: Vec::new(),
            stderr: Stderr::Inherit,
        }
    }

    /// Listen on `addr` instead of `127.0.0.1:0`.
    pub fn on(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run it on these cores only (`taskset -c CORES`, e.g. `"0"` or `"0,1"`).
    pub fn pinned(mut self, cores: impl Into<String>) -> Self {
        self.core = Some(cores.into());
        self
    }

    /// Start it with this open-file limit (soft, hard), through `prlimit` (util-linux).
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Discard its stderr (benchmarks).
    pub fn quiet(mut self) -> Self {
        self.stderr = Stderr::Null;
        self
    }

    /// Write its stderr to `path`, for a test that reads the log.
    pub fn stderr_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr = Stderr::File(path.into());
        self
    }

    fn command(&self) -> Command {
        let mut wrappers: Vec<OsString> = Vec::new();
        if let Some(cores) = &self.core {
            wrappers.extend(["taskset".into(), "-c".into(), cores.into()]);
        }
        if let Some((soft, hard)) = self.nofile {
            wrappers.extend(["prlimit".into(), format!("--nofile={soft}:{hard}").into()]);
        }
        let mut command = match wrappers.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.arg("--addr").arg(&self.addr).args(&self.args).stdin(Stdio::null()).stdout(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Starts it and waits for its `listening on` line (INTERFACES.md: the first stdout line).
    pub fn start(&self) -> Result<ServerProcess, String> {
        let mut command = self.command();
        match &self.stderr {
            Stderr::Inherit => command.stderr(Stdio::inherit()),
            Stderr::Null => command.stderr(Stdio::null()),
            Stderr::File(path) => command.stderr(
                std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
            ),
        };
        let mut child =
            command.spawn().map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        let stdout = child.stdout.take().ok_or("stdout is not piped")?;
        // A thread reads stdout to its end, so that the server never blocks on a full pipe; the
        // first line comes back here, with a deadline.
        let (first_line, line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next());
            for _ in lines {}
        });
        let line = match line.recv_timeout(START_DEADLINE) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!(
                    "{} exited before printing `listening on` [{status}]",
                    self.program.display()
                ));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no `listening on` line within {START_DEADLINE:?}"));
            }
        };
        let (scheme, addr) = line
            .strip_prefix("listening on http://")
            .map(|addr| ("http", addr))
            .or_else(|| line.strip_prefix("listening on https://").map(|addr| ("https", addr)))
            .ok_or_else(|| format!("unexpected first stdout line {line:?}"))?;
        let addr: SocketAddr = addr.trim_end_matches('/').parse().map_err(|e| format!("{line:?}: {e}"))?;
        Ok(ServerProcess { child, endpoint: Endpoint::new(addr, scheme), launch: self.clone() })
    }
}

/// A running server binary; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    endpoint: Endpoint,
    launch: Launch,
}

impl ServerProcess {
    /// Starts `program` with `args` (stderr inherited, `RUST_LOG=warn`); panics if it does not
    /// come up.
    pub fn start(program: impl Into<PathBuf>, args: &[&str]) -> Self {
        Launch::new(program).args(args).env("RUST_LOG", "warn").start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, `"KILL"`, …) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Its exit status if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting on the server works")
    }

    /// Waits (blocking, at most `within`) for it to end: `Some(code)` (`None` inside when a signal
    /// ended it), or `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<Option<i32>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status.code());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again, same flags, on the same address (after [`ServerProcess::kill`]; a
    /// running one is killed first).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let relaunch = self.launch.clone().on(self.endpoint.addr.clone());
        // The port was just freed; a few retries cover the rare case where binding races it.
        let mut last_error = String::new();
        for _ in 0..20 {
            match relaunch.start() {
                Ok(started) => {
                    let old = std::mem::replace(self, started);
                    // Keep the original launch (port 0), so that the next restart means the same.
                    self.launch = old.launch.clone();
                    return Ok(());
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("the server did not restart on {}: {last_error}", self.endpoint.addr))
    }

    /// CPU time (user + system) so far, in microseconds.
    pub fn cpu_us(&self) -> std::io::Result<u64> {
        crate::procfs::cpu_us(self.pid())
    }

    /// Resident memory now, in bytes.
    pub fn rss_bytes(&self) -> std::io::Result<u64> {
        crate::procfs::rss_bytes(self.pid())
    }
}

impl Deref for ServerProcess {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
