//! What can go wrong with the embedded log, each case naming the topic, partition or offset at
//! fault so that an operator can act on the message alone.

/// An error of the embedded log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The topic was never created.
    #[error("unknown topic `{topic}`")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },
    /// `create_topic` was asked for a partition count other than the existing topic's; the
    /// count is fixed because keys are hashed onto it.
    #[error("topic `{topic}` exists with {partitions} partitions, not {requested}")]
    PartitionCountMismatch {
        /// The topic.
        topic: String,
        /// Its partition count on disk.
        partitions: u32,
        /// The count asked for.
        requested: u32,
    },
    /// The partition number is not below the topic's partition count.
    #[error(
        "partition {partition} of topic `{topic}` does not exist (the topic has {partitions})"
    )]
    PartitionOutOfRange {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// The topic's partition count.
        partitions: u32,
    },
    /// The offset is outside what the partition holds: below its start (truncated away),
    /// beyond its end, or negative.
    #[error(
        "offset {offset} is out of range for partition {partition} of topic `{topic}` \
         (it holds offsets {start}..{end})"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: i64,
        /// The first offset the partition still holds.
        start: i64,
        /// The next offset to be written.
        end: i64,
    },
    /// A record is larger, encoded, than the log accepts.
    #[error("a record for topic `{topic}` is {size} bytes encoded, over the limit of {limit}")]
    RecordTooLarge {
        /// The topic.
        topic: String,
        /// The record's encoded size.
        size: usize,
        /// [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES).
        limit: usize,
    },
    /// A name or count that the log cannot store (empty, containing NUL, too long, zero
    /// partitions...).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid, e.g. "topic name `a\0b`".
        what: String,
        /// Why.
        reason: String,
    },
    /// A producer's records would leave a hole: the first sequence of the call is past the
    /// next one expected, so records in between were never appended.
    #[error(
        "producer `{producer}` of topic `{topic}` sent sequence {got}, but {expected} is the \
         next expected: records {expected} to {} are missing; resend from {expected}",
        got - 1
    )]
    SequenceGap {
        topic: String,
        producer: String,
        expected: u64,
        got: u64,
    },
    /// Stored bytes that do not decode: the disk or a foreign writer damaged them.
    #[error("corrupt log entry in partition {partition} of topic `{topic}` at offset {offset}: {reason}")]
    Corrupt {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset of the damaged entry.
        offset: i64,
        /// What did not decode.
        reason: String,
    },
    /// Stored metadata (topics, committed positions, start offsets) that does not decode.
    #[error("corrupt log metadata ({what}): {reason}")]
    CorruptMetadata {
        /// Which metadata entry.
        what: String,
        /// What did not decode.
        reason: String,
    },
    /// The storage engine failed (disk full, I/O error, the log's writer has stopped).
    #[error("embedded log backend failure while {action}: {reason}")]
    Backend {
        /// What the log was doing, e.g. "appending to topic `events`".
        action: String,
        /// The engine's error.
        reason: String,
    },
}

impl LogError {
    /// Whether trying the same call again can succeed without anyone changing the input: only
    /// a backend failure may be transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Backend { .. })
    }

    pub(crate) fn backend(action: impl Into<String>, e: impl std::fmt::Display) -> LogError {
        LogError::Backend {
            action: action.into(),
            reason: e.to_string(),
        }
    }
}

/// The result of an embedded log operation.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
