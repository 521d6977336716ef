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
