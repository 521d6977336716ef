//! A TCP proxy the test owns, to drop one client's connections without touching the server or
//! anyone else: put it between a client and the server, then [`CuttingProxy::cut`] aborts every
//! connection it carries and refuses new ones until [`CuttingProxy::restore`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CuttingProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped by every cut; connection tasks end when it changes.
    cuts: watch::Sender<u64>,
    accept: JoinHandle<()>,
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
        let accept = {
            let open = Arc::clone(&open);
            let cuts = cuts.clone();
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
                    if !open.load(Ordering::SeqCst) {
                        // Refused: the client sees its connection end at once.
                        drop(client);
                        continue;
                    }
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                        let mut client = client;
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        CuttingProxy { addr, open, cuts, accept }
    }

    /// `http://IP:PORT`: where a client should connect instead of the server.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Aborts every connection carried so far and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
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
