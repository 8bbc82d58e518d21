//! elk-coverage
