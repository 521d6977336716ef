//! Running one test inside a loopback-only network namespace.
//!
//! The test process re-executes itself for just that test under
//! `unshare --net --mount --pid --fork --mount-proc --kill-child`, with `lo` brought up and
//! nothing else (sysfs remounted, so that `/sys/class/net` lists the namespace's own interfaces,
//! and a fresh `/proc`, so that `/proc/<pid>` of a spawned server or peer is that process). Inside, the
//! body runs on a tokio runtime. The PID namespace makes cleanup certain: when the inner test
//! process ends (or the outer one kills it), the kernel kills every server and peer it spawned.

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::bins::ensure_built;

/// Set in the re-executed test process: "we are inside the namespace, run the body".
const INSIDE_ENV: &str = "SWITCHBOARD_E2E_INSIDE_NETNS";
/// A file the inner process writes once the body returned, so that the outer process knows the
/// test really ran (a name filter that matched nothing would also exit 0).
const DONE_ENV: &str = "SWITCHBOARD_E2E_DONE_FILE";

/// Default limit for one isolated test, build time excluded.
const DEFAULT_LIMIT: Duration = Duration::from_secs(300);

/// True in the re-executed process that runs inside the test's network namespace.
pub fn inside_namespace() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// Runs `body` in a fresh loopback-only network namespace (see the module docs), with a limit
/// of 300 s.
///
/// Call it from a `#[test]` function, and only once per test: the test is re-executed by name.
/// The test fails (never skips) when the namespace cannot be made, e.g. without root or without
/// `unshare` (util-linux) and `ip` (iproute2).
pub fn isolated<F, Fut>(body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    isolated_with_timeout(DEFAULT_LIMIT, body)
}

/// [`isolated`] with a different limit for the re-executed test (the build is not counted).
pub fn isolated_with_timeout<F, Fut>(limit: Duration, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    if inside_namespace() {
        run_inside(body);
    } else {
        run_outside(limit);
    }
}

fn run_inside<F, Fut>(body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let interfaces = network_interfaces();
    assert_eq!(
        interfaces,
        vec!["lo".to_string()],
        "the test namespace must hold only the loopback interface, found {interfaces:?}"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"));
    runtime.block_on(body());
    // Let spawned children be killed (kill_on_drop) before the process reports success.
    drop(runtime);
    if let Some(done) = std::env::var_os(DONE_ENV) {
        std::fs::write(&done, "done")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", PathBuf::from(&done).display()));
    }
}

fn network_interfaces() -> Vec<String> {
    // /proc/net/dev belongs to the reading process's network namespace; /sys/class/net shows the
    // namespace that mounted sysfs (the host's, since `unshare --net` does not remount it).
    let table =
        std::fs::read_to_string("/proc/net/dev").unwrap_or_else(|e| panic!("cannot read /proc/net/dev: {e}"));
    let mut names: Vec<String> = table
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect();
    names.sort();
    names
}

fn run_outside(limit: Duration) {
    let test_name = match thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => panic!(
            "tests::isolated must be called from a libtest #[test] thread (its name is the test's name)"
        ),
    };
    ensure_built();

    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let done_file = std::env::temp_dir().join(format!(
        "switchboard-e2e-{}-{}.done",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&done_file);
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));

    let mut child = Command::new("unshare")
        .args(["--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "--", "sh", "-c"])
        // A private mount namespace so that a fresh sysfs shows this namespace's interfaces and
        // a fresh procfs this PID namespace's processes (both mounts stay inside the test).
        .arg(r#"mount -t sysfs sysfs /sys && ip link set lo up && exec "$0" "$@""#)
        .arg(&exe)
        // `--include-ignored`: this process already chose to run the test (an `#[ignore]`d one
        // too, under `--ignored`); without it the re-executed process would skip such a test.
        .args([test_name.as_str(), "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(INSIDE_ENV, "1")
        .env(DONE_ENV, &done_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `unshare` to create the test's network namespace ({e}); \
                 e2e tests need util-linux's unshare, iproute2's ip, and root"
            )
        });

    // Drain both pipes on threads so that a chatty child never blocks on a full pipe.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for the isolated test process: {e}"),
        }
    };
    let stdout = stdout.map(|t| t.join().unwrap_or_default()).unwrap_or_default();
    let stderr = stderr.map(|t| t.join().unwrap_or_default()).unwrap_or_default();
    // Through print!/eprint! so that libtest shows it with the failure (or with --nocapture).
    print!("{stdout}");
    eprint!("{stderr}");

    let ran = std::fs::remove_file(&done_file).is_ok();
    match status {
        None => panic!("isolated test `{test_name}` did not finish within {limit:?} and was killed"),
        Some(status) if !status.success() => {
            if stderr.contains("unshare failed") || stderr.contains("Operation not permitted") {
                panic!(
                    "cannot create a network namespace for `{test_name}` ({status}): the e2e tests must run as \
                     root (or with CAP_SYS_ADMIN) so that `unshare --net --pid` works; see the output above"
                );
            }
            panic!(
                "isolated test `{test_name}` failed inside its network namespace ({status}); see the output above"
            );
        }
        Some(_) if !ran => panic!(
            "isolated test `{test_name}` exited successfully but never ran its body \
             (was it called twice, or not from the test named `{test_name}`?)"
        ),
        Some(_) => {}
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// T's service address (on its `lo`): where the server and coturn listen in a [`SplitNetwork`].
pub const SERVICE_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 1);

/// Two more network namespaces, A and B, each linked by a veth pair only to the test's own
/// namespace T, which does not forward (`ip_forward=0`): A and B reach T's [`SERVICE_ADDR`],
/// never each other. Side `n` (1 for A, 2 for B) has `198.18.n.2/24`, T's end `198.18.n.1`, and
/// a default route through T. Call it inside [`isolated`]; the namespaces end with the test
/// (each is held by a `sleep` process of the test's PID namespace).
#[derive(Debug)]
pub struct SplitNetwork {
    pub a: Side,
    pub b: Side,
}

/// One side namespace of a [`SplitNetwork`].
#[derive(Debug)]
pub struct Side {
    /// Holds the namespace open; killed with the test.
    _holder: tokio::process::Child,
    pid: u32,
    /// The side's own address.
    pub addr: std::net::Ipv4Addr,
    /// T's address on this side's link.
    pub gateway: std::net::Ipv4Addr,
    /// The side's subnet, first and last address (for coturn's `denied-peer-ip`).
    pub subnet: (std::net::Ipv4Addr, std::net::Ipv4Addr),
}

impl SplitNetwork {
    /// Builds T's service address, A, B and their links. Fails the test, saying what, when a
    /// step fails.
    pub async fn build() -> SplitNetwork {
        assert!(inside_namespace(), "SplitNetwork::build runs inside tests::isolated only");
        run_ip(&[], &["addr", "add", &format!("{SERVICE_ADDR}/32"), "dev", "lo"]);
        // Per namespace; a new one starts at 0, but say it, and check it: the test's premise.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0")
            .unwrap_or_else(|e| panic!("cannot set ip_forward=0 in the test namespace: {e}"));
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        assert_eq!(forward.trim(), "0", "T must not forward between A and B");
        SplitNetwork { a: Side::build(1).await, b: Side::build(2).await }
    }
}

impl Side {
    async fn build(n: u8) -> Side {
        let holder = tokio::process::Command::new("unshare")
            .args(["--net", "--", "sleep", "100000"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `unshare --net` for side {n}: {e}"));
        let pid = holder.id().unwrap_or_else(|| panic!("side {n}'s namespace holder exited at once"));
        // `unshare` makes the namespace, then execs `sleep`: wait until the process is in it.
        let ours = std::fs::read_link("/proc/self/ns/net").ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == ours {
            assert!(Instant::now() < deadline, "side {n}'s namespace was not created within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (t_end, side_end) = (format!("t{n}"), format!("side{n}"));
        let addr = std::net::Ipv4Addr::new(198, 18, n, 2);
        let gateway = std::net::Ipv4Addr::new(198, 18, n, 1);
        let side = Side {
            _holder: holder,
            pid,
            addr,
            gateway,
            subnet: (std::net::Ipv4Addr::new(198, 18, n, 0), std::net::Ipv4Addr::new(198, 18, n, 255)),
        };
        run_ip(&[], &["link", "add", &t_end, "type", "veth", "peer", "name", &side_end]);
        run_ip(&[], &["link", "set", &side_end, "netns", &pid.to_string()]);
        run_ip(&[], &["addr", "add", &format!("{gateway}/24"), "dev", &t_end]);
        run_ip(&[], &["link", "set", &t_end, "up"]);
        let enter = side.launcher();
        run_ip(&enter, &["link", "set", "lo", "up"]);
        run_ip(&enter, &["addr", "add", &format!("{addr}/24"), "dev", &side_end]);
        run_ip(&enter, &["link", "set", &side_end, "up"]);
        run_ip(&enter, &["route", "add", "default", "via", &gateway.to_string()]);
        side
    }

    /// The command prefix that runs a program inside this side: `nsenter --net=... --`
    /// (nsenter execs the program, so signals reach it directly).
    pub fn launcher(&self) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/proc/{}/ns/net", self.pid), "--".into()]
    }
}

/// `ip ARGS`, run through `launcher` (empty: in T). Fails the test with ip's message.
fn run_ip(launcher: &[String], args: &[&str]) {
    let mut command = match launcher.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let output = command.args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip {}` ({e}); e2e tests need iproute2 and util-linux", args.join(" "))
    });
    assert!(
        output.status.success(),
        "`{} ip {}` failed: {}",
        launcher.join(" "),
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
