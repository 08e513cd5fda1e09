//! Prometheus metrics of the serving process.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub code: u16,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

/// Request counts and latencies, plus whatever other components register.
pub struct ServingMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        ServingMetrics::new()
    }
}

impl ServingMetrics {
    pub fn new() -> ServingMetrics {
        let mut registry = Registry::with_prefix("cellar");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by endpoint and status code",
            requests.clone(),
        );
        // 25 us to about 3.3 s.
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
        });
        registry.register(
            "request_duration_seconds",
            "Request latency, by endpoint",
            latency.clone(),
        );
        ServingMetrics {
            registry,
            requests,
            latency,
        }
    }

    /// Lets other components (the cache tiers) add their metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts one request and its latency.
    pub fn observe(&self, endpoint: &'static str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, code })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Labels of an on-demand group's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OnDemandLabels {
    pub group: String,
}

/// Labels of computed values, by group and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComputedLabels {
    pub group: String,
    /// `present`, `not_found` or `error`.
    pub status: &'static str,
}

/// What on-demand groups cost and give: evaluation time per request and values by status.
#[derive(Clone, Debug)]
pub struct OnDemandMetrics {
    evaluation: Family<OnDemandLabels, Histogram>,
    values: Family<ComputedLabels, Counter>,
}

impl Default for OnDemandMetrics {
    fn default() -> Self {
        OnDemandMetrics {
            // 1 us to about 0.5 s.
            evaluation: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_001, 2.0, 20))
            }),
            values: Family::default(),
        }
    }
}

impl OnDemandMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &mut Registry) -> OnDemandMetrics {
        let metrics = OnDemandMetrics::default();
        registry.register(
            "on_demand_evaluation_seconds",
            "Time to compute an on-demand group's features for one request, by group",
            metrics.evaluation.clone(),
        );
        registry.register(
            "on_demand_values",
            "On-demand values computed, by group and status (present, not_found, error)",
            metrics.values.clone(),
        );
        metrics
    }

    pub fn observe(
        &self,
        group: &str,
        elapsed: Duration,
        present: u64,
        not_found: u64,
        errors: u64,
    ) {
        self.evaluation
            .get_or_create(&OnDemandLabels {
                group: group.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        for (status, n) in [
            ("present", present),
            ("not_found", not_found),
            ("error", errors),
        ] {
            if n > 0 {
                self.values
                    .get_or_create(&ComputedLabels {
                        group: group.to_owned(),
                        status,
                    })
                    .inc_by(n);
            }
        }
    }
}
