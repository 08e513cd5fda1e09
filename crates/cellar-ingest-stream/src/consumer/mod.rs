//! The parallel in-partition consumer.
