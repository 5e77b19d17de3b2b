//! The Rust client's HTTP publisher against the real binary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rewind_client::{PublishError, Publisher, PublisherOptions};
use rewind_protocol::codec::ReadPage;
use rewind_protocol::Payload;
use rewind_tests::Broker;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn quick() -> PublisherOptions {
    PublisherOptions {
        attempts: 4,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn publishes_json_bytes_and_batches_and_reads_them_back() {
    let b = Broker::start(&[]);
    let p = Publisher::new(&b.url(), quick()).unwrap();
    assert_eq!(
        p.publish("c.pub", "hello", &serde_json::json!({"n": 1}))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        p.publish_bytes("c.pub", "blob one", vec![0, 255])
            .await
            .unwrap(),
        1
    );
    let batch = p
        .publish_batch(
            "c.pub",
            &[("a", serde_json::json!(1)), ("b", serde_json::json!(null))],
        )
        .await
        .unwrap();
    assert_eq!((batch.first, batch.last), (2, 3));
    let page =
        ReadPage::from_json(&b.get("/v1/namespaces/c.pub/events?from=0").await.body).unwrap();
    assert_eq!(page.events.len(), 4);
    assert_eq!(page.events[0].data, Payload::Json(r#"{"n":1}"#.into()));
    assert_eq!(page.events[1].event, "blob one");
    assert_eq!(page.events[1].data, Payload::Bytes(vec![0, 255]));
    assert_eq!(page.events[3].data, Payload::Json("null".into()));
}

#[tokio::test]
async fn refusals_are_not_retried_and_say_why() {
    let b = Broker::start(&[]);
    let p = Publisher::new(&b.url(), quick()).unwrap();
    match p.publish("bad..ns", "e", &serde_json::json!(1)).await {
        Err(PublishError::Rejected { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "bad_namespace"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_broker_fails_after_the_last_attempt() {
    let spare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", spare.local_addr().unwrap());
    drop(spare);
    let p = Publisher::new(&url, quick()).unwrap();
    match p.publish("x", "e", &serde_json::json!(1)).await {
        Err(PublishError::Unavailable { attempts, .. }) => assert_eq!(attempts, 4),
        other => panic!("{other:?}"),
    }
}

/// Forwards connections to `target`, except that on the first one the broker's answer is
/// read and thrown away, and the connection cut: the request was appended, but the client
/// never hears so.
async fn answer_losing_proxy(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut broker = TcpStream::connect(target).await.unwrap();
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::spawn(async move {
                    let (mut cr, _cw) = client.split();
                    let (mut br, mut bw) = broker.split();
                    let mut buf = vec![0u8; 64 * 1024];
                    let n = cr.read(&mut buf).await.unwrap();
                    tokio::io::AsyncWriteExt::write_all(&mut bw, &buf[..n])
                        .await
                        .unwrap();
                    // Wait for the broker's answer, then drop it and both connections.
                    let _ = br.read(&mut buf).await;
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                });
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_publish_whose_answer_is_lost_is_retried_and_appended_once() {
    let b = Broker::start(&[]);
    let proxy = answer_losing_proxy(b.addr).await;
    let p = Publisher::new(&format!("http://{proxy}"), quick()).unwrap();
    let offset = p
        .publish("once", "e", &serde_json::json!("only"))
        .await
        .unwrap();
    assert_eq!(offset, 0);
    let info = b.get("/v1/namespaces/once").await.json();
    assert_eq!(info["next"], 1, "the retry must not append again: {info}");
    // The next publish goes through the same publisher normally.
    assert_eq!(
        p.publish("once", "e", &serde_json::json!("next"))
            .await
            .unwrap(),
        1
    );
}
