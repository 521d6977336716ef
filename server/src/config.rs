//! The server's settings, and the command line that fills them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use protocol::IceServer;

use crate::budget::RateLimit;
use crate::proxy::Cidr;
use crate::rooms::RoomsConfig;
use crate::turn::TurnConfig;

/// Everything a running server needs to know. Built from [`ServeArgs`], or directly by tests.
#[derive(Debug, Clone)]
pub struct Config {
    pub rooms: RoomsConfig,
    /// Serve the page from here instead of the copy built into the binary.
    pub web_dir: Option<PathBuf>,
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub join_timeout: Duration,
    /// `None`: no per-connection rate limit.
    pub rate_limit: Option<RateLimit>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Origins accepted besides requests without Origin and the server's own origin.
    pub allowed_origins: Vec<String>,
    /// Host names accepted besides the loopback ones (see `hosts::AllowedHosts`).
    pub allowed_hosts: Vec<String>,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// How long a connection may take to send a complete request head.
    pub header_timeout: Duration,
    /// When set, a `join` must carry a room token signed with it.
    pub token_secret: Option<String>,
    pub tls: Option<TlsFiles>,
    /// `--redis URL`: one service with every instance started with the same Redis.
    pub redis: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rooms: RoomsConfig::default(),
            web_dir: None,
            max_frame_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            join_timeout: Duration::from_secs(10),
            rate_limit: Some(RateLimit::default()),
            max_connections: 20_000,
            max_connections_per_ip: 256,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            token_secret: None,
            tls: None,
            redis: None,
        }
    }
}

/// Switchboard signaling server: rooms, relay of offers, answers and ICE candidates, resume.
#[derive(Debug, Parser)]
#[command(name = "server", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint a room token (for servers started with --token-secret) and print it as the last line.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The room the token grants.
    #[arg(long)]
    pub room: String,
    /// How long the token is valid, e.g. 30m, 1h.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Duration,
    /// Bind the token to this display name: the join's name must equal it.
    #[arg(long)]
    pub name: Option<String>,
    /// The secret the server was started with.
    #[arg(long, env = "SWITCHBOARD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Serve the page from this directory instead of the built-in copy (for editing it live).
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
    /// An ICE server URL handed to clients in `welcome` (repeatable), e.g. stun:stun.example.org.
    #[arg(long = "ice-server", value_name = "URL")]
    pub ice_servers: Vec<String>,
    /// A TURN server URL (repeatable), e.g. turn:turn.example.org:3478; every `welcome` then
    /// carries one entry with all of them and a credential minted with --turn-secret.
    #[arg(long = "turn-url", value_name = "URL", requires = "turn_secret")]
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's static-auth-secret); needs --turn-url.
    #[arg(long, env = "SWITCHBOARD_TURN_SECRET", hide_env_values = true, requires = "turn_urls",
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub turn_secret: Option<String>,
    /// How long a TURN credential works (coturn re-checks it on refresh: outlive a call).
    #[arg(long, default_value = "1h", value_parser = parse_positive_duration)]
    pub turn_ttl: Duration,
    /// Members per room.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub room_size: u32,
    /// Largest accepted WebSocket frame/message, in bytes.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_frame_bytes: u32,
    /// How often the server pings each connection.
    #[arg(long, default_value = "15s", value_parser = parse_positive_duration)]
    pub ping_interval: Duration,
    /// Close a connection that has sent nothing (pongs included) for this long.
    #[arg(long, default_value = "45s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
    /// How long a member whose connection dropped keeps its place for a resume.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub resume_grace: Duration,
    /// Most open WebSocket connections; past it the upgrade gets HTTP 503.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,
    /// Most connections from one client IP; past it the upgrade gets HTTP 429.
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Most rooms; a join that would create one more gets `server_busy`.
    #[arg(long, default_value_t = 10_000)]
    pub max_rooms: usize,
    /// Close a socket that has not joined by then (1008).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub join_timeout: Duration,
    /// Accept WebSocket upgrades from this Origin too (repeatable), e.g. https://app.example.org.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Accept this Host name too (repeatable); by default a server on loopback accepts only
    /// localhost, 127.0.0.0/8 and [::1], and others any Host.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// A reverse proxy (repeatable, e.g. 10.0.0.0/8): its X-Forwarded-For names the client IP.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<Cidr>,
    /// Close a connection that has not sent a complete request head within this long of accept
    /// (or of its previous response).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,
    /// Require a room token in every join, signed with this secret.
    #[arg(long, env = "SWITCHBOARD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Serve https/wss with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Switch the per-connection rate limit off (trusted deployments, benchmarks); caps stay.
    #[arg(long)]
    pub no_rate_limit: bool,
    /// Messages a connection may send in a burst.
    #[arg(long, default_value_t = 1200)]
    pub rate_burst: u32,
    /// Messages per second a connection may send, sustained.
    #[arg(long, default_value_t = 200)]
    pub rate_per_sec: u32,
    /// Bound on every outbound, resume and retention queue together, in bytes (K/M/G suffixes,
    /// binary: 64M). A signal that would take the total over it gets `server_busy`.
    #[arg(long, default_value = "268435456", value_parser = parse_bytes)]
    pub max_queued_bytes: usize,
    /// Run as one instance of a service: every instance started with the same Redis
    /// (redis://HOST:PORT/DB, or redis+unix:///path) shares rooms, members and resumes.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", hide_env_values = true, value_name = "URL",
          value_parser = parse_redis_url)]
    pub redis: Option<String>,
}

impl ServeArgs {
    pub fn into_config(self) -> Config {
        let defaults = Config::default();
        let rate_limit = (!self.no_rate_limit).then(|| RateLimit {
            burst_messages: f64::from(self.rate_burst),
            messages_per_sec: f64::from(self.rate_per_sec),
            ..RateLimit::default()
        });
        Config {
            rooms: RoomsConfig {
                room_size: self.room_size as usize,
                max_rooms: self.max_rooms,
                resume_grace: self.resume_grace,
                max_queued_bytes: self.max_queued_bytes,
                ice_servers: self
                    .ice_servers
                    .into_iter()
                    .map(|url| IceServer { urls: vec![url], username: None, credential: None })
                    .collect(),
                turn: self.turn_secret.map(|secret| TurnConfig {
                    urls: self.turn_urls,
                    secret,
                    ttl: self.turn_ttl,
                }),
                ..defaults.rooms
            },
            web_dir: self.web_dir,
            max_frame_bytes: self.max_frame_bytes as usize,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            join_timeout: self.join_timeout,
            rate_limit,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            allowed_origins: self.allowed_origins,
            allowed_hosts: self.allowed_hosts,
            trusted_proxies: self.trusted_proxies,
            header_timeout: self.header_timeout,
            token_secret: self.token_secret.filter(|s| !s.is_empty()),
            tls: self.tls_cert.zip(self.tls_key).map(|(cert, key)| TlsFiles { cert, key }),
            redis: self.redis,
        }
    }
}

/// A Redis URL the client library accepts (checked at start, not connected to).
fn parse_redis_url(text: &str) -> Result<String, String> {
    redis::Client::open(text).map(|_| text.to_owned()).map_err(|e| format!("not a Redis URL: {e}"))
}

/// Durations as `250ms`, `2s`, `1m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 250ms, 2s, 1m, 1h)"))
}

/// Byte counts as `1048576`, `512K`, `64M`, `1G` (binary multiples).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 'K' | 'k')) => (&text[..at], 1usize << 10),
        Some((at, 'M' | 'm')) => (&text[..at], 1 << 20),
        Some((at, 'G' | 'g')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let count: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (write 1048576, 512K, 64M or 1G)"))?;
    match count.checked_mul(unit) {
        Some(0) => Err("must be more than zero".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text} is too large")),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_interfaces_md() {
        let cli = Cli::try_parse_from(["server"]).expect("no flags is valid");
        let config = cli.serve.into_config();
        assert_eq!(config.rooms.room_size, 16);
        assert_eq!(config.max_frame_bytes, 65536);
        assert_eq!(config.ping_interval, Duration::from_secs(15));
        assert_eq!(config.idle_timeout, Duration::from_secs(45));
        assert_eq!(config.rooms.resume_grace, Duration::from_secs(20));
        assert_eq!((config.max_connections, config.max_connections_per_ip), (20_000, 256));
        assert_eq!(config.rooms.max_rooms, 10_000);
        assert_eq!(config.join_timeout, Duration::from_secs(10));
        assert!(config.rate_limit.is_some());
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.rooms.max_queued_bytes, 268_435_456);
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        for bad in ["", "M", "-1M", "1.5M", "0", "12T", "99999999999999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_the_documented_units() {
        for (text, expected) in [("250ms", 250), ("2s", 2000), ("1m", 60_000), ("1h", 3_600_000)] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(expected)));
        }
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn ice_servers_become_rtc_ice_server_objects() {
        let cli = Cli::try_parse_from(["server", "--ice-server", "stun:a", "--ice-server", "turn:b"])
            .expect("valid");
        let servers = cli.serve.into_config().rooms.ice_servers;
        assert_eq!(servers[1].urls, ["turn:b"]);
    }

    #[test]
    fn turn_flags_make_a_turn_config() {
        let cli = Cli::try_parse_from([
            "server",
            "--turn-url",
            "turn:a:3478",
            "--turn-url",
            "turn:a:3478?transport=tcp",
            "--turn-secret",
            "s",
            "--turn-ttl",
            "10m",
        ])
        .expect("valid");
        let turn = cli.serve.into_config().rooms.turn.expect("a TURN config");
        assert_eq!(turn.urls, ["turn:a:3478", "turn:a:3478?transport=tcp"]);
        assert_eq!((turn.secret.as_str(), turn.ttl), ("s", Duration::from_secs(600)));
        let default_ttl =
            Cli::try_parse_from(["server", "--turn-url", "turn:a", "--turn-secret", "s"]).expect("valid");
        assert_eq!(
            default_ttl.serve.into_config().rooms.turn.map(|t| t.ttl),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(Cli::try_parse_from(["server"]).expect("valid").serve.into_config().rooms.turn, None);
    }

    #[test]
    fn a_turn_url_without_a_secret_or_the_reverse_is_a_bad_flag() {
        for args in [
            &["server", "--turn-url", "turn:a"][..],
            &["server", "--turn-secret", "s"],
            &["server", "--turn-url", "turn:a", "--turn-secret", ""],
            &["server", "--turn-url", "turn:a", "--turn-secret", "s", "--turn-ttl", "0s"],
        ] {
            let error = Cli::try_parse_from(args).expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }
}
