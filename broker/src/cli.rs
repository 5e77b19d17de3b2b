//! The client commands of the `rewind` binary: `publish`, `tail`, `namespaces`.

use std::io::{Read, Write};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rewind_client::{Client, ClientOptions, Item, Publisher, PublisherOptions};
use rewind_protocol::Position;

/// Where the broker is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The broker's URL
    #[arg(long, env = "REWIND_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
}

/// `rewind publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The namespace
    pub ns: String,
    /// The event's name
    pub event: String,
    /// The payload as JSON (without it and without --file, JSON is read from stdin)
    #[arg(long, conflicts_with = "file")]
    pub data: Option<String>,
    /// A file whose bytes are the payload
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
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
    #[command(flatten)]
    pub target: Target,
}

/// `rewind namespaces`.
#[derive(Debug, Clone, Args)]
pub struct NamespacesArgs {
    #[command(flatten)]
    pub target: Target,
}

/// Publishes one event and prints its offset.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let publisher = Publisher::new(&args.target.url, PublisherOptions::default())?;
    let offset = match (&args.data, &args.file) {
        (_, Some(path)) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            publisher
                .publish_bytes(&args.ns, &args.event, bytes)
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
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow!("the payload is not JSON ({e}); use --file for bytes"))?;
            publisher.publish(&args.ns, &args.event, &value).await?
        }
    };
    println!("{offset}");
    Ok(())
}

/// Prints every event of a namespace as one JSON line, following it forever.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.target.url, ClientOptions::default()).await?;
    let mut sub = client.subscribe(&args.ns, args.from).await?;
    let stdout = std::io::stdout();
    while let Some(item) = sub.next().await {
        match item {
            Item::Event(ev) => {
                let mut line = Vec::with_capacity(128);
                rewind_protocol::codec::write_event_json(&mut line, &ev);
                line.push(b'\n');
                let mut out = stdout.lock();
                out.write_all(&line)?;
                out.flush()?;
            }
            Item::Truncated {
                requested,
                from,
                reason,
            } => {
                eprintln!("rewind tail: offsets {requested}..{from} are gone ({reason}); continuing at {from}");
            }
            Item::Gap { from, to, reason } => {
                eprintln!("rewind tail: offsets {from}..{to} were not delivered: {reason}");
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

/// Prints a table of the namespaces.
pub async fn namespaces(args: NamespacesArgs) -> anyhow::Result<()> {
    let uri: hyper::Uri = args.target.url.parse().context("bad --url")?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--url needs host:port"))?
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/v1/namespaces")
        .header("host", &authority)
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let json: serde_json::Value =
        serde_json::from_slice(&body).context("the answer is not JSON")?;
    if !status.is_success() {
        bail!("{status}: {}", json["error"]["message"]);
    }
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
