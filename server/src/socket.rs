//! One connection's WebSocket: tungstenite's state machine over the connection's [`Transport`],
//! driven from the connection task's polls.
//!
//! This is what tokio-tungstenite's `WebSocketStream` does, for one task. That type lets a
//! reader and a writer in two tasks share the socket: every read registers the caller's waker
//! in two waker proxies (atomic operations each time) and every I/O call goes through a proxy
//! waker. Here the reader and the writer run in the same task (ws.rs), so the socket keeps that
//! task's waker and replaces it only if it changes (a pointer comparison per poll). What each
//! call returns is what `WebSocketStream` returned: the same `Message`s, the same errors, `None`
//! once the connection has closed.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error, Message, WebSocket};

use crate::upgrade::Transport;

#[derive(Debug)]
pub struct Socket {
    ws: WebSocket<Blocking>,
    /// False after a write that could not be flushed: `poll_ready` flushes first.
    ready: bool,
    /// The connection has closed or failed: nothing more is read.
    ended: bool,
}

impl Socket {
    /// A server-side WebSocket on `transport`, with `read_ahead` (bytes already read from it)
    /// read first.
    pub fn new(transport: Transport, read_ahead: Vec<u8>, config: WebSocketConfig) -> Self {
        let io = Blocking { transport, waker: Waker::noop().clone() };
        let ws = WebSocket::from_partially_read(io, read_ahead, Role::Server, Some(config));
        Self { ws, ready: true, ended: false }
    }

    /// The next message; `None` once the connection has closed.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.use_waker(cx);
        match pending_on_would_block(self.ws.read()) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(message)) => Poll::Ready(Some(Ok(message))),
            Poll::Ready(Err(error)) => {
                self.ended = true;
                match error {
                    Error::ConnectionClosed | Error::AlreadyClosed => Poll::Ready(None),
                    error => Poll::Ready(Some(Err(error))),
                }
            }
        }
    }

    /// Ready for [`Self::start_send`].
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        self.use_waker(cx);
        let flushed = std::task::ready!(pending_on_would_block(self.ws.flush()));
        self.ready = true;
        Poll::Ready(flushed)
    }

    /// Queues `message` (written when the buffer is full, and by [`Self::poll_flush`]).
    pub fn start_send(&mut self, message: Message) -> Result<(), Error> {
        match self.ws.write(message) {
            Ok(()) => {
                self.ready = true;
                Ok(())
            }
            // Queued, but the socket did not take all of the buffer: flush before the next.
            Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Ok(())
            }
            Err(error) => {
                self.ready = true;
                Err(error)
            }
        }
    }

    /// Writes everything queued.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.use_waker(cx);
        let flushed = std::task::ready!(pending_on_would_block(self.ws.flush()));
        self.ready = true;
        match flushed {
            // The close handshake has just completed: not an error.
            Err(Error::ConnectionClosed) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }

    /// The socket's reads and writes wake the task that polls now.
    fn use_waker(&mut self, cx: &Context<'_>) {
        let waker = &mut self.ws.get_mut().waker;
        if !waker.will_wake(cx.waker()) {
            waker.clone_from(cx.waker());
        }
    }
}

/// `WouldBlock` (the transport returned `Pending`, and will wake the task) as `Poll::Pending`.
fn pending_on_would_block<T>(result: Result<T, Error>) -> Poll<Result<T, Error>> {
    match result {
        Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// The transport as the blocking `Read + Write` tungstenite drives: a poll with the task's
/// waker, `Pending` reported as `WouldBlock`.
#[derive(Debug)]
struct Blocking {
    transport: Transport,
    waker: Waker,
}

impl Blocking {
    fn poll<T>(
        &mut self,
        op: impl FnOnce(Pin<&mut Transport>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let mut cx = Context::from_waker(&self.waker);
        match op(Pin::new(&mut self.transport), &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        self.poll(|transport, cx| transport.poll_read(cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl Write for Blocking {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.poll(|transport, cx| transport.poll_write(cx, data))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll(|transport, cx| transport.poll_flush(cx))
    }
}
