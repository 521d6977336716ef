//! Certificates for the TLS tests, made at run time by the openssl command line tool (Debian
//! package `openssl`, installed by scripts/test.sh): nothing secret lives in the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `cert.pem` and `key.pem` into `dir` (which must exist): a self-signed P-256
/// certificate for `localhost` and 127.0.0.1, valid for a day. It is marked as not a CA, since
/// rustls refuses a CA certificate as a server's own. Returns the (cert, key) paths.
pub fn self_signed_localhost(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (Debian package openssl): {e}"));
    assert!(made.status.success(), "openssl failed: {}", String::from_utf8_lossy(&made.stderr));
    (cert, key)
}
