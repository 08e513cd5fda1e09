//! The HTTPS client alert webhooks are sent with, against a webhook behind TLS whose
//! certificate a private CA signed: `socat` (which `scripts/test.sh` installs) terminates TLS
//! with the certificates in `CELLAR_TEST_TLS_DIR` (`scripts/tls.sh` generates them) in front of
//! a receiver on loopback. Ignored by a plain `cargo test`; run with `--include-ignored`
//! without the variable, it fails.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellar_jobs::alert::https_client;

#[path = "../../../test-support/free_port.rs"]
mod port;
use port::free_port;

fn tls_file(name: &str) -> String {
    match std::env::var("CELLAR_TEST_TLS_DIR") {
        Ok(dir) if !dir.is_empty() => format!("{dir}/{name}"),
        _ => panic!(
            "CELLAR_TEST_TLS_DIR is not set: this test needs the test certificates; scripts/test.sh makes them"
        ),
    }
}

/// A receiver on loopback: its address and the bodies it was sent.
async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let got = Arc::clone(&got);
            move |axum::Json(body): axum::Json<serde_json::Value>| {
                let got = Arc::clone(&got);
                async move {
                    got.lock().unwrap().push(body);
                    "ok"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

/// socat terminating TLS in front of `backend`, stopped when dropped.
struct TlsProxy {
    child: Child,
    port: u16,
}

impl TlsProxy {
    fn start(backend: &str) -> TlsProxy {
        let port = free_port();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                tls_file("server.crt"),
                tls_file("server.key")
            ))
            .arg(format!("TCP:{backend}"))
            // Its log of refused handshakes is what the test provokes.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting socat (scripts/test.sh installs it): {e}"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "socat does not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsProxy { child, port }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "needs the test certificates (CELLAR_TEST_TLS_DIR) and socat; scripts/test.sh provides both"]
async fn a_webhook_behind_a_private_ca_is_reached_with_its_ca_file_only() {
    let (backend, got) = receiver().await;
    let proxy = TlsProxy::start(&backend);
    let url = format!("https://127.0.0.1:{}/hook", proxy.port);
    let timeout = Duration::from_secs(10);
    let alert = serde_json::json!({"text": "job 1 failed"});

    let client = https_client(&tls_file("ca.crt"), timeout).unwrap();
    let answer = client
        .post(&url)
        .json(&alert)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(got.lock().unwrap().clone(), vec![alert.clone()]);

    for ca_file in [String::new(), tls_file("other-ca.crt")] {
        let err = https_client(&ca_file, timeout)
            .unwrap()
            .post(&url)
            .json(&alert)
            .send()
            .await
            .expect_err("a certificate no trusted CA signed");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    }
    assert_eq!(got.lock().unwrap().len(), 1);

    let err = https_client("/nonexistent/ca.crt", timeout).unwrap_err();
    assert!(
        err.starts_with("cannot read `/nonexistent/ca.crt`"),
        "{err}"
    );
}
