//! The embedded durable log.
