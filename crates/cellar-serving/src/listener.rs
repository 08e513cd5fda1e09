//! Serving a router (the HTTP API, or the gRPC service as a router) on a TCP listener, with
//! the limits that keep slow, idle and excess clients from holding the process:
//!
//! - a connection limit: past it, a new connection is closed at once, before a byte is read;
//! - a header timeout: HTTP/1 request headers (hyper's own timer, which also bounds how long a
//!   keep-alive connection waits for its next request), and on any connection the time from
//!   accepting it to its first request (an HTTP/2 client trickling its preface);
//! - an idle timeout: a connection that moves no byte for that long is shut down gracefully
//!   (after the request in progress), and dropped if even that moves nothing;
//! - an in-flight request limit: past it, a request is answered 503 with `Retry-After` before
//!   its body is read, so overload costs no memory;
//! - a body timeout and size limit: the whole body must arrive within the timeout (else 408)
//!   and fit the size (else 413); the handler then gets it whole.
//!
//! A gRPC request's `grpc-timeout` bounds its work on the server too: past it, the handler is
//! dropped and the client told `DEADLINE_EXCEEDED`.
//!
//! With TLS, the handshake must finish within the header timeout. With authentication on, a
//! request's credentials are checked before its body is read (401 otherwise), and its
//! [`Access`] is put into the request's extensions for the handlers to check.
//!
//! A request holds its in-flight slot until its answer is sent, so the slots bound the memory
//! of bodies and answers alike. Every refusal is counted in [`ListenerMetrics`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use cellar_auth::{Access, Authenticator};

use crate::error::ErrorKind;
use crate::json::error_body;
use crate::tls::ServerTls;

/// What a shed request is told to wait before retrying, in seconds.
const RETRY_AFTER_SECS: u64 = 1;
/// How long a stopping server waits for its connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(30);
/// Pause after a failed accept that is not one connection's fault (out of file descriptors),
/// so that the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of one listener. Every one has a setting under `[server]`, which the messages
/// name.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// `server.header_timeout_ms`.
    pub header_timeout: Duration,
    /// `server.body_timeout_ms`.
    pub body_timeout: Duration,
    /// `server.idle_timeout_ms`.
    pub idle_timeout: Duration,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `server.max_in_flight_requests`.
    pub max_in_flight: usize,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2048,
            max_in_flight: 512,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why a listener turned a connection or a request away.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Refusal {
    /// A connection closed at once: `server.max_connections` were open.
    connection_limit,
    /// A request answered 503: `server.max_in_flight_requests` were in progress.
    shed,
    /// A body that did not arrive within `server.body_timeout_ms`.
    body_timeout,
    /// A body over `server.max_body_bytes`.
    body_too_large,
    /// A gRPC request still running at its `grpc-timeout`.
    deadline_exceeded,
    /// A connection whose TLS handshake failed or did not finish in time.
    tls_handshake,
    /// A request without credentials that pass.
    unauthenticated,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: &'static str,
    reason: Refusal,
}

/// Counts of what the listeners turned away, by listener and reason, so that an operator sees
/// shedding and limits at work (`cellar_listener_refusals_total`).
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    refusals: Family<RefusalLabels, Counter>,
}

impl ListenerMetrics {
    /// Counters registered in `registry`.
    pub fn register(registry: &mut Registry) -> ListenerMetrics {
        let metrics = ListenerMetrics::default();
        registry.register(
            "listener_refusals",
            "Connections and requests a listener turned away, by listener and reason",
            metrics.refusals.clone(),
        );
        metrics
    }

    /// How many times `listener` refused for `reason`.
    pub fn refusals(&self, listener: &'static str, reason: Refusal) -> u64 {
        self.refusals
            .get_or_create(&RefusalLabels { listener, reason })
            .get()
    }

    fn refused(&self, listener: &'static str, reason: Refusal) {
        self.refusals
            .get_or_create(&RefusalLabels { listener, reason })
            .inc();
    }
}

/// A listener's name in its metrics (`http`, `grpc`) and where it counts refusals.
#[derive(Clone, Debug)]
pub struct Observed {
    pub name: &'static str,
    pub metrics: ListenerMetrics,
}

impl Observed {
    /// A listener whose refusals are counted nowhere (benchmarks, tests).
    pub fn unobserved(name: &'static str) -> Observed {
        Observed {
            name,
            metrics: ListenerMetrics::default(),
        }
    }

    fn refused(&self, reason: Refusal) {
        self.metrics.refused(self.name, reason);
    }
}

/// What protects a listener beyond its limits: TLS, and who may call it.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub tls: Option<ServerTls>,
    /// `None`: authentication is off, and every request is [`Access::Open`].
    pub auth: Option<Arc<Authenticator>>,
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then lets the open
/// connections finish their requests (for at most 30 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    security: Security,
    observed: Observed,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let guard = Arc::new(Guard {
        in_flight: Arc::new(AtomicUsize::new(0)),
        max_in_flight: limits.max_in_flight.max(1),
        body_timeout: limits.body_timeout,
        max_body_bytes: limits.max_body_bytes,
        observed: observed.clone(),
        auth: security.auth,
    });
    let tls = security.tls;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let connections = Arc::new(Semaphore::new(max_connections));
    let timeouts = ConnectionTimeouts {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
    };
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            observed.refused(Refusal::connection_limit);
            tracing::debug!(
                limit = max_connections,
                "connection refused: at server.max_connections"
            );
            continue;
        };
        // Answers are written whole; Nagle's delay would only hold back their last segment.
        let _ = stream.set_nodelay(true);
        let moved = Arc::new(AtomicBool::new(false));
        let stream = Tracked {
            stream,
            moved: moved.clone(),
        };
        let (builder, app, guard, stop) =
            (builder.clone(), app.clone(), guard.clone(), stop_rx.clone());
        match &tls {
            None => {
                tokio::spawn(serve_connection(
                    stream, moved, permit, builder, app, guard, timeouts, stop,
                ));
            }
            Some(tls) => {
                let acceptor = tls.acceptor().clone();
                let observed = observed.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(timeouts.header, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_connection(
                                stream, moved, permit, builder, app, guard, timeouts, stop,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            observed.refused(Refusal::tls_handshake);
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            observed.refused(Refusal::tls_handshake);
                            tracing::debug!(
                                "TLS handshake did not finish within the header timeout"
                            );
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, connections.acquire_many(all)).await;
    Ok(())
}

/// Accept errors that concern one connection (reset before it was accepted), not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[derive(Debug, Clone, Copy)]
struct ConnectionTimeouts {
    header: Duration,
    idle: Duration,
}

/// Serves one connection (plain or TLS over a [`Tracked`] stream, whose flag is `moved`),
/// holding its slot of the connection limit, and closes it when it idles or never starts a
/// request.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S>(
    stream: S,
    moved: Arc<AtomicBool>,
    _slot: OwnedSemaphorePermit,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    guard: Arc<Guard>,
    timeouts: ConnectionTimeouts,
    mut stop: watch::Receiver<()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let opened = Instant::now();
    let started = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(stream);
    let service = {
        let started = started.clone();
        let app = TowerToHyperService::new(app);
        // The guard wraps the router here rather than as a middleware layer of it: a layer
        // costs every request a boxed service and future more.
        hyper::service::service_fn(move |req: Request<Incoming>| {
            started.store(true, Ordering::Relaxed);
            let (guard, app) = (guard.clone(), app.clone());
            async move { Ok::<_, Infallible>(guard_request(&guard, req.map(Body::new), &app).await) }
        })
    };
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    // The stream only flags that it moved bytes (a clock read on every read and write would
    // cost more than the check); the flag is looked at every quarter of the idle timeout, so a
    // connection is closed after idling between one and one and a half timeouts.
    let check_every = (timeouts.idle / 4).max(Duration::from_millis(1));
    let mut last_active = opened;
    loop {
        let mut wake = Instant::now() + check_every;
        if !started.load(Ordering::Relaxed) {
            wake = wake.min(opened + timeouts.header);
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if !started.load(Ordering::Relaxed) && now >= opened + timeouts.header {
                    // No request began within the header timeout: nothing to finish.
                    return;
                }
                if moved.swap(false, Ordering::Relaxed) {
                    last_active = now;
                } else if now >= last_active + timeouts.idle {
                    if closing {
                        // Not even the graceful close moved a byte.
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    last_active = now;
                }
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// A TCP stream that flags when it moved a byte, for the idle timeout.
struct Tracked {
    stream: TcpStream,
    moved: Arc<AtomicBool>,
}

impl Tracked {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The per-request limits of one listener.
struct Guard {
    /// Requests in progress, each counted until its answer is sent. A counter, not a
    /// semaphore: nothing waits for a slot, and a semaphore's release takes a lock.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    body_timeout: Duration,
    max_body_bytes: usize,
    observed: Observed,
    auth: Option<Arc<Authenticator>>,
}

/// Sheds a request past the in-flight limit, then reads its whole body within the body
/// timeout and size limit before the handler runs, within the request's `grpc-timeout`.
async fn guard_request(guard: &Guard, req: Request, app: &TowerToHyperService<Router>) -> Response {
    let reply = Reply::to(&req);
    let deadline = reply
        .grpc
        .then(|| grpc_timeout(req.headers()))
        .flatten()
        .map(|timeout| tokio::time::Instant::now() + timeout);
    let Some(slot) = InFlight::enter(&guard.in_flight, guard.max_in_flight) else {
        guard.observed.refused(Refusal::shed);
        let message = format!(
            "overloaded: {} requests are in progress, the limit of this listener \
             (server.max_in_flight_requests); retry after {RETRY_AFTER_SECS} s",
            guard.max_in_flight
        );
        let mut resp = reply.error(ErrorKind::Unavailable, &message);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return resp;
    };
    let (mut parts, body) = req.into_parts();
    if let Some(auth) = &guard.auth {
        if !auth.is_public(parts.uri.path()) {
            let path = parts.uri.path();
            match auth
                .authenticate_request(&parts.method, path, &parts.headers)
                .await
            {
                Ok(access) => {
                    parts.extensions.insert::<Access>(access);
                }
                Err(e)
                    if parts.method == Method::GET
                        && cellar_auth::console::is_console_path(path) =>
                {
                    // A browser is sent to the console's sign-in form, and back here after.
                    guard.observed.refused(Refusal::unauthenticated);
                    let next = parts.uri.path_and_query().map_or("/ui", |p| p.as_str());
                    return sign_in(next, &e.to_string());
                }
                Err(e) => {
                    guard.observed.refused(Refusal::unauthenticated);
                    let mut resp =
                        reply.closing(reply.error(ErrorKind::Unauthenticated, &e.to_string()));
                    resp.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return resp;
                }
            }
        }
    }
    let mut read = std::pin::pin!(Limited::new(body, guard.max_body_bytes).collect());
    // Most bodies have arrived with their headers: the timer is armed only for one that has
    // not (arming and clearing one per request costs more than reading a small body).
    let arrived = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let read = match arrived {
        Poll::Ready(read) => Ok(read),
        Poll::Pending => tokio::time::timeout(guard.body_timeout, read).await,
    };
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            guard.observed.refused(Refusal::body_too_large);
            return reply.closing(reply.error(
                ErrorKind::TooLarge,
                &format!(
                    "the request body is over the limit of {} bytes (server.max_body_bytes)",
                    guard.max_body_bytes
                ),
            ));
        }
        Ok(Err(e)) => {
            return reply.closing(reply.error(
                ErrorKind::InvalidArgument,
                &format!("the request body could not be read: {e}"),
            ));
        }
        Err(_) => {
            guard.observed.refused(Refusal::body_timeout);
            return reply.closing(reply.body_timeout(guard.body_timeout));
        }
    };
    let exceeded = || {
        guard.observed.refused(Refusal::deadline_exceeded);
        grpc_status(tonic::Status::deadline_exceeded(
            "the request's grpc-timeout passed before its answer was ready",
        ))
    };
    // A request whose client has already given up is not started.
    if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
        return exceeded();
    }
    let handled = async {
        let req = Request::from_parts(parts, Body::from(bytes));
        match hyper::service::Service::call(app, req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    };
    let resp = match deadline {
        None => handled.await,
        Some(deadline) => match tokio::time::timeout_at(deadline, handled).await {
            Ok(resp) => resp,
            Err(_) => return exceeded(),
        },
    };
    resp.map(|body| Body::new(Held { body, _slot: slot }))
}

/// A redirect to the console's sign-in form, which returns to `next` once signed in.
fn sign_in(next: &str, why: &str) -> Response {
    let mut target = String::from(cellar_auth::console::LOGIN_PATH);
    target.push_str("?next=");
    target.extend(form_urlencoded::byte_serialize(next.as_bytes()));
    let mut resp = Response::new(Body::from(format!("sign in: {why}\n")));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(&target) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp
}

/// The `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How to answer a request the guard refuses: gRPC clients read a status, others JSON.
#[derive(Clone, Copy)]
struct Reply {
    grpc: bool,
    http1: bool,
}

impl Reply {
    fn to(req: &Request) -> Reply {
        Reply {
            grpc: is_grpc(req.headers()),
            http1: req.version() < Version::HTTP_2,
        }
    }

    fn error(self, kind: ErrorKind, message: &str) -> Response {
        if self.grpc {
            return grpc_status(tonic::Status::new(kind.grpc_code(), message));
        }
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json(status, error_body(kind, message))
    }

    fn body_timeout(self, timeout: Duration) -> Response {
        let message = format!(
            "the request body did not arrive within {} ms (server.body_timeout_ms)",
            timeout.as_millis()
        );
        if self.grpc {
            return grpc_status(tonic::Status::deadline_exceeded(message));
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "error": {"code": 408, "kind": "request_timeout", "message": message}
        }))
        .unwrap_or_default();
        json(StatusCode::REQUEST_TIMEOUT, body)
    }

    /// Closes an HTTP/1 connection after this answer: the unread rest of the body would be
    /// taken for the next request. (HTTP/2 streams are reset on their own.)
    fn closing(self, mut resp: Response) -> Response {
        if self.http1 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn grpc_status(status: tonic::Status) -> Response {
    status.into_http::<Body>()
}

/// One request counted in progress, until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more request, unless `max` are in progress.
    fn enter(count: &Arc<AtomicUsize>, max: usize) -> Option<InFlight> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body, holding its request's in-flight slot until it is sent (or dropped).
struct Held {
    body: Body,
    _slot: InFlight,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_writes_them() {
        let timeout = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
