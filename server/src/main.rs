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

fn serve(args: server::config::ServeArgs) -> anyhow::Result<ExitCode> {
    let config_addr = args.addr.clone();
    let config = args.into_config();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config_addr)
            .await
            .with_context(|| format!("cannot listen on {config_addr}"))?;
        let addr = listener.local_addr()?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{addr}");
        server::run(listener, config, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
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
