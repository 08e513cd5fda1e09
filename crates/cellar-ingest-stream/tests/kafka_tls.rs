//! Kafka clients over TLS and SASL, against real servers with certificates the test setup
//! generates (`scripts/tls.sh`): events published and consumed by a consumer-group member
//! through TLS with a client certificate, and through SASL/SCRAM over TLS; a wrong CA, a
//! missing client certificate and a wrong password refused.
//!
//! The servers: `CELLAR_TEST_KAFKA_TLS`, a tansu broker behind a TLS proxy that requires a
//! client certificate (tansu does not terminate TLS itself); `CELLAR_TEST_KAFKA_SASL`, a tansu
//! broker checking SCRAM-SHA-512 and -256 proofs against the credentials of user
//! `CELLAR_TEST_KAFKA_SASL_USER` (password in `CELLAR_TEST_KAFKA_SASL_PASSWORD`), behind a TLS
//! proxy; `CELLAR_TEST_TLS_DIR`, the CA, client certificate and a second, unrelated CA. The
//! tests are ignored by a plain `cargo test`; run with `--include-ignored` without the
//! variables, they fail.
#![cfg(feature = "kafka")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_ingest_stream::kafka::{
    ensure_topics, KafkaConnection, KafkaPublisher, KafkaPublisherConfig, KafkaSecurity,
    KafkaSource, KafkaSourceConfig, SaslMechanism, SecurityProtocol,
};
use cellar_ingest_stream::source::{OutgoingEvent, Polled, Publisher, Source};

const EVENTS: usize = 20;

fn service(var: &str, service: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("{var} is not set: this test needs {service}; scripts/test.sh starts it"),
    }
}

fn tls_file(name: &str) -> String {
    let dir = service("CELLAR_TEST_TLS_DIR", "the test certificates");
    format!("{dir}/{name}")
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// TLS to the proxy that requires a client certificate, with `ca` trusted and, if given, the
/// test client certificate.
fn over_tls(ca: &str, client_certificate: bool) -> KafkaConnection {
    let (cert_file, key_file) = if client_certificate {
        (tls_file("client.crt"), tls_file("client.key"))
    } else {
        (String::new(), String::new())
    };
    KafkaConnection {
        security: KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            ca_file: tls_file(ca),
            cert_file,
            key_file,
            ..KafkaSecurity::default()
        },
        ..KafkaConnection::new(service(
            "CELLAR_TEST_KAFKA_TLS",
            "a Kafka broker behind TLS",
        ))
    }
}

/// SASL/SCRAM over TLS as the test user, the password given as a secret reference.
fn over_sasl(mechanism: SaslMechanism, password: &str) -> KafkaConnection {
    KafkaConnection {
        security: KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            ca_file: tls_file("ca.crt"),
            sasl_mechanism: Some(mechanism),
            sasl_username: service("CELLAR_TEST_KAFKA_SASL_USER", "the SASL broker's user"),
            sasl_password: password.to_owned(),
            ..KafkaSecurity::default()
        },
        ..KafkaConnection::new(service(
            "CELLAR_TEST_KAFKA_SASL",
            "a Kafka broker with SASL/SCRAM",
        ))
    }
}

const PASSWORD: &str = "${CELLAR_TEST_KAFKA_SASL_PASSWORD}";

fn publisher(connection: &KafkaConnection, timeout_ms: u32) -> KafkaPublisher {
    let config = KafkaPublisherConfig::new(connection.clone())
        .property("message.timeout.ms", timeout_ms.to_string());
    KafkaPublisher::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn events(n: usize) -> Vec<OutgoingEvent> {
    (0..n)
        .map(|i| OutgoingEvent {
            key: Some(Bytes::from(format!("k{i}"))),
            payload: Bytes::from(format!("event {i}")),
            headers: Vec::new(),
        })
        .collect()
}

/// Creates a topic, publishes `EVENTS` events to it and consumes them back as a member of a
/// new consumer group, all through `connection`.
async fn round_trip(connection: &KafkaConnection) {
    let topic = random_name("tls");
    ensure_topics(connection, std::slice::from_ref(&topic), 2)
        .await
        .unwrap_or_else(|e| panic!("creating the topic: {e}"));
    publisher(connection, 30_000)
        .publish(&topic, &events(EVENTS))
        .await
        .unwrap_or_else(|e| panic!("publishing: {e}"));

    let config = KafkaSourceConfig::new(connection.clone(), random_name("group"), vec![topic])
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500");
    let mut source = KafkaSource::new(&config).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    while seen.len() < EVENTS && started.elapsed() < Duration::from_secs(60) {
        match source.poll(100, Duration::from_millis(200)).await {
            Ok(Polled::Events(events)) => {
                seen.extend(
                    events
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.payload).into_owned()),
                );
            }
            Ok(Polled::Assigned(_)) => {}
            Ok(Polled::Revoked(partitions)) => source
                .release(&partitions)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            Err(e) => panic!("consuming: {e}"),
        }
    }
    source.close().await;
    let expected: BTreeSet<String> = (0..EVENTS).map(|i| format!("event {i}")).collect();
    assert_eq!(seen, expected);
}

/// A publish through `bad` to a topic `good` created and publishes to fails: what differs
/// between the two connections is refused.
async fn refused(good: &KafkaConnection, bad: &KafkaConnection, why: &str) {
    let topic = random_name("refused");
    ensure_topics(good, std::slice::from_ref(&topic), 1)
        .await
        .unwrap_or_else(|e| panic!("creating the topic: {e}"));
    publisher(good, 30_000)
        .publish(&topic, &events(1))
        .await
        .unwrap_or_else(|e| panic!("publishing with the good connection: {e}"));
    let err = publisher(bad, 5_000)
        .publish(&topic, &events(1))
        .await
        .expect_err(why);
    eprintln!("{why}: {err}");
}

#[tokio::test]
#[ignore = "needs Kafka behind TLS (CELLAR_TEST_KAFKA_TLS); scripts/test.sh starts it"]
async fn events_go_through_tls_with_the_ca_and_a_client_certificate() {
    round_trip(&over_tls("ca.crt", true)).await;
}

#[tokio::test]
#[ignore = "needs Kafka behind TLS (CELLAR_TEST_KAFKA_TLS); scripts/test.sh starts it"]
async fn a_wrong_ca_or_no_client_certificate_is_refused() {
    let good = over_tls("ca.crt", true);
    refused(
        &good,
        &over_tls("other-ca.crt", true),
        "a broker certificate the trusted CA did not sign",
    )
    .await;
    refused(
        &good,
        &over_tls("ca.crt", false),
        "no client certificate for a broker that requires one",
    )
    .await;
}

#[tokio::test]
#[ignore = "needs Kafka with SASL/SCRAM (CELLAR_TEST_KAFKA_SASL); scripts/test.sh starts it"]
async fn scram_authenticates_with_the_right_password() {
    round_trip(&over_sasl(SaslMechanism::ScramSha512, PASSWORD)).await;
    let sha256 = over_sasl(SaslMechanism::ScramSha256, PASSWORD);
    let topic = random_name("sha256");
    ensure_topics(&sha256, std::slice::from_ref(&topic), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    publisher(&sha256, 30_000)
        .publish(&topic, &events(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
#[ignore = "needs Kafka with SASL/SCRAM (CELLAR_TEST_KAFKA_SASL); scripts/test.sh starts it"]
async fn scram_refuses_a_wrong_password() {
    refused(
        &over_sasl(SaslMechanism::ScramSha512, PASSWORD),
        &over_sasl(SaslMechanism::ScramSha512, "not-the-password"),
        "a wrong SCRAM-SHA-512 password",
    )
    .await;
    refused(
        &over_sasl(SaslMechanism::ScramSha256, PASSWORD),
        &over_sasl(SaslMechanism::ScramSha256, "not-the-password"),
        "a wrong SCRAM-SHA-256 password",
    )
    .await;
}
