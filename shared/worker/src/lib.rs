//! elk-worker
