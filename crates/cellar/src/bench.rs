//! The serving benchmark's baseline: a bare HTTP server on the same stack (tokio, hyper,
//! axum) answering a fixed body, so Cellar's own cost shows as the difference; it also plays
//! an external source of on-demand features answering after a set delay.

use axum::body::Bytes;
use axum::http::header;
use axum::routing::{get, post};
use axum::Router;
use cellar_serving::listener::{self, ListenerLimits, Observed, Security};
use tokio::net::TcpListener;

/// A fixed JSON body of exactly `len` bytes (at least 2).
pub fn fixed_body(len: usize) -> Bytes {
    let mut body = Vec::with_capacity(len.max(2));
    body.push(b'"');
    body.resize(len.max(2) - 1, b'x');
    body.push(b'"');
    Bytes::from(body)
}

/// Serves `POST /fixed` (any body; answers the fixed body), `POST /source` (an external
/// source of on-demand features: after `source_delay`, one `{"score": 0.5}` per key row) and
/// `GET /health`, on the same listener, with the same limits, as Cellar's own servers.
pub async fn serve_baseline(
    listener: TcpListener,
    body_bytes: usize,
    source_delay: std::time::Duration,
    limits: ListenerLimits,
) -> std::io::Result<()> {
    let body = fixed_body(body_bytes);
    let app = Router::new()
        .route(
            "/fixed",
            post(move |_req: Bytes| {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route(
            "/source",
            post(move |req: axum::Json<serde_json::Value>| async move {
                // Tokio's timer rounds sleeps up to its next millisecond tick: a 2 ms sleep
                // takes 2 to 3. A thread's sleep keeps to the delay asked for.
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(source_delay)).await;
                let rows = req.0["keys"]
                    .as_object()
                    .and_then(|keys| keys.values().next())
                    .and_then(|column| column.as_array())
                    .map_or(0, Vec::len);
                axum::Json(serde_json::json!({
                    "rows": vec![serde_json::json!({"score": 0.5}); rows]
                }))
            }),
        )
        .route("/health", get(|| async { "ok" }));
    let observed = Observed::unobserved("baseline");
    listener::serve(
        listener,
        app,
        limits,
        Security::default(),
        observed,
        std::future::pending(),
    )
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixed_body_has_the_size_asked() {
        assert_eq!(super::fixed_body(300).len(), 300);
        assert_eq!(super::fixed_body(0).len(), 2);
    }
}
