//! The web console: pages rendered on the server under `/ui` (no script, nothing fetched from
//! elsewhere), behind the API's authentication and permissions.
//!
//! - [`overview`]: every feature group, how fresh, how read, what is failing;
//! - [`group`]: one group's spec, versions, ingestions, services, a lookup and its charts;
//! - [`stream`]: stream ingestion per partition, and the dead letters with their re-drive;
//! - [`jobs`]: batch jobs, the scheduled ingestions' `depends_on` graph, a job's page
//!   (also at `/jobs/{id}`, the link alerts carry) and its retry, cancel and backfill;
//! - [`registry`]: entities, feature services, applied versions and a plan preview;
//! - [`samples`]: the short in-memory history of the server's metrics the charts draw.
//!
//! Seeing the console needs `read_metrics`; a lookup needs `read_features` on the group, dead
//! letters' payloads and their re-drive `operate_dead_letters`, and a job's buttons
//! `operate_jobs` on its ingestion. Every button that changes something leads to a page that
//! says what it will do and asks to confirm; the change is a form post, which the
//! authentication layer takes with the console's cookie only from the console's own origin.

pub mod chart;
mod group;
mod jobs;
mod overview;
mod registry;
pub mod samples;
mod spec_text;
mod stream;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use cellar_auth::{Access, Action, Audit, Authenticator, ResourceKind};
use cellar_cache::Freshness;
use cellar_jobs::Executor;
use cellar_registry::Registry;
use cellar_serving::service::FeatureServer;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::ingest::StreamIngestion;
use samples::MetricsHistory;

const STYLE: &str = include_str!("console.css");

/// When a tier's hit ratio counts as low on the overview.
pub const LOW_HIT_RATIO: f64 = 0.5;
/// How often the overview and the stream page reload themselves, seconds: the metrics are
/// sampled every 10 s.
const RELOAD_SECS: u32 = 30;
/// How often a running job's page reloads itself, seconds.
const RELOAD_JOB_SECS: u32 = 5;

/// What the pages read and act on.
#[derive(Clone)]
pub struct Console {
    pub registry: Registry,
    pub server: Arc<FeatureServer>,
    pub ingestion: Option<Arc<StreamIngestion>>,
    pub executor: Option<Executor>,
    pub history: MetricsHistory,
    pub freshness: Freshness,
    pub audit: Audit,
    pub auth: Option<Arc<Authenticator>>,
    /// Whether the console is served over TLS (its cookie is then `Secure`).
    pub tls: bool,
    /// The directory plan previews may read, and below.
    pub repo_dir: PathBuf,
    /// The address curl and Python snippets point at.
    pub public_url: String,
}

/// The console's routes.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/console.css", get(style))
        .route("/ui/groups/{name}", get(group::page))
        .route("/ui/stream", get(stream::page))
        .route(
            "/ui/stream/redrive",
            get(stream::confirm_redrive).post(stream::redrive),
        )
        .route("/ui/jobs", get(jobs::list))
        .route("/ui/jobs/{id}", get(jobs::page))
        .route("/jobs/{id}", get(jobs::page))
        .route("/ui/jobs/{id}/{action}", get(jobs::confirm).post(jobs::act))
        .route(
            "/ui/backfill",
            get(jobs::confirm_backfill).post(jobs::backfill),
        )
        .route("/ui/registry", get(registry::page))
        .with_state(console)
}

/// The page frame: navigation, who is signed in, then `body`.
pub(crate) fn layout(title: &str, access: &Access, current: &str, body: Markup) -> Response {
    refreshing(title, access, current, None, body)
}

/// The page frame of a page that reloads itself every `every` seconds, if given: the pages a
/// second screen keeps open (the overview, stream ingestion, a running job), which hold no form.
pub(crate) fn refreshing(
    title: &str,
    access: &Access,
    current: &str,
    every: Option<u32>,
    body: Markup,
) -> Response {
    let nav = [
        ("/ui", "Overview"),
        ("/ui/stream", "Stream ingestion"),
        ("/ui/jobs", "Batch jobs"),
        ("/ui/registry", "Registry"),
    ];
    let signed_in = matches!(access, Access::Principal(_));
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(every) = every { meta http-equiv="refresh" content=(every); }
                title { (title) " · Cellar" }
                link rel="stylesheet" href="/ui/assets/console.css";
                link rel="icon" href="data:,";
            }
            body {
                header.top {
                    a.brand href="/ui" { "Cellar" }
                    nav {
                        @for (href, label) in nav {
                            a href=(href) class=[(href == current).then_some("current")] { (label) }
                        }
                    }
                    span.who {
                        @if signed_in {
                            (access.who())
                            form.inline method="post" action="/ui/logout" {
                                button.link type="submit" { "Sign out" }
                            }
                        } @else {
                            "authentication off"
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing from elsewhere, no script, no framing by other sites.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A page that says what went wrong, with the status it deserves.
pub(crate) fn problem(status: StatusCode, access: &Access, title: &str, message: &str) -> Response {
    let mut resp = layout(
        title,
        access,
        "",
        html! {
            h1 { (title) }
            p.error { (message) }
            p { a href="/ui" { "Back to the overview" } }
        },
    );
    *resp.status_mut() = status;
    resp
}

/// The page of a registry that did not answer.
pub(crate) fn registry_unavailable(
    access: &Access,
    e: &cellar_registry::RegistryError,
) -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        access,
        "Registry unavailable",
        &e.to_string(),
    )
}

/// The page of a refused action: the permission it needs.
pub(crate) fn denied(access: &Access, e: &cellar_auth::Denied) -> Response {
    problem(
        StatusCode::FORBIDDEN,
        access,
        "Permission denied",
        &e.to_string(),
    )
}

/// The refusal of a caller who may not see the console: it needs `read_metrics`, as it shows
/// how the platform is doing, as `/metrics` does.
pub(crate) fn refused_view(access: &Access) -> Option<Response> {
    let e = access
        .check(Action::ReadMetrics, ResourceKind::Metrics, "metrics")
        .err()?;
    Some(problem(
        StatusCode::FORBIDDEN,
        access,
        "Permission denied",
        &format!("{e}: the console shows the platform's state, as /metrics does"),
    ))
}

/// A button that changes something, or the reason it is off (the permission it needs).
pub(crate) fn action_button(
    access: &Access,
    action: Action,
    ingestion: &str,
    href: &str,
    label: &str,
) -> Markup {
    match access.check(action, ResourceKind::Ingestion, ingestion) {
        Ok(()) => html! { a.button href=(href) { (label) } },
        Err(e) => html! {
            span.button.disabled title=(e.to_string()) aria-disabled="true" { (label) }
            " " small.refused { "needs " code { (action.as_str()) } " on ingestion " (ingestion) }
        },
    }
}

/// A confirmation page: what `action` will do, and a form posting to `target`.
pub(crate) fn confirm_page(
    access: &Access,
    title: &str,
    what: Markup,
    target: &str,
    fields: &[(&str, String)],
    back: &str,
) -> Response {
    layout(
        title,
        access,
        "",
        html! {
            h1 { (title) }
            div.confirm {
                (what)
                form method="post" action=(target) {
                    @for (name, value) in fields {
                        input type="hidden" name=(name) value=(value);
                    }
                    button.button.danger type="submit" id="confirm" { "Confirm" }
                    " "
                    a.button.secondary href=(back) { "Cancel" }
                }
            }
        },
    )
}

/// `?notice=` and `?error=` after a redirect: the outcome of an action.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Outcome {
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Outcome {
    pub fn banner(&self) -> Markup {
        html! {
            @if let Some(notice) = &self.notice { p.notice role="status" { (notice) } }
            @if let Some(error) = &self.error { p.error role="alert" { (error) } }
        }
    }
}

/// A redirect to `path` carrying an outcome to show.
pub(crate) fn after(path: &str, outcome: Result<String, String>) -> Response {
    let (key, text) = match &outcome {
        Ok(text) => ("notice", text),
        Err(text) => ("error", text),
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(key, text)
        .finish();
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}{query}")).into_response()
}

/// Seconds as the pages show them: `45 s`, `12 min`, `3.5 h`, `2.0 d`.
pub(crate) fn duration_text(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".to_owned();
    }
    if secs == 0.0 {
        "0 s".to_owned()
    } else if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86_400.0)
    }
}

/// `1 dead letter`, `2 dead letters`.
pub(crate) fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// An epoch-ms time as UTC text.
pub(crate) fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn style() -> Response {
    let mut resp = STYLE.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    key: String,
    next: Option<String>,
}

/// Where to go after signing in: a path of this server (never another site), as a header
/// can carry it.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.len() <= 2048
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n
        }
        _ => "/ui",
    }
}

async fn login_page(State(console): State<Console>, Query(q): Query<LoginQuery>) -> Response {
    if console.auth.is_none() {
        return Redirect::to("/ui").into_response();
    }
    let next = safe_next(q.next.as_deref()).to_owned();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · Cellar" }
                link rel="stylesheet" href="/ui/assets/console.css";
                link rel="icon" href="data:,";
            }
            body.login {
                main {
                    h1 { "Cellar" }
                    p { "Sign in with an API key or an OIDC token. The browser keeps it for this session only." }
                    @if let Some(error) = &q.error { p.error role="alert" { (error) } }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label for="key" { "API key or token" }
                        input #key type="password" name="key" autocomplete="off" required autofocus;
                        button.button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(auth) = &console.auth else {
        return Redirect::to("/ui").into_response();
    };
    // Another site's form must not sign a browser in under a key of its choosing.
    if headers.contains_key(header::ORIGIN) && !cellar_auth::console::same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "sign-in refused: the form was sent from another site\n",
        )
            .into_response();
    }
    let next = safe_next(form.next.as_deref()).to_owned();
    let retry = |message: &str| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &next)
            .append_pair("error", message)
            .finish();
        Redirect::to(&format!("/ui/login?{query}")).into_response()
    };
    let key = form.key.trim();
    if !cellar_auth::console::fits_cookie(key) {
        return retry("that is not an API key or a token");
    }
    match auth.authenticate_credential(key).await {
        Ok(access) => {
            console
                .audit
                .record(&access, Action::ReadMetrics, "console", 0, "ok: signed in");
            let mut resp = Redirect::to(&next).into_response();
            if let Ok(cookie) =
                HeaderValue::from_str(&cellar_auth::console::set_cookie(key, console.tls))
            {
                resp.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            resp
        }
        Err(e) => retry(&e.to_string()),
    }
}

async fn logout() -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cellar_auth::console::clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_only_returns_to_this_server() {
        assert_eq!(safe_next(Some("/ui/jobs/3")), "/ui/jobs/3");
        assert_eq!(safe_next(Some("//evil.example/")), "/ui");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui");
        assert_eq!(safe_next(Some("/\\evil.example")), "/ui");
        assert_eq!(safe_next(Some("/ui\r\nSet-Cookie: x=1")), "/ui");
        assert_eq!(safe_next(Some("/ui/groups/é")), "/ui");
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration_text(0.25), "250 ms");
        assert_eq!(duration_text(45.0), "45 s");
        assert_eq!(duration_text(600.0), "10 min");
        assert_eq!(duration_text(3.0 * 3600.0), "3.0 h");
        assert_eq!(duration_text(3.0 * 86_400.0), "3.0 d");
    }
}
