//! The conformance suite every `OnlineStore` backend runs.
