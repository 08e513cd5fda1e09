//! Topic creation, for Kafka-protocol brokers that do not create topics on first use.

use std::time::Duration;

use rdkafka::error::RDKafkaErrorCode;

use super::{broker_error, config_error, retryable_code, ClusterContext, KafkaConnection, BROKER};
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
    let context = connection.context()?;
    let token = match context.shared_signer() {
        // The credential chain may wait on the network: not on a runtime worker.
        Some(signer) => Some(
            tokio::task::spawn_blocking(move || signer.token())
                .await
                .map_err(|e| config_error(format!("kafka MSK IAM token: {e}")))?
                .map_err(|e| config_error(format!("kafka sasl_mechanism AWS_MSK_IAM: {e}")))?,
        ),
        None => None,
    };
    let admin: AdminClient<ClusterContext> = connection
        .client_config(&[])?
        .create_with_context(context)
        .map_err(|e| broker_error("creating the admin client", &e))?;
    if let Some(token) = token {
        set_token(&admin, token)?;
    }
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

/// Hands the admin client its OAUTHBEARER token. rdkafka's admin client serves only its own
/// result queue, never the queue librdkafka asks for tokens on, so the token is set once, up
/// front: it outlives the few requests one `ensure_topics` makes.
fn set_token(
    admin: &rdkafka::admin::AdminClient<ClusterContext>,
    token: rdkafka::client::OAuthToken,
) -> Result<(), BrokerError> {
    use rdkafka::bindings as rd;
    use std::ffi::CString;
    let invalid = |e: std::ffi::NulError| config_error(format!("kafka MSK IAM token: {e}"));
    let value = CString::new(token.token).map_err(invalid)?;
    let principal = CString::new(token.principal_name).map_err(invalid)?;
    let mut error = [0 as std::ffi::c_char; 512];
    // SAFETY: the client pointer is valid while `admin` is borrowed; librdkafka copies the
    // strings before returning and writes at most `error.len()` bytes, NUL-terminated.
    let code = unsafe {
        rd::rd_kafka_oauthbearer_set_token(
            admin.inner().native_ptr(),
            value.as_ptr(),
            token.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    // SAFETY: librdkafka NUL-terminated the message within the buffer.
    let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
    Err(config_error(format!(
        "kafka MSK IAM token refused by librdkafka: {}",
        message.to_string_lossy()
    )))
}
