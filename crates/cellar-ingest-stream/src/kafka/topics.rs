//! Topic creation, for Kafka-protocol brokers that do not create topics on first use.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use super::{apply_properties, broker_error, retryable_code, BROKER};
use crate::source::BrokerError;

/// Creates the topics that do not exist yet, with `partitions` partitions each (Kafka-protocol
/// brokers such as tansu do not create topics on first use). Topics that exist are left as
/// they are.
pub async fn ensure_topics(
    bootstrap_servers: &str,
    properties: &[(String, String)],
    topics: &[String],
    partitions: i32,
) -> Result<(), BrokerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap_servers);
    apply_properties(&mut client, properties, &[])?;
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| broker_error("creating the admin client", &e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| broker_error("creating topics", &e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BrokerError {
                    broker: BROKER,
                    message: format!("creating topic `{topic}`: {code}"),
                    retryable: retryable_code(code),
                })
            }
        }
    }
    Ok(())
}
