//! Scenario tests over real NATS live in `tests/`.
