//! elk-election
