//! A TCP proxy in front of the broker that can refuse WebSockets, as a corporate proxy
//! that does not pass `Upgrade` does: for the JavaScript client's fallback to
//! long-polling and its return to the WebSocket (`tests/tests/js_client.rs`,
//! `tests/tests/browser_client.rs`).
//!
//! While it refuses, a connection that asks for `/v1/ws` is closed without an answer, and
//! every WebSocket it carries is cut; every other request goes through byte for byte.
//! While it cuts, handshakes go through and each WebSocket is cut shortly after.
//! It runs on a thread of its own and ends with the test process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The handle of a running proxy.
#[derive(Clone)]
pub struct WsProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    cutting: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    upgrades: Arc<AtomicUsize>,
}

impl WsProxy {
    /// Starts a proxy in front of `target` (connected anew for each connection, so it
    /// follows a broker restarted on the same port).
    pub fn start(target: SocketAddr) -> WsProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let (cut, _) = watch::channel(0u64);
        let proxy = WsProxy {
            addr,
            refusing: Arc::new(AtomicBool::new(false)),
            cutting: Arc::new(AtomicBool::new(false)),
            cut,
            upgrades: Arc::new(AtomicUsize::new(0)),
        };
        let shared = proxy.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(shared.clone().carry(tcp, target));
                }
            });
        });
        proxy
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuses WebSockets from now on, cutting those it carries (`true`), or lets them
    /// through again (`false`).
    pub fn refuse_websockets(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
        if refuse {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// Lets WebSocket handshakes through but cuts each socket [`CUT_AFTER`] later, and the
    /// ones it carries at once (`true`), as a proxy that kills upgraded connections does;
    /// or stops (`false`).
    pub fn cut_websockets(&self, cut: bool) {
        self.cutting.store(cut, Ordering::SeqCst);
        if cut {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// WebSocket handshakes passed to the broker so far.
    pub fn upgrades(&self) -> usize {
        self.upgrades.load(Ordering::SeqCst)
    }

    async fn carry(self, client: TcpStream, target: SocketAddr) {
        let Ok(broker) = TcpStream::connect(target).await else {
            return;
        };
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_broker, mut to_broker) = broker.into_split();
        let websocket = AtomicBool::new(false);
        // Client to broker, watching each request's first line: an HTTP client may send
        // the handshake on a connection it used before (keep-alive).
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !websocket.load(Ordering::SeqCst) && asks_websocket(&buf[..n]) {
                    if self.refusing.load(Ordering::SeqCst) {
                        return;
                    }
                    websocket.store(true, Ordering::SeqCst);
                    self.upgrades.fetch_add(1, Ordering::SeqCst);
                }
                if to_broker.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let down = tokio::io::copy(&mut from_broker, &mut to_client);
        let mut cut = self.cut.subscribe();
        let cut_websocket = async {
            loop {
                tokio::select! {
                    changed = cut.changed() => {
                        if changed.is_err() {
                            std::future::pending::<()>().await;
                        }
                        if websocket.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                    // While cutting, a socket lives CUT_AFTER from its handshake.
                    () = tokio::time::sleep(CUT_AFTER) => {
                        if websocket.load(Ordering::SeqCst) && self.cutting.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = up => {}
            _ = down => {}
            () = cut_websocket => {}
        }
    }
}

/// How long a WebSocket lives while the proxy cuts them ([`WsProxy::cut_websockets`]).
pub const CUT_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// True when `bytes` (what a client sent in one read) hold a request line of
/// `GET /v1/ws` (with any query) at their start or after a line break.
fn asks_websocket(bytes: &[u8]) -> bool {
    let starts = |at: &[u8]| at.starts_with(b"GET /v1/ws ") || at.starts_with(b"GET /v1/ws?");
    starts(bytes)
        || bytes
            .windows(2)
            .enumerate()
            .any(|(i, w)| w == b"\r\n" && starts(&bytes[i + 2..]))
}
