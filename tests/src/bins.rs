//! Finding (and building, once per test process) the `server` and `peer` binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Set this to a directory holding prebuilt `server` and `peer` binaries to skip the build.
pub const BIN_DIR_ENV: &str = "SWITCHBOARD_BIN_DIR";

/// The profile directory of the running test executable (`target/debug` for
/// `target/debug/deps/peer-1234`): the binaries built with the same profile land there.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("test executable {} is not inside target/<profile>/deps", exe.display()))
        .to_path_buf()
}

/// Where the binaries are: `$SWITCHBOARD_BIN_DIR`, or the test executable's profile directory.
fn bin_dir() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir(),
    }
}

/// Path of the binary `name` (`"server"` or `"peer"`). Does not build it; see [`ensure_built`].
pub fn bin_path(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Builds `server` and `peer` (with the rest of the workspace, see `build`) with the test
/// executable's profile, once per process.
///
/// Panics with cargo's verdict when the build fails: a test cannot run on stale binaries.
pub fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        if std::env::var_os(BIN_DIR_ENV).is_some() {
            return Ok(());
        }
        build()
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Variables cargo sets for a crate's build and tests (besides `CARGO_PKG_*` and
/// `CARGO_BIN_EXE_*`), per the Cargo book's "Environment variables Cargo sets for crates".
const CARGO_SET_FOR_CRATES: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

fn build() -> Result<(), String> {
    let profile_dir = profile_dir();
    let target_dir = profile_dir.parent().ok_or("the profile directory has no parent")?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).ok_or("odd profile directory name")?;
    // `debug` is where the `dev` profile builds; every other profile uses its own name.
    let profile = if profile == "debug" { "dev" } else { profile };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("tests/ has no parent")?;
    // The whole workspace with all targets, not just `-p server -p peer`: cargo unifies
    // dependency features over the packages and targets of one invocation, so a narrower build
    // than `cargo test --workspace` resolves features differently and rebuilds webrtc-rs,
    // rustls and hyper every time the two alternate. This way the build is a no-op after
    // `cargo test --workspace` (or scripts/test.sh).
    let mut command = Command::new(&cargo);
    // Without the variables cargo set for this test process (CARGO_MANIFEST_DIR, CARGO_PKG_NAME,
    // OUT_DIR, ...): build scripts watch some of them (ring's does, through
    // `rerun-if-env-changed`), so with them the build looked changed and rebuilt ring and all
    // that depends on it (~90 s here), and the next `cargo build` from a shell rebuilt it back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CARGO_SET_FOR_CRATES.contains(&name.as_ref())
            || ["CARGO_PKG_", "CARGO_BIN_EXE_"].iter().any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command
        .current_dir(workspace)
        .args(["build", "--quiet", "--workspace", "--all-targets", "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .status()
        .map_err(|e| {
            format!("cannot run cargo ({}) to build server and peer: {e}", cargo.to_string_lossy())
        })?;
    if !status.success() {
        return Err(format!("`cargo build --workspace --all-targets --profile {profile}` failed ({status})"));
    }
    Ok(())
}
