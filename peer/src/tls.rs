//! TLS for `--server wss://...`: rustls with the system's trust store, plus the certificates
//! given with `--ca-cert` (a self-signed server, a private CA).
//!
//! The system's store is read with `rustls-native-certs` (on Debian, /etc/ssl/certs from the
//! `ca-certificates` package; `SSL_CERT_FILE`/`SSL_CERT_DIR` override it, as for OpenSSL). A
//! system without one still works with `--ca-cert`. Crypto is `ring`, like the server's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Why the TLS settings cannot be built: each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--ca-cert {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("TLS set-up: {0}")]
    Config(String),
}

/// The client settings for `wss://`: the system's roots and every certificate in `ca_certs`
/// (PEM files, each holding one or more certificates).
pub fn client_config(ca_certs: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!("system trust store: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!("system trust store: {added} certificates ({ignored} unusable)");
    for path in ca_certs {
        for cert in read_pem(path)? {
            roots.add(cert).map_err(|e| TlsError::CaCert {
                path: path.clone(),
                reason: format!("not a usable CA: {e}"),
            })?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificates in the PEM file at `path`; an error when it holds none.
fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::CaCert { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| error(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("switchboard-ca-{:016x}.pem", rand::random::<u64>()));
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    #[test]
    fn bad_ca_files_are_refused_with_the_file_named() {
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let empty = temp_file("not a certificate\n");
        let broken = temp_file("-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n");
        for path in [&missing, &empty, &broken] {
            match client_config(std::slice::from_ref(path)) {
                Err(TlsError::CaCert { path: named, .. }) => assert_eq!(&named, path),
                other => panic!("{}: expected a --ca-cert error, got {other:?}", path.display()),
            }
        }
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(broken);
    }

    #[test]
    fn without_extra_certificates_the_system_store_is_enough() {
        assert!(client_config(&[]).is_ok());
    }
}
