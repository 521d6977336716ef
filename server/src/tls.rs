//! https/wss: the same router behind rustls, with the same graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;

use crate::config::TlsFiles;

pub async fn serve(
    listener: TcpListener,
    app: IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
    files: &TlsFiles,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = RustlsConfig::from_pem_file(&files.cert, &files.key).await.with_context(|| {
        format!("cannot load TLS certificate {} and key {}", files.cert.display(), files.key.display())
    })?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        stopping.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(1)));
    });
    let listener = listener.into_std().context("cannot hand the listener to the TLS server")?;
    axum_server::from_tcp_rustls(listener, tls)?.handle(handle).serve(app).await.context("TLS server failed")
}
