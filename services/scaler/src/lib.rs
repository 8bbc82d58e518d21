//! elk-scaler
