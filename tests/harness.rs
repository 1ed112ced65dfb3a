//! Tests of the test harness itself (`tests/support`).

mod support;

use support::{RedisServer, Reply};

#[test]
fn smoke() {
    let server = RedisServer::start();
    assert_eq!(server.command(&[b"PING"]), Reply::Simple("PONG".into()));
}
