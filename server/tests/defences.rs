//! What the server does with hostile or broken clients: malformed WebSocket framing, foreign
//! Origins, connection caps, room tokens, and TLS.

mod support;

use std::process::Command;
use std::sync::Arc;

use serde_json::json;
use support::{Client, Ended, Endpoint, InProcess};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a WebSocket by hand (so that the test can then write frames no library would), from
/// `local_ip`, with extra request headers. Returns the HTTP status and, on 101, the stream.
async fn raw_upgrade(addr: &str, local_ip: [u8; 4], headers: &[(&str, &str)]) -> (u16, TcpStream) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind((local_ip, 0).into()).expect("bind a loopback source address");
    let mut stream = socket.connect(addr.parse().expect("addr")).await.expect("connect");
    // Nagle off: on a paused clock a frame held back for a delayed ACK would look lost.
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("request written");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, stream)
}

/// A client frame: FIN set, `opcode`, masked or not.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut bytes = vec![0x80 | opcode, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        bytes.extend(mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        bytes.extend(payload);
    }
    bytes
}

/// Reads server frames until a close frame, and returns its code.
async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    let read = async {
        loop {
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).await.ok()?;
            let len = match header[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    stream.read_exact(&mut ext).await.ok()?;
                    u16::from_be_bytes(ext) as usize
                }
                127 => panic!("no huge frames expected"),
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.ok()?;
            if header[0] & 0x0f == 8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    support::within_real_time(support::WAIT, read).await.expect("server closes in time")
}

/// Writes the upgrade request and `frames` with one write (so they reach the server together and
/// hyper reads the frames along with the request head), then reads the response head byte by
/// byte. Returns the HTTP status.
async fn upgrade_with_frames<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    frames: &[u8],
) -> u16 {
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(frames);
    stream.write_all(&request).await.expect("request and frames written");
    stream.flush().await.expect("flushed");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line")
}

/// The next text frame from the server, as JSON (pings and other frames skipped).
async fn next_text<S: AsyncRead + Unpin>(stream: &mut S) -> serde_json::Value {
    let read = async {
        loop {
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).await.expect("a frame header");
            let len = match header[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    stream.read_exact(&mut ext).await.expect("length");
                    u16::from_be_bytes(ext) as usize
                }
                127 => panic!("no huge frames expected"),
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.expect("payload");
            match header[0] & 0x0f {
                1 => return serde_json::from_slice(&payload).expect("JSON"),
                8 => panic!("closed: {payload:?}"),
                _ => {}
            }
        }
    };
    support::within_real_time(support::WAIT, read).await.expect("a text frame in time")
}

/// A `join` and then a second `join`, as one client would send them, masked.
fn join_twice() -> Vec<u8> {
    let mut frames = frame(1, br#"{"type":"join","room":"eager"}"#, true);
    frames.extend(frame(1, br#"{"type":"join","room":"eager"}"#, true));
    frames
}

/// Frames that came in the same packet as the upgrade request (read by hyper with the head) are
/// the client's first frames: the server reads them before anything else, in order.
#[tokio::test(start_paused = true)]
async fn frames_sent_with_the_upgrade_request_are_read_first_and_in_order() {
    let server = InProcess::start(&[]).await;
    let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    assert_eq!(upgrade_with_frames(&mut stream, &server.addr, &join_twice()).await, 101);
    assert_eq!(next_text(&mut stream).await["type"], "welcome");
    let second = next_text(&mut stream).await;
    assert_eq!((second["type"].as_str(), second["code"].as_str()), (Some("error"), Some("already_joined")));
    // And the connection goes on after them: a frame sent now is answered too.
    let signal = br#"{"type":"signal","to":"nobody","signal":{"type":"candidate","candidate":null}}"#;
    stream.write_all(&frame(1, signal, true)).await.expect("written");
    let third = next_text(&mut stream).await;
    assert_eq!((third["code"].as_str(), third["to"].as_str()), (Some("unknown_peer"), Some("nobody")));
}

#[tokio::test(start_paused = true)]
async fn invalid_utf8_in_a_text_frame_is_closed_with_1007() {
    let server = InProcess::start(&[]).await;
    let (status, mut stream) = raw_upgrade(&server.addr, [127, 0, 0, 1], &[]).await;
    assert_eq!(status, 101);
    stream.write_all(&frame(1, &[0xff, 0xfe, 0xfd], true)).await.expect("written");
    assert_eq!(close_code(&mut stream).await, Some(1007));
}

#[tokio::test(start_paused = true)]
async fn an_unmasked_client_frame_is_closed_with_1002() {
    let server = InProcess::start(&[]).await;
    let (status, mut stream) = raw_upgrade(&server.addr, [127, 0, 0, 1], &[]).await;
    assert_eq!(status, 101);
    stream.write_all(&frame(1, br#"{"type":"leave"}"#, false)).await.expect("written");
    assert_eq!(close_code(&mut stream).await, Some(1002));
}

#[tokio::test(start_paused = true)]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let server = InProcess::start(&["--allowed-origin", "https://app.example.org"]).await;
    let own = format!("http://{}", server.addr);
    let cases = [
        (Some("http://evil.example"), 403),
        (Some("null"), 403),
        (Some(own.as_str()), 101),
        (Some("https://app.example.org"), 101),
        (None, 101),
    ];
    for (origin, expected) in cases {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("Origin", *o)).collect();
        let (status, _stream) = raw_upgrade(&server.addr, [127, 0, 0, 1], &headers).await;
        assert_eq!(status, expected, "Origin {origin:?}");
    }
    // Refused upgrades hold nothing, and the accepted ones were released when their sockets closed.
    server.wait_for_metric("switchboard_connections", 0.0).await;
}

#[tokio::test(start_paused = true)]
async fn connection_caps_answer_429_per_ip_and_503_in_total() {
    let server = InProcess::start(&["--max-connections", "3", "--max-connections-per-ip", "2"]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let (status, stream) = raw_upgrade(&server.addr, [127, 0, 0, 1], &[]).await;
        assert_eq!(status, 101);
        open.push(stream);
    }
    assert_eq!(raw_upgrade(&server.addr, [127, 0, 0, 1], &[]).await.0, 429, "third from one IP");
    let (status, stream) = raw_upgrade(&server.addr, [127, 0, 0, 2], &[]).await;
    assert_eq!(status, 101, "another IP still gets in");
    open.push(stream);
    assert_eq!(raw_upgrade(&server.addr, [127, 0, 0, 3], &[]).await.0, 503, "fourth in total");
    open.clear();
    server.wait_for_metric("switchboard_connections", 0.0).await;
    assert_eq!(raw_upgrade(&server.addr, [127, 0, 0, 1], &[]).await.0, 101, "room again once they closed");
}

fn mint(secret: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("token")
        .args(args)
        .env("SWITCHBOARD_TOKEN_SECRET", secret)
        .output()
        .expect("server token runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8").lines().last().expect("a token line").to_owned()
}

async fn join_with_token(server: &Endpoint, room: &str, name: &str, token: &str) -> Client {
    let mut client = server.connect().await;
    client.send(json!({"type": "join", "room": room, "name": name, "token": token})).await;
    client
}

async fn expect_unauthorized(mut client: Client) {
    let (messages, ended) = client.until_closed().await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "unauthorized");
    assert_eq!(ended, Ended::Closed(Some(1008)));
}

#[tokio::test(start_paused = true)]
async fn room_tokens_admit_their_room_only() {
    let server = InProcess::start(&["--token-secret", "s3cret"]).await;
    let valid = mint("s3cret", &["--room", "lobby", "--ttl", "1h"]);
    let mut ana = join_with_token(&server, "lobby", "ana", &valid).await;
    let welcome = ana.expect_type("welcome").await;

    expect_unauthorized(join_with_token(&server, "other", "x", &valid).await).await;
    let expired = mint("s3cret", &["--room", "lobby", "--ttl", "0s"]);
    expect_unauthorized(join_with_token(&server, "lobby", "x", &expired).await).await;
    let foreign = mint("another-secret", &["--room", "lobby", "--ttl", "1h"]);
    expect_unauthorized(join_with_token(&server, "lobby", "x", &foreign).await).await;
    let mut tampered = valid.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    expect_unauthorized(join_with_token(&server, "lobby", "x", &tampered).await).await;
    let mut without = server.connect().await;
    without.send(json!({"type": "join", "room": "lobby"})).await;
    expect_unauthorized(without).await;

    let bound = mint("s3cret", &["--room", "lobby", "--ttl", "1h", "--name", "bob"]);
    expect_unauthorized(join_with_token(&server, "lobby", "mallory", &bound).await).await;
    let mut bob = join_with_token(&server, "lobby", "bob", &bound).await;
    bob.expect_type("welcome").await;

    // A resume within grace needs no room token.
    drop(ana);
    server.wait_for_metric("switchboard_connections", 1.0).await;
    let mut back = server.connect().await;
    back.send(json!({"type": "join", "room": "lobby", "resume": welcome["resume_token"]})).await;
    let resumed = back.expect_type("welcome").await;
    assert_eq!((resumed["id"].clone(), resumed["resumed"].clone()), (welcome["id"].clone(), json!(true)));
}

#[test]
fn minting_a_token_without_a_secret_exits_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["token", "--room", "lobby", "--ttl", "1h"])
        .env_remove("SWITCHBOARD_TOKEN_SECRET")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("secret"));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let flags = [
        &["--room-size", "many"][..],
        &["--ping-interval", "soon"],
        &["--no-such-flag"],
        &["--redis", "not a url"],
    ];
    for args in flags {
        let output = Command::new(env!("CARGO_BIN_EXE_server")).args(args).output().expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn tls_serves_https_and_wss() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_path, key_path) = testkit::self_signed_localhost(&dir);

    let server = InProcess::start(&[
        "--tls-cert",
        cert_path.to_str().expect("utf-8"),
        "--tls-key",
        key_path.to_str().expect("utf-8"),
    ])
    .await;
    let tls = tls_client(&server.addr, &cert_path).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", server.port()), tls)
        .await
        .expect("wss upgrade");
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(r#"{"type":"join","room":"secure"}"#))
        .await
        .expect("sent");
    let reply = support::within_real_time(support::WAIT, ws.next())
        .await
        .expect("in time")
        .expect("a frame")
        .expect("ok");
    let reply: serde_json::Value = serde_json::from_str(reply.to_text().expect("text")).expect("JSON");
    assert_eq!(reply["type"], "welcome");
    let _ = std::fs::remove_dir_all(dir);
}

/// A TLS connection to `addr` that trusts the certificate at `cert_path` (for `localhost`).
async fn tls_client(addr: &str, cert_path: &std::path::Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert_path).expect("PEM")).expect("our cert is a valid root");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake")
}

/// As over plain TCP: the frames in the same TLS record as the upgrade request come first.
#[tokio::test(start_paused = true)]
async fn over_tls_frames_sent_with_the_upgrade_request_are_read_first_and_in_order() {
    let dir = std::env::temp_dir().join(format!("switchboard-tls-eager-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_path, key_path) = testkit::self_signed_localhost(&dir);
    let server = InProcess::start(&[
        "--tls-cert",
        cert_path.to_str().expect("utf-8"),
        "--tls-key",
        key_path.to_str().expect("utf-8"),
    ])
    .await;
    let mut tls = tls_client(&server.addr, &cert_path).await;
    let host = format!("localhost:{}", server.port());
    assert_eq!(upgrade_with_frames(&mut tls, &host, &join_twice()).await, 101);
    assert_eq!(next_text(&mut tls).await["type"], "welcome");
    assert_eq!(next_text(&mut tls).await["code"], "already_joined");
    let _ = std::fs::remove_dir_all(dir);
}
