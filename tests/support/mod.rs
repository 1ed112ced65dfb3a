//! Test support shared by the integration tests: real `redis-server`
//! processes, a raw RESP client and a fault-injecting TCP relay.
//!
//! Each test binary pulls this in with `mod support;` and uses a subset of it.
#![allow(dead_code)]

pub mod client;
pub mod redis;
pub mod relay;
pub mod wait;

// Re-exported for convenience; each test binary uses only some of them.
#[allow(unused_imports)]
pub use client::{ReadError, Reply, TestClient};
#[allow(unused_imports)]
pub use redis::RedisServer;
#[allow(unused_imports)]
pub use relay::{FaultRelay, RelayMode};
