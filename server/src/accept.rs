//! From TCP accept to HTTP: every connection is counted against the caps the moment it is
//! accepted ([`Admission`](crate::admission::Admission)), must send a complete request head
//! within `--header-timeout` of accept or of its previous response, may not send a head over
//! [`MAX_HEAD_BYTES`], speaks HTTP/1.1 only, and ends within [`SHUTDOWN_GRACE`] of shutdown
//! whatever its client does. Upgraded WebSockets carry on in `ws.rs`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::admission::{OverCap, Ticket};
use crate::readahead::ReadAhead;
use crate::state::Shared;
use crate::turned_away::Reason;

/// The largest request head (request line and headers) read; a longer one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long an HTTP connection may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Connections over a cap being answered at once; past this they are closed unanswered, so a
/// flood of refused connections cannot hold more than this many descriptors.
const ANSWERING_REFUSED: usize = 64;
/// How long answering a refused connection may take.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// What a request knows about the connection it came on.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// The connection's count against the caps; the WebSocket task keeps a clone.
    pub ticket: Ticket,
}

/// Accepts connections until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>, router: Router) {
    let answering = Arc::new(Semaphore::new(ANSWERING_REFUSED));
    let mut warned_at: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection that died in the backlog:
                // wait a moment rather than spin, and say so at most every ten seconds.
                if warned_at.is_none_or(|at| {
                    crate::clock::now().saturating_duration_since(at) > Duration::from_secs(10)
                }) {
                    tracing::warn!(%error, "accept failed");
                    warned_at = Some(crate::clock::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Signaling frames are small and latency-bound: never let Nagle hold one back.
        let _ = tcp.set_nodelay(true);
        let ticket = match shared.admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(over) => {
                shared.turned_away.count(match over {
                    OverCap::PerIp => Reason::PerIp,
                    OverCap::Total => Reason::Total,
                });
                // Answer with the status when there is room to (plain HTTP only: a TLS client
                // would need a handshake first); otherwise dropping `tcp` closes it unanswered.
                if tls.is_none()
                    && let Ok(permit) = Arc::clone(&answering).try_acquire_owned()
                {
                    shared.tasks.spawn(async move {
                        answer_refused(tcp, over.status()).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let connection = Connection { peer, ticket };
        shared.tasks.spawn(serve_connection(
            tcp,
            connection,
            Arc::clone(&shared),
            tls.clone(),
            router.clone(),
        ));
    }
}

async fn serve_connection(
    tcp: TcpStream,
    connection: Connection,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    router: Router,
) {
    let header_timeout = shared.config.header_timeout;
    match tls {
        None => serve_http(ReadAhead::new(tcp), connection, &shared, header_timeout, router).await,
        Some(acceptor) => {
            // The handshake counts toward the time the client has to send its request head.
            let started = crate::clock::now();
            let handshake = tokio::time::timeout(header_timeout, acceptor.accept(tcp));
            let stream = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, peer = %connection.peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
            };
            let left = header_timeout
                .saturating_sub(crate::clock::now().saturating_duration_since(started))
                .max(Duration::from_millis(1));
            serve_http(stream, connection, &shared, left, router).await;
        }
    }
}

async fn serve_http<Io>(
    io: Io,
    connection: Connection,
    shared: &Shared,
    header_timeout: Duration,
    router: Router,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(connection.clone());
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(router.oneshot(request.map(Body::new)).await.unwrap_or_else(|e| match e {}))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // From accept, and from each response on a kept-alive connection (hyper restarts it
        // whenever it waits for a new head).
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let served = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        _ = &mut served => {}
        () = shared.shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, served).await;
        }
    }
}

/// Writes a bare response with `status` and closes. The request is read and discarded until the
/// client closes (within [`REFUSAL_TIME`]): closing with unread input would make the kernel send a
/// reset that can destroy the response before the client reads it.
async fn answer_refused(mut tcp: TcpStream, status: StatusCode) {
    let body = "too many connections\n";
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut discard = [0u8; 2048];
        while tcp.read(&mut discard).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}
