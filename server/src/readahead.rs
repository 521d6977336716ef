//! Fewer, larger socket reads for busy connections without a large buffer per idle one.
//!
//! tungstenite reads at most its `read_buffer_size` per `read(2)`, and that buffer is per
//! connection and zero-filled (so resident) on the first read: 4 KiB keeps 10,000 idle
//! connections small, but a busy connection with 40 KiB waiting then needs ten `recvfrom`s
//! for it. [`ReadAhead`] reads into one scratch buffer per worker thread instead and keeps
//! only the surplus, for as long as it takes the caller to ask for it: an idle connection
//! holds nothing, a busy one empties the kernel's queue in one call.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the kernel per read when the caller's buffer is smaller.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// Filled and emptied within one `poll_read`, so a worker thread's connections share it.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A stream whose reads take up to [`SCRATCH_BYTES`] from the socket at once.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read from the socket, not yet handed to the caller; empty (and unallocated) when idle.
    surplus: Vec<u8>,
    /// How much of `surplus` was already handed out.
    taken: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, surplus: Vec::new(), taken: 0 }
    }

    /// Moves what fits of the surplus into `buf`, releasing the surplus once it is all taken.
    fn hand_out_surplus(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = &self.surplus[self.taken..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        if self.taken == self.surplus.len() {
            self.surplus = Vec::new();
            self.taken = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.surplus.len() {
            this.hand_out_surplus(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut scratch = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut scratch))?;
            let read = scratch.filled();
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            this.surplus.extend_from_slice(&read[n..]);
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_the_surplus_is_released() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.expect("write");
        drop(writer);
        let mut reader = ReadAhead::new(reader);
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut surplus_seen = false;
        loop {
            let n = reader.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            surplus_seen |= !reader.surplus.is_empty();
            received.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(received, sent);
        assert!(surplus_seen, "a 4 KiB caller should have been served from a larger read");
        assert_eq!(reader.surplus.capacity(), 0, "nothing kept once everything was handed out");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = ReadAhead::new(a);
        a.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
    }
}
