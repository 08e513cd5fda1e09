//! The embedded backend: records in an embedded KV engine on local disk.
