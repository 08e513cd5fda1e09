//! External sources of on-demand features: one HTTP call per request with every row's entity
//! keys, bounded by the source's timeout and the request's deadline, a concurrency cap,
//! retries, a circuit breaker and an optional in-process cache. What a source answers is used
//! for the request and never written to any tier or store.
//!
//! The call: `POST url` with `{"keys": {"user_id": ["u1", "u2"]}}` (one column per key field,
//! one value per row); the answer: `{"rows": [{"score": 0.7}, null]}`, one object (or null:
//! nothing known) per row, in order.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cellar_spec::{OnDemandSource, Value};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// One row's answer: each field's value by position in the source's `fields`, or why it is
/// missing.
pub type SourceRow = Vec<Result<Value, String>>;

/// Labels of a source's call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub source: String,
    /// `ok`, `error`, `timeout` or `breaker_open`.
    pub outcome: &'static str,
}

/// Labels of a source's latency and breaker state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Calls, their latency and each breaker's state (1 open, 0 closed), per source.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<SourceLabels, Histogram>,
    breaker_open: Family<SourceLabels, Gauge>,
}

impl Default for SourceMetrics {
    fn default() -> Self {
        SourceMetrics {
            calls: Family::default(),
            // 100 us to about 3.3 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
            }),
            breaker_open: Family::default(),
        }
    }
}

impl SourceMetrics {
    pub fn register(registry: &mut Registry) -> SourceMetrics {
        let metrics = SourceMetrics::default();
        registry.register(
            "on_demand_source_calls",
            "Calls to on-demand features' external sources, by source and outcome (ok, error, timeout, breaker_open)",
            metrics.calls.clone(),
        );
        registry.register(
            "on_demand_source_call_duration_seconds",
            "Latency of calls to external sources, by source",
            metrics.latency.clone(),
        );
        registry.register(
            "on_demand_source_breaker_open",
            "Whether a source's circuit breaker is open (1) or closed (0)",
            metrics.breaker_open.clone(),
        );
        metrics
    }

    fn call(&self, source: &str, outcome: &'static str) {
        self.calls
            .get_or_create(&CallLabels {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// Consecutive failures, and until when the breaker refuses calls.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// When the one call an open breaker past `open_until` let through went out. A trial
    /// whose request was dropped before it ended never records its outcome, so another may go
    /// out once this one has had its whole timeout.
    trial_since: Option<Instant>,
}

/// A source ready to call.
#[derive(Debug)]
pub struct SourceClient {
    pub spec: OnDemandSource,
    http: reqwest::Client,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    /// Row answers by key, when `cache_ttl` is not zero.
    cache: Option<moka::sync::Cache<String, Arc<SourceRow>>>,
    metrics: SourceMetrics,
}

impl SourceClient {
    pub fn new(spec: &OnDemandSource, metrics: SourceMetrics) -> SourceClient {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let cache = (!spec.cache_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(spec.cache_ttl)
                .build()
        });
        SourceClient {
            spec: spec.clone(),
            http,
            permits: Semaphore::new(spec.max_concurrency as usize),
            breaker: Mutex::new(Breaker::default()),
            cache,
            metrics,
        }
    }

    /// Each row's fields for the rows whose key values (one per key field of the source) are
    /// `keys`, at the latest by `deadline`; an error says why none could be had.
    pub async fn fetch(
        &self,
        keys: &[Vec<serde_json::Value>],
        deadline: Instant,
    ) -> Result<Vec<Arc<SourceRow>>, String> {
        let cache_key = |k: &Vec<serde_json::Value>| serde_json::to_string(k).unwrap_or_default();
        let mut answers: Vec<Option<Arc<SourceRow>>> = match &self.cache {
            Some(cache) => keys.iter().map(|k| cache.get(&cache_key(k))).collect(),
            None => vec![None; keys.len()],
        };
        // Rows often repeat a key (one user and many articles): each distinct key is asked once.
        let mut asked: Vec<&Vec<serde_json::Value>> = Vec::new();
        let mut slot_of: Vec<Option<usize>> = vec![None; keys.len()];
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            if answers[i].is_none() {
                let slot = *seen.entry(cache_key(key)).or_insert_with(|| {
                    asked.push(key);
                    asked.len() - 1
                });
                slot_of[i] = Some(slot);
            }
        }
        if !asked.is_empty() {
            let rows: Vec<Arc<SourceRow>> = self
                .call(&asked, deadline)
                .await?
                .into_iter()
                .map(Arc::new)
                .collect();
            if let Some(cache) = &self.cache {
                for (key, row) in asked.iter().zip(&rows) {
                    cache.insert(cache_key(key), Arc::clone(row));
                }
            }
            for (answer, slot) in answers.iter_mut().zip(slot_of) {
                if let Some(slot) = slot {
                    *answer = rows.get(slot).cloned();
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether a call may go out now: the breaker is closed, or open past its time with no
    /// other trial call out.
    fn admit(&self) -> bool {
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let trial_out = b
            .trial_since
            .is_some_and(|since| now < since + self.spec.timeout);
        match b.open_until {
            None => true,
            Some(until) if now >= until && !trial_out => {
                b.trial_since = Some(now);
                true
            }
            Some(_) => false,
        }
    }

    fn record(&self, ok: bool) {
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        b.trial_since = None;
        if ok {
            b.failures = 0;
            b.open_until = None;
        } else {
            b.failures = b.failures.saturating_add(1);
            if b.failures >= self.spec.breaker_failures {
                b.open_until = Some(Instant::now() + self.spec.breaker_open_for);
            }
        }
        let open = i64::from(b.open_until.is_some());
        self.metrics
            .breaker_open
            .get_or_create(&SourceLabels {
                source: self.name().to_owned(),
            })
            .set(open);
    }

    async fn call(
        &self,
        keys: &[&Vec<serde_json::Value>],
        deadline: Instant,
    ) -> Result<Vec<SourceRow>, String> {
        let name = self.name();
        if !self.admit() {
            self.metrics.call(name, "breaker_open");
            return Err(format!(
                "source `{name}`: circuit open after {} failed calls",
                self.spec.breaker_failures
            ));
        }
        let ends = deadline.min(Instant::now() + self.spec.timeout);
        let permit = match tokio::time::timeout_at(ends.into(), self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                self.metrics.call(name, "timeout");
                self.record(false);
                return Err(format!(
                    "source `{name}`: no call slot free within its timeout ({} calls at once)",
                    self.spec.max_concurrency
                ));
            }
        };
        let body = self.body(keys);
        let mut last = String::new();
        for _ in 0..=self.spec.retries {
            let left = ends.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(left, self.post(&body, keys.len())).await;
            self.metrics
                .latency
                .get_or_create(&SourceLabels {
                    source: name.to_owned(),
                })
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(Ok(rows)) => {
                    drop(permit);
                    self.metrics.call(name, "ok");
                    self.record(true);
                    return Ok(rows);
                }
                Ok(Err(e)) => {
                    self.metrics.call(name, "error");
                    last = e;
                }
                Err(_) => {
                    self.metrics.call(name, "timeout");
                    last = format!("no answer within {} ms", left.as_millis());
                }
            }
        }
        drop(permit);
        self.record(false);
        if last.is_empty() {
            last = format!(
                "no time left for a call within {} ms",
                self.spec.timeout.as_millis()
            );
        }
        Err(format!("source `{name}`: {last}"))
    }

    fn body(&self, keys: &[&Vec<serde_json::Value>]) -> serde_json::Value {
        let mut columns = serde_json::Map::new();
        for (i, field) in self.spec.keys.iter().enumerate() {
            columns.insert(
                field.clone(),
                serde_json::Value::Array(
                    keys.iter()
                        .map(|k| k.get(i).cloned().unwrap_or(serde_json::Value::Null))
                        .collect(),
                ),
            );
        }
        serde_json::json!({ "keys": columns })
    }

    /// One call; the URL and headers' secret references are resolved here, each time, so a
    /// rotated credential is used at once and none is kept.
    async fn post(&self, body: &serde_json::Value, rows: usize) -> Result<Vec<SourceRow>, String> {
        let url = cellar_spec::secret::resolve(&self.spec.url).map_err(|e| format!("url: {e}"))?;
        let mut request = self.http.post(url.expose()).json(body);
        for (name, value) in &self.spec.headers {
            let value =
                cellar_spec::secret::resolve(value).map_err(|e| format!("header `{name}`: {e}"))?;
            request = request.header(name, value.expose());
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's error names the URL, which may hold a resolved secret.
            let kind = if e.is_connect() {
                "cannot connect"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "the call failed"
            };
            kind.to_owned()
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("the answer is not JSON: {}", e.without_url()))?;
        let Some(list) = answer.get("rows").and_then(|r| r.as_array()) else {
            return Err("the answer has no `rows` list".to_owned());
        };
        if list.len() != rows {
            return Err(format!(
                "the answer has {} rows for {rows} keys",
                list.len()
            ));
        }
        Ok(list.iter().map(|row| self.row(row)).collect())
    }

    /// One row's fields, each converted to its type (a wrong type is that field's error).
    fn row(&self, row: &serde_json::Value) -> SourceRow {
        self.spec
            .fields
            .iter()
            .map(|f| match row.get(&f.name) {
                None | Some(serde_json::Value::Null) => Ok(Value::Null),
                Some(v) => Value::from_json(f.value_type, v)
                    .map_err(|e| format!("source `{}` field `{}`: {e}", self.spec.name, f.name)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_call_that_never_ends_does_not_keep_the_breaker_open() {
        let spec = OnDemandSource {
            name: "credit".into(),
            url: "http://127.0.0.1:1/score".into(),
            headers: Vec::new(),
            keys: vec!["user_id".into()],
            fields: Vec::new(),
            timeout: Duration::from_millis(20),
            max_concurrency: 1,
            retries: 0,
            breaker_failures: 2,
            breaker_open_for: Duration::from_millis(5),
            cache_ttl: Duration::ZERO,
        };
        let client = SourceClient::new(&spec, SourceMetrics::default());
        assert!(client.admit());
        client.record(false);
        client.record(false);
        assert!(!client.admit(), "open after 2 failures");
        std::thread::sleep(Duration::from_millis(10));
        assert!(client.admit(), "one trial once open_for has passed");
        assert!(!client.admit(), "only one trial at a time");
        // The trial's request was dropped: it never records. Past its timeout, another goes.
        std::thread::sleep(Duration::from_millis(25));
        assert!(client.admit());
        client.record(true);
        assert!(client.admit() && client.admit(), "closed again");
    }
}
