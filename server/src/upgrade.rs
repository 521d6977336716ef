//! The WebSocket upgrade, finished on the connection's own socket type.
//!
//! axum's `WebSocket` runs tungstenite on hyper's `Upgraded`, which is a `Rewind` (the bytes
//! hyper read past the request head) around a boxed `dyn Io`: every read and write of every
//! frame went through both, and through the `TokioIo` adapters either side of them. Here the
//! request is checked by axum's own extractor (so a bad upgrade gets exactly axum's answer), the
//! 101 is written the same way, and once hyper hands over the connection it is unwrapped
//! ([`hyper::upgrade::Upgraded::downcast`]) to the socket accept.rs gave hyper: tungstenite then
//! reads [`ReadAhead`] or the TLS stream directly (through `socket.rs`), with the bytes hyper had
//! read ahead put first in its read buffer (`from_partially_read`), so a frame sent in the same
//! packet as the request is still read first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{FromRequestParts, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tungstenite::protocol::WebSocketConfig;

use crate::readahead::ReadAhead;
use crate::socket::Socket;

/// A valid WebSocket upgrade request (checked by axum's [`WebSocketUpgrade`]), not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response<Body>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // axum's extractor takes hyper's upgrade handle out of the request; a clone of it (one
        // shared receiver) is kept here, and axum's is dropped without being polled.
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let checked =
            WebSocketUpgrade::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        drop(checked);
        // axum checked both: an HTTP/1.1 request (the only version served) with a key, and an
        // upgradable connection.
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        match (key, on_upgrade) {
            (Some(key), Some(on_upgrade)) => Ok(Self { key, on_upgrade }),
            _ => Err(StatusCode::UPGRADE_REQUIRED.into_response()),
        }
    }
}

impl Upgrade {
    /// The 101 answer, and `serve` spawned on `tasks` with the WebSocket once hyper has written
    /// it and let go of the connection. No subprotocol is offered or chosen.
    pub fn on_upgrade<F>(
        self,
        config: WebSocketConfig,
        tasks: &tokio_util::task::TaskTracker,
        serve: impl FnOnce(Socket) -> F + Send + 'static,
    ) -> Response<Body>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Self { key, on_upgrade } = self;
        let spawner = tasks.clone();
        // A short task that ends once the connection's own task is spawned: the connection's
        // whole life is spent in `serve`'s future alone (docs/benchmarks.md, idle connections).
        tasks.spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "WebSocket upgrade failed");
                    return;
                }
            };
            let (transport, read_ahead) = Transport::unwrap(upgraded);
            spawner.spawn(serve(Socket::new(transport, read_ahead, config)));
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::SEC_WEBSOCKET_ACCEPT, tungstenite::handshake::derive_accept_key(key.as_bytes()))
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// The socket under a WebSocket: the one accept.rs handed to hyper, unwrapped again.
#[derive(Debug)]
pub enum Transport {
    Plain(ReadAhead<TcpStream>),
    /// Boxed: rustls' state is large, and a plain connection should not carry its size.
    Tls(Box<TlsStream<TcpStream>>),
    /// Any other socket hyper was given (none today): left in hyper's wrapper.
    Other(TokioIo<Upgraded>),
}

impl Transport {
    /// The socket, and the bytes hyper read past the request head (the client's first frames,
    /// if they came with the request): those must be read before the socket.
    ///
    /// Those bytes are copied out (`to_vec`, nothing allocated when there are none), not
    /// converted: `Vec::from(Bytes)` would take over hyper's whole 8 KiB read buffer, and
    /// tungstenite would keep it as its read buffer for the connection's life (12.6 KB per idle
    /// connection instead of 4.9, measured).
    fn unwrap(upgraded: Upgraded) -> (Self, Vec<u8>) {
        let upgraded = match upgraded.downcast::<TokioIo<ReadAhead<TcpStream>>>() {
            Ok(parts) => return (Self::Plain(parts.io.into_inner()), parts.read_buf.to_vec()),
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
            Ok(parts) => (Self::Tls(Box::new(parts.io.into_inner())), parts.read_buf.to_vec()),
            // `downcast` put the bytes read ahead back in front of the wrapper.
            Err(upgraded) => (Self::Other(TokioIo::new(upgraded)), Vec::new()),
        }
    }
}

/// Calls `$method` on whichever socket this is.
macro_rules! each {
    ($self:expr, $io:ident => $call:expr) => {
        match $self.get_mut() {
            Transport::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            Transport::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
            Transport::Other($io) => {
                let $io = Pin::new($io);
                $call
            }
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(io) => io.is_write_vectored(),
            Transport::Tls(io) => io.is_write_vectored(),
            Transport::Other(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }
}
