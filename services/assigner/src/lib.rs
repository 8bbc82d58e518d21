//! elk-assigner
