//! End-to-end: the Rust peer against what issue 13 found an attacker could do to it, and its
//! `wss://` client. Real server and peer binaries, each test in its own loopback-only network
//! namespace.
//!
//! - `--server wss://...` with `--ca-cert`: two peers chat through a TLS server whose
//!   certificate the test makes; without the CA a peer stops with a clear error, exit 1.
//! - Human output: a chat line with terminal controls is shown escaped, never obeyed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tests::{DEFAULT_DEADLINE, Peer, Scratch, Server, bin_path, isolated};
use tokio::process::Command;

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

/// Two peers trusting the server's own certificate through `--ca-cert` join and chat over
/// `wss://`; a third without it is refused by its own TLS check: a message that names the
/// certificate and `--ca-cert` on stderr, exit code 1, and it never joins.
#[test]
fn peers_chat_over_wss_with_ca_cert_and_refuse_an_unknown_certificate() {
    isolated(|| async {
        let scratch = Scratch::new("hardening", "wss");
        let (cert, key) = testkit::self_signed_localhost(scratch.dir());
        let server = Server::start(&["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]).await;
        let url = format!("wss://localhost:{}/ws", server.addr().port());

        let mut bob = Peer::spawn_with_url(
            &url,
            &["--ca-cert", path_str(&cert), "--room", "secure", "--name", "bob", "--expect", "1"],
        )
        .await;
        bob.joined().await;
        let mut ana = Peer::spawn_with_url(
            &url,
            &["--ca-cert", path_str(&cert), "--room", "secure", "--name", "ana", "--send", "hello over wss"],
        )
        .await;
        let ana_id = ana.joined().await;
        bob.wait_message(&ana_id, "hello over wss").await;
        assert_eq!(bob.wait_exit().await, Some(0), "bob got its line over a mesh signaled through wss");

        // No --ca-cert: the system's store does not know this certificate.
        let output = tokio::time::timeout(
            DEFAULT_DEADLINE,
            Command::new(bin_path("peer"))
                // --expect: without it the peer would exit 0 at the end of its (empty) stdin.
                .args(["--server", &url, "--room", "secure", "--json", "--expect", "1"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("a peer without the CA still runs after {DEFAULT_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run the peer: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "exit 1 without the CA; stderr: {stderr}");
        assert!(
            stderr.contains("certificate") && stderr.contains("--ca-cert"),
            "the error names the certificate and the way out: {stderr}"
        );
        assert!(!stdout.contains("\"welcome\""), "it never joined: {stdout}");

        // A --ca-cert that is not a certificate is a bad flag (exit 2), named in the message.
        let not_pem = scratch.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap_or_else(|e| panic!("cannot write: {e}"));
        let output = std::process::Command::new(bin_path("peer"))
            .args(["--server", &url, "--ca-cert", path_str(&not_pem)])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run the peer: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("not.pem"), "the bad file is named: {stderr}");
    });
}

/// Issue 13's attack on a terminal: a chat line that retitles the window (OSC 0 ... BEL) and
/// fakes a line of the peer's own (`\n* alice left`). In human output (no `--json`) the receiver
/// shows it on one line, every control written as a visible escape; no ESC, BEL or extra line
/// reaches its stdout.
#[test]
fn human_output_shows_remote_control_characters_escaped() {
    isolated(|| async {
        let server = Server::start(&[]).await;
        let hostile = "\u{1b}]0;pwned\u{7}\n* alice left";
        let reader = Command::new(bin_path("peer"))
            .args(["--server", &server.ws_url(), "--room", "tty", "--name", "reader", "--expect", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the peer: {e}"));
        // The reader's own line comes first; then the attacker joins and sends.
        let mut mallory =
            Peer::spawn(&server, &["--room", "tty", "--name", "mallory", "--send", hostile, "--expect", "1"])
                .await;
        mallory.joined().await;
        let output =
            tokio::time::timeout(DEFAULT_DEADLINE + Duration::from_secs(10), reader.wait_with_output())
                .await
                .unwrap_or_else(|_| panic!("the human-output peer did not get the line"))
                .unwrap_or_else(|e| panic!("cannot wait for the peer: {e}"));
        let stdout = output.stdout;
        let text = String::from_utf8_lossy(&stdout);
        assert_eq!(output.status.code(), Some(0), "exits 0 on --expect 1; stdout: {text}");
        assert!(
            text.lines().any(|l| l == "<mallory> \\x1b]0;pwned\\x07\\n* alice left"),
            "the line is shown escaped, on one line: {text:?}"
        );
        assert!(!stdout.contains(&0x1b) && !stdout.contains(&0x07), "no ESC or BEL written: {text:?}");
        assert!(!text.lines().any(|l| l.starts_with("* alice left")), "no faked line: {text:?}");
        mallory.kill().await;
    });
}
