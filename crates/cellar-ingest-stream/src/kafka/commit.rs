//! A commit that waits for the group coordinator's answer at most a given time, which
//! librdkafka's own synchronous commit does not.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;

use super::GroupMembership;

/// Commits `offsets` for the group and waits at most `timeout` for the coordinator's answer:
/// `None` when none came. librdkafka goes on with an unanswered commit in the background, and
/// drops its answer with the queue it was meant for.
pub(super) fn commit_within(
    consumer: &BaseConsumer<GroupMembership>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Option<KafkaResult<()>> {
    use rdkafka::bindings as rd;
    let failed = |code: RDKafkaRespErr| Err(KafkaError::ConsumerCommit(code.into()));
    let deadline = Instant::now() + timeout;
    let client = consumer.client().native_ptr();
    // SAFETY: `client` and `offsets` stay valid for the whole call (the consumer and the list
    // are borrowed), and librdkafka copies the offsets before `rd_kafka_commit_queue` returns.
    // The queue is this call's own: created here, destroyed once here, and every event taken
    // from it is destroyed once, right after being read.
    unsafe {
        let queue = rd::rd_kafka_queue_new(client);
        let started =
            rd::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        let mut answer =
            (started != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| failed(started));
        while answer.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let event =
                rd::rd_kafka_queue_poll(queue, left.as_millis().clamp(1, i32::MAX as u128) as i32);
            if event.is_null() {
                continue;
            }
            if rd::rd_kafka_event_type(event) == rd::RD_KAFKA_EVENT_OFFSET_COMMIT {
                answer = Some(match rd::rd_kafka_event_error(event) {
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
                    code => failed(code),
                });
            }
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        answer
    }
}
