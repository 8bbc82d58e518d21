//! Test fixtures for ELK Coordinator: a real `nats-server` per test and condition polling.
//!
//! * [`NatsServer`] starts `nats-server` (from `NATS_SERVER_BIN`, else `PATH`) on a random loopback
//!   port with a temporary store, and kills it and removes the store when dropped. A missing binary
//!   is an error that says how to install one, never a silent skip.
//! * [`wait_until`] polls an async condition until it holds or a deadline passes; tests never
//!   sleep to wait.

mod server;
mod wait;

pub use server::{NatsServer, NatsServerBuilder, ServerError, resolve_nats_server_binary};
pub use wait::{TimedOut, wait_until};
