//! The client commands of the `rewind` binary: `publish`, `tail`, `namespaces`.
//!
//! HTTP goes through `reqwest` and the WebSocket through [`rewind_client::Client`], both
//! with rustls for `https://`/`wss://` and the roots of `--ca-cert`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::StreamExt;
use rewind_client::{
    http_client_builder, Backoff, Certificate, Client, ClientOptions, Data, Item, PublishError,
    Publisher, PublisherOptions, Record, Value,
};
use rewind_protocol::codec::ReadPage;
use rewind_protocol::{Position, ProtocolError};

/// Where the broker is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The broker's URL: http://, https://, ws:// or wss:// and host:port
    #[arg(long, env = "REWIND_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// A PEM file of root certificates to trust for https:// and wss://, besides the
    /// built-in Mozilla roots (e.g. the certificate of a TLS proxy in front of the broker)
    #[arg(long, env = "REWIND_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// A token (JWT) for a broker that checks them, sent as `Authorization: Bearer`.
    /// Prefer the variable: a flag shows in `ps`
    #[arg(long, env = "REWIND_TOKEN", value_name = "JWT", hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    /// The roots of `--ca-cert`.
    fn roots(&self) -> anyhow::Result<Vec<Certificate>> {
        match &self.ca_cert {
            Some(path) => Ok(Certificate::from_pem_file(path)?),
            None => Ok(Vec::new()),
        }
    }

    /// The URL as `http://` or `https://`, without a trailing slash.
    fn http_base(&self) -> anyhow::Result<String> {
        let url = self.url.trim_end_matches('/');
        for (from, to) in [
            ("http://", "http://"),
            ("https://", "https://"),
            ("ws://", "http://"),
            ("wss://", "https://"),
        ] {
            if let Some(rest) = url.strip_prefix(from) {
                if rest.is_empty() || rest.contains('/') {
                    break;
                }
                return Ok(format!("{to}{rest}"));
            }
        }
        bail!(
            "bad --url {:?}: expected http://, https://, ws:// or wss:// and host:port",
            self.url
        )
    }

    /// An HTTP client trusting the built-in roots and `--ca-cert`.
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("--token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(http_client_builder(&self.roots()?)?
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()?)
    }
}

/// A refusal from the broker: its HTTP status, code and message.
#[derive(Debug)]
struct Refused {
    status: reqwest::StatusCode,
    code: String,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for Refused {}

/// `GET`s an answer's body; an error status becomes a [`Refused`] with the broker's code
/// and message.
async fn get_body(http: &reqwest::Client, url: &str) -> anyhow::Result<bytes::Bytes> {
    // `rewind: {e:#}` prints reqwest's causes, which say what actually failed.
    let res = http.get(url).send().await?;
    let status = res.status();
    let body = res.bytes().await?;
    if !status.is_success() {
        let json: Value = serde_json::from_slice(&body).context("the answer is not JSON")?;
        return Err(Refused {
            status,
            code: json["error"]["code"].as_str().unwrap_or("").to_owned(),
            message: json["error"]["message"].as_str().unwrap_or("").to_owned(),
        }
        .into());
    }
    Ok(body)
}

/// `GET`s a JSON answer (for the broker's own small documents; event data is never read
/// into a `Value`, which would reorder its keys).
async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let body = get_body(http, url).await?;
    serde_json::from_slice(&body).context("the answer is not JSON")
}

/// `rewind publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The namespace
    pub ns: String,
    /// The event's name
    pub event: String,
    /// The payload as JSON (without it, --file and --lines, JSON is read from stdin)
    #[arg(long, conflicts_with_all = ["file", "lines"], allow_hyphen_values = true)]
    pub data: Option<String>,
    /// A file whose bytes are the payload
    #[arg(long, conflicts_with = "lines")]
    pub file: Option<PathBuf>,
    /// Each line of stdin is one event, its data the line as a JSON string; follows the
    /// input until it ends (`tail -f app.log | rewind publish logs.app line --lines`)
    #[arg(long)]
    pub lines: bool,
    /// Most events per request with --lines (each request is one batch), 1 to 10000
    #[arg(long, default_value_t = 1000, value_name = "N", requires = "lines")]
    pub batch: usize,
    /// The event's key (with --lines, every event's)
    #[arg(long)]
    pub key: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// `rewind tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The namespace
    pub ns: String,
    /// Where to start: an offset, earliest or latest
    #[arg(long, default_value = "latest")]
    pub from: Position,
    /// Print what the namespace holds now (from --from) and exit, instead of following it
    #[arg(long)]
    pub no_follow: bool,
    /// Exit after printing this many events (at least 1)
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// `rewind namespaces`.
#[derive(Debug, Clone, Args)]
pub struct NamespacesArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Publishes one event and prints its offset, or with `--lines` one event per line of
/// stdin and a count at the end.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let mut options = PublisherOptions {
        root_certificates: args.target.roots()?,
        token: args.target.token.clone(),
        ..PublisherOptions::default()
    };
    if args.lines {
        options.attempts = lines_attempts(&options);
    }
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!(
            "--batch must be 1 to {MAX_BATCH} (the broker's default max_batch_events), not {}",
            args.batch
        );
    }
    let publisher = Publisher::new(&args.target.http_base()?, options)?;
    if args.lines {
        return publish_lines(&args, &publisher).await;
    }
    let with_key = |r: Record| match &args.key {
        Some(k) => r.key(k.clone()),
        None => r,
    };
    let offset = match (&args.data, &args.file) {
        (_, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            publisher
                .publish_record(&args.ns, with_key(Record::new(&args.event, bytes)))
                .await?
        }
        (data, None) => {
            let text = match data {
                Some(d) => d.clone(),
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading stdin")?;
                    s
                }
            };
            let data = json_data(&text)?;
            publisher
                .publish_record(&args.ns, with_key(Record::new(&args.event, data)))
                .await?
        }
    };
    writeln!(std::io::stdout(), "{offset}")?;
    Ok(())
}

/// The payload of `--data` or stdin: checked by the broker's value rules and sent exactly
/// as written. Text the broker would refuse is refused here with the broker's answer.
fn json_data(text: &str) -> anyhow::Result<Data> {
    Data::json_text(text).map_err(|e| match e.0 {
        ProtocolError::Malformed(_) => {
            anyhow!("the payload is not JSON ({e}); use --file for bytes")
        }
        _ => PublishError::Rejected {
            status: 400,
            code: e.code().to_string(),
            message: e.to_string(),
        }
        .into(),
    })
}

/// Largest `--batch`: the broker's default `max_batch_events` (docs/operations.md). A
/// broker configured lower refuses bigger batches when they are sent.
const MAX_BATCH: usize = 10_000;

/// Most bytes of line text per `--lines` request: far below the broker's default
/// `max_body_bytes` (16 MiB), so a batch of long lines is not refused as a whole.
const LINES_BATCH_BYTES: usize = 1 << 20;

/// How long `publish --lines` keeps retrying a request while the broker is unreachable
/// or unavailable (a restart), before it gives up.
const LINES_RESTART_PATIENCE: Duration = Duration::from_secs(120);

/// Most attempts of one `publish --lines` request, whatever the backoff.
const LINES_ATTEMPTS_MAX: u32 = 1000;

/// Attempts per `publish --lines` request: the fewest whose waits add up to
/// [`LINES_RESTART_PATIENCE`], so a long-running pipe waits out a broker restart (with the
/// default waits, doubling from 100 ms to 5 s, 30 attempts).
fn lines_attempts(options: &PublisherOptions) -> u32 {
    let backoff = Backoff::new(options.backoff_min, options.backoff_max);
    (1..LINES_ATTEMPTS_MAX)
        .find(|&waits| backoff.total(waits) >= LINES_RESTART_PATIENCE)
        .map_or(LINES_ATTEMPTS_MAX, |waits| waits + 1)
}

/// How often the `--lines` progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// `publish --lines`: a thread reads stdin line by line (blocking until the next line,
/// so a growing input is followed) into a bounded channel; each request takes what has
/// arrived, up to `--batch` lines or [`LINES_BATCH_BYTES`], as one batch. A full channel
/// stops the reading while the broker catches up.
async fn publish_lines(args: &PublishArgs, publisher: &Publisher) -> anyhow::Result<()> {
    let max = args.batch;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(max * 2);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let line = match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                        if buf.last() == Some(&b'\r') {
                            buf.pop();
                        }
                    }
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    let progress = std::io::stderr().is_terminal();
    let mut line_shown = ProgressLine(false);
    // When the progress line was last drawn, and the count it shows.
    let mut drawn: Option<Instant> = None;
    let mut shown = 0u64;
    let mut draw = |total: u64| {
        eprint!("\rrewind: {total} events published to {}", args.ns);
        line_shown.0 = true;
    };
    let (mut total, mut first, mut last) = (0u64, None, None);
    loop {
        // While the line shows less than was published, wait for input only so long
        // before bringing it up to date.
        let line = if progress && shown != total {
            match tokio::time::timeout(PROGRESS_EVERY, rx.recv()).await {
                Ok(line) => line,
                Err(_) => {
                    draw(total);
                    (drawn, shown) = (Some(Instant::now()), total);
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(line) = line else {
            break;
        };
        let mut batch = vec![line.context("reading stdin")?];
        let mut bytes = batch[0].len();
        while batch.len() < max && bytes < LINES_BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    let line = line.context("reading stdin")?;
                    bytes += line.len();
                    batch.push(line);
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let records = batch.into_iter().map(|line| {
            let r = Record::new(&args.event, Value::String(line));
            match &args.key {
                Some(k) => r.key(k.clone()),
                None => r,
            }
        });
        let published = publisher
            .publish_batch(&args.ns, records)
            .await
            .with_context(|| {
                format!(
                    "publishing lines {} to {}; {total} events were published before",
                    total + 1,
                    total + n
                )
            })?;
        total += n;
        first.get_or_insert(published.first);
        last = Some(published.last);
        if progress && !matches!(drawn, Some(at) if at.elapsed() < PROGRESS_EVERY) {
            draw(total);
            (drawn, shown) = (Some(Instant::now()), total);
        }
    }
    drop(line_shown);
    let mut stdout = std::io::stdout();
    match (first, last) {
        (Some(first), Some(last)) => writeln!(
            stdout,
            "published {total} events to {}, offsets {first} to {last}",
            args.ns
        )?,
        _ => writeln!(stdout, "published 0 events to {}", args.ns)?,
    }
    Ok(())
}

/// The progress line of `publish --lines`, cleared when dropped (at the end, or before an
/// error is printed) if it was drawn.
struct ProgressLine(bool);

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if self.0 {
            eprint!("\r\x1b[K");
        }
    }
}

/// Prints one event as a JSON line, its data as the broker sent it. A line break in the
/// data can only be whitespace between tokens (JSON strings escape theirs), and becomes
/// a space so the event stays on one line.
fn print_event(ev: &rewind_protocol::Event) -> anyhow::Result<()> {
    let mut line = Vec::with_capacity(128);
    rewind_protocol::codec::write_event_json(&mut line, ev);
    for b in &mut line {
        if matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

/// Prints every event of a namespace as one JSON line, following it forever (or until
/// `--limit` events); with `--no-follow`, what it holds now.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1 (without it, tail prints every event)");
    }
    if args.no_follow {
        return tail_once(&args).await;
    }
    let options = ClientOptions {
        root_certificates: args.target.roots()?,
        token: args.target.token.clone(),
        ..ClientOptions::default()
    };
    let client = Client::connect(&args.target.url, options).await?;
    let mut sub = client.subscribe(&args.ns, args.from).await?;
    let mut printed = 0u64;
    while let Some(item) = sub.next().await {
        match item {
            Item::Event(ev) => {
                print_event(&ev)?;
                printed += 1;
                if args.limit.is_some_and(|limit| printed >= limit) {
                    return Ok(());
                }
            }
            // A new epoch: the offsets printed so far belonged to a log that is gone.
            Item::Truncated { from, reason, .. } if reason == "epoch" => {
                say(format_args!(
                    "rewind tail: the log of {} was re-created (new epoch); following the new one from its offset {from}",
                    args.ns
                ));
            }
            Item::Truncated {
                requested,
                from,
                reason,
            } => {
                say(format_args!(
                    "rewind tail: offsets {requested}..{from} are gone ({reason}); continuing at {from}"
                ));
            }
            Item::Gap { from, to, reason } => {
                say(format_args!(
                    "rewind tail: offsets {from}..{to} were not delivered: {reason}"
                ));
            }
            Item::Epoch(_) => {}
            Item::Ended { reason } if reason == "deleted" => {
                bail!("namespace {} was deleted", args.ns)
            }
            Item::Ended { reason } => bail!("the broker ended the subscription: {reason}"),
        }
    }
    bail!("the connection to the broker ended")
}

/// `tail --no-follow`: reads pages over HTTP from `--from` up to the end the namespace had
/// when the command started (events appended meanwhile are left out), then exits.
async fn tail_once(args: &TailArgs) -> anyhow::Result<()> {
    let http = args.target.http()?;
    let base = format!("{}/v1/namespaces/{}", args.target.http_base()?, args.ns);
    let info = get_json(&http, &base)
        .await
        .with_context(|| format!("reading namespace {}", args.ns))?;
    let end = info["next"]
        .as_u64()
        .ok_or_else(|| anyhow!("the broker's answer has no next offset: {info}"))?;
    let mut from = match args.from {
        Position::Latest => return Ok(()),
        Position::Earliest => "earliest".to_owned(),
        Position::Offset(n) => n.to_string(),
    };
    let mut printed = 0u64;
    loop {
        let want = args.limit.map_or(1000, |l| (l - printed).min(1000));
        let url = format!("{base}/events?from={from}&limit={want}");
        let body = match get_body(&http, &url).await {
            Ok(body) => body,
            Err(e) if e.downcast_ref::<Refused>().is_some_and(|r| r.status == 404) => {
                bail!("namespace {} was deleted", args.ns)
            }
            Err(e) => return Err(e.context(format!("reading {} from {from}", args.ns))),
        };
        // The page is read as it came: each event's data stays the broker's text.
        let page = ReadPage::from_json(&body)?;
        if page.truncated {
            let first = page.events.first().map_or(page.next, |e| e.offset);
            say(format_args!(
                "rewind tail: offsets {from}..{first} are gone (retention); continuing at {first}"
            ));
        }
        for ev in page.events.iter().filter(|e| e.offset < end) {
            print_event(ev)?;
            printed += 1;
            if args.limit.is_some_and(|limit| printed >= limit) {
                return Ok(());
            }
        }
        if page.events.is_empty() || page.next >= end {
            return Ok(());
        }
        from = page.next.to_string();
    }
}

/// Prints a table of the namespaces.
pub async fn namespaces(args: NamespacesArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/namespaces", args.target.http_base()?);
    let json = get_json(&args.target.http()?, &url).await?;
    let rows: Vec<[String; 6]> = json["namespaces"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|n| {
                    [
                        n["name"].as_str().unwrap_or("").to_owned(),
                        n["epoch"].as_str().unwrap_or("").to_owned(),
                        n["earliest"].to_string(),
                        n["next"].to_string(),
                        n["events"].to_string(),
                        n["bytes"].to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let header = ["NAME", "EPOCH", "EARLIEST", "NEXT", "EVENTS", "BYTES"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// One line on stderr; a stderr that is gone (a closed pipe) is no reason to panic.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_retries_for_two_minutes_of_backoff() {
        let options = PublisherOptions::default();
        let attempts = lines_attempts(&options);
        assert_eq!(attempts, 30);
        let backoff = Backoff::new(options.backoff_min, options.backoff_max);
        assert!(backoff.total(attempts - 1) >= LINES_RESTART_PATIENCE);
        assert!(backoff.total(attempts - 2) < LINES_RESTART_PATIENCE);
    }
}
