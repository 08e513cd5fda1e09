//! Kafka as a [`Source`] and a [`Publisher`], through rdkafka (librdkafka).
//!
//! [`KafkaSource`] is one member of a consumer group. librdkafka runs its rebalance callbacks
//! on whichever thread polls the consumer, and a revoke must not complete before the pipeline
//! has finished (or dropped) the partition's work and committed its position. The pipeline's
//! driver is async and must never be blocked by a rebalance, so the consumer is polled by a
//! dedicated *fetch thread* that feeds the driver through a bounded channel:
//!
//! - events, assignments and revocations travel through that one channel, in the order the
//!   fetch thread saw them, so the driver never sees a partition's events after its revocation
//!   or before its assignment;
//! - on revoke, the fetch thread (inside the rebalance callback) hands the partitions to the
//!   driver as [`Polled::Revoked`] and blocks until [`Source::release`] names them, or until
//!   [`KafkaSourceConfig::release_timeout`] passes; only then does librdkafka give them back to
//!   the group. The driver commits from its own thread in between, which librdkafka allows:
//!   the member's generation stays valid until the callback returns;
//! - on assign, the fetch thread looks up each partition's committed offset, assigns the
//!   partitions at exactly those offsets and reports them as [`Polled::Assigned`], so the offset
//!   the consumer tracks from is the offset fetching starts at.
//!
//! Offsets are committed only by the driver ([`Source::commit`]): automatic commits and the
//! automatic offset store are off, because only the pipeline knows which events are applied.
//! A commit waits for the coordinator's answer at most [`KafkaSourceConfig::commit_timeout`]:
//! librdkafka's own synchronous commit waits without bound, and an OffsetCommit that fails on
//! the coordinator's connection while the coordinator is being looked up again can be retried
//! forever (each lookup reconnects to the coordinator, which fails the queued retry again), so
//! a driver waiting for it would stop consuming for good.
//!
//! Layout:
//! - this file: the errors and client properties both sides share, and the state the fetch
//!   thread shares with the rebalance callback;
//! - `source`: [`KafkaSource`], the consumer-group member the driver polls and commits through;
//! - `fetch`: the fetch thread, and how it hands events and rebalances over to the driver;
//! - `rebalance`: the rebalance callback: assignments at the committed offsets, revokes that
//!   wait for the driver's release;
//! - `commit`: a commit that waits for the coordinator at most a given time;
//! - `lag`: [`ConsumerLag`], from librdkafka's statistics;
//! - `publisher`: [`KafkaPublisher`], the idempotent producer;
//! - `topics`: [`ensure_topics`], for brokers that do not create topics on first use;
//! - `connection`: [`KafkaConnection`], the brokers, TLS and SASL settings every client is
//!   configured from;
//! - `iam`: AWS MSK IAM tokens, and [`ClusterContext`], the context every other client is
//!   created with.

mod commit;
mod connection;
mod fetch;
mod iam;
mod lag;
mod publisher;
mod rebalance;
mod source;
mod topics;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::mpsc;

use crate::source::{BrokerError, SourceEvent, TopicPartition};

pub use connection::{
    KafkaConnection, KafkaSecurity, SaslMechanism, SecurityError, SecurityProtocol,
};
pub use iam::{ClusterContext, MskIamSigner};
pub use lag::ConsumerLag;
pub use publisher::{KafkaPublisher, KafkaPublisherConfig};
pub use source::{KafkaSource, KafkaSourceConfig};
pub use topics::ensure_topics;

const BROKER: &str = "kafka";

/// Whether another attempt at what failed with `code` may succeed: broker, network and
/// coordinator trouble passes; configuration, authorization and protocol errors do not.
fn retryable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | Resolve
            | MessageTimedOut
            | AllBrokersDown
            | OperationTimedOut
            | QueueFull
            | ISRInsufficient
            | WaitingForCoordinator
            | InProgress
            | PreviousInProgress
            | TimedOutQueue
            | WaitCache
            | Interrupted
            | Retry
            | UnknownPartition
            | UnknownTopic
            | UnknownTopicOrPartition
            | LeaderNotAvailable
            | NotLeaderForPartition
            | RequestTimedOut
            | BrokerNotAvailable
            | ReplicaNotAvailable
            | NetworkException
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | RebalanceInProgress
            | KafkaStorageError
            | FencedLeaderEpoch
            | UnknownLeaderEpoch
            | OffsetNotAvailable
            | PreferredLeaderNotAvailable
            | UnstableOffsetCommit
            | ThrottlingQuotaExceeded
    )
}

/// Whether `code` says the group is rebalancing or has moved to a new generation: a commit
/// refused for this is superseded rather than failed.
fn rebalancing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
    )
}

fn broker_error(context: &str, e: &KafkaError) -> BrokerError {
    BrokerError {
        broker: BROKER,
        message: format!("{context}: {e}"),
        retryable: e.rdkafka_error_code().is_some_and(retryable_code),
    }
}

fn config_error(message: String) -> BrokerError {
    BrokerError {
        broker: BROKER,
        message,
        retryable: false,
    }
}

/// Adds the operator's `extra` properties to `config`, then the `required` ones the client
/// relies on: an extra property contradicting a required one is refused, naming it. Every
/// Kafka client Cellar builds (stream source and publisher, batch workers, dead-letter tools)
/// goes through here, by [`KafkaConnection::client_config`], so they cannot differ in
/// precedence.
///
/// Values may refer to secrets (`sasl.password = "${KAFKA_PASSWORD}"`): they are read here,
/// when the client is built, and only librdkafka holds them (rdkafka's `Debug` of a config
/// leaves out its sensitive properties).
fn apply_properties(
    config: &mut ClientConfig,
    extra: &[(String, String)],
    required: &[(&str, &str)],
) -> Result<(), BrokerError> {
    for (name, value) in extra {
        let value = cellar_spec::secret::resolve(value)
            .map_err(|e| config_error(format!("kafka property `{name}`: {e}")))?;
        let value = value.expose();
        if let Some((_, needed)) = required.iter().find(|(r, _)| r == name) {
            if value != *needed {
                // Not the value: the property holds no secret, but a mistake may have put
                // one there.
                return Err(config_error(format!(
                    "kafka property `{name}` must be `{needed}` here: the pipeline depends on it"
                )));
            }
        }
        config.set(name, value);
    }
    for (name, value) in required {
        config.set(*name, *value);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the fetch thread hands to the driver, in the order it happened.
#[derive(Debug)]
enum Fetched {
    Events(Vec<SourceEvent>),
    Assigned(Vec<(TopicPartition, i64)>),
    /// Partitions being revoked, and the round the release must name.
    Revoked(u64, Vec<TopicPartition>),
    /// The consumer cannot go on.
    Failed(BrokerError),
}

/// The consumer's context: what the fetch thread and librdkafka's rebalance callback share.
struct GroupMembership {
    /// Where the fetch thread hands events and assignment changes to the driver.
    outbox: mpsc::Sender<Fetched>,
    /// Events fetched but not handed over yet: a rebalance flushes them before reporting, so
    /// the driver sees every event of a partition before the partition's revocation.
    pending: Mutex<Vec<SourceEvent>>,
    /// The driver's releases of revoked partitions, tagged with the revoke round.
    releases: Mutex<std_mpsc::Receiver<(u64, Vec<TopicPartition>)>>,
    /// The last revoke round, so a late release of an earlier round is not mistaken for this one.
    round: AtomicU64,
    /// Partitions the driver was told it owns: only these are reported as revoked (the
    /// pipeline rejects the revocation of a partition it never had).
    reported: Mutex<HashSet<TopicPartition>>,
    /// Partitions assigned whose resume offset could not be looked up: reported to the driver
    /// at their first event, whose offset is where fetching started.
    unresolved: Mutex<HashSet<TopicPartition>>,
    /// Partitions taken away without a revoke the group waited for (the member was evicted):
    /// commits for them would be refused, and their next owner replays from the last commit.
    lost: Mutex<HashSet<TopicPartition>>,
    /// Set when the source is closing: the callbacks then stop reporting and stop waiting,
    /// because no driver is listening any more.
    closing: AtomicBool,
    release_timeout: Duration,
    /// Topic names as shared strings, so an event does not allocate its topic name.
    topic_names: Mutex<HashSet<Arc<str>>>,
    /// Lag per owned partition, from librdkafka's statistics.
    lag: ConsumerLag,
    /// Signs the OAUTHBEARER tokens of a connection using AWS_MSK_IAM.
    iam: Option<Arc<MskIamSigner>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_broker_trouble_is_retryable_and_misconfiguration_is_not() {
        assert!(retryable_code(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(retryable_code(RDKafkaErrorCode::CoordinatorNotAvailable));
        assert!(retryable_code(RDKafkaErrorCode::MessageTimedOut));
        assert!(!retryable_code(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!retryable_code(RDKafkaErrorCode::InvalidConfig));
        assert!(!retryable_code(RDKafkaErrorCode::MessageSizeTooLarge));
    }

    #[test]
    fn properties_the_pipeline_depends_on_cannot_be_overridden() {
        let mut config = ClientConfig::new();
        let err = apply_properties(
            &mut config,
            &[("enable.auto.commit".into(), "true".into())],
            &[("enable.auto.commit", "false")],
        )
        .err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.message.contains("enable.auto.commit") && !e.retryable),
            "{err:?}"
        );
        apply_properties(
            &mut config,
            &[("session.timeout.ms".into(), "6000".into())],
            &[("enable.auto.commit", "false")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn secret_references_are_read_when_the_client_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kafka-password");
        std::fs::write(&file, "Kafka-Hush-1\n").unwrap();
        let mut config = ClientConfig::new();
        let reference = format!("${{file:{}}}", file.display());
        apply_properties(&mut config, &[("sasl.password".into(), reference)], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get("sasl.password"), Some("Kafka-Hush-1"));
        assert!(!format!("{config:?}").contains("Kafka-Hush-1"));

        let err = apply_properties(
            &mut config,
            &[(
                "sasl.password".into(),
                "${CELLAR_NO_SUCH_VARIABLE_FOR_THIS_TEST}".into(),
            )],
            &[],
        )
        .err();
        assert!(
            err.as_ref().is_some_and(|e| e
                .message
                .contains("kafka property `sasl.password`: environment variable `CELLAR_NO_SUCH_VARIABLE_FOR_THIS_TEST` is not set")
                && !e.retryable),
            "{err:?}"
        );
    }
}
