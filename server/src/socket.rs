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
use tungstenite::error::ProtocolError;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error, Message, WebSocket};

use crate::outbox::Frame;

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
        let io = Blocking { transport, waker: Waker::noop().clone(), texts: Vec::new(), texts_written: 0 };
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

    /// Frames `texts` as WebSocket text messages itself, behind whatever tungstenite has queued
    /// (written first), and writes them: what `start_send` of each and `poll_flush` did, without
    /// tungstenite's per-message work (its frame type, checks and buffer) for every relayed
    /// signal. `Pending` until tungstenite's own queue is out; `texts` is drained only then.
    pub fn poll_send_texts(
        &mut self,
        cx: &mut Context<'_>,
        texts: &mut std::vec::IntoIter<Frame>,
    ) -> Poll<Result<(), Error>> {
        if texts.len() > 0 {
            if !self.ws.can_write() {
                return Poll::Ready(Err(Error::Protocol(ProtocolError::SendAfterClosing)));
            }
            // Nothing of tungstenite's may be half written when these are queued behind it.
            std::task::ready!(self.poll_flush(cx))?;
            let out = &mut self.ws.get_mut().texts;
            for text in texts {
                push_text_frame(out, text.as_bytes());
            }
        }
        self.poll_flush(cx)
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

/// A server's unmasked, final text frame: RFC 6455's header (2, 4 or 10 bytes), then `payload`.
fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    const FIN_TEXT: u8 = 0x81;
    let len = payload.len();
    out.reserve(len + 10);
    out.push(FIN_TEXT);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// `WouldBlock` (the transport returned `Pending`, and will wake the task) as `Poll::Pending`.
fn pending_on_would_block<T>(result: Result<T, Error>) -> Poll<Result<T, Error>> {
    match result {
        Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// The transport as the blocking `Read + Write` tungstenite drives: a poll with the task's
/// waker, `Pending` reported as `WouldBlock`. It also holds the text frames the writer framed
/// itself ([`Socket::queue_texts`]), and writes those out before anything tungstenite writes, so
/// that no frame is ever cut by another.
#[derive(Debug)]
struct Blocking {
    transport: Transport,
    waker: Waker,
    /// Framed text messages not yet written: `texts[texts_written..]`.
    texts: Vec<u8>,
    texts_written: usize,
}

/// One poll of `op` on `transport` with `waker`, `Pending` as `WouldBlock`.
fn poll_with<T>(
    transport: &mut Transport,
    waker: &Waker,
    op: impl FnOnce(Pin<&mut Transport>, &mut Context<'_>) -> Poll<io::Result<T>>,
) -> io::Result<T> {
    let mut cx = Context::from_waker(waker);
    match op(Pin::new(transport), &mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Blocking {
    /// Writes out the frames the writer queued; `WouldBlock` if the socket takes no more.
    fn write_texts(&mut self) -> io::Result<()> {
        while self.texts_written < self.texts.len() {
            let rest = &self.texts[self.texts_written..];
            let n =
                poll_with(&mut self.transport, &self.waker, |transport, cx| transport.poll_write(cx, rest))?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.texts_written += n;
        }
        // Emptied, capacity kept for the next batch (as tungstenite kept its write buffer's).
        self.texts.clear();
        self.texts_written = 0;
        Ok(())
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        poll_with(&mut self.transport, &self.waker, |transport, cx| transport.poll_read(cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl Write for Blocking {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_texts()?;
        poll_with(&mut self.transport, &self.waker, |transport, cx| transport.poll_write(cx, data))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_texts()?;
        poll_with(&mut self.transport, &self.waker, |transport, cx| transport.poll_flush(cx))
    }
}

#[cfg(test)]
mod tests {
    use tungstenite::protocol::frame::Frame as WireFrame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    /// The frames the writer builds itself are byte for byte tungstenite's, at every length
    /// class (7-bit, 16-bit and 64-bit lengths).
    #[test]
    fn text_frames_are_framed_as_tungstenite_frames_them() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut ours = Vec::new();
            push_text_frame(&mut ours, &payload);
            let mut theirs = Vec::new();
            WireFrame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .expect("tungstenite formats it");
            assert_eq!(ours, theirs, "length {len}");
        }
    }

    /// The writer's frames half written when the client's ping comes in: tungstenite's pong
    /// waits until they are out, and the client reads every frame whole, in order.
    #[tokio::test]
    async fn a_pong_never_cuts_into_a_half_written_batch() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpSocket;

        // Small kernel buffers (an accepted socket inherits the listener's), so that the batch
        // below cannot all be written until the client reads.
        let listener = TcpSocket::new_v4().expect("socket");
        listener.set_send_buffer_size(4096).expect("SO_SNDBUF");
        listener.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let listener = listener.listen(1).expect("listen");
        let client = TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut client = client.connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let transport = Transport::Plain(crate::readahead::ReadAhead::new(accepted));
        let mut socket = Socket::new(transport, Vec::new(), WebSocketConfig::default());

        let texts: Vec<Frame> =
            (0..400).map(|i| Frame::from(format!("{i:04}{}", "x".repeat(1020)))).collect();
        let mut batch = texts.clone().into_iter();
        let mut noop = Context::from_waker(Waker::noop());
        assert!(socket.poll_send_texts(&mut noop, &mut batch).is_pending(), "the batch fills the socket");
        assert_eq!(batch.len(), 0, "the whole batch is queued");

        // A masked ping from the client; the server reads it (and queues its pong).
        client.write_all(&[0x89, 0x80, 1, 2, 3, 4]).await.expect("ping sent");
        let ping = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| socket.poll_next(cx)),
        )
        .await
        .expect("the ping arrives");
        assert!(matches!(ping, Some(Ok(Message::Ping(_)))), "{ping:?}");

        let reader = tokio::spawn(async move {
            let mut frames = Vec::new();
            while frames.len() < texts.len() + 1 {
                let mut header = [0u8; 2];
                client.read_exact(&mut header).await.expect("header");
                let len = match header[1] {
                    126 => {
                        let mut ext = [0u8; 2];
                        client.read_exact(&mut ext).await.expect("length");
                        usize::from(u16::from_be_bytes(ext))
                    }
                    len => usize::from(len),
                };
                let mut payload = vec![0u8; len];
                client.read_exact(&mut payload).await.expect("payload");
                frames.push((header[0], payload));
            }
            (frames, texts)
        });
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| socket.poll_flush(cx)),
        )
        .await
        .expect("everything is written once the client reads")
        .expect("flushed");
        let (frames, texts) = reader.await.expect("reader");
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(frames[i], (0x81, text.as_bytes().to_vec()), "text frame {i}");
        }
        assert_eq!(frames[texts.len()], (0x8a, Vec::new()), "then the pong");
    }
}
