//! A node's listeners hold slow, idle and excess clients to their limits: headers and bodies
//! sent a byte at a time are cut off, idle connections closed, connections past the limit
//! refused and requests past the in-flight limit shed with 503. Both listeners, HTTP and
//! gRPC, are driven with raw TCP so that nothing in a client library hides what the server
//! did. The timeouts are small (200 ms) so the tests stay fast; the clients trickle bytes
//! 100 ms apart, so a server without the limits lets every byte through.

use std::net::SocketAddr;
use std::time::Duration;

use cellar::config::Config;
use cellar::node::Node;
use cellar::{quickstart, repo};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short enough to keep the tests fast, long enough for a loaded machine to read a header.
const SHORT: u64 = 200;
/// Longer than any test runs: the limit a test does not look at.
const LONG: u64 = 60_000;
/// The gap between trickled bytes.
const GAP: Duration = Duration::from_millis(100);
/// How long a test waits for the server to close a connection before it calls it kept open.
const PATIENCE: Duration = Duration::from_secs(10);

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

struct Served {
    http: SocketAddr,
    grpc: SocketAddr,
    _dir: TempDir,
}

/// A node on the example repo with every listener limit long, `configure` changing them.
async fn start(configure: impl FnOnce(&mut Config)) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        repo: dir.path().join("repo"),
        ..Config::default()
    };
    config.ingest.in_server = false;
    config.jobs.in_server = false;
    config.server.header_timeout_ms = LONG;
    config.server.body_timeout_ms = LONG;
    config.server.idle_timeout_ms = LONG;
    configure(&mut config);
    quickstart::write_example_repo(&config.repo).unwrap();
    let registry = cellar_registry::Registry::open(&config.registry_url())
        .await
        .unwrap();
    registry
        .apply(&repo::load_repo(&config.repo).unwrap())
        .await
        .unwrap();
    let node = Node::open(config).await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = Served {
        http: http.local_addr().unwrap(),
        grpc: grpc.local_addr().unwrap(),
        _dir: dir,
    };
    tokio::spawn(node.serve(http, Some(grpc), std::future::pending()));
    served
}

/// What the server did while a client sent bytes one at a time.
struct Trickled {
    /// Every byte was sent before the server closed the connection.
    all_sent: bool,
    /// The server closed the connection (end of stream or reset).
    closed: bool,
    /// What the server sent.
    received: Vec<u8>,
}

impl Trickled {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Sends `bytes` one at a time, `GAP` apart, reading whatever the server sends meanwhile.
/// Stops when the server closes the connection; after the last byte, waits for an answer.
async fn trickle(stream: &mut TcpStream, bytes: &[u8]) -> Trickled {
    let mut out = Trickled {
        all_sent: false,
        closed: false,
        received: Vec::new(),
    };
    let mut buf = [0u8; 4096];
    for (i, b) in bytes.iter().enumerate() {
        if stream.write_all(&[*b]).await.is_err() {
            out.closed = true;
            return out;
        }
        let wait = if i + 1 == bytes.len() { PATIENCE } else { GAP };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    out.closed = true;
                    out.all_sent = i + 1 == bytes.len();
                    return out;
                }
                Ok(Ok(n)) => {
                    out.received.extend_from_slice(&buf[..n]);
                    // An HTTP/1 answer ends the exchange; HTTP/2 frames may keep coming.
                    if out.received.starts_with(b"HTTP/1.1 ") {
                        out.all_sent = i + 1 == bytes.len();
                        return out;
                    }
                }
                Err(_) => break,
            }
        }
    }
    out.all_sent = true;
    out
}

/// Reads until the server closes the connection, or `PATIENCE` passes: whether it closed.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends one HTTP/1.1 request and reads its answer, headers and body.
async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream).await
}

/// Reads one HTTP/1.1 answer (its `Content-Length` body included); empty if the server
/// closed the connection first.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + length {
                return text;
            }
        }
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer in {PATIENCE:?}; got so far: {text:?}"),
        }
    }
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: cellar\r\n\r\n";

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_off_after_the_header_timeout() {
    let s = start(|c| c.server.header_timeout_ms = SHORT).await;
    let mut stream = TcpStream::connect(s.http).await.unwrap();
    let got = trickle(&mut stream, HEALTH.as_bytes()).await;
    assert!(
        !got.all_sent && (got.closed || got.text().starts_with("HTTP/1.1 408")),
        "headers trickled over {} ms were let through: all sent {}, closed {}, answer {:?}",
        HEALTH.len() as u128 * GAP.as_millis(),
        got.all_sent,
        got.closed,
        got.text()
    );
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_answered_408_after_the_body_timeout() {
    let s = start(|c| c.server.body_timeout_ms = SHORT).await;
    let body = r#"{"group": "user_profile", "records": []}"#;
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: cellar\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(s.http).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let got = trickle(&mut stream, body.as_bytes()).await;
    assert!(
        !got.all_sent && got.text().starts_with("HTTP/1.1 408"),
        "a body trickled over {} ms was let through: {:?}",
        body.len() as u128 * GAP.as_millis(),
        got.text()
    );
    assert!(
        got.text().contains("server.body_timeout_ms"),
        "{}",
        got.text()
    );
    // The rest of the body would be read as the next request: the connection is closed.
    assert!(closed_by_server(&mut stream).await);
}

#[tokio::test]
async fn grpc_connections_that_trickle_the_preface_are_cut_off() {
    let s = start(|c| c.server.header_timeout_ms = SHORT).await;
    let mut stream = TcpStream::connect(s.grpc).await.unwrap();
    let got = trickle(&mut stream, H2_PREFACE).await;
    assert!(
        got.closed && !got.all_sent,
        "an HTTP/2 preface trickled over {} ms was let through: all sent {}, closed {}",
        H2_PREFACE.len() as u128 * GAP.as_millis(),
        got.all_sent,
        got.closed
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let s = start(|c| c.server.idle_timeout_ms = SHORT).await;
    // HTTP/1.1: a keep-alive connection after its request.
    let mut http = TcpStream::connect(s.http).await.unwrap();
    let answer = exchange(&mut http, HEALTH).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed_by_server(&mut http).await,
        "an idle HTTP connection was kept open"
    );
    // gRPC: an HTTP/2 connection with nothing to do.
    let mut grpc = TcpStream::connect(s.grpc).await.unwrap();
    grpc.write_all(H2_PREFACE).await.unwrap();
    assert!(
        closed_by_server(&mut grpc).await,
        "an idle gRPC connection was kept open"
    );
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() {
    let s = start(|c| c.server.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        let answer = exchange(&mut stream, HEALTH).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let mut third = TcpStream::connect(s.http).await.unwrap();
    // The server may close it before the request is written: either way, no answer.
    let _ = third.write_all(HEALTH.as_bytes()).await;
    let answer = read_answer(&mut third).await;
    assert_eq!(answer, "", "a connection past the limit was served");

    // A held connection closed makes room for another.
    held.pop();
    let mut served = String::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        let _ = stream.write_all(HEALTH.as_bytes()).await;
        served = read_answer(&mut stream).await;
        if !served.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served:?}");

    // gRPC connections count against their own listener's limit.
    let mut grpc_held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(s.grpc).await.unwrap();
        stream.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        // The server's SETTINGS: the connection was accepted and is being served.
        assert!(stream.read(&mut buf).await.unwrap() > 0);
        grpc_held.push(stream);
    }
    let mut third = TcpStream::connect(s.grpc).await.unwrap();
    let _ = third.write_all(H2_PREFACE).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, third.read(&mut buf))
        .await
        .expect("a connection past the limit is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Both refusals are counted, by listener.
    let metrics = metrics(&s).await;
    for listener in ["http", "grpc"] {
        let count = refusals(&metrics, listener, "connection_limit");
        assert!(count >= 1, "{listener}: {count}\n{metrics}");
    }
}

async fn metrics(s: &Served) -> String {
    let mut stream = TcpStream::connect(s.http).await.unwrap();
    exchange(
        &mut stream,
        "GET /metrics HTTP/1.1\r\nHost: cellar\r\nConnection: close\r\n\r\n",
    )
    .await
}

/// `cellar_listener_refusals_total` of one listener and reason in a /metrics answer.
fn refusals(metrics: &str, listener: &str, reason: &str) -> u64 {
    let series =
        format!("cellar_listener_refusals_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_with_503_and_retry_after() {
    let s = start(|c| c.server.max_in_flight_requests = 1).await;
    // One request in flight: its headers sent, its body still coming.
    let body = r#"{"group": "user_profile", "records": []}"#;
    let mut slow = TcpStream::connect(s.http).await.unwrap();
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: cellar\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    );
    slow.write_all(head.as_bytes()).await.unwrap();

    // Once the server has taken it up, the next request is shed.
    let mut shed = String::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        shed = exchange(&mut stream, HEALTH).await;
        if !shed.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shed.starts_with("HTTP/1.1 503"), "{shed}");
    assert!(
        shed.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{shed}"
    );
    assert!(shed.contains("server.max_in_flight_requests"), "{shed}");

    // The slow request finishes and is answered; then requests are served again.
    slow.write_all(&body.as_bytes()[5..]).await.unwrap();
    let answer = read_answer(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Its slot is free once its answer is sent, a moment after the client has it.
    let mut answer = String::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(s.http).await.unwrap();
        answer = exchange(&mut stream, HEALTH).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = metrics(&s).await;
    assert!(refusals(&metrics, "http", "shed") >= 1, "{metrics}");
}

#[tokio::test]
async fn grpc_requests_pass_the_listener_limits() {
    use cellar_serving::grpc::pb;
    let s = start(|c| c.server.max_connections = 4).await;
    let mut client =
        pb::feature_serving_client::FeatureServingClient::connect(format!("http://{}", s.grpc))
            .await
            .unwrap();
    let user = pb::Value {
        kind: Some(pb::value::Kind::StringValue("u1".to_owned())),
    };
    let resp = client
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: vec![user],
            }],
            groups: vec![pb::GroupRequest {
                name: "user_profile".to_owned(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 1);
    assert_eq!(resp.results[0].rows[0].status(), pb::RowStatus::NotFound);

    // The client's deadline bounds the server's work: one already past is not started, and
    // the refusal is counted. tonic's client enforces the same deadline on its side, so a try
    // may end there first (CANCELLED); the server's answer must come in some of them.
    let mut answered_by_server = 0;
    for _ in 0..50 {
        let mut late = tonic::Request::new(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: vec![pb::Value {
                    kind: Some(pb::value::Kind::StringValue("u1".to_owned())),
                }],
            }],
            groups: vec![pb::GroupRequest {
                name: "user_profile".to_owned(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: Vec::new(),
        });
        late.set_timeout(Duration::from_nanos(1));
        let status = client.get_features(late).await.unwrap_err();
        match status.code() {
            tonic::Code::DeadlineExceeded => answered_by_server += 1,
            tonic::Code::Cancelled => {}
            other => panic!("{other:?}: {status:?}"),
        }
        if answered_by_server >= 3 {
            break;
        }
    }
    assert!(
        answered_by_server >= 1,
        "the server never answered DEADLINE_EXCEEDED"
    );
    let metrics = metrics(&s).await;
    assert!(
        refusals(&metrics, "grpc", "deadline_exceeded") >= 1,
        "{metrics}"
    );
}
