//! Topic creation, for Kafka-protocol brokers that do not create topics on first use.

use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;

use super::{broker_error, retryable_code, KafkaConnection, BROKER};
use crate::source::BrokerError;

/// Creates the topics that do not exist yet, with `partitions` partitions each (Kafka-protocol
/// brokers such as tansu do not create topics on first use). Topics that exist are left as
/// they are.
pub async fn ensure_topics(
    connection: &KafkaConnection,
    topics: &[String],
    partitions: i32,
) -> Result<(), BrokerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = connection
        .client_config(&[])?
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
