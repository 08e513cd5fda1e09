//! Processing one event: decode, dispatch to every ingestion that consumes it, map, write;
//! and where a failure goes: the retry topic after a backoff, or the dead-letter topic with
//! its reason. Nothing is dropped silently.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellar_spec::limits::EventTimeBounds;
use cellar_spec::time::now_ms;

use crate::dispatch::{Dispatcher, StreamMapping};
use crate::source::{BrokerError, OutgoingEvent, Publisher, SourceEvent};
use crate::writer::{BatchingWriter, Change, Written};

/// Header names carried by retried and dead-lettered events.
pub mod headers {
    /// How many times the event has been tried.
    pub const ATTEMPT: &str = "cellar-attempt";
    /// When it first failed, epoch milliseconds.
    pub const FIRST_FAILURE: &str = "cellar-first-failure-ms";
    /// Not to be retried before this, epoch milliseconds.
    pub const NEXT_ATTEMPT: &str = "cellar-next-attempt-ms";
    /// The last error.
    pub const ERROR: &str = "cellar-error";
    /// The one ingestion to retry (the others that consumed the event succeeded).
    pub const INGESTION: &str = "cellar-ingestion";
    /// Where the event was first read: `topic[partition]@offset`.
    pub const ORIGIN: &str = "cellar-origin";
    /// The topic the event was first published to (its ingestions are routed by it).
    pub const TOPIC: &str = "cellar-topic";
}

/// How failed events are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_topic: String,
    pub dead_letter_topic: String,
    /// Attempts in all, the first included; after the last the event is dead-lettered.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_topic: "cellar-retry".into(),
            dead_letter_topic: "cellar-dead-letter".into(),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` failures.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Why an event failed, and whether another attempt may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Malformed or invalid: it goes straight to the dead-letter topic.
    Poison(String),
    /// The store or a broker failed: worth retrying.
    Transient(String),
}

/// What processing an event did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Records written (stale ones included).
    pub records: usize,
    /// Records older than the stored one.
    pub stale: usize,
    /// Records that had this event applied already (a redelivery): left unchanged.
    pub duplicates: usize,
    /// Aggregates the event was too late for (older than the window).
    pub late: usize,
    /// The newest event time among the records written, for freshness.
    pub newest_event_time: Option<i64>,
    /// Ingestions that failed, with why.
    pub failures: Vec<(String, Failure)>,
}

/// Decodes, dispatches, maps and writes events, and routes failures.
pub struct EventProcessor {
    /// Swapped when a new repo is applied.
    dispatcher: std::sync::RwLock<Arc<Dispatcher>>,
    writer: BatchingWriter,
    publisher: Arc<dyn Publisher>,
    policy: RetryPolicy,
    /// Events with an event time outside are dead-lettered.
    event_times: EventTimeBounds,
}

fn header_str<'a>(event: &'a SourceEvent, name: &str) -> Option<&'a str> {
    event.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

fn header_text(event: &SourceEvent, name: &str) -> Option<String> {
    header_str(event, name).map(str::to_owned)
}

impl EventProcessor {
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        writer: BatchingWriter,
        publisher: Arc<dyn Publisher>,
        policy: RetryPolicy,
    ) -> EventProcessor {
        EventProcessor {
            dispatcher: std::sync::RwLock::new(dispatcher),
            writer,
            publisher,
            policy,
            event_times: EventTimeBounds::default(),
        }
    }

    /// The same processor, accepting event times within `bounds`.
    pub fn with_event_times(mut self, bounds: EventTimeBounds) -> EventProcessor {
        self.event_times = bounds;
        self
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The dispatcher in use.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        match self.dispatcher.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Routes further events with the ingestions of a newly applied repo.
    pub fn set_dispatcher(&self, dispatcher: Arc<Dispatcher>) {
        match self.dispatcher.write() {
            Ok(mut d) => *d = dispatcher,
            Err(poisoned) => *poisoned.into_inner() = dispatcher,
        }
    }

    /// Applies one event to every ingestion that consumes it (or, for a retried event, to
    /// the one ingestion that failed). Failures are returned, not published.
    pub async fn apply(&self, event: &SourceEvent) -> Applied {
        let mut applied = Applied::default();
        let topic = header_str(event, headers::TOPIC).unwrap_or(&event.partition.topic);
        let dispatcher = self.dispatcher();
        let value = match dispatcher.decode(topic, &event.payload) {
            Ok(v) => v,
            Err(e) => {
                applied.failures.push((
                    String::new(),
                    Failure::Poison(format!("malformed JSON: {e}")),
                ));
                return applied;
            }
        };
        let only = header_str(event, headers::INGESTION);
        let arrival = event.timestamp_ms.unwrap_or_else(now_ms);
        let mappings: Vec<&Arc<StreamMapping>> = dispatcher.route(topic, &value);
        for mapping in mappings {
            if only.is_some_and(|o| o != mapping.name) {
                continue;
            }
            let origin = Some((
                crate::aggregate::origin_id(
                    &mapping.name,
                    &event.partition.topic,
                    event.partition.partition,
                ),
                event.offset.max(0) as u64,
            ));
            let (entity, change) = match mapping.map(&value, arrival, origin) {
                Ok(r) => r,
                Err(e) => {
                    applied
                        .failures
                        .push((mapping.name.clone(), Failure::Poison(e.to_string())));
                    continue;
                }
            };
            let event_time = match &change {
                Change::Put(r) => r.event_time,
                Change::Update(u) => u.event_time,
            };
            if let Err(e) = self.event_times.check(event_time, now_ms()) {
                let reason = format!("ingestion `{}`: event_time: {e}", mapping.name);
                applied
                    .failures
                    .push((mapping.name.clone(), Failure::Poison(reason)));
                continue;
            }
            // The entity is kept only to key a derived event.
            let republish_key = mapping.republish_to.as_ref().map(|_| entity.clone());
            match self
                .writer
                .write_returning(
                    mapping.group.clone(),
                    entity,
                    change,
                    republish_key.is_some(),
                )
                .await
            {
                Ok(Written { effect, record }) => {
                    if let (Some(topic), Some(entity), Some(record)) =
                        (&mapping.republish_to, &republish_key, record)
                    {
                        let derived = mapping.derived_event(&value, &record);
                        // Boxed, being rare: inline, it would enlarge every event's future.
                        let republished = Box::pin(self.republish(topic, entity, &derived));
                        if let Err(e) = republished.await {
                            applied
                                .failures
                                .push((mapping.name.clone(), Failure::Transient(e.to_string())));
                            continue;
                        }
                    }
                    applied.records += 1;
                    applied.newest_event_time = applied.newest_event_time.max(Some(event_time));
                    applied.stale += usize::from(effect.stale);
                    applied.duplicates += usize::from(effect.duplicate);
                    applied.late += effect.late as usize;
                }
                Err(e) if e.retryable => applied
                    .failures
                    .push((mapping.name.clone(), Failure::Transient(e.message))),
                Err(e) => applied
                    .failures
                    .push((mapping.name.clone(), Failure::Poison(e.message))),
            }
        }
        applied
    }

    /// Publishes a derived event, trying again with a backoff while the broker fails
    /// transiently: the change it reports is already stored, and failing the event would
    /// apply it again from the retry topic.
    async fn republish(
        &self,
        topic: &str,
        entity: &cellar_spec::EntityKey,
        derived: &serde_json::Value,
    ) -> Result<(), BrokerError> {
        let event = OutgoingEvent {
            key: Some(Bytes::from(entity.0.clone())),
            payload: Bytes::from(derived.to_string()),
            headers: Vec::new(),
        };
        let mut wait = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .publisher
                .publish(topic, std::slice::from_ref(&event))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable && attempt < 10 => {
                    tracing::warn!(topic, error = %e, attempt, "re-publishing a derived event failed, trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends each failure of an event where it belongs: a transient one to the retry topic
    /// (or, past the last attempt, to the dead-letter topic), a poison one to the dead-letter
    /// topic. Returns once the broker acknowledged every re-published event.
    pub async fn route_failures(
        &self,
        event: &SourceEvent,
        failures: &[(String, Failure)],
    ) -> Result<RouteOutcome, BrokerError> {
        let attempt: u32 = header_text(event, headers::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let now = now_ms();
        let first_failure =
            header_text(event, headers::FIRST_FAILURE).unwrap_or_else(|| now.to_string());
        let origin = header_text(event, headers::ORIGIN)
            .unwrap_or_else(|| format!("{}@{}", event.partition, event.offset));
        let topic =
            header_text(event, headers::TOPIC).unwrap_or_else(|| event.partition.topic.to_string());
        let mut outcome = RouteOutcome::default();
        for (ingestion, failure) in failures {
            let (target, reason, next_attempt) = match failure {
                Failure::Transient(reason) if attempt < self.policy.max_attempts => {
                    let wait = self.policy.backoff_after(attempt);
                    outcome.retried += 1;
                    (
                        &self.policy.retry_topic,
                        reason.clone(),
                        Some(now + wait.as_millis() as i64),
                    )
                }
                Failure::Transient(reason) => {
                    outcome.dead_lettered += 1;
                    (
                        &self.policy.dead_letter_topic,
                        format!("gave up after {attempt} attempts: {reason}"),
                        None,
                    )
                }
                Failure::Poison(reason) => {
                    outcome.dead_lettered += 1;
                    (&self.policy.dead_letter_topic, reason.clone(), None)
                }
            };
            let mut h: Vec<(String, Bytes)> = event
                .headers
                .iter()
                .filter(|(n, _)| !n.starts_with("cellar-"))
                .cloned()
                .collect();
            let mut put = |name: &str, value: String| h.push((name.to_owned(), Bytes::from(value)));
            put(
                headers::ATTEMPT,
                (attempt + u32::from(next_attempt.is_some())).to_string(),
            );
            put(headers::FIRST_FAILURE, first_failure.clone());
            put(headers::ERROR, reason);
            put(headers::ORIGIN, origin.clone());
            put(headers::TOPIC, topic.clone());
            if !ingestion.is_empty() {
                put(headers::INGESTION, ingestion.clone());
            }
            if let Some(at) = next_attempt {
                put(headers::NEXT_ATTEMPT, at.to_string());
            }
            self.publisher
                .publish(
                    target,
                    &[OutgoingEvent {
                        key: event.key.clone(),
                        payload: event.payload.clone(),
                        headers: h,
                    }],
                )
                .await?;
        }
        Ok(outcome)
    }
}

/// Where an event's failures went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteOutcome {
    pub retried: usize,
    pub dead_lettered: usize,
}

/// When a retried event may be tried again, from its headers.
pub fn next_attempt_at(event: &SourceEvent) -> Option<i64> {
    header_text(event, headers::NEXT_ATTEMPT).and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        };
        let waits: Vec<u128> = (1..=5).map(|a| p.backoff_after(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
