//! Cellar's registry.
