//! A Server-Sent Events client for tests: raw HTTP/1.1 over TCP, the chunked body decoded
//! by hand, and the event stream parsed by the rules of the WHATWG HTML standard (§9.2.6:
//! lines end at CR LF, LF or CR; `field: value` with one leading space dropped; `data`
//! lines joined with LF; a blank line dispatches; `:` starts a comment). Parsing by the
//! standard's rules, not the broker's, is what lets a test show that no value injects a
//! line.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one read may wait before the test fails (a guard against hangs).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the stream carried, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched message.
    Message(Message),
    /// A comment line (without its `:`).
    Comment(String),
    /// A `retry:` field, in milliseconds.
    Retry(u64),
}

/// One message as a browser dispatches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The `id` field if this message had one (`Some("")` for an empty `id:`).
    pub id: Option<String>,
    /// The `event` field (`message` when absent).
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
}

impl Message {
    /// `data` parsed as JSON (failing the test if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data of {self:?} is not JSON: {e}"))
    }
}

/// An open SSE request.
pub struct Sse {
    conn: TcpStream,
    /// The answer's status code.
    pub status: u16,
    /// The answer's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Undecoded bytes read from the connection.
    raw: Vec<u8>,
    /// The decoded body not yet parsed.
    body: Vec<u8>,
    /// Every decoded body byte so far.
    pub all: Vec<u8>,
    /// True once the last chunk (or the connection's end) was read.
    ended: bool,
    chunked: bool,
    pending: Pending,
    items: std::collections::VecDeque<Item>,
}

#[derive(Default)]
struct Pending {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Sse {
    /// Sends `GET path` with `headers` and reads the answer's head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let conn = TcpStream::connect(addr).await.expect("connect");
        Sse::open_on(conn, addr, path, headers).await
    }

    /// [`Sse::open`] on a socket with a 64 KiB receive buffer (set before connecting,
    /// which also turns off Linux's receive-buffer autotuning): a reader that does not read
    /// soon stops the broker's writes, instead of the kernel taking megabytes for it.
    pub async fn open_small(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
        let conn = socket.connect(addr).await.expect("connect");
        Sse::open_on(conn, addr, path, headers).await
    }

    async fn open_on(
        mut conn: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).await.expect("send");
        let mut sse = Sse {
            conn,
            status: 0,
            headers: Vec::new(),
            raw: Vec::new(),
            body: Vec::new(),
            all: Vec::new(),
            ended: false,
            chunked: false,
            pending: Pending::default(),
            items: Default::default(),
        };
        let end = loop {
            if let Some(end) = sse.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(
                sse.fill().await,
                "the connection ended before the answer's head"
            );
        };
        let head = String::from_utf8(sse.raw[..end].to_vec()).expect("head is UTF-8");
        sse.raw.drain(..end + 4);
        let mut lines = head.split("\r\n");
        sse.status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        for line in lines {
            let (k, v) = line.split_once(':').expect("a header line");
            sse.headers
                .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        sse.chunked = sse.header("transfer-encoding") == Some("chunked");
        sse
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more from the connection; false at its end.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16 << 10];
        match tokio::time::timeout(PATIENCE, self.conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(_) => panic!(
                "nothing from the broker within {PATIENCE:?}; so far: {}",
                String::from_utf8_lossy(&self.all)
            ),
        }
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw.clone());
            self.all.extend_from_slice(&self.raw);
            self.raw.clear();
            return;
        }
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .expect("a chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            let data = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.body.extend_from_slice(&data);
            self.all.extend_from_slice(&data);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// Parses the whole lines in `body` into items.
    fn parse(&mut self) {
        loop {
            let Some(i) = self.body.iter().position(|&b| b == b'\r' || b == b'\n') else {
                return;
            };
            // A CR at the very end may be the first half of CR LF: wait for more.
            if self.body[i] == b'\r' && i + 1 == self.body.len() && !self.ended {
                return;
            }
            let skip = if self.body[i..].starts_with(b"\r\n") {
                2
            } else {
                1
            };
            let line = String::from_utf8_lossy(&self.body[..i]).into_owned();
            self.body.drain(..i + skip);
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            let p = std::mem::take(&mut self.pending);
            if let Some(data) = p.data {
                self.items.push_back(Item::Message(Message {
                    id: p.id,
                    event: p.event.unwrap_or_else(|| "message".into()),
                    data,
                }));
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.items.push_back(Item::Comment(comment.to_owned()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.pending.event = Some(value.to_owned()),
            "data" => match &mut self.pending.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.pending.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.items.push_back(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }

    /// The next item, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            // What is already read first (the answer's head may have brought some).
            self.dechunk();
            self.parse();
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            if !self.fill().await {
                self.ended = true;
            }
        }
    }

    /// The next message (skipping comments and `retry`); fails the test at the stream's end.
    pub async fn message(&mut self) -> Message {
        loop {
            match self.next().await {
                Some(Item::Message(m)) => return m,
                Some(_) => {}
                None => panic!(
                    "the stream ended; it carried: {}",
                    String::from_utf8_lossy(&self.all)
                ),
            }
        }
    }

    /// The next message, which must be named `event`.
    pub async fn expect(&mut self, event: &str) -> Message {
        let m = self.message().await;
        assert_eq!(m.event, event, "{m:?}");
        m
    }

    /// The rest of a non-streamed body (an error answer), read to `Content-Length`.
    pub async fn body(&mut self) -> Vec<u8> {
        let len: usize = self
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("a content-length");
        while self.raw.len() < len {
            assert!(self.fill().await, "the body ended early");
        }
        self.raw[..len].to_vec()
    }
}
