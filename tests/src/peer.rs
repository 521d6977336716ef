//! The real `peer` binary, driven through its `--json` events and its stdin.

use std::fmt::Write as _;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::bins::bin_path;
use crate::server::Server;

/// How long [`Peer::wait_for`] and friends wait before failing the test. Generous: it is a
/// deadline for "this never happens", not a performance threshold.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Events buffered between the stdout reader and the test; when full, the peer blocks on stdout.
const EVENT_QUEUE: usize = 4096;

/// A running `peer --json` process. Killed (SIGKILL) when dropped.
///
/// Every stdout line is parsed as a JSON event; a line that is not JSON becomes
/// `{"event":"<not json>","line":"..."}` so that a test sees it rather than losing it.
/// Waiting helpers look at every event not yet *claimed* by an earlier wait, in arrival order,
/// so the order in which a test waits for independent events does not matter.
#[derive(Debug)]
pub struct Peer {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<(Instant, Value)>,
    events: Vec<Value>,
    /// When each event's line was read from stdout (the pipe adds microseconds, not milliseconds).
    arrivals: Vec<Instant>,
    claimed: Vec<bool>,
    stdout_closed: bool,
    id: Option<String>,
}

/// A test that fails while a peer runs shows what the peer had said: the events the test read
/// and those it had not read yet (often the clue, e.g. a `file_sent` with an error).
impl Drop for Peer {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let read = self.events.len();
        while let Ok((_, event)) = self.rx.try_recv() {
            self.events.push(event);
        }
        let mut report =
            format!("peer {}: {} events ({read} read by the test):\n", self.label, self.events.len());
        for event in self.events.iter().rev().take(40).rev() {
            report.push_str(&format!("  {event}\n"));
        }
        eprint!("{report}");
    }
}

impl Peer {
    /// Spawns `peer --server <server ws url> --json ARGS...`.
    pub async fn spawn(server: &Server, args: &[&str]) -> Peer {
        Peer::spawn_with_url(&server.ws_url(), args).await
    }

    /// Spawns `peer --server URL --json ARGS...` (for a server the test did not start itself).
    pub async fn spawn_with_url(url: &str, args: &[&str]) -> Peer {
        Peer::spawn_via(&[], url, args).await
    }

    /// [`Peer::spawn_with_url`] through `launcher`, a command prefix such as
    /// [`crate::Side::launcher`] (`nsenter --net=... --`) that runs the peer elsewhere.
    pub async fn spawn_via(launcher: &[String], url: &str, args: &[&str]) -> Peer {
        let path = bin_path("peer");
        let label = args
            .windows(2)
            .find(|w| w[0] == "--name")
            .map(|w| w[1].to_string())
            .unwrap_or_else(|| "peer".to_string());
        let mut command = match launcher.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        let mut child = command
            .args(["--server", url, "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("peer stdout is not piped"));
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str::<Value>(&line)
                    .ok()
                    .filter(|v| v.get("event").is_some_and(Value::is_string))
                    .unwrap_or_else(|| serde_json::json!({"event": "<not json>", "line": line}));
                if tx.send((Instant::now(), event)).await.is_err() {
                    break;
                }
            }
        });
        Peer {
            label,
            child,
            stdin,
            rx,
            events: Vec::new(),
            arrivals: Vec::new(),
            claimed: Vec::new(),
            stdout_closed: false,
            id: None,
        }
    }

    /// Its id, from the latest `welcome` event seen so far (wait for `welcome` first).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_else(|| panic!("{}: no welcome event seen yet", self.label))
    }

    /// Waits for its next unclaimed `welcome` and returns its id.
    pub async fn joined(&mut self) -> String {
        let welcome = self.wait_event("welcome").await;
        welcome["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: welcome without id: {welcome}", self.label))
            .to_string()
    }

    /// Every event read so far, claimed or not.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Reads whatever events are already available, without waiting.
    pub fn poll_events(&mut self) -> &[Value] {
        while let Ok((arrived, event)) = self.rx.try_recv() {
            self.push(arrived, event);
        }
        &self.events
    }

    /// Waits for the first unclaimed event with `"event": name`, claims and returns it.
    pub async fn wait_event(&mut self, name: &str) -> Value {
        self.wait_for(&format!("event {name}"), |e| e["event"] == name).await
    }

    /// Waits for a chat line `text` from the peer with id `from`.
    pub async fn wait_message(&mut self, from: &str, text: &str) -> Value {
        self.wait_for(&format!("message {text:?} from {from}"), |e| {
            e["event"] == "message" && e["from"] == from && e["text"] == text
        })
        .await
    }

    /// Waits for the first unclaimed event matching `pred`, claims and returns it; fails the
    /// test after [`DEFAULT_DEADLINE`] with every event seen.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(DEFAULT_DEADLINE, what, pred).await
    }

    /// [`Peer::wait_for`] with another deadline.
    pub async fn wait_for_within(
        &mut self,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut found = self.wait_for_count_within(deadline, what, 1, pred).await;
        found.pop().unwrap_or_else(|| panic!("{}: wait_for_count returned nothing", self.label))
    }

    /// Waits until `count` unclaimed events match `pred`; claims and returns them in order.
    pub async fn wait_for_count(
        &mut self,
        what: &str,
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_for_count_within(DEFAULT_DEADLINE, what, count, pred).await
    }

    /// [`Peer::wait_for_count`] with another deadline.
    pub async fn wait_for_count_within(
        &mut self,
        deadline: Duration,
        what: &str,
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let found = self.claim_within(deadline, what, count, pred).await;
        found.into_iter().map(|i| self.events[i].clone()).collect()
    }

    /// Waits for the first unclaimed event matching `pred`, claims it and returns it with the
    /// moment its line was read from the peer's stdout (for benchmarks timing the peer's events).
    pub async fn wait_for_arrival(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> (Value, Instant) {
        let found = self.claim_within(DEFAULT_DEADLINE, what, 1, pred).await;
        let i = found[0];
        (self.events[i].clone(), self.arrivals[i])
    }

    /// Waits until `count` unclaimed events match `pred`; claims them and returns their indices
    /// in `events`, in order.
    async fn claim_within(
        &mut self,
        deadline: Duration,
        what: &str,
        count: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<usize> {
        let give_up = tokio::time::Instant::now() + deadline;
        let mut matched = Vec::new();
        let mut next = 0;
        loop {
            while next < self.events.len() && matched.len() < count {
                if !self.claimed[next] && pred(&self.events[next]) {
                    matched.push(next);
                }
                next += 1;
            }
            if matched.len() == count {
                for &i in &matched {
                    self.claimed[i] = true;
                }
                return matched;
            }
            if self.stdout_closed {
                self.fail(what, count, matched.len(), "its stdout closed (the peer exited)");
            }
            match tokio::time::timeout_at(give_up, self.rx.recv()).await {
                Ok(Some((arrived, event))) => self.push(arrived, event),
                Ok(None) => self.stdout_closed = true,
                Err(_) => self.fail(what, count, matched.len(), &format!("nothing more within {deadline:?}")),
            }
        }
    }

    /// Asserts that no unclaimed event matching `pred` has arrived so far (reads what is
    /// available without waiting).
    pub fn assert_none(&mut self, what: &str, pred: impl Fn(&Value) -> bool) {
        self.poll_events();
        let hits: Vec<&Value> =
            self.events.iter().zip(&self.claimed).filter(|(e, c)| !**c && pred(e)).map(|(e, _)| e).collect();
        assert!(hits.is_empty(), "{}: expected no {what}, got {hits:?}", self.label);
    }

    fn push(&mut self, arrived: Instant, event: Value) {
        if event["event"] == "welcome"
            && let Some(id) = event["id"].as_str()
        {
            self.id = Some(id.to_string());
        }
        self.events.push(event);
        self.arrivals.push(arrived);
        self.claimed.push(false);
    }

    fn fail(&self, what: &str, count: usize, got: usize, why: &str) -> ! {
        let mut listing = String::new();
        let skip = self.events.len().saturating_sub(60);
        if skip > 0 {
            let _ = writeln!(listing, "  ... {skip} earlier events");
        }
        for (event, claimed) in self.events.iter().zip(&self.claimed).skip(skip) {
            let mut text = event.to_string();
            if text.len() > 300 {
                let mut cut = 300;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("...");
            }
            let _ = writeln!(listing, "  {}{text}", if *claimed { "(claimed) " } else { "" });
        }
        panic!(
            "peer {} ({}): waited for {count} × {what}, got {got}: {why}. Events seen ({}):\n{listing}",
            self.label,
            self.id.as_deref().unwrap_or("no id yet"),
            self.events.len()
        );
    }

    /// Writes `line` (a newline is added) to its stdin: a chat line typed by a user.
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap_or_else(|| panic!("{}: stdin already closed", self.label));
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(e) = stdin.write_all(&bytes).await {
            panic!("{}: cannot write to stdin: {e}", self.label);
        }
        let _ = stdin.flush().await;
    }

    /// Takes its stdin, to write to it from another task while the test reads events (a peer
    /// that cannot write its events stops reading its stdin).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().unwrap_or_else(|| panic!("{}: stdin already taken or closed", self.label))
    }

    /// Closes its stdin (end of input, like Ctrl-D).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM (a clean exit: deliver what was sent, `leave`).
    pub fn terminate(&self) {
        send_signal(self.child.id(), "TERM");
    }

    /// Kills it with SIGKILL (no `leave`, no close frame) and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Waits for it to exit (reading its events meanwhile) and returns its exit code, `None`
    /// when a signal ended it. Fails the test after [`DEFAULT_DEADLINE`].
    pub async fn wait_exit(&mut self) -> Option<i32> {
        self.wait_exit_within(DEFAULT_DEADLINE).await.code()
    }

    /// [`Peer::wait_exit`] with another deadline, returning the full status.
    pub async fn wait_exit_within(&mut self, deadline: Duration) -> ExitStatus {
        let give_up = tokio::time::Instant::now() + deadline;
        // Keep reading events so that a peer printing a lot on its way out never blocks.
        while !self.stdout_closed {
            match tokio::time::timeout_at(give_up, self.rx.recv()).await {
                Ok(Some((arrived, event))) => self.push(arrived, event),
                Ok(None) => self.stdout_closed = true,
                Err(_) => break,
            }
        }
        match tokio::time::timeout_at(give_up, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("{}: cannot wait for exit: {e}", self.label),
            Err(_) => {
                let _ = self.child.start_kill();
                self.fail("exit", 1, 0, &format!("still running after {deadline:?}"))
            }
        }
    }
}

/// `kill -SIG PID` (the crate forbids unsafe code, so no direct libc call).
pub(crate) fn send_signal(pid: Option<u32>, signal: &str) {
    let Some(pid) = pid else { return };
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    if let Err(e) = status {
        panic!("cannot run `kill -{signal} {pid}`: {e}");
    }
}
