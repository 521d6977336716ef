//! A TCP proxy the test owns, to drop one client's connections without touching the server or
//! anyone else: put it between a client and the server, then [`CuttingProxy::cut`] aborts every
//! connection it carries and refuses new ones until [`CuttingProxy::restore`].
//!
//! [`CuttingProxy::hold`] makes a cut land at a chosen moment: from then on the server's bytes
//! are read (so the server's writes succeed) but kept instead of forwarded, and
//! [`CuttingProxy::wait_held`] waits until a given text has been written into the held
//! connection. A cut then resets both sides: what was held dies with the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CuttingProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped by every cut; connection tasks end when it changes.
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
    held: Arc<Held>,
}

/// Server-to-client bytes kept instead of forwarded while holding.
#[derive(Default)]
struct Held {
    holding: AtomicBool,
    bytes: Mutex<Vec<u8>>,
    /// Cuts made so far. A connection born before the latest cut forwards nothing more: the
    /// cut ends holding at once, but the connection's task notices the cut only when it next
    /// runs, and what it reads meanwhile comes after the held bytes that the cut destroys.
    /// Forwarding it would hand the client a gap the server never made.
    cuts_made: AtomicU64,
}

impl CuttingProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CuttingProxy {
        CuttingProxy::start_on("127.0.0.1:0", upstream).await
    }

    /// [`CuttingProxy::start`] listening on `bind` (e.g. a [`crate::SplitNetwork`]'s service
    /// address, for clients in its side namespaces).
    pub async fn start_on(bind: &str, upstream: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind(bind).await.expect("proxy: cannot bind");
        let addr = listener.local_addr().expect("proxy: no local address");
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0_u64);
        let held = Arc::new(Held::default());
        let accept = {
            let open = Arc::clone(&open);
            let cuts = cuts.clone();
            let held = Arc::clone(&held);
            tokio::spawn(async move {
                loop {
                    let client = match listener.accept().await {
                        Ok((client, _)) => client,
                        // Transient (ECONNABORTED, EMFILE): a proxy that stopped accepting would
                        // look like the server refusing connections.
                        Err(e) => {
                            eprintln!("proxy: accept failed ({e}); accepting again");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    // Subscribed before `open` is read: a cut racing this accept either refuses
                    // the connection or ends it, never misses it.
                    let mut cut = cuts.subscribe();
                    let born = held.cuts_made.load(Ordering::SeqCst);
                    if !open.load(Ordering::SeqCst) {
                        // Refused: the client sees its connection end at once.
                        drop(client);
                        continue;
                    }
                    let held = Arc::clone(&held);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else { return };
                        let (mut client_read, mut client_write) = client.into_split();
                        let (mut server_read, mut server_write) = server.into_split();
                        let upstream_copy = tokio::io::copy(&mut client_read, &mut server_write);
                        let downstream_copy =
                            forward_or_hold(&mut server_read, &mut client_write, &held, born);
                        let was_cut = tokio::select! {
                            _ = upstream_copy => false,
                            _ = downstream_copy => false,
                            _ = cut.changed() => true,
                        };
                        if was_cut {
                            // A cut resets both sides (RST), as a dying path or process would.
                            let halves =
                                [client_read.reunite(client_write), server_read.reunite(server_write)];
                            for stream in halves.into_iter().flatten() {
                                let _ = stream.set_zero_linger();
                            }
                        }
                    });
                }
            })
        };
        CuttingProxy { addr, open, cuts, accept, held }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/ws`: the signaling URL through the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// From now on the server's bytes are read but not forwarded (until the next cut).
    pub fn hold(&self) {
        self.held.bytes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.held.holding.store(true, Ordering::SeqCst);
    }

    /// Waits until the server has written `text` into a held connection: true, or false after
    /// `deadline`.
    pub async fn wait_held(&self, text: &str, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let found = {
                let bytes = self.held.bytes.lock().unwrap_or_else(|e| e.into_inner());
                bytes.windows(text.len()).any(|w| w == text.as_bytes())
            };
            if found {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `http://IP:PORT`: where a client should connect instead of the server.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Aborts every connection carried so far and refuses new ones. Held bytes are lost.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        // Before holding ends: a connection that then reads with holding off sees the cut.
        self.held.cuts_made.fetch_add(1, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
        self.held.holding.store(false, Ordering::SeqCst);
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // And every connection it still carries.
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// Copies the server's bytes to the client, or keeps them while holding, until a cut after
/// `born` (the cuts made when the connection was accepted).
async fn forward_or_hold(
    server: &mut tokio::net::tcp::OwnedReadHalf,
    client: &mut tokio::net::tcp::OwnedWriteHalf,
    held: &Held,
    born: u64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match server.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if held.holding.load(Ordering::SeqCst) {
            held.bytes.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buffer[..read]);
        } else if held.cuts_made.load(Ordering::SeqCst) != born
            || client.write_all(&buffer[..read]).await.is_err()
        {
            // Cut (what was held before these bytes is gone), or the client is.
            return;
        }
    }
}
