//! Checks of the e2e harness itself: the namespace really is loopback-only, and the server
//! helper finds, restarts and serves on the same port.

use tokio::net::TcpStream;

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
        assert!(server.http_get("/healthz").await.starts_with("HTTP/1.1 200"), "healthz before restart");

        server.kill().await;
        assert!(TcpStream::connect(addr).await.is_err(), "a killed server still accepts connections");
        server.restart().await;
        assert_eq!(server.addr(), addr);
        assert!(server.http_get("/healthz").await.starts_with("HTTP/1.1 200"), "healthz after restart");
    });
}
