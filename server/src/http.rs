//! The HTTP side: the page, `/ws` (Origin-checked), `/healthz` and `/metrics`, behind one gate
//! that every request passes: the Host check (against DNS rebinding), the move of a proxied
//! connection's count to its real client, and the page's security headers.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;
use tower_http::services::ServeDir;

use tungstenite::protocol::WebSocketConfig;

use crate::accept::Connection;
use crate::admission::OverCap;
use crate::hosts::origin_allowed;
use crate::proxy;
use crate::state::Shared;
use crate::turned_away::Reason;
use crate::upgrade::Upgrade;
use crate::ws;

/// The page, built into the binary so that `cargo run -p server` works from any directory.
#[derive(Embed)]
#[folder = "../web/"]
struct BuiltInPage;

/// The page loads only its own scripts and styles (no inline script), talks only to its own
/// origin (`'self'` covers its ws:/wss: in CSP 3), shows media and files from `blob:` (and may
/// read back its own `blob:` URLs, which are same-origin by construction), and may not be
/// framed (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self' blob:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    let router = match &shared.config.web_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.fallback(built_in_page),
    };
    router.layer(middleware::from_fn_with_state(shared.clone(), gate)).with_state(shared)
}

/// Every request, every path.
async fn gate(
    State(shared): State<Arc<Shared>>,
    Extension(connection): Extension<Connection>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(status) = shared.hosts.check(request.headers()) {
        shared.turned_away.count(Reason::Host);
        return (status, "this server does not answer to that Host\n").into_response();
    }
    if !shared.config.trusted_proxies.is_empty() {
        let client =
            proxy::client_ip(connection.peer.ip(), request.headers(), &shared.config.trusted_proxies);
        if let Err(over) = connection.ticket.move_to(client) {
            shared.turned_away.count(match over {
                OverCap::PerIp => Reason::PerIp,
                OverCap::Total => Reason::Total,
            });
            return (over.status(), [(header::CONNECTION, "close")], "too many connections\n")
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Largest batch of outbound frames handed to the kernel in one write. At 16 KiB a busy
/// connection's batch (up to ~128 frames of ~330 bytes) went out in three `sendto`s; at 64 KiB in
/// one (measured: 17k → 5k `sendto` per 2 s at ~400k signals/s). Only what is queued is
/// buffered, so an idle connection's buffer stays small.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

async fn websocket(
    State(shared): State<Arc<Shared>>,
    Extension(connection): Extension<Connection>,
    headers: axum::http::HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let scheme = if shared.config.tls.is_some() { "https" } else { "http" };
    if !origin_allowed(&headers, &shared.config.allowed_origins, scheme) {
        shared.turned_away.count(Reason::Origin);
        tracing::debug!(peer = %connection.peer, origin = ?headers.get(header::ORIGIN), "refused: foreign Origin");
        return (StatusCode::FORBIDDEN, "this Origin may not open a WebSocket here\n").into_response();
    }
    let limit = shared.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        // Sized between idle memory and reads per frame: every connection holds this much while
        // it waits (4 KiB was 40 % of an idle connection's bytes), and `ReadAhead` already takes
        // whole batches from the kernel, so a read here costs no syscall, only a trip through
        // tokio-tungstenite and `ReadAhead`: 256 bytes took 1.6 of those per ~365-byte signal,
        // 1 KiB takes 0.44 (2-3 % of a relayed signal's CPU, for ~0.5 KB more per idle
        // connection; docs/benchmarks.md, issue 20). A frame larger than this grows the buffer
        // once to the frame's size.
        .read_buffer_size(1024)
        // Frames are buffered until this much is queued or the writer flushes, so that a batch
        // of queued frames goes out in one write(2). (0 would write every frame on its own and
        // cost a syscall per frame.) The buffer only grows to what is actually queued.
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let tasks = shared.tasks.clone();
    upgrade.on_upgrade(config, &tasks, move |socket| ws::serve(socket, shared, connection.ticket))
}

/// 200 `ok`; with `--redis`, 503 while Redis is unreachable (a balancer then sends new
/// clients to another instance).
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.cluster {
        Some(cluster) if !cluster.redis_up() => {
            (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n").into_response()
        }
        _ => "ok".into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut stats = shared.rooms.stats();
    let mut cluster_metrics = String::new();
    if let Some(cluster) = &shared.cluster {
        stats.signals_relayed += cluster.signals_relayed();
        stats.rooms += cluster.rooms_in_grace_only(&shared);
        cluster_metrics = format!(
            "# HELP switchboard_redis_up Whether this instance reaches Redis (1) or not (0).\n\
             # TYPE switchboard_redis_up gauge\n\
             switchboard_redis_up {}\n",
            u8::from(cluster.redis_up())
        );
    }
    let counted = shared.admission.counted();
    let body = format!(
        "# HELP switchboard_connections Open WebSocket connections.\n\
         # TYPE switchboard_connections gauge\n\
         switchboard_connections {}\n\
         # HELP switchboard_counted_connections What the connection caps count: TCP connections (HTTP or WebSocket) and members in grace.\n\
         # TYPE switchboard_counted_connections gauge\n\
         switchboard_counted_connections {counted}\n\
         # HELP switchboard_rooms Rooms with at least one member, members in grace included.\n\
         # TYPE switchboard_rooms gauge\n\
         switchboard_rooms {}\n\
         # HELP switchboard_members Room members, connected or in grace.\n\
         # TYPE switchboard_members gauge\n\
         switchboard_members {}\n\
         # HELP switchboard_suspended_members Members whose connection dropped, waiting for a resume.\n\
         # TYPE switchboard_suspended_members gauge\n\
         switchboard_suspended_members {}\n\
         # HELP switchboard_signals_relayed_total Signals relayed from one peer to another.\n\
         # TYPE switchboard_signals_relayed_total counter\n\
         switchboard_signals_relayed_total {}\n\
         # HELP switchboard_queued_bytes Bytes held in every outbound, resume and retention queue (bound: --max-queued-bytes).\n\
         # TYPE switchboard_queued_bytes gauge\n\
         switchboard_queued_bytes {}\n{}{cluster_metrics}",
        stats.connections,
        stats.rooms,
        stats.members,
        stats.suspended_members,
        stats.signals_relayed,
        stats.queued_bytes,
        shared.turned_away.metrics()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

async fn built_in_page(uri: Uri) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    match BuiltInPage::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            ([(header::CONTENT_TYPE, mime.as_ref()), (header::CACHE_CONTROL, "no-cache")], file.data)
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
