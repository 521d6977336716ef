//! The HTTP side: the page, `/ws` (after admission), `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;
use tower_http::services::ServeDir;

use crate::admission::origin_allowed;
use crate::state::Shared;
use crate::ws;

/// The page, built into the binary so that `cargo run -p server` works from any directory.
#[derive(Embed)]
#[folder = "../web/"]
struct BuiltInPage;

pub fn router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics));
    let router = match &shared.config.web_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.fallback(built_in_page),
    };
    router.with_state(shared)
}

/// Largest batch of outbound frames handed to the kernel in one write. At 16 KiB a busy
/// connection's batch (up to ~128 frames of ~330 bytes) went out in three `sendto`s; at 64 KiB in
/// one (measured: 17k → 5k `sendto` per 2 s at ~400k signals/s). Only what is queued is
/// buffered, so an idle connection's buffer stays small.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

async fn websocket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &shared.config.allowed_origins) {
        tracing::info!(%client, origin = ?headers.get(header::ORIGIN), "refused: foreign Origin");
        return (StatusCode::FORBIDDEN, "this Origin may not open a WebSocket here\n").into_response();
    }
    let ticket = match shared.admission.admit(client.ip()) {
        Ok(ticket) => ticket,
        Err(status) => {
            tracing::info!(%client, %status, "refused: connection cap");
            return (status, "too many connections\n").into_response();
        }
    };
    let limit = shared.config.max_frame_bytes;
    upgrade
        // Sized for idle connections, not throughput: signaling frames are small, and the
        // buffers are per connection.
        .read_buffer_size(4 * 1024)
        // Frames are buffered until this much is queued or the writer flushes, so that a batch
        // of queued frames goes out in one write(2). (0 would write every frame on its own and
        // cost a syscall per frame.) The buffer only grows to what is actually queued.
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let tasks = shared.tasks.clone();
            tasks.track_future(ws::serve(socket, shared, ticket))
        })
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let stats = shared.rooms().stats();
    let connections = shared.admission.open();
    let body = format!(
        "# HELP switchboard_connections Open WebSocket connections.\n\
         # TYPE switchboard_connections gauge\n\
         switchboard_connections {connections}\n\
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
         switchboard_signals_relayed_total {}\n",
        stats.rooms, stats.members, stats.suspended_members, stats.signals_relayed
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
