//! Compact positional encoding of records.
