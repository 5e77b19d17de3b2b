//! A real `redis-server` for the cluster tests, and a load balancer without sticky
//! sessions in front of broker nodes.
//!
//! [`RedisServer::start`] runs `redis-server` on a free port of 127.0.0.1 (retrying when
//! the port is taken between the probe and the bind); a missing `redis-server` fails the
//! test with a message saying to install it (`.ci/run` does). Stopping and starting again
//! keeps the port, so brokers started with its URL find it again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How a `redis-server` keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk unless the test asks for a snapshot ([`RedisServer::save`]): a
    /// restart starts empty, or from that snapshot.
    None,
    /// An append-only file synced on every write (`appendfsync always`).
    AofAlways,
}

/// A running (or stopped) `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    persistence: Persistence,
    /// More `redis-server` arguments (`--replicaof ...`).
    extra: Vec<String>,
    dir: TempDir,
}

/// A free port never handed to another server of this process: a stopped server keeps
/// its port for its restart, and another test's server taking it meanwhile would put the
/// first test's brokers on the second test's Redis.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start(persistence: Persistence) -> RedisServer {
        RedisServer::start_with(persistence, Vec::new())
    }

    /// Starts a read-only replica of `primary` (`--replicaof`) on a free port: it answers
    /// reads and refuses writes (`READONLY`), as an old primary does after a failover.
    pub fn start_replica(primary: &RedisServer) -> RedisServer {
        RedisServer::start_with(
            Persistence::None,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        )
    }

    fn start_with(persistence: Persistence, extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            persistence,
            extra,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.try_start() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn try_start(&mut self) -> bool {
        let port = self.port.to_string();
        let dir: PathBuf = self.dir.path().to_owned();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port,
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--save".into(),
            String::new(),
        ];
        args.extend(self.extra.iter().cloned());
        match self.persistence {
            Persistence::None => args.extend(["--appendonly".into(), "no".into()]),
            Persistence::AofAlways => args.extend([
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
            ]),
        }
        let mut child = match Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start redis-server ({e}): install it (apt-get install redis-server); \
                 the cluster tests need a real one"
            ),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready = false;
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => {
                    ready = true;
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::spawn(move || lines.for_each(drop));
        self.child = Some(child);
        true
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection with one command sent on it (a RESP array of bulk strings), its
    /// reads waiting 20 s at most, for the caller to read the reply from.
    fn send(&self, args: &[&str]) -> std::net::TcpStream {
        use std::io::Write;
        let mut con = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        con.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        con.write_all(req.as_bytes()).expect("send");
        con
    }

    /// Sends one command (as a RESP array of bulk strings) and answers the first line of
    /// the reply (`+OK`, `:1`, `-ERR ...`, `$5` ...).
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::Read;
        let mut con = self.send(args);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match con.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&line).trim_end().to_owned()
    }

    /// Sends one command whose reply is a bulk string (`CLIENT LIST`, `INFO`) and answers
    /// that string.
    pub fn bulk(&self, args: &[&str]) -> String {
        use std::io::{BufRead, BufReader, Read};
        let mut reader = BufReader::new(self.send(args));
        let mut head = String::new();
        reader.read_line(&mut head).expect("a reply");
        let len: usize = head
            .trim_end()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a bulk string: {head:?}"));
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).expect("the bulk string");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Writes a snapshot (`SAVE`): every later [`RedisServer::restart`] starts from it,
    /// whatever was written after (nothing else saves, `--save ""`), as a Redis restored
    /// from an RDB backup does.
    pub fn save(&self) {
        assert_eq!(self.command(&["SAVE"]), "+OK", "SAVE");
    }

    /// Kills the server (SIGKILL) and waits for it: whatever it did not persist is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (`SIGSTOP`): the kernel still accepts TCP connections on its
    /// port and nothing answers them, as a hung Redis. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (`SIGCONT`): it runs what it received meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("a running redis-server");
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {}", child.id());
    }

    /// Starts it again on the same port (with what its persistence kept), retrying for a
    /// while if the port is not free yet.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.try_start() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP load balancer without sticky sessions: each new connection goes to the next
/// backend in turn that accepts it, so a client that reconnects lands on another node.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free port of 127.0.0.1 and forwards to `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the balancer");
        let addr = listener.local_addr().expect("balancer address");
        let backends = Arc::new(Mutex::new(backends));
        let turn = Arc::new(AtomicUsize::new(0));
        let list = Arc::clone(&backends);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let list = Arc::clone(&list);
                let turn = Arc::clone(&turn);
                tokio::spawn(async move {
                    let candidates = list.lock().expect("backends").clone();
                    for _ in 0..candidates.len() {
                        let i = turn.fetch_add(1, Ordering::Relaxed) % candidates.len();
                        if let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(candidates[i]).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer {
            addr,
            backends,
            task,
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Takes a backend out of the rotation.
    pub fn remove(&self, backend: SocketAddr) {
        self.backends
            .lock()
            .expect("backends")
            .retain(|b| *b != backend);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy between broker nodes and a `redis-server` that can hold back what Redis
/// sends on Pub/Sub connections (those whose client sent `SUBSCRIBE`), and only on them:
/// a node behind it while [`PubSubStall::stall`] is in force hears of no announcement,
/// while its commands (reads, lookups, appends) go through as usual. This is a node whose
/// listener lags, made on demand, with the real binary.
pub struct PubSubStall {
    /// Where nodes connect.
    pub addr: SocketAddr,
    stalled: tokio::sync::watch::Sender<bool>,
    subscribed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PubSubStall {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `redis`.
    pub async fn start(redis: SocketAddr) -> PubSubStall {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (stalled, watch) = tokio::sync::watch::channel(false);
        let subscribed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&subscribed);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(redis).await else {
                    continue;
                };
                tokio::spawn(forward(
                    inbound,
                    outbound,
                    watch.clone(),
                    Arc::clone(&counter),
                ));
            }
        });
        PubSubStall {
            addr,
            stalled,
            subscribed,
            task,
        }
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// How many connections through the proxy sent `SUBSCRIBE` so far.
    pub fn subscribed(&self) -> usize {
        self.subscribed.load(Ordering::Acquire)
    }

    /// From now on, nothing Redis sends on a Pub/Sub connection reaches its node: every
    /// byte read from Redis after this call is held until [`PubSubStall::resume`].
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets what was held, and everything after it, through.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for PubSubStall {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; once the client sent `SUBSCRIBE`, Redis's bytes wait while stalled.
async fn forward(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    subscribed: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = inbound.into_split();
    let (mut redis_rx, mut redis_tx) = outbound.into_split();
    let pubsub = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let marked = Arc::clone(&pubsub);
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if !marked.load(Ordering::Acquire)
                && chunk
                    .windows(9)
                    .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                marked.store(true, Ordering::Release);
                subscribed.fetch_add(1, Ordering::AcqRel);
            }
            if redis_tx.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = redis_tx.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match redis_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Checked after the read: whatever arrives once stalled is held.
            if pubsub.load(Ordering::Acquire) && stalled.wait_for(|s| !*s).await.is_err() {
                break;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(up, down);
}
