//! Test support shared by the integration tests: real `redis-server`
//! processes, a raw RESP client and a fault-injecting TCP relay.
//!
//! Each test binary pulls this in with `mod support;` and uses a subset of it:
//!
//! ```ignore
//! mod support;
//! use support::{FaultRelay, RedisServer, RelayMode, TestClient};
//!
//! #[tokio::test]
//! async fn survives_an_upstream_reset() {
//!     let redis = RedisServer::start();              // free port, own temp dir
//!     let relay = FaultRelay::start(redis.addr());   // point the proxy here
//!     // ... start the proxy against relay.addr(), connect a TestClient ...
//!     relay.set_mode(RelayMode::ResetNow);
//!     // ... assert the client gets an error reply, then recovery ...
//! }                                                   // relay stopped, redis killed
//! ```
//!
//! Never sleep to synchronise: wait for the condition (`wait::until`,
//! `wait::until_ok` when checking it takes a request,
//! `RedisServer::wait_ready`/`wait_loading`/`wait_loaded`, `read_reply` with a
//! deadline).
//!
//! `TestProxy::start(&redis.url(), &["--max-connections", "1"]).await` runs
//! the proxy under test in-process, on its own thread and runtime.
#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod sentinel;
pub mod tls;
pub mod wait;

// Re-exported for convenience; each test binary uses only some of them.
#[allow(unused_imports)]
pub use client::{Leave, ReadError, Reply, TestClient};
#[allow(unused_imports)]
pub use process::ProxyProcess;
#[allow(unused_imports)]
pub use proxy::TestProxy;
#[allow(unused_imports)]
pub use redis::RedisServer;
#[allow(unused_imports)]
pub use relay::{FaultRelay, RelayMode};

/// Deterministic, non-repeating bytes of every value (CR and LF included),
/// so that a shifted, truncated or foreign copy cannot compare equal.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A numeric field of [`TestClient::respool_counters`]; panics if it is
/// missing or not a count.
pub fn counter(info: &std::collections::HashMap<String, String>, field: &str) -> u64 {
    info.get(field)
        .unwrap_or_else(|| panic!("no {field} in {info:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a count in {info:?}"))
}
