//! elk-placement
