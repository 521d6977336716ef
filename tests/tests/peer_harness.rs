//! Checks of the e2e harness itself: the namespace really is loopback-only, and the server
//! helper finds, restarts and serves on the same port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn healthz(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut response = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await;
    response
}

#[test]
fn namespace_has_only_loopback_and_server_restarts_on_same_port() {
    tests::isolated(|| async {
        assert!(tests::inside_namespace());
        let interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert_eq!(interfaces, vec!["lo".to_string()]);

        let mut server = tests::Server::start(&[]).await;
        let addr = server.addr();
        assert!(addr.ip().is_loopback(), "server listens on {addr}");
        assert!(healthz(addr).await.starts_with("HTTP/1.1 200"), "healthz before restart");

        server.kill().await;
        assert!(TcpStream::connect(addr).await.is_err(), "a killed server still accepts connections");
        server.restart().await;
        assert_eq!(server.addr(), addr);
        assert!(healthz(addr).await.starts_with("HTTP/1.1 200"), "healthz after restart");
    });
}
