//! `peer`: a terminal chat and scriptable test client for a Switchboard room.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use peer::files::{self, Corruption, FileOptions, Outgoing, Receiving};
use peer::media::{AudioFile, MediaOptions, VideoFile};
use peer::mesh::{self, ChatOptions, ConnectionOptions, Inputs, MeshOptions, Outcome};
use peer::output::Output;
use peer::signaling::{JoinParams, Signaling};
use peer::transport;
use protocol::{DisplayName, RoomName};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Log filter without RUST_LOG. webrtc-rs warns about things that are normal here (no DTLS
/// server name on a peer connection, checks before the first remote candidate). Its TURN client
/// logs every refused permission as an error, again at every check (a TURN server that denies
/// private ranges refuses every host address: normal, and dozens of lines a second); a relay
/// that cannot be had at all is reported by the peer itself (`transport::turn_failure`).
const DEFAULT_LOG: &str =
    "warn,peer=info,rtc_dtls=error,rtc_ice=error,webrtc::peer_connection::transport::turn_relayer=off";

/// Lines read from stdin ahead of the mesh.
const STDIN_QUEUE: usize = 64;

/// Join a Switchboard room and chat with everyone in it over WebRTC data channels.
///
/// Lines typed on stdin go to every connected peer; received lines are printed.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Signaling WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    server: String,
    /// Room to join: 1-64 of A-Z a-z 0-9 _ . -
    #[arg(long, default_value = "lobby", value_parser = parse_room)]
    room: String,
    /// Display name (default: the id the server gives).
    #[arg(long, value_parser = parse_name)]
    name: Option<String>,
    /// Extra trust anchor for `wss://` (PEM; repeatable). The system's store is always used.
    #[arg(long = "ca-cert", value_name = "PEM")]
    ca_cert: Vec<PathBuf>,
    /// Room token, for servers that require one.
    #[arg(long)]
    token: Option<String>,
    /// Once a peer's chat channel opens, send TEXT to it (repeatable, in order).
    #[arg(long = "send", value_name = "TEXT")]
    send: Vec<String>,
    /// Send every received chat line back to its sender.
    #[arg(long)]
    echo: bool,
    /// Exit 0 once N chat lines have been received in total.
    #[arg(long, value_name = "N")]
    expect: Option<usize>,
    /// Give up after this long (e.g. 30s): exit code 1.
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// One JSON event per line on stdout instead of human-readable lines.
    #[arg(long)]
    json: bool,
    /// ICE connectivity-check interval while connecting (a check that got no answer is retried
    /// after it). Once connected, a connection wakes only for its keepalive, every 2s.
    #[arg(long, value_name = "D", default_value = "20ms", value_parser = parse_ice_tick)]
    ice_tick: Duration,
    /// Local UDP address for peer connections (repeatable; default: loopback and every interface).
    #[arg(long = "bind", value_name = "ADDR")]
    bind: Vec<String>,
    /// Connect only through TURN (ICE transport policy relay); the server must hand out a TURN
    /// server (its --turn-url and --turn-secret).
    #[arg(long)]
    relay_only: bool,
    /// Send the file at PATH to every peer once its connection is up (repeatable).
    #[arg(long = "send-file", value_name = "PATH")]
    send_file: Vec<PathBuf>,
    /// Accept files, into DIR (created if missing; existing files are never replaced). Without
    /// it (or --expect-files) every incoming file is refused.
    #[arg(long, value_name = "DIR")]
    receive_dir: Option<PathBuf>,
    /// Exit 0 once N files have been received and verified (accepts files, into ./received
    /// unless --receive-dir says otherwise).
    #[arg(long, value_name = "N")]
    expect_files: Option<usize>,
    /// Write every incoming track to DIR: VP8 video as IVF, Opus audio as Ogg.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Send every incoming audio and video track back to its sender.
    #[arg(long)]
    echo_media: bool,
    /// Play this IVF (VP8) file, looped, to every peer.
    #[arg(long, value_name = "FILE")]
    send_video: Option<PathBuf>,
    /// Play this Ogg (Opus) file, looped, to every peer.
    #[arg(long, value_name = "FILE")]
    send_audio: Option<PathBuf>,
    /// Exit 0 once N video frames have been received in total (from each track's first keyframe).
    #[arg(long, value_name = "N")]
    expect_frames: Option<usize>,
    /// Refuse an incoming file announced larger than BYTES (K, M, G: binary suffixes), or than
    /// the receive dir's free space.
    #[arg(long, value_name = "BYTES", default_value = "4G", value_parser = files::parse_size)]
    max_file_size: u64,
    /// TESTING ONLY: fail an incoming transfer that receives nothing for D (default 30s), so
    /// that tests need not wait 30 s. Hidden from --help.
    #[arg(long, value_name = "D", hide = true, value_parser = humantime::parse_duration)]
    test_file_idle: Option<Duration>,
    /// TESTING ONLY: make the receiver's writer wait D before each chunk, like a disk too slow
    /// to finish before the peer exits. Hidden from --help.
    #[arg(long, value_name = "D", hide = true, value_parser = humantime::parse_duration)]
    test_file_write_delay: Option<Duration>,
    /// TESTING ONLY: break every file this peer sends, to test receivers: `hash` announces a
    /// wrong SHA-256, `truncate` closes the channel after half the bytes. Hidden from --help.
    #[arg(long, value_name = "HOW", hide = true)]
    test_corrupt_file: Option<Corruption>,
    /// TESTING ONLY: announce NAME instead of the file's own name for the n-th --send-file
    /// (repeatable), to test how receivers contain hostile names. Hidden from --help.
    #[arg(long, value_name = "NAME", hide = true)]
    test_file_name: Vec<String>,
}

fn parse_room(s: &str) -> Result<String, String> {
    RoomName::parse(s).map(|r| r.as_str().to_string()).map_err(|e| e.to_string())
}

/// A duration from 1 ms to 5 s: shorter would spin, longer would make connects take seconds.
fn parse_ice_tick(s: &str) -> Result<Duration, String> {
    let tick = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if (Duration::from_millis(1)..=Duration::from_secs(5)).contains(&tick) {
        Ok(tick)
    } else {
        Err(format!("{s} is outside 1ms..5s"))
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    DisplayName::parse(s).map(|n| n.as_str().to_string()).map_err(|e| e.to_string())
}

fn main() {
    // clap exits with code 2 on bad flags, as INTERFACES.md asks.
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("peer: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Hash the files to send before joining: a missing file is a bad flag, and every peer
    // then gets the same header without reading the file twice more.
    let mut outgoing = Vec::new();
    for (i, path) in args.send_file.iter().enumerate() {
        match Outgoing::prepare(path) {
            Ok(mut file) => {
                if let Some(claim) = args.test_file_name.get(i) {
                    file.header.name = claim.clone();
                }
                outgoing.push(Arc::new(file));
            }
            Err(e) => {
                eprintln!("peer: --send-file: {e}");
                std::process::exit(2);
            }
        }
    }
    // Media files are loaded (and checked) before joining too: a bad one is a bad flag.
    let media = MediaOptions {
        record: args.record.as_ref().map(|dir| std::path::absolute(dir).unwrap_or(dir.clone())),
        echo: args.echo_media,
        send_video: args.send_video.as_ref().map(|p| load("--send-video", VideoFile::load(p))),
        send_audio: args.send_audio.as_ref().map(|p| load("--send-audio", AudioFile::load(p))),
        expect_frames: args.expect_frames,
    };
    // Built once, before joining: a bad --ca-cert is a bad flag. Only `wss://` needs it.
    let tls = if args.server.starts_with("wss://") || !args.ca_cert.is_empty() {
        match peer::tls::client_config(&args.ca_cert) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("peer: {e}");
                std::process::exit(2);
            }
        }
    } else {
        None
    };
    let code = runtime.block_on(run(args, outgoing, media, tls));
    // Exit with the runtime still alive: dropping it would wait for the blocking stdin read,
    // which cannot be cancelled and may never end.
    std::process::exit(code);
}

async fn run(
    args: Args,
    outgoing: Vec<Arc<Outgoing>>,
    media: MediaOptions,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
) -> i32 {
    let tasks = TaskTracker::new();
    let (server_tx, server_rx) = mpsc::channel(256);
    let signaling = Signaling::start(
        JoinParams {
            url: args.server.clone(),
            room: args.room.clone(),
            name: args.name.clone(),
            token: args.token,
            tls,
        },
        server_tx,
        &tasks,
    );

    let (line_tx, line_rx) = mpsc::channel(STDIN_QUEUE);
    // Not tracked: a read on stdin cannot be cancelled; the process exits past it.
    tokio::spawn(read_stdin(line_tx));

    let timeout = args.timeout;
    let inputs = Inputs {
        lines: line_rx,
        shutdown: shutdown_signal(),
        timeout: async move {
            match timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        },
    };
    let options = MeshOptions {
        chat: ChatOptions { send: args.send, echo: args.echo, expect: args.expect },
        connections: ConnectionOptions {
            ice_tick: args.ice_tick,
            bind: if args.bind.is_empty() { transport::default_bind(args.relay_only) } else { args.bind },
            relay_only: args.relay_only,
        },
        files: FileOptions {
            send: outgoing,
            receive: receiving(args.receive_dir, args.expect_files, args.max_file_size, args.test_file_idle)
                .map(|r| Receiving { test_write_delay: args.test_file_write_delay, ..r }),
            expect: args.expect_files,
            corrupt: args.test_corrupt_file,
        },
        media,
    };
    let mut output = Output::new(args.json);
    let outcome = mesh::run(options, signaling, server_rx, inputs, &mut |event| output.emit(&event)).await;
    // The mesh closed every link, which ends their transfers and removes their temporary
    // files, but only within a bounded wait: a transfer still busy (its writer behind a slow
    // disk) would leave its `.part` file, since `process::exit` runs no destructor.
    let removed = tokio::task::spawn_blocking(files::remove_temp_files).await.unwrap_or(0);
    if removed > 0 {
        tracing::debug!("removed {removed} temporary files of unfinished transfers");
    }
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await.is_err() {
        tracing::debug!("signaling task still running at exit");
    }
    match outcome {
        Outcome::Done => 0,
        Outcome::Failed(reason) => {
            // The reason may quote the server or a remote: never let it steer the terminal.
            eprintln!("peer: {}", peer::output::printable(&reason));
            1
        }
    }
}

/// A loaded media file, or exit 2 (a bad flag) saying why not.
fn load<T>(flag: &str, loaded: Result<T, String>) -> Arc<T> {
    match loaded {
        Ok(file) => Arc::new(file),
        Err(e) => {
            eprintln!("peer: {flag}: {e}");
            std::process::exit(2);
        }
    }
}

/// How files are received, if at all: only with `--receive-dir` or `--expect-files`.
fn receiving(
    dir: Option<PathBuf>,
    expect: Option<usize>,
    max_size: u64,
    idle: Option<Duration>,
) -> Option<Receiving> {
    let dir = dir.or_else(|| expect.map(|_| PathBuf::from("received")))?;
    Some(Receiving {
        // Absolute, so that the events' `path` says where a file went whatever the reader's
        // working directory.
        dir: std::path::absolute(&dir).unwrap_or(dir),
        max_size,
        idle: idle.unwrap_or(files::DEFAULT_IDLE),
        test_write_delay: None,
    })
}

/// Reads stdin line by line. A line that is not UTF-8 is refused with a message.
async fn read_stdin(lines: mpsc::Sender<String>) {
    let mut reader = tokio::io::BufReader::new(tokio::io::stdin());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                match String::from_utf8(std::mem::take(&mut buf)) {
                    Ok(line) => {
                        if lines.send(line).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => tracing::warn!("line not sent: it is not valid UTF-8"),
                }
            }
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
