//! `server`: parse the command line, set up logging, bind, run.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Parser;
use protocol::{DisplayName, RoomName};
use server::config::TokenArgs;
use server::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file they split every field.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Some(Command::Token(args)) => print_token(args),
        None => serve(cli.serve),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Descriptors kept free besides one per counted connection: the listener, the runtime, stdio,
/// page files, and the refused connections being answered.
const RESERVED_DESCRIPTORS: u64 = 128;

fn serve(args: server::config::ServeArgs) -> anyhow::Result<ExitCode> {
    let config_addr = args.addr.clone();
    let mut config = args.into_config();
    if let Some(files) = &config.tls
        && let Err(error) = server::tls::load(files)
    {
        eprintln!("server: {error:#}");
        return Ok(ExitCode::from(2));
    }
    fit_connections_to_descriptors(&mut config);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config_addr)
            .await
            .with_context(|| format!("cannot listen on {config_addr}"))?;
        let addr = listener.local_addr()?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{addr}");
        server::run(listener, config, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    // Whatever is still running (a connection that ignored its close) must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(300));
    result
}

/// Raises the soft open-file limit to the hard one (1,024 by default would make the default
/// `--max-connections` unreachable) and, where even the hard limit is too low, lowers the
/// connection cap to fit: past it, clients get 503 instead of the server failing to accept
/// (and so failing everyone, `/healthz` included).
fn fit_connections_to_descriptors(config: &mut server::Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            return;
        }
    };
    let fits = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX).max(1);
    if config.max_connections > fits {
        tracing::warn!(
            open_files = limit,
            max_connections = fits,
            "the open-file limit is too low for --max-connections; lowering the connection cap to fit"
        );
        config.max_connections = fits;
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}

fn print_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let Some(secret) = args.token_secret.filter(|s| !s.is_empty()) else {
        eprintln!("server token: no secret: pass --token-secret or set SWITCHBOARD_TOKEN_SECRET");
        return Ok(ExitCode::from(2));
    };
    let room = RoomName::parse(&args.room).map_err(|e| anyhow::anyhow!("--room: {e}"))?;
    let name = args
        .name
        .as_deref()
        .map(DisplayName::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    println!("{}", server::grant::mint(&secret, &room, name.as_ref(), args.ttl, SystemTime::now()));
    Ok(ExitCode::SUCCESS)
}
