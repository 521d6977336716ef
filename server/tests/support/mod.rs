//! The server under test, from the one test-support crate (`testkit`): in-process on port 0 for
//! the protocol clauses (on tokio's paused clock), the real binary for its command line, stdout,
//! signals and exit codes (INTERFACES.md).

#![allow(dead_code, unused_imports)] // each test file uses a different part of the support code

pub use testkit::{
    Client, Ended, Endpoint, InProcess, ServerProcess, WAIT, http_get, sequence_of, signal_to,
    within_real_time,
};

/// This build's `server` binary with `args` (`--addr 127.0.0.1:0` first).
pub fn binary(args: &[&str]) -> ServerProcess {
    ServerProcess::start(env!("CARGO_BIN_EXE_server"), args)
}
