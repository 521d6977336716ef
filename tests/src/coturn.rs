//! The real coturn (`turnserver`, Debian's `coturn`), started by a test with the repository's
//! `deploy/coturn/turnserver.conf` in a temp dir of its own. The package's system service is
//! never used (scripts/test.sh disables it).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

/// Where the test finds `turnserver`; `SWITCHBOARD_TURNSERVER` points elsewhere.
const TURNSERVER: &str = "/usr/bin/turnserver";
const TURNSERVER_ENV: &str = "SWITCHBOARD_TURNSERVER";
/// The port coturn listens on (its default; each test has its own network namespace).
pub const TURN_PORT: u16 = 3478;
/// How long coturn may take to answer its first STUN request.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The config kept in the repository, the one the docs tell users to run.
pub fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coturn/turnserver.conf")
}

/// A running `turnserver`. Killed when dropped; its temp dir is removed.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    dir: PathBuf,
    addr: Ipv4Addr,
}

impl Coturn {
    /// Starts coturn on `addr` (listening and relaying there) with `secret` as its
    /// `static-auth-secret`, refusing to relay to each `denied` range (`first`, `last`) besides
    /// the ranges the repository's config denies. Waits until it answers STUN.
    pub async fn start(addr: Ipv4Addr, secret: &str, denied: &[(Ipv4Addr, Ipv4Addr)]) -> Coturn {
        let program =
            std::env::var_os(TURNSERVER_ENV).map(PathBuf::from).unwrap_or_else(|| TURNSERVER.into());
        if !program.exists() {
            panic!(
                "coturn's turnserver not found at {} (set {TURNSERVER_ENV} to use another): install Debian's \
                 `coturn` (`apt-get install -y coturn`; scripts/test.sh does it)",
                program.display()
            );
        }
        let dir = fresh_dir();
        let base = std::fs::read_to_string(repo_config())
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", repo_config().display()));
        let mut config = base;
        config.push_str("\n# Added by the test:\n");
        config.push_str(&format!("listening-ip={addr}\nrelay-ip={addr}\nstatic-auth-secret={secret}\n"));
        for (first, last) in denied {
            config.push_str(&format!("denied-peer-ip={first}-{last}\n"));
        }
        for (key, file) in
            [("pidfile", "turnserver.pid"), ("log-file", "turnserver.log"), ("userdb", "turndb")]
        {
            config.push_str(&format!("{key}={}\n", dir.join(file).display()));
        }
        let conf = dir.join("turnserver.conf");
        std::fs::write(&conf, config).unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        let mut command = Command::new(&program);
        command.arg("-c").arg(&conf).arg("--no-stdout-log");
        let child = crate::daemon::spawn(command, &program);
        let mut coturn = Coturn { child, dir, addr };
        coturn.wait_ready().await;
        coturn
    }

    /// `turn:ADDR:3478?transport=udp`, for the server's `--turn-url`.
    pub fn url(&self) -> String {
        format!("turn:{}:{TURN_PORT}?transport=udp", self.addr)
    }

    /// What coturn logged so far (allocations, refused credentials).
    pub fn log(&self) -> String {
        // coturn appends the date to a log file's name unless told otherwise; take any.
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return String::new() };
        entries
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("turnserver")
                    && e.path().extension().is_some_and(|x| x == "log")
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    }

    async fn wait_ready(&mut self) {
        let server = SocketAddr::from((self.addr, TURN_PORT));
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnserver exited at start ({status}); its log:\n{}", self.log());
            }
            let answered =
                tokio::task::spawn_blocking(move || stun_binding_answered(server)).await.unwrap_or(false);
            if answered {
                return;
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "turnserver did not answer STUN on {server} within {START_DEADLINE:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("coturn log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One STUN Binding request (RFC 5389), answered within 200 ms by a Binding success response.
fn stun_binding_answered(server: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else { return false };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"switchboard!");
    if socket.send_to(&request, server).is_err() {
        return false;
    }
    let mut answer = [0u8; 512];
    matches!(socket.recv_from(&mut answer), Ok((n, _)) if n >= 20 && answer[..2] == [0x01, 0x01] && answer[8..20] == request[8..20])
}

fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "switchboard-coturn-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
