//! Starting the real daemons the tests own (redis-server, haproxy, coturn).

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Spawns `command` (whose program is `program`) as a daemon of the test: no stdin, stdout
/// discarded, stderr into the test's output, killed when the returned child is dropped.
pub(crate) fn spawn(mut command: Command, program: &Path) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}
